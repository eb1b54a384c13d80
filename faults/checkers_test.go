package faults

// The checkers of the fault schedule, kept pure so that their own tests
// (below) prove each one can fail.

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// ---- set workload (Jepsen's set) ----

// setHistory is what the set clients did: for each key, each element
// whose write was attempted, and whether a write of it was acknowledged.
type setHistory map[string]map[string]bool

func (h setHistory) add(key, elem string, acked bool) {
	if h[key] == nil {
		h[key] = map[string]bool{}
	}
	h[key][elem] = h[key][elem] || acked
}

// setResult is the verdict on a set history against the final reads.
type setResult struct {
	Attempted           int      `json:"attempted"`            // elements whose write was sent at least once
	Acknowledged        int      `json:"acknowledged"`         // of those, acknowledged (first try or a retry)
	Lost                int      `json:"lost"`                 // acknowledged but missing from the final read: must be 0
	UnexpectedlyPresent int      `json:"unexpectedly_present"` // never acknowledged, yet in the final read (allowed)
	Unacknowledged      int      `json:"unacknowledged"`       // never acknowledged and absent (allowed)
	Phantoms            int      `json:"phantoms"`             // in the final read but never attempted: must be 0
	FinalElements       int      `json:"final_elements"`       // elements in the final reads
	LostElements        []string `json:"lost_elements,omitempty"`
	PhantomElements     []string `json:"phantom_elements,omitempty"`
}

// checkSet compares the history with the final read of every key (the
// union of its siblings).
func checkSet(h setHistory, final map[string]map[string]bool) setResult {
	var r setResult
	keys := map[string]bool{}
	for k := range h {
		keys[k] = true
	}
	for k := range final {
		keys[k] = true
	}
	for _, k := range sortedKeys(keys) {
		got := final[k]
		r.FinalElements += len(got)
		for _, e := range sortedKeys(h[k]) {
			acked := h[k][e]
			r.Attempted++
			switch {
			case acked && got[e]:
				r.Acknowledged++
			case acked:
				r.Acknowledged++
				r.Lost++
				r.LostElements = appendCapped(r.LostElements, k+"/"+e)
			case got[e]:
				r.UnexpectedlyPresent++
			default:
				r.Unacknowledged++
			}
		}
		for _, e := range sortedKeys(got) {
			if _, ok := h[k][e]; !ok {
				r.Phantoms++
				r.PhantomElements = appendCapped(r.PhantomElements, k+"/"+e)
			}
		}
	}
	return r
}

// unionOf is the set a read returns: the union of every sibling's
// comma-separated elements.
func unionOf(g *client.GetResult) map[string]bool {
	set := map[string]bool{}
	if g == nil || !g.Found {
		return set
	}
	vals := g.Siblings
	if len(vals) == 0 {
		vals = [][]byte{g.Value}
	}
	for _, v := range vals {
		for _, e := range strings.Split(string(v), ",") {
			if e != "" {
				set[e] = true
			}
		}
	}
	return set
}

func encodeSet(set map[string]bool) []byte {
	return []byte(strings.Join(sortedKeys(set), ","))
}

// ---- lww workload ----

// lwwHistory is what the lww writers did to one key: each writer owns its
// keys and writes increasing sequence numbers, each with the context of
// its last acknowledged write, so every acknowledged write supersedes the
// ones acknowledged before it.
type lwwHistory struct {
	Acked     map[int]bool // sequence numbers acknowledged
	Failed    map[int]bool // sent, never acknowledged (indeterminate)
	LastAcked int          // greatest acknowledged sequence number
}

func (h *lwwHistory) add(seq int, acked bool) {
	if h.Acked == nil {
		h.Acked, h.Failed = map[int]bool{}, map[int]bool{}
	}
	if acked {
		h.Acked[seq] = true
		h.LastAcked = max(h.LastAcked, seq)
	} else {
		h.Failed[seq] = true
	}
}

// lwwFinal is the final read of a key at consistency all.
type lwwFinal struct {
	Found bool
	Value string
}

type lwwResult struct {
	Keys         int `json:"keys"`
	Attempted    int `json:"attempted"`
	Acknowledged int `json:"acknowledged"`
	// Lost counts keys whose final value is older than their last
	// acknowledged write without being an indeterminate write (which may
	// take effect at any time after it was sent): must be 0.
	Lost int `json:"lost"`
	// Indeterminate counts keys whose final value is a write that was
	// never acknowledged (allowed).
	Indeterminate int      `json:"final_from_unacknowledged"`
	Phantoms      int      `json:"phantoms"` // final values nobody wrote: must be 0
	Details       []string `json:"details,omitempty"`
}

func checkLWW(h map[string]*lwwHistory, final map[string]lwwFinal) lwwResult {
	var r lwwResult
	for _, k := range sortedKeys(h) {
		kh := h[k]
		r.Keys++
		r.Attempted += len(kh.Acked) + len(kh.Failed)
		r.Acknowledged += len(kh.Acked)
		f := final[k]
		if !f.Found {
			if kh.LastAcked > 0 {
				r.Lost++
				r.Details = appendCapped(r.Details, fmt.Sprintf("%s: not found, last acknowledged write %d", k, kh.LastAcked))
			}
			continue
		}
		seq, err := strconv.Atoi(f.Value)
		switch {
		case err != nil || (!kh.Acked[seq] && !kh.Failed[seq]):
			r.Phantoms++
			r.Details = appendCapped(r.Details, fmt.Sprintf("%s: final value %q was never written", k, f.Value))
		case seq >= kh.LastAcked && kh.Acked[seq]:
		case kh.Failed[seq]:
			r.Indeterminate++
		default:
			r.Lost++
			r.Details = appendCapped(r.Details, fmt.Sprintf("%s: final value %d, but %d was acknowledged after it", k, seq, kh.LastAcked))
		}
	}
	return r
}

// ---- convergence ----

// convergence is the verdict on the replicas' own dumps of one tenant.
type convergence struct {
	Keys      int      `json:"keys"`      // keys any replica holds
	Divergent int      `json:"divergent"` // keys whose primaries do not hold identical version sets
	Details   []string `json:"details,omitempty"`
}

// checkConvergence compares, for every key any node holds, what each of
// the key's rf primaries holds: under siblings the complete DVVSet, under
// lww the version (dot, tombstone, value). A primary that holds nothing
// while another holds something diverges too. dumps must have every
// node of rg.
func checkConvergence(policy string, tenant string, rf int, rg *ring.Map, dumps map[string][]subjects.DumpEntry) convergence {
	byNode := map[string]map[string]subjects.DumpEntry{}
	keys := map[string]bool{}
	for node, es := range dumps {
		m := map[string]subjects.DumpEntry{}
		for _, e := range es {
			m[e.Key] = e
			keys[e.Key] = true
		}
		byNode[node] = m
	}
	var c convergence
	for _, k := range sortedKeys(keys) {
		c.Keys++
		prefs := rg.PreferenceList(tenant, k, rf, nil)
		var (
			ref     string
			refNode string
			differs []string
		)
		for i, node := range prefs {
			m, ok := byNode[node]
			if !ok {
				differs = append(differs, node+": no dump")
				continue
			}
			e, has := m[k]
			d := describe(policy, e, has)
			if i == 0 {
				ref, refNode = d, node
				continue
			}
			if d != ref {
				differs = append(differs, fmt.Sprintf("%s holds %s", node, d))
			}
		}
		if len(differs) > 0 {
			c.Divergent++
			c.Details = appendCapped(c.Details, fmt.Sprintf("%s: %s holds %s; %s", k, refNode, ref, strings.Join(differs, "; ")))
		}
	}
	return c
}

// Causes of divergence that divergenceCauses tells apart.
const (
	causeLWWUnacked     = "lww: a write that failed its level reached only some replicas"
	causeLWWAcked       = "lww: an acknowledged write is missing on a replica"
	causeLWWOther       = "lww: a replica holds an older version of a key no workload wrote"
	causeDVVDuplicate   = "siblings: a replica lacks a dot whose value it holds under another dot (one write applied twice)"
	causeDVVUnacked     = "siblings: a write that was never acknowledged reached only some replicas"
	causeDVVAcked       = "siblings: a replica lacks an acknowledged element"
	causeDVVBehindClock = "siblings: a replica has not seen another's discards"
)

// divergenceCauses sorts the divergent keys of one tenant by why their
// primaries differ, so the report can tell a lost hint (an acknowledged
// lww write missing on a replica once repair drained) from what the design
// leaves to read repair: writes that failed their level yet landed
// somewhere, and siblings writes applied by two coordinating replicas.
func divergenceCauses(policy, tenant string, rf int, rg *ring.Map, dumps map[string][]subjects.DumpEntry, lww map[string]*lwwHistory, set setHistory) map[string]int {
	counts, _ := divergenceCausesWithKeys(policy, tenant, rf, rg, dumps, lww, set)
	return counts
}

// divergenceCausesWithKeys is divergenceCauses plus, per cause, the first
// keys it applies to.
func divergenceCausesWithKeys(policy, tenant string, rf int, rg *ring.Map, dumps map[string][]subjects.DumpEntry, lww map[string]*lwwHistory, set setHistory) (map[string]int, map[string][]string) {
	byNode := map[string]map[string]subjects.DumpEntry{}
	keys := map[string]bool{}
	for node, es := range dumps {
		m := map[string]subjects.DumpEntry{}
		for _, e := range es {
			m[e.Key] = e
			keys[e.Key] = true
		}
		byNode[node] = m
	}
	out, examples := map[string]int{}, map[string][]string{}
	note := func(cause, key string) {
		out[cause]++
		if len(examples[cause]) < 5 {
			examples[cause] = append(examples[cause], key)
		}
	}
	for _, k := range sortedKeys(keys) {
		prefs := rg.PreferenceList(tenant, k, rf, nil)
		if policy == subjects.PolicySiblings {
			if cause := dvvCause(k, prefs, byNode, set[k]); cause != "" {
				note(cause, k)
			}
			continue
		}
		var newest *subjects.DumpEntry
		differ := false
		for _, node := range prefs {
			e, ok := byNode[node][k]
			if !ok {
				differ = true
				continue
			}
			if newest != nil && (e.Counter != newest.Counter || e.Actor != newest.Actor) {
				differ = true
			}
			if newest == nil || e.Counter > newest.Counter || (e.Counter == newest.Counter && e.Actor > newest.Actor) {
				newest = &e
			}
		}
		if !differ || newest == nil {
			continue
		}
		seq, err := strconv.Atoi(string(newest.Value))
		switch h := lww[k]; {
		case h == nil || err != nil:
			note(causeLWWOther, k)
		case h.Acked[seq]:
			note(causeLWWAcked, k)
		default:
			note(causeLWWUnacked, k)
		}
	}
	return out, examples
}

// dvvCause names why the primaries of key differ under siblings, or "".
// Values are set-workload sets: a value a replica lacks is judged by the
// elements it would add there, acknowledged (by elems) or not.
func dvvCause(key string, prefs []string, byNode map[string]map[string]subjects.DumpEntry, elems map[string]bool) string {
	type dot struct {
		actor   string
		counter uint64
	}
	live := map[dot][]byte{}
	clocks := map[string]map[string]uint64{} // node → actor → counter
	values := map[string]map[string]bool{}   // node → live values
	members := map[string]map[string]bool{}  // node → union of its live values
	for _, node := range prefs {
		clocks[node], values[node], members[node] = map[string]uint64{}, map[string]bool{}, map[string]bool{}
		e, ok := byNode[node][key]
		if !ok || e.DVV == nil {
			continue
		}
		for _, en := range e.DVV.Entries {
			clocks[node][en.Actor] = en.Counter
			for i, v := range en.Values {
				live[dot{en.Actor, en.Counter - uint64(i)}] = v.Data
				values[node][string(v.Data)] = true
				for _, el := range strings.Split(string(v.Data), ",") {
					members[node][el] = true
				}
			}
		}
	}
	missing, duplicate, acked, behind := false, true, false, false
	for _, node := range prefs {
		for d, v := range live {
			if clocks[node][d.actor] >= d.counter {
				continue // seen: live there too, or discarded by a write it saw
			}
			missing = true
			if values[node][string(v)] {
				continue
			}
			duplicate = false
			for _, el := range strings.Split(string(v), ",") {
				if !members[node][el] && elems[el] {
					acked = true
				}
			}
		}
		for other := range clocks {
			for a, n := range clocks[other] {
				if clocks[node][a] < n {
					behind = true
				}
			}
		}
	}
	switch {
	case missing && duplicate:
		return causeDVVDuplicate
	case missing && acked:
		return causeDVVAcked
	case missing:
		return causeDVVUnacked
	case behind:
		return causeDVVBehindClock
	}
	return ""
}

// describe renders what one replica holds for a key, canonically, so
// that equal strings mean identical version sets.
func describe(policy string, e subjects.DumpEntry, present bool) string {
	if !present {
		return "nothing"
	}
	if policy == subjects.PolicySiblings {
		if e.DVV == nil {
			return "an entry without a DVVSet"
		}
		return describeDVV(*e.DVV)
	}
	return fmt.Sprintf("lww{%d@%s tomb=%v %q}", e.Counter, e.Actor, e.Tombstone, abbreviate(e.Value))
}

func describeDVV(s vclock.DVVSet) string {
	var b strings.Builder
	b.WriteString("dvv{")
	for i, en := range s.Entries {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s:%d[", en.Actor, en.Counter)
		for j, v := range en.Values {
			if j > 0 {
				b.WriteString(",")
			}
			if v.Tombstone {
				b.WriteString("tomb")
			} else {
				fmt.Fprintf(&b, "%q", abbreviate(v.Data))
			}
		}
		b.WriteString("]")
	}
	b.WriteString("}")
	return b.String()
}

// abbreviate keeps long values readable but still distinct: the length,
// both ends and a checksum.
func abbreviate(v []byte) string {
	if len(v) <= 48 {
		return string(v)
	}
	var sum uint32
	for _, c := range v {
		sum = sum*31 + uint32(c)
	}
	return fmt.Sprintf("%s…%s(%dB,%08x)", v[:16], v[len(v)-16:], len(v), sum)
}

// ---- helpers ----

const maxDetails = 20

func appendCapped(s []string, v string) []string {
	if len(s) < maxDetails {
		return append(s, v)
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- the checkers' own tests: each must be able to fail ----

func TestCheckSetFindsLostAndPhantomElements(t *testing.T) {
	h := setHistory{}
	h.add("k", "a", true)
	h.add("k", "b", true)
	h.add("k", "c", false) // failed, but landed
	h.add("k", "d", false) // failed, absent
	h.add("k", "b", false) // a failed retry does not undo the ack
	final := map[string]map[string]bool{"k": {"a": true, "c": true, "zz": true}}
	r := checkSet(h, final)
	if r.Attempted != 4 || r.Acknowledged != 2 || r.Lost != 1 || r.UnexpectedlyPresent != 1 || r.Unacknowledged != 1 || r.Phantoms != 1 {
		t.Fatalf("%+v", r)
	}
	if len(r.LostElements) != 1 || r.LostElements[0] != "k/b" || r.PhantomElements[0] != "k/zz" {
		t.Fatalf("%+v", r)
	}
	if ok := checkSet(h, map[string]map[string]bool{"k": {"a": true, "b": true}}); ok.Lost != 0 || ok.Phantoms != 0 {
		t.Fatalf("a complete final read: %+v", ok)
	}
}

func TestUnionOfSiblings(t *testing.T) {
	g := &client.GetResult{Found: true, Value: []byte("a,b"), Siblings: [][]byte{[]byte("a,b"), []byte("c"), {}}}
	if got := string(encodeSet(unionOf(g))); got != "a,b,c" {
		t.Fatalf("union %q", got)
	}
	if len(unionOf(&client.GetResult{Found: false, Value: []byte("x")})) != 0 {
		t.Fatal("a not-found read has elements")
	}
}

func TestCheckLWW(t *testing.T) {
	h := map[string]*lwwHistory{"a": {}, "b": {}, "c": {}, "d": {}, "e": {}}
	for k, kh := range h {
		kh.add(1, true)
		kh.add(2, false)
		kh.add(3, true)
		_ = k
	}
	final := map[string]lwwFinal{
		"a": {Found: true, Value: "3"}, // the last acknowledged: fine
		"b": {Found: true, Value: "2"}, // indeterminate, may land last: fine
		"c": {Found: true, Value: "1"}, // older acknowledged: lost
		"d": {Found: false},            // lost
		"e": {Found: true, Value: "9"}, // never written
	}
	r := checkLWW(h, final)
	if r.Keys != 5 || r.Lost != 2 || r.Indeterminate != 1 || r.Phantoms != 1 || r.Acknowledged != 10 || r.Attempted != 15 {
		t.Fatalf("%+v", r)
	}
}

func TestCheckConvergence(t *testing.T) {
	rg := threeNodeMap(t)
	var s1, s2 vclock.DVVSet
	s1, _, _ = vclock.Update(s1, nil, "n1.1", vclock.Value{Data: []byte("x")})
	s2, _, _ = vclock.Update(s1, nil, "n2.1", vclock.Value{Data: []byte("y")}) // s1 plus a sibling
	same := func(st vclock.DVVSet) []subjects.DumpEntry {
		return []subjects.DumpEntry{{Key: "k", DVV: &st}, {Key: "other", DVV: &s1}}
	}
	ok := map[string][]subjects.DumpEntry{"n1": same(s2), "n2": same(s2), "n3": same(s2)}
	if c := checkConvergence(subjects.PolicySiblings, "t", 3, rg, ok); c.Divergent != 0 || c.Keys != 2 {
		t.Fatalf("identical replicas: %+v", c)
	}
	missingSibling := map[string][]subjects.DumpEntry{"n1": same(s2), "n2": same(s1), "n3": same(s2)}
	if c := checkConvergence(subjects.PolicySiblings, "t", 3, rg, missingSibling); c.Divergent != 1 {
		t.Fatalf("a replica without a sibling: %+v", c)
	}
	missingKey := map[string][]subjects.DumpEntry{"n1": same(s2), "n2": same(s2), "n3": same(s2)[1:]}
	if c := checkConvergence(subjects.PolicySiblings, "t", 3, rg, missingKey); c.Divergent != 1 {
		t.Fatalf("a replica without the key: %+v", c)
	}
	lww := func(counter uint64, v string) []subjects.DumpEntry {
		return []subjects.DumpEntry{{Key: "k", Counter: counter, Actor: "c1", Value: []byte(v)}}
	}
	if c := checkConvergence(subjects.PolicyLWW, "t", 3, rg, map[string][]subjects.DumpEntry{"n1": lww(5, "a"), "n2": lww(5, "a"), "n3": lww(4, "b")}); c.Divergent != 1 {
		t.Fatalf("an lww replica behind: %+v", c)
	}
	if c := checkConvergence(subjects.PolicyLWW, "t", 3, rg, map[string][]subjects.DumpEntry{"n1": lww(5, "a"), "n2": lww(5, "a"), "n3": lww(5, "a")}); c.Divergent != 0 {
		t.Fatalf("identical lww replicas: %+v", c)
	}
	long1, long2 := bytes.Repeat([]byte("a"), 100), append(bytes.Repeat([]byte("a"), 99), 'b')
	if abbreviate(long1) == abbreviate(long2) {
		t.Fatal("abbreviate hides a difference")
	}
}

func TestDivergenceCauses(t *testing.T) {
	rg := threeNodeMap(t)
	lww := func(counter uint64, v string) subjects.DumpEntry {
		return subjects.DumpEntry{Key: "k", Counter: counter, Actor: "c1", Value: []byte(v)}
	}
	h := &lwwHistory{}
	h.add(1, true)
	h.add(2, false)
	h.add(3, true)
	for _, tc := range []struct {
		newest subjects.DumpEntry
		want   string
	}{{lww(2, "2"), causeLWWUnacked}, {lww(3, "3"), causeLWWAcked}} {
		dumps := map[string][]subjects.DumpEntry{"n1": {tc.newest}, "n2": {lww(1, "1")}, "n3": {tc.newest}}
		if got := divergenceCauses(subjects.PolicyLWW, "t", 3, rg, dumps, map[string]*lwwHistory{"k": h}, nil); got[tc.want] != 1 || len(got) != 1 {
			t.Errorf("newest %q: %v, want %q", tc.newest.Value, got, tc.want)
		}
	}
	var base vclock.DVVSet
	base, _, _ = vclock.Update(base, nil, "n2.1", vclock.Value{Data: []byte("v")})
	twice, _, _ := vclock.Update(base, nil, "n1.1", vclock.Value{Data: []byte("v")}) // the same value under a second dot
	failed, _, _ := vclock.Update(base, nil, "n1.1", vclock.Value{Data: []byte("v,f")})
	lost, _, _ := vclock.Update(base, nil, "n1.1", vclock.Value{Data: []byte("v,a")})
	set := setHistory{}
	set.add("k", "v", true)
	set.add("k", "a", true)
	set.add("k", "f", false)
	dvv := func(s vclock.DVVSet) []subjects.DumpEntry { return []subjects.DumpEntry{{Key: "k", DVV: &s}} }
	for _, tc := range []struct {
		odd  vclock.DVVSet
		want string
	}{{twice, causeDVVDuplicate}, {failed, causeDVVUnacked}, {lost, causeDVVAcked}} {
		dumps := map[string][]subjects.DumpEntry{"n1": dvv(tc.odd), "n2": dvv(base), "n3": dvv(base)}
		if got := divergenceCauses(subjects.PolicySiblings, "t", 3, rg, dumps, nil, set); got[tc.want] != 1 || len(got) != 1 {
			t.Errorf("%v, want %q", got, tc.want)
		}
	}
	same := map[string][]subjects.DumpEntry{"n1": dvv(base), "n2": dvv(base), "n3": dvv(base)}
	if got := divergenceCauses(subjects.PolicySiblings, "t", 3, rg, same, nil, set); len(got) != 0 {
		t.Errorf("identical replicas: %v", got)
	}
}

func TestRegressions(t *testing.T) {
	var s1, s2 vclock.DVVSet
	s1, _, _ = vclock.Update(s1, nil, "n1.1", vclock.Value{Data: []byte("x")})
	s2, _, _ = vclock.Update(s1, nil, "n1.1", vclock.Value{Data: []byte("y")})
	before := []subjects.DumpEntry{{Key: "a", Counter: 5, Actor: "c"}, {Key: "b", Counter: 5, Actor: "c"}, {Key: "c", DVV: &s2}, {Key: "d", Counter: 1, Actor: "c"}}
	after := []subjects.DumpEntry{{Key: "a", Counter: 6, Actor: "c"}, {Key: "b", Counter: 4, Actor: "c"}, {Key: "c", DVV: &s1}}
	got := regressions(before, after)
	if len(got) != 3 || !strings.HasPrefix(got[0], "b:") || !strings.HasPrefix(got[1], "c:") || !strings.HasPrefix(got[2], "d:") {
		t.Fatalf("%q", got)
	}
	if got := regressions(before, before); len(got) != 0 {
		t.Fatalf("unchanged: %q", got)
	}
}

// threeNodeMap is a placement map of nodes n1, n2 and n3, so that every
// key's RF-3 preference list names all three.
func threeNodeMap(t *testing.T) *ring.Map {
	t.Helper()
	m, err := ring.Claim(nil, []ring.Node{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}, 64)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
