package ring

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// refPreferenceList is a deliberately naive model of the ring: it rebuilds
// every point with string concatenation, sorts by (hash, ID), scans linearly
// for the start and walks at most one lap.
func refPreferenceList(members []Member, h uint64, n int) []string {
	byID := map[string]Member{}
	for _, m := range members {
		if m.ID != "" {
			byID[m.ID] = m
		}
	}
	type pt struct {
		h  uint64
		id string
	}
	var pts []pt
	for id, m := range byID {
		if !m.Active {
			continue
		}
		v := m.VirtualNodes
		if v <= 0 {
			v = DefaultVirtualNodes
		}
		for i := 0; i < v; i++ {
			pts = append(pts, pt{xxhash.Sum64String(id + "#" + strconv.Itoa(i)), id})
		}
	}
	sort.Slice(pts, func(a, b int) bool {
		if pts[a].h != pts[b].h {
			return pts[a].h < pts[b].h
		}
		return pts[a].id < pts[b].id
	})
	start := 0
	for start < len(pts) && pts[start].h < h {
		start++
	}
	var out []string
	for step := 0; step < len(pts) && len(out) < n; step++ {
		id := pts[(start+step)%len(pts)].id
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

func nodes(k, vnodes int) []Member {
	ms := make([]Member, k)
	for i := range ms {
		ms[i] = Member{ID: fmt.Sprintf("node-%d", i+1), VirtualNodes: vnodes, Active: true}
	}
	return ms
}

const numKeys = 100_000

// keyHashes returns the hashes of "key-0".."key-99999" in tenant "default".
func keyHashes() []uint64 {
	hs := make([]uint64, numKeys)
	for i := range hs {
		hs[i] = KeyHash("default", "key-"+strconv.Itoa(i))
	}
	return hs
}

// lists returns the n-entry preference list of every key hash.
func lists(r *Ring, hs []uint64, n int) [][]string {
	out := make([][]string, len(hs))
	for i, h := range hs {
		out[i] = r.PreferenceListHash(h, n, nil)
	}
	return out
}

func TestKeyHash(t *testing.T) {
	// Golden values: KeyHash is part of the cluster protocol.
	golden := []struct {
		tenant, key string
		want        uint64
	}{
		{"", "", 0xe934a84adb052768},
		{"default", "key-0", 0x0b5fb5ff6e0f7b25},
		{"default", "user:42", 0x3d1dfe079962b46d},
	}
	for _, g := range golden {
		if got := KeyHash(g.tenant, g.key); got != g.want {
			t.Errorf("KeyHash(%q, %q) = %#x, want %#x", g.tenant, g.key, got, g.want)
		}
	}

	// Both the stack-buffer and the streaming path equal the definition,
	// around the switch-over length and across xxhash's 32-byte blocks.
	for _, tl := range []int{0, 1, 7, 31, 32, 100, 254, 255, 256, 300} {
		for _, kl := range []int{0, 1, 31, 32, 33, 254 - tl, 255 - tl, 256 - tl, 1000} {
			if kl < 0 {
				continue
			}
			tenant, key := strings.Repeat("t", tl), strings.Repeat("k", kl)
			want := xxhash.Sum64String(tenant + "\x00" + key)
			if got := KeyHash(tenant, key); got != want {
				t.Errorf("KeyHash(len %d, len %d) = %#x, want %#x", tl, kl, got, want)
			}
		}
	}

	// The separator keeps tenants apart.
	if KeyHash("ab", "c") == KeyHash("a", "bc") {
		t.Error(`KeyHash("ab", "c") == KeyHash("a", "bc")`)
	}
}

func TestPointPlacement(t *testing.T) {
	ms := []Member{
		{ID: "b", VirtualNodes: 3, Active: true},
		{ID: "a", VirtualNodes: 12, Active: true},
		{ID: "c", VirtualNodes: 5, Active: false},
	}
	r := New(ms)
	type pt struct {
		h  uint64
		id string
	}
	var want []pt
	for _, m := range ms[:2] {
		for i := 0; i < m.VirtualNodes; i++ {
			want = append(want, pt{xxhash.Sum64String(m.ID + "#" + strconv.Itoa(i)), m.ID})
		}
	}
	sort.Slice(want, func(a, b int) bool { return want[a].h < want[b].h })
	if len(r.points) != len(want) || len(r.owners) != len(want) {
		t.Fatalf("got %d points, %d owners, want %d", len(r.points), len(r.owners), len(want))
	}
	for i, w := range want {
		if r.points[i] != w.h || r.active[r.owners[i]] != w.id {
			t.Errorf("point %d = (%#x, %s), want (%#x, %s)", i, r.points[i], r.active[r.owners[i]], w.h, w.id)
		}
	}
}

func TestGoldenPreferenceLists(t *testing.T) {
	// Pins the placement rule end to end; a change here breaks mixed-version
	// clusters.
	r := New(nodes(5, 0))
	golden := map[string][]string{
		"key-0":   {"node-1", "node-5", "node-4"},
		"key-1":   {"node-4", "node-5", "node-2"},
		"key-2":   {"node-4", "node-1", "node-5"},
		"user:42": {"node-1", "node-3", "node-5"},
	}
	for key, want := range golden {
		if got := r.PreferenceList("default", key, 3, nil); !slices.Equal(got, want) {
			t.Errorf("PreferenceList(default, %s) = %v, want %v", key, got, want)
		}
	}
}

func TestPreferenceListTable(t *testing.T) {
	five := nodes(5, 16)
	mixed := []Member{
		{ID: "a", VirtualNodes: 8, Active: true},
		{ID: "b", VirtualNodes: 8, Active: false},
		{ID: "c", VirtualNodes: 8, Active: true},
		{ID: "", VirtualNodes: 8, Active: true},
	}
	tests := []struct {
		name    string
		members []Member
		n       int
		wantLen int
		banned  []string // must never appear
	}{
		{"nil ring", nil, 3, 0, nil},
		{"empty IDs only", []Member{{ID: "", Active: true}}, 3, 0, []string{""}},
		{"all inactive", []Member{{ID: "a"}, {ID: "b"}}, 3, 0, []string{"a", "b"}},
		{"n zero", five, 0, 0, nil},
		{"n negative", five, -1, 0, nil},
		{"n min int", five, math.MinInt, 0, nil},
		{"n one", five, 1, 1, nil},
		{"n three", five, 3, 3, nil},
		{"n equals active", five, 5, 5, nil},
		{"n above active", five, 6, 5, nil},
		{"n max int", five, math.MaxInt, 5, nil},
		{"single member", []Member{{ID: "x", Active: true}}, 3, 1, nil},
		{"single vnode", []Member{{ID: "x", VirtualNodes: 1, Active: true}}, 3, 1, nil},
		{"inactive and empty skipped", mixed, 3, 2, []string{"b", ""}},
		{"duplicate last inactive", []Member{{ID: "a", Active: true}, {ID: "b", Active: true}, {ID: "a"}}, 3, 1, []string{"a"}},
		{"duplicate last active", []Member{{ID: "a"}, {ID: "b", Active: true}, {ID: "a", Active: true}}, 3, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(tt.members)
			for k := range 200 {
				key := "k" + strconv.Itoa(k)
				// dst with stale content and spare capacity.
				dst := []string{"stale", "stale", "stale", "stale", "stale", "stale", "stale"}
				got := r.PreferenceList("t", key, tt.n, dst)
				if len(got) != tt.wantLen {
					t.Fatalf("key %s: got %v (len %d), want len %d", key, got, len(got), tt.wantLen)
				}
				checkList(t, r, got)
				for _, b := range tt.banned {
					if slices.Contains(got, b) {
						t.Fatalf("key %s: %v contains %q", key, got, b)
					}
				}
				if len(got) > 0 && &got[0] != &dst[0] {
					t.Fatalf("key %s: result does not reuse dst", key)
				}
				if want := refPreferenceList(tt.members, KeyHash("t", key), tt.n); !slices.Equal(got, want) {
					t.Fatalf("key %s: got %v, reference %v", key, got, want)
				}
			}
		})
	}
}

// checkList asserts the invariants every preference list must satisfy
// except its length.
func checkList(t testing.TB, r *Ring, got []string) {
	t.Helper()
	active := map[string]bool{}
	for _, m := range r.Members() {
		active[m.ID] = m.Active
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("%v: duplicate %q", got, id)
		}
		seen[id] = true
		if !active[id] {
			t.Fatalf("%v: %q is not an active member", got, id)
		}
	}
}

func TestDistribution(t *testing.T) {
	r := New(nodes(5, DefaultVirtualNodes))
	counts := map[string]int{}
	for _, h := range keyHashes() {
		counts[r.PreferenceListHash(h, 1, nil)[0]]++
	}
	mean := float64(numKeys) / 5
	for i := 1; i <= 5; i++ {
		id := fmt.Sprintf("node-%d", i)
		dev := (float64(counts[id]) - mean) / mean
		t.Logf("%s: %d keys (%+.1f%%)", id, counts[id], 100*dev)
		if math.Abs(dev) > 0.15 {
			t.Errorf("%s owns %d keys, more than 15%% from the mean %.0f", id, counts[id], mean)
		}
	}
}

func TestAddMember(t *testing.T) {
	hs := keyHashes()
	before := lists(New(nodes(5, 0)), hs, 3)
	after := lists(New(nodes(6, 0)), hs, 3)

	moved := 0
	for i := range hs {
		old, cur := before[i], after[i]
		if old[0] != cur[0] {
			moved++
			if cur[0] != "node-6" {
				t.Fatalf("key-%d: primary moved %s -> %s, not to node-6", i, old[0], cur[0])
			}
		}
		// cur must be old with node-6 inserted somewhere (last dropped),
		// or old unchanged.
		j := slices.Index(cur, "node-6")
		want := old
		if j >= 0 {
			want = slices.Insert(slices.Clone(old), j, "node-6")[:3]
		}
		if !slices.Equal(cur, want) {
			t.Fatalf("key-%d: list %v -> %v reshuffles old members", i, old, cur)
		}
	}
	limit := 1.25 * numKeys / 6
	t.Logf("moved %d of %d primaries (limit %.0f, ideal %.0f)", moved, numKeys, limit, float64(numKeys)/6)
	if float64(moved) > limit {
		t.Errorf("moved %d primaries, more than %.0f", moved, limit)
	}
	if moved == 0 {
		t.Error("node-6 took no keys")
	}
}

func TestDeactivateMember(t *testing.T) {
	hs := keyHashes()
	ms := nodes(5, 0)
	before := lists(New(ms), hs, 3)
	ms[2].Active = false // node-3
	r := New(ms)
	after := lists(r, hs, 3)
	if r.Len() != 5 || r.ActiveCount() != 4 || !r.Owns("node-3") {
		t.Fatalf("Len %d ActiveCount %d Owns(node-3) %v", r.Len(), r.ActiveCount(), r.Owns("node-3"))
	}

	moved := 0
	for i := range hs {
		old, cur := before[i], after[i]
		if slices.Contains(cur, "node-3") {
			t.Fatalf("key-%d: inactive node-3 in %v", i, cur)
		}
		if old[0] == "node-3" {
			moved++
			if cur[0] != old[1] {
				t.Fatalf("key-%d: primary node-3 went to %s, want next clockwise %s", i, cur[0], old[1])
			}
		} else if cur[0] != old[0] {
			t.Fatalf("key-%d: primary changed %s -> %s though node-3 did not own it", i, old[0], cur[0])
		}
		// More strongly: the list is the old one without node-3.
		want := slices.DeleteFunc(slices.Clone(old), func(s string) bool { return s == "node-3" })
		if !slices.Equal(cur[:len(want)], want) {
			t.Fatalf("key-%d: list %v -> %v", i, old, cur)
		}
	}
	if moved == 0 {
		t.Error("node-3 owned no keys")
	}
}

func TestOrderIndependence(t *testing.T) {
	base := []Member{
		{ID: "node-1", Active: true},
		{ID: "node-2", VirtualNodes: 7, Active: true},
		{ID: "node-3", VirtualNodes: 64, Active: false},
		{ID: "node-4", VirtualNodes: 200, Active: true},
		{ID: "n", VirtualNodes: 1, Active: true},
		{ID: "node-10", Active: true},
	}
	ref := New(base)
	hs := keyHashes()[:5000]
	want := lists(ref, hs, 4)
	rng := rand.New(rand.NewPCG(1, 2))
	perms := [][]Member{slices.Clone(base)}
	slices.Reverse(perms[0])
	for range 20 {
		p := slices.Clone(base)
		rng.Shuffle(len(p), func(i, j int) { p[i], p[j] = p[j], p[i] })
		perms = append(perms, p)
	}
	for _, p := range perms {
		r := New(p)
		if !slices.Equal(r.points, ref.points) || !slices.Equal(r.owners, ref.owners) ||
			!slices.Equal(r.Members(), ref.Members()) {
			t.Fatalf("ring from %v differs from ring from %v", p, base)
		}
		if got := lists(r, hs, 4); !slices.EqualFunc(got, want, slices.Equal) {
			t.Fatalf("preference lists from %v differ", p)
		}
	}
}

func TestHashTiesBrokenByID(t *testing.T) {
	// Every member's i-th point lands on the same hash i.
	sameForAll := func(b []byte) uint64 {
		i, err := strconv.Atoi(string(b[strings.LastIndexByte(string(b), '#')+1:]))
		if err != nil {
			panic(err)
		}
		return uint64(i) << 40
	}
	// Every point of every member lands on one hash.
	constant := func([]byte) uint64 { return 42 }

	for _, ms := range [][]Member{
		{{ID: "c", Active: true}, {ID: "a", Active: true}, {ID: "b", Active: true}},
		{{ID: "b", Active: true}, {ID: "c", Active: true}, {ID: "a", Active: true}},
		{{ID: "a", Active: true}, {ID: "b", Active: true}, {ID: "c", Active: true}},
	} {
		for name, fn := range map[string]func([]byte) uint64{"same": sameForAll, "constant": constant} {
			r := newRing(ms, fn)
			for _, h := range []uint64{0, 1, 42, 43, 5 << 40, 5<<40 + 1, math.MaxUint64} {
				if got := r.PreferenceListHash(h, 3, nil); !slices.Equal(got, []string{"a", "b", "c"}) {
					t.Errorf("%s %v: h=%#x: got %v, want [a b c]", name, ms, h, got)
				}
			}
			sh := r.Shares()
			if sh["a"] != 1 || sh["b"] != 0 || sh["c"] != 0 || len(sh) != 3 {
				t.Errorf("%s %v: Shares = %v, want a:1 b:0 c:0", name, ms, sh)
			}
		}
	}
}

func TestLookupBoundaries(t *testing.T) {
	r := New(nodes(4, 8))
	p := r.points
	owner := func(i int) string { return r.active[r.owners[i%len(p)]] }
	primary := func(h uint64) string { return r.PreferenceListHash(h, 1, nil)[0] }
	for i := range p {
		// A hash equal to a point belongs to that point; one past it to the
		// next point clockwise.
		if got := primary(p[i]); got != owner(i) {
			t.Errorf("h = point %d: got %s, want %s", i, got, owner(i))
		}
		if p[i] != math.MaxUint64 {
			if got := primary(p[i] + 1); got != owner(i+1) {
				t.Errorf("h = point %d + 1: got %s, want %s", i, got, owner(i+1))
			}
		}
	}
	if got := primary(0); got != owner(0) {
		t.Errorf("h = 0: got %s, want %s", got, owner(0))
	}
	if got := primary(math.MaxUint64); got != owner(0) {
		t.Errorf("h = max: got %s, want wrap to %s", got, owner(0))
	}
}

func TestShares(t *testing.T) {
	t.Run("empty", func(t *testing.T) {
		for _, ms := range [][]Member{nil, {{ID: "a"}}} {
			if sh := New(ms).Shares(); len(sh) != 0 {
				t.Errorf("Shares of %v = %v, want empty", ms, sh)
			}
		}
	})
	t.Run("single", func(t *testing.T) {
		for _, v := range []int{1, 2, 128} {
			sh := New([]Member{{ID: "a", VirtualNodes: v, Active: true}, {ID: "b"}}).Shares()
			if len(sh) != 1 || sh["a"] != 1 {
				t.Errorf("vnodes %d: Shares = %v, want a:1", v, sh)
			}
		}
	})
	t.Run("exact arcs", func(t *testing.T) {
		// With few points, compute each member's arcs exactly with big
		// integers from independently built points: a hash h belongs to the
		// first point >= h, so point i owns (p[i-1], p[i]], wrapping.
		for _, ms := range [][]Member{
			{{ID: "a", VirtualNodes: 1, Active: true}, {ID: "b", VirtualNodes: 1, Active: true}},
			{{ID: "a", VirtualNodes: 2, Active: true}, {ID: "b", VirtualNodes: 3, Active: true}, {ID: "c", VirtualNodes: 1, Active: true}},
			{{ID: "x", VirtualNodes: 5, Active: true}, {ID: "y", VirtualNodes: 1, Active: true}, {ID: "z", VirtualNodes: 4}},
		} {
			type pt struct {
				h  uint64
				id string
			}
			var pts []pt
			for _, m := range ms {
				for i := 0; m.Active && i < m.VirtualNodes; i++ {
					pts = append(pts, pt{xxhash.Sum64String(m.ID + "#" + strconv.Itoa(i)), m.ID})
				}
			}
			sort.Slice(pts, func(a, b int) bool { return pts[a].h < pts[b].h })
			space := new(big.Int).Lsh(big.NewInt(1), 64)
			arcs := map[string]*big.Int{}
			for i, p := range pts {
				prev := new(big.Int).SetUint64(pts[(i+len(pts)-1)%len(pts)].h)
				arc := new(big.Int).Sub(new(big.Int).SetUint64(p.h), prev)
				if arc.Sign() <= 0 {
					arc.Add(arc, space)
				}
				if arcs[p.id] == nil {
					arcs[p.id] = new(big.Int)
				}
				arcs[p.id].Add(arcs[p.id], arc)
			}
			got := New(ms).Shares()
			if len(got) != len(arcs) {
				t.Fatalf("%v: Shares = %v, want %d entries", ms, got, len(arcs))
			}
			for id, arc := range arcs {
				want, _ := new(big.Rat).SetFrac(arc, space).Float64()
				if math.Abs(got[id]-want) > 1e-15 {
					t.Errorf("%v: share[%s] = %v, want %v", ms, id, got[id], want)
				}
			}
		}
	})
	t.Run("matches keys", func(t *testing.T) {
		ms := nodes(5, 0)
		ms[3].Active = false
		ms[4].VirtualNodes = 512 // should get about 4x the others' share
		r := New(ms)
		sh := r.Shares()
		if len(sh) != 4 {
			t.Fatalf("Shares = %v, want 4 active members", sh)
		}
		if _, ok := sh["node-4"]; ok {
			t.Fatalf("Shares = %v includes inactive node-4", sh)
		}
		sum := 0.0
		for _, s := range sh {
			sum += s
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Errorf("shares sum to %v", sum)
		}
		counts := map[string]int{}
		for _, h := range keyHashes() {
			counts[r.PreferenceListHash(h, 1, nil)[0]]++
		}
		// The keys sample the hash space; 100k keys put the standard error
		// below 0.0016, so 0.01 is a generous bound for a fixed key set.
		for id, s := range sh {
			obs := float64(counts[id]) / numKeys
			t.Logf("%s: share %.4f, observed %.4f", id, s, obs)
			if math.Abs(obs-s) > 0.01 {
				t.Errorf("%s: share %.4f but owns %.4f of keys", id, s, obs)
			}
		}
		if sh["node-5"] < 0.5 {
			t.Errorf("node-5 with 4x the vnodes has share %.3f", sh["node-5"])
		}
	})
}

func TestMembersAndCounts(t *testing.T) {
	in := []Member{
		{ID: "z", VirtualNodes: 3, Active: true},
		{ID: "", VirtualNodes: 3, Active: true},
		{ID: "a", VirtualNodes: -5},
		{ID: "m", VirtualNodes: 0, Active: true},
		{ID: "z", VirtualNodes: 9, Active: false}, // wins over the first z
	}
	r := New(in)
	want := []Member{
		{ID: "a", VirtualNodes: DefaultVirtualNodes},
		{ID: "m", VirtualNodes: DefaultVirtualNodes, Active: true},
		{ID: "z", VirtualNodes: 9},
	}
	if got := r.Members(); !slices.Equal(got, want) {
		t.Fatalf("Members() = %v, want %v", got, want)
	}
	if r.Len() != 3 || r.ActiveCount() != 1 {
		t.Errorf("Len %d ActiveCount %d, want 3 1", r.Len(), r.ActiveCount())
	}
	for id, want := range map[string]bool{"a": true, "m": true, "z": true, "": false, "b": false, "zz": false} {
		if got := r.Owns(id); got != want {
			t.Errorf("Owns(%q) = %v, want %v", id, got, want)
		}
	}

	// Neither the input nor the returned copy aliases the ring.
	in[3].Active = false
	got := r.Members()
	got[0].ID = "changed"
	if !slices.Equal(r.Members(), want) || r.ActiveCount() != 1 {
		t.Errorf("ring changed through an alias: %v", r.Members())
	}

	empty := New(nil)
	if empty.Len() != 0 || empty.ActiveCount() != 0 || empty.Owns("") || len(empty.Members()) != 0 {
		t.Errorf("empty ring: Len %d ActiveCount %d Members %v", empty.Len(), empty.ActiveCount(), empty.Members())
	}
}

func TestManyMembers(t *testing.T) {
	// More than 256 active members takes the non-bitset path.
	ms := make([]Member, 300)
	for i := range ms {
		ms[i] = Member{ID: "m" + strconv.Itoa(i), VirtualNodes: 2, Active: i%7 != 0}
	}
	r := New(ms)
	if r.ActiveCount() <= 256 {
		t.Fatalf("ActiveCount %d, want > 256", r.ActiveCount())
	}
	for k := range 50 {
		h := KeyHash("t", strconv.Itoa(k))
		for _, n := range []int{1, 3, 256, 257, r.ActiveCount(), 1000} {
			got := r.PreferenceListHash(h, n, nil)
			if len(got) != min(n, r.ActiveCount()) {
				t.Fatalf("n=%d: len %d", n, len(got))
			}
			checkList(t, r, got)
			if want := refPreferenceList(ms, h, n); !slices.Equal(got, want) {
				t.Fatalf("n=%d: got %v, reference %v", n, got, want)
			}
		}
	}
}

// TestAllocs counts allocations, which are deterministic: a lookup runs
// for every request on every coordinator, and the ring's contract is that
// it allocates nothing into a caller's buffer, so an allocation is a broken
// contract (a bug), not a slowdown.
func TestAllocs(t *testing.T) {
	long := strings.Repeat("x", 1000)
	for _, c := range []struct{ tenant, key string }{{"default", "key-1"}, {long, long}} {
		if a := testing.AllocsPerRun(100, func() { _ = KeyHash(c.tenant, c.key) }); a != 0 {
			t.Errorf("KeyHash(len %d, len %d): %v allocs, want 0", len(c.tenant), len(c.key), a)
		}
	}

	many := make([]Member, 300)
	for i := range many {
		many[i] = Member{ID: "m" + strconv.Itoa(i), VirtualNodes: 2, Active: true}
	}
	for _, c := range []struct {
		name string
		r    *Ring
		n    int
		cap  int
	}{
		{"5 members n=3", New(nodes(5, 0)), 3, 3},
		{"50 members n=3", New(nodes(50, 0)), 3, 3},
		{"2 members n=3 cap=2", New(nodes(2, 0)), 3, 2},
		{"300 members n=5", New(many), 5, 5},
	} {
		dst := make([]string, 0, c.cap)
		keys := []string{"key-0", "key-1", "key-2", "key-3", "key-4"}
		i := 0
		a := testing.AllocsPerRun(200, func() {
			dst = c.r.PreferenceList("default", keys[i%len(keys)], c.n, dst)
			i++
		})
		if a != 0 {
			t.Errorf("%s: %v allocs, want 0", c.name, a)
		}
		if len(dst) != min(c.n, c.r.ActiveCount()) {
			t.Errorf("%s: len %d", c.name, len(dst))
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	// Under -race this shows the ring is read-only after New.
	r := New(nodes(8, 32))
	want := r.PreferenceList("default", "key-7", 3, nil)
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for g := range 4 {
		wg.Go(func() {
			dst := make([]string, 0, 3)
			for i := range 500 {
				dst = r.PreferenceList("default", "key-7", 3, dst)
				if !slices.Equal(dst, want) {
					errs <- fmt.Sprintf("goroutine %d: %v, want %v", g, dst, want)
					return
				}
				if i%100 == 0 {
					_ = r.Shares()
					_ = r.Members()
					_ = r.Owns("node-1")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// membersFromSpec turns fuzz bytes into members: each byte pair is an ID
// out of 40, an active bit and a vnode count (0 meaning the default).
func membersFromSpec(spec []byte) []Member {
	var ms []Member
	for i := 0; i+1 < len(spec) && len(ms) < 64; i += 2 {
		id := ""
		if spec[i] != 0xff { // 0xff yields an empty, ignored ID
			id = "n" + strconv.Itoa(int(spec[i]%40))
		}
		ms = append(ms, Member{
			ID:           id,
			VirtualNodes: int(spec[i+1]&0x0f) - int(spec[i+1]>>7), // -1..15
			Active:       spec[i+1]&0x10 == 0,
		})
	}
	return ms
}

func FuzzPreferenceList(f *testing.F) {
	f.Add([]byte{}, "default", "key-0", 3, uint64(0))
	f.Add([]byte{1, 0}, "default", "key-0", 3, uint64(1))
	f.Add([]byte{1, 0, 2, 0, 3, 0, 4, 0, 5, 0}, "default", "key-1", 3, uint64(2))
	f.Add([]byte{1, 1, 2, 0x11, 3, 2, 1, 0x12, 0xff, 3}, "t", "", 2, uint64(3))
	f.Add([]byte{1, 0x81, 2, 0x80, 3, 0x8f}, "", "k", 0, uint64(4))
	f.Add([]byte{1, 1, 2, 1, 3, 1, 4, 1}, "a\x00b", "c", -7, uint64(5))
	f.Add([]byte{1, 3, 41, 3, 81, 0x13}, "tenant", "key", math.MaxInt, uint64(6))
	f.Fuzz(func(t *testing.T, spec []byte, tenant, key string, n int, seed uint64) {
		ms := membersFromSpec(spec)
		r := New(ms)
		h := KeyHash(tenant, key)

		dst := make([]string, 2, 4)
		got := r.PreferenceList(tenant, key, n, dst)
		wantLen := max(0, min(n, r.ActiveCount()))
		if len(got) != wantLen {
			t.Fatalf("len %d, want min(%d, %d)", len(got), n, r.ActiveCount())
		}
		checkList(t, r, got)
		if wantLen > 0 && wantLen <= cap(dst) && &got[0] != &dst[:1][0] {
			t.Fatal("result does not reuse dst")
		}
		if byHash := r.PreferenceListHash(h, n, nil); !slices.Equal(got, byHash) {
			t.Fatalf("PreferenceList %v != PreferenceListHash %v", got, byHash)
		}
		if want := refPreferenceList(ms, h, n); !slices.Equal(got, want) {
			t.Fatalf("got %v, reference %v", got, want)
		}

		// The same membership in any order gives the same list.
		perm := r.Members()
		rng := rand.New(rand.NewPCG(seed, 0))
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		if other := New(perm).PreferenceList(tenant, key, n, nil); !slices.Equal(got, other) {
			t.Fatalf("permuted members give %v, want %v", other, got)
		}

		if sh := r.Shares(); len(sh) != r.ActiveCount() {
			t.Fatalf("Shares has %d entries, %d active", len(sh), r.ActiveCount())
		} else if len(sh) > 0 {
			sum := 0.0
			for _, s := range sh {
				sum += s
			}
			if math.Abs(sum-1) > 1e-9 {
				t.Fatalf("shares sum to %v", sum)
			}
		}
	})
}
