package vclock

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// dval is a value with data s, or a tombstone when s is "†".
func dval(s string) Value {
	if s == "†" {
		return Value{Tombstone: true}
	}
	return Value{Data: []byte(s)}
}

// dentry builds an entry; values are given newest first, "†" for a
// tombstone.
func dentry(actor string, counter uint64, vals ...string) DVVEntry {
	e := DVVEntry{Actor: actor, Counter: counter}
	for _, v := range vals {
		e.Values = append(e.Values, dval(v))
	}
	return e
}

func dstate(es ...DVVEntry) DVVSet { return DVVSet{Entries: es} }

// dctx builds a context from actor, counter pairs.
func dctx(pairs ...any) DVVContext {
	var c DVVContext
	for i := 0; i < len(pairs); i += 2 {
		var n uint64
		switch x := pairs[i+1].(type) {
		case int:
			n = uint64(x)
		case uint64:
			n = x
		}
		c = append(c, ActorCounter{Actor: pairs[i].(string), Counter: n})
	}
	return c
}

// mustUpdate is Update that fails the test on error.
func mustUpdate(t testing.TB, s DVVSet, ctx DVVContext, actor, val string) DVVSet {
	t.Helper()
	out, d, err := Update(s, ctx, actor, dval(val))
	if err != nil {
		t.Fatalf("Update(%s, %v, %q, %q): %v", fmtState(s), ctx, actor, val, err)
	}
	if err := out.Validate(); err != nil {
		t.Fatalf("Update result %s invalid: %v", fmtState(out), err)
	}
	if d.Actor != actor || out.Join().Get(actor) != d.Counter {
		t.Fatalf("Update minted %+v, state %s", d, fmtState(out))
	}
	return out
}

// fmtState renders s like Riak's {I, N, [V…]} lists: "[a:2[v2 v1] b:1[]]".
func fmtState(s DVVSet) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, e := range s.Entries {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d[", e.Actor, e.Counter)
		for j, v := range e.Values {
			if j > 0 {
				b.WriteByte(' ')
			}
			if v.Tombstone {
				b.WriteString("†")
			} else {
				b.Write(v.Data)
			}
		}
		b.WriteByte(']')
	}
	b.WriteByte(']')
	return b.String()
}

// sibStrings lists the siblings of s as "actor:counter=data", in
// Siblings order.
func sibStrings(s DVVSet) []string {
	var out []string
	for _, x := range s.Siblings() {
		d := string(x.Value.Data)
		if x.Value.Tombstone {
			d = "†"
		}
		out = append(out, fmt.Sprintf("%s:%d=%s", x.Dot.Actor, x.Dot.Counter, d))
	}
	return out
}

func assertState(t *testing.T, what string, got DVVSet, want string) {
	t.Helper()
	if g := fmtState(got); g != want {
		t.Errorf("%s = %s, want %s", what, g, want)
	}
	if err := got.Validate(); err != nil {
		t.Errorf("%s = %s is invalid: %v", what, fmtState(got), err)
	}
}

// The eunit tests of Riak's dvvset.erl, translated: new(V) + update/2 is
// Update with a nil context, new(join(S), V) + update/3 is Update with
// S.Join().
func TestDVVRiakUpdate(t *testing.T) {
	a0 := mustUpdate(t, DVVSet{}, nil, "a", "v1")
	a1 := mustUpdate(t, a0, a0.Join(), "a", "v2")
	a2 := mustUpdate(t, a1, a1.Join(), "b", "v3")
	a3 := mustUpdate(t, a1, a0.Join(), "b", "v4")
	a4 := mustUpdate(t, a1, a0.Join(), "a", "v5")
	assertState(t, "A0", a0, "[a:1[v1]]")
	assertState(t, "A1", a1, "[a:2[v2]]")
	assertState(t, "A2", a2, "[a:2[] b:1[v3]]")
	assertState(t, "A3", a3, "[a:2[v2] b:1[v4]]")
	assertState(t, "A4", a4, "[a:3[v5 v2]]")
}

func TestDVVRiakSyncUpdate(t *testing.T) {
	// Mary writes v1 without a context; Peter reads it; Mary writes v2
	// without a context; Peter writes v3 with the context of v1.
	a0 := mustUpdate(t, DVVSet{}, nil, "a", "v1")
	vv1 := a0.Join()
	a1 := mustUpdate(t, a0, nil, "a", "v2")
	a2 := mustUpdate(t, a1, vv1, "a", "v3")
	if !reflect.DeepEqual(vv1, dctx("a", 1)) {
		t.Errorf("join(A0) = %v", vv1)
	}
	assertState(t, "A0", a0, "[a:1[v1]]")
	assertState(t, "A1", a1, "[a:2[v2 v1]]")
	// v3 replaces v1, which Peter saw, and keeps v2, which he did not.
	assertState(t, "A2", a2, "[a:3[v3 v2]]")
}

func TestDVVRiakSync(t *testing.T) {
	x := dstate(dentry("x", 1))
	a := mustUpdate(t, DVVSet{}, nil, "a", "v1")
	y := mustUpdate(t, DVVSet{}, nil, "b", "v2")
	a1 := mustUpdate(t, a, a.Join(), "a", "v2")
	a3 := mustUpdate(t, a1, a1.Join(), "b", "v3")
	a4 := mustUpdate(t, a1, a1.Join(), "c", "v3")
	w := dstate(dentry("a", 1))
	z := dstate(dentry("a", 2, "v2", "v1"))
	tests := []struct {
		name string
		l, r DVVSet
		want string
	}{
		{"W Z", w, z, "[a:2[v2]]"},
		{"A A1", a, a1, "[a:2[v2]]"},
		{"A4 A3", a4, a3, "[a:2[] b:1[v3] c:1[v3]]"},
		{"X A", x, a, "[a:1[v1] x:1[]]"},
		{"A Y", a, y, "[a:1[v1] b:1[v2]]"},
		{"empty A", DVVSet{}, a, "[a:1[v1]]"},
	}
	for _, tt := range tests {
		assertState(t, "sync "+tt.name, Sync(tt.l, tt.r), tt.want)
		assertState(t, "sync reversed "+tt.name, Sync(tt.r, tt.l), tt.want)
		assertState(t, "SyncAll "+tt.name, SyncAll(tt.l, tt.r, tt.l), tt.want)
	}
}

// The scenarios of the store's siblings policy, each across replicas.
func TestDVVScenarios(t *testing.T) {
	const n1, n2, n3 = "n1.1", "n2.1", "n3.1"
	t.Run("concurrent writes without context are siblings", func(t *testing.T) {
		// Through one coordinating replica.
		s := mustUpdate(t, DVVSet{}, nil, n1, "x")
		s = mustUpdate(t, s, nil, n1, "y")
		if got := sibStrings(s); !slices.Equal(got, []string{"n1.1:2=y", "n1.1:1=x"}) {
			t.Errorf("siblings %v", got)
		}
		// Through two, then merged.
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "x")
		r2 := mustUpdate(t, DVVSet{}, nil, n2, "y")
		m := Sync(r1, r2)
		if got := sibStrings(m); !slices.Equal(got, []string{"n2.1:1=y", "n1.1:1=x"}) {
			t.Errorf("siblings %v", got)
		}
		if m.Size() != 2 || m.Deleted() {
			t.Errorf("Size %d Deleted %v", m.Size(), m.Deleted())
		}
	})
	t.Run("write with the read's context replaces what it read", func(t *testing.T) {
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "x")
		r2 := mustUpdate(t, DVVSet{}, nil, n2, "y")
		read := Sync(r1, r2) // a quorum read of both
		// The client writes through n3, which has neither.
		r3 := mustUpdate(t, DVVSet{}, read.Join(), n3, "z")
		assertState(t, "n3", r3, "[n1.1:1[] n2.1:1[] n3.1:1[z]]")
		// n3 ships its state; the others drop x and y.
		for _, s := range []DVVSet{Sync(r1, r3), Sync(r3, r2), SyncAll(r1, r2, r3)} {
			if got := sibStrings(s); !slices.Equal(got, []string{"n3.1:1=z"}) {
				t.Errorf("after sync %s: %v", fmtState(s), got)
			}
		}
	})
	t.Run("stale context keeps the concurrent sibling", func(t *testing.T) {
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "v1")
		stale := r1.Join()
		r1 = mustUpdate(t, r1, r1.Join(), n1, "v2") // replaces v1
		r2 := Sync(DVVSet{}, r1)                    // replicated
		r3 := mustUpdate(t, DVVSet{}, nil, n3, "c") // concurrent, elsewhere
		r2 = Sync(r2, r3)
		// A client that read only v1 writes v3 through n2.
		r2 = mustUpdate(t, r2, stale, n2, "v3")
		want := []string{"n1.1:2=v2", "n3.1:1=c", "n2.1:1=v3"}
		if got := sibStrings(r2); !slices.Equal(got, want) {
			t.Errorf("siblings %v, want %v", got, want)
		}
		// A client that read everything resolves them.
		r2 = mustUpdate(t, r2, r2.Join(), n2, "resolved")
		if got := sibStrings(SyncAll(r1, r2, r3)); !slices.Equal(got, []string{"n2.1:2=resolved"}) {
			t.Errorf("after resolve %v", got)
		}
	})
	t.Run("delete with context removes exactly what it saw", func(t *testing.T) {
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "x")
		seen := r1.Join()
		r2 := mustUpdate(t, DVVSet{}, nil, n2, "y") // not seen by the delete
		r1 = mustUpdate(t, r1, seen, n1, "†")
		m := Sync(r1, r2)
		want := []string{"n1.1:2=†", "n2.1:1=y"}
		if got := sibStrings(m); !slices.Equal(got, want) {
			t.Errorf("siblings %v, want %v", got, want)
		}
		if m.Deleted() {
			t.Error("Deleted with a live sibling")
		}
		if l, ok := m.LastLive(); !ok || string(l.Value.Data) != "y" {
			t.Errorf("LastLive = %+v, %v", l, ok)
		}
		if l, ok := m.Last(); !ok || !l.Value.Tombstone || l.Dot != (Dot{Counter: 2, Actor: n1}) {
			t.Errorf("Last = %+v, %v", l, ok)
		}
		// Deleting with the merged context leaves one tombstone: not found.
		d := mustUpdate(t, m, m.Join(), n2, "†")
		if got := sibStrings(SyncAll(r1, r2, d)); !slices.Equal(got, []string{"n2.1:2=†"}) {
			t.Errorf("after second delete %v", got)
		}
		if !d.Deleted() || d.Size() != 1 {
			t.Errorf("Deleted %v Size %d", d.Deleted(), d.Size())
		}
		if _, ok := d.LastLive(); ok {
			t.Error("LastLive found a value in a deleted state")
		}
		// Writing again with the not-found read's context replaces the
		// tombstone.
		w := mustUpdate(t, d, d.Join(), n3, "again")
		if got := sibStrings(w); !slices.Equal(got, []string{"n3.1:1=again"}) {
			t.Errorf("write after delete %v", got)
		}
	})
	t.Run("delete concurrent with a write keeps both", func(t *testing.T) {
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "x")
		r2 := Sync(DVVSet{}, r1)
		r1 = mustUpdate(t, r1, r1.Join(), n1, "new")
		r2 = mustUpdate(t, r2, r2.Join(), n2, "†")
		m := Sync(r1, r2)
		if got := sibStrings(m); !slices.Equal(got, []string{"n1.1:2=new", "n2.1:1=†"}) {
			t.Errorf("siblings %v", got)
		}
	})
	t.Run("context from a replica ahead of the coordinator", func(t *testing.T) {
		r1 := mustUpdate(t, DVVSet{}, nil, n1, "a")
		r1 = mustUpdate(t, r1, nil, n1, "b") // n2 never received these
		r2 := mustUpdate(t, DVVSet{}, nil, n2, "c")
		r2 = mustUpdate(t, r2, Sync(r1, r2).Join(), n2, "d")
		assertState(t, "n2", r2, "[n1.1:2[] n2.1:2[d]]")
		// When n1's older state arrives late, a and b stay dropped.
		assertState(t, "late merge", Sync(r2, r1), "[n1.1:2[] n2.1:2[d]]")
	})
}

// Why the epoch is part of the actor: a replica whose data directory was
// wiped and that kept its old actor mints a dot its peers already hold for
// an older, superseded write, and the merge drops the new write.
func TestDVVActorAmnesia(t *testing.T) {
	old := ReplicaActor("n1", 1)
	r1 := mustUpdate(t, DVVSet{}, nil, old, "v1")
	r1 = mustUpdate(t, r1, r1.Join(), old, "v2")
	r2 := Sync(DVVSet{}, r1) // n2 holds [n1.1:2[v2]]

	// n1 is wiped and keeps its actor: the new write gets dot (n1.1, 1).
	wiped := mustUpdate(t, DVVSet{}, nil, old, "lost")
	if got := sibStrings(Sync(r2, wiped)); slices.Contains(got, "n1.1:1=lost") {
		t.Fatalf("expected the amnesia write to be dropped, got %v", got)
	}
	// With a new epoch it is a new actor, and both survive as siblings.
	fresh := mustUpdate(t, DVVSet{}, nil, ReplicaActor("n1", 2), "kept")
	want := []string{"n1.1:2=v2", "n1.2:1=kept"}
	if got := sibStrings(Sync(r2, fresh)); !slices.Equal(got, want) {
		t.Errorf("siblings %v, want %v", got, want)
	}
}

func TestReplicaActor(t *testing.T) {
	for _, tt := range []struct {
		node  string
		epoch uint64
		want  string
	}{
		{"n1", 0, "n1.0"},
		{"n1", 31, "n1.1f"},
		{"node.a", math.MaxUint64, "node.a.ffffffffffffffff"},
	} {
		if got := ReplicaActor(tt.node, tt.epoch); got != tt.want {
			t.Errorf("ReplicaActor(%q, %d) = %q, want %q", tt.node, tt.epoch, got, tt.want)
		}
	}
}

func TestDVVValidate(t *testing.T) {
	valid := []DVVSet{
		{},
		{Entries: []DVVEntry{}},
		dstate(dentry("a", 1)),
		dstate(dentry("a", 2, "x", "†"), dentry("b", 5), dentry("c", math.MaxUint64, "y")),
	}
	for _, s := range valid {
		if err := s.Validate(); err != nil {
			t.Errorf("Validate(%s) = %v", fmtState(s), err)
		}
	}
	invalid := map[string]DVVSet{
		"empty actor":     dstate(dentry("", 1)),
		"unsorted":        dstate(dentry("b", 1), dentry("a", 1)),
		"repeated actor":  dstate(dentry("a", 1), dentry("a", 1)),
		"zero counter":    dstate(dentry("a", 0)),
		"too many values": dstate(dentry("a", 1, "x", "y")),
	}
	for name, s := range invalid {
		if err := s.Validate(); !errors.Is(err, ErrBadDVVSet) {
			t.Errorf("%s: Validate(%s) = %v, want ErrBadDVVSet", name, fmtState(s), err)
		}
		// Nothing panics on it, and Update refuses it.
		_ = Sync(s, s)
		_ = Discard(s, dctx("a", 1))
		_, _ = s.Last()
		_ = s.Siblings()
		_ = EncodeDVVContext(s.Join())
		if _, _, err := Update(s, nil, "a", dval("v")); !errors.Is(err, ErrBadDVVSet) {
			t.Errorf("%s: Update error %v, want ErrBadDVVSet", name, err)
		}
	}
}

func TestDVVUpdateErrors(t *testing.T) {
	s := mustUpdate(t, DVVSet{}, nil, "a", "x")
	if _, _, err := Update(s, nil, "", dval("v")); !errors.Is(err, ErrBadDVVSet) {
		t.Errorf("empty actor: %v", err)
	}
	for _, c := range []DVVContext{dctx("b", 1, "a", 1), dctx("a", 0), dctx("", 3), dctx("a", 1, "a", 2)} {
		if _, _, err := Update(s, c, "a", dval("v")); !errors.Is(err, ErrBadContext) {
			t.Errorf("context %v: %v, want ErrBadContext", c, err)
		}
	}
	// The counter cannot wrap, whether it comes from the state or a context.
	full := dstate(dentry("a", math.MaxUint64, "x"))
	if out, d, err := Update(full, nil, "a", dval("v")); !errors.Is(err, ErrCounterExhausted) || out.Size() != 0 || !d.IsZero() {
		t.Errorf("exhausted state: %s %+v %v", fmtState(out), d, err)
	}
	if _, _, err := Update(s, dctx("a", uint64(math.MaxUint64)), "a", dval("v")); !errors.Is(err, ErrCounterExhausted) {
		t.Errorf("exhausted context: %v", err)
	}
	// Another actor can still write.
	out := mustUpdate(t, full, nil, "b", "v")
	assertState(t, "other actor", out, "[a:18446744073709551615[x] b:1[v]]")
}

func TestDVVDiscard(t *testing.T) {
	s := dstate(dentry("a", 5, "a5", "a4", "a3"), dentry("c", 2, "c2"))
	tests := []struct {
		ctx  DVVContext
		want string
	}{
		{nil, "[a:5[a5 a4 a3] c:2[c2]]"},
		{dctx("a", 2), "[a:5[a5 a4 a3] c:2[c2]]"},
		{dctx("a", 3), "[a:5[a5 a4] c:2[c2]]"},
		{dctx("a", 4, "c", 1), "[a:5[a5] c:2[c2]]"},
		{dctx("a", 5), "[a:5[] c:2[c2]]"},
		{dctx("a", 9, "b", 3, "c", 2, "d", 1), "[a:9[] b:3[] c:2[] d:1[]]"},
		{DVVContext{{Actor: "a", Counter: 0}, {Actor: "c", Counter: 2}}, "[a:5[a5 a4 a3] c:2[]]"},
	}
	for _, tt := range tests {
		assertState(t, fmt.Sprintf("Discard(%v)", tt.ctx), Discard(s, tt.ctx), tt.want)
	}
	assertState(t, "Discard of empty", Discard(DVVSet{}, dctx("a", 2)), "[a:2[]]")
}

func TestDVVSiblingsOrder(t *testing.T) {
	s := dstate(dentry("a", 3, "a3", "a2"), dentry("b", 3, "b3"), dentry("c", 1, "†"))
	want := []string{"b:3=b3", "a:3=a3", "a:2=a2", "c:1=†"}
	if got := sibStrings(s); !slices.Equal(got, want) {
		t.Errorf("Siblings = %v, want %v", got, want)
	}
	vals := s.Values()
	if len(vals) != 4 || string(vals[0].Data) != "b3" || !vals[3].Tombstone {
		t.Errorf("Values = %+v", vals)
	}
	if l, ok := s.Last(); !ok || l.Dot != (Dot{Counter: 3, Actor: "b"}) {
		t.Errorf("Last = %+v", l)
	}
	s2 := dstate(dentry("a", 3, "†", "a2"), dentry("b", 3, "†"))
	if l, ok := s2.LastLive(); !ok || l.Dot != (Dot{Counter: 2, Actor: "a"}) || string(l.Value.Data) != "a2" {
		t.Errorf("LastLive = %+v, %v", l, ok)
	}
	var empty DVVSet
	if empty.Siblings() != nil || empty.Values() != nil || empty.Size() != 0 || !empty.Deleted() || empty.Join() != nil {
		t.Error("empty state accessors")
	}
	if _, ok := empty.Last(); ok {
		t.Error("Last of empty")
	}
}

func TestDVVEqual(t *testing.T) {
	a := dstate(dentry("a", 2, "x", ""))
	b := dstate(DVVEntry{Actor: "a", Counter: 2, Values: []Value{{Data: []byte("x")}, {Data: []byte{}}}})
	if !a.Equal(b) || !b.Equal(a) {
		t.Error("nil and empty Data differ")
	}
	for _, c := range []DVVSet{
		dstate(dentry("a", 2, "x")),
		dstate(dentry("a", 3, "x", "")),
		dstate(dentry("b", 2, "x", "")),
		dstate(dentry("a", 2, "x", "†")),
		dstate(dentry("a", 2, "y", "")),
		dstate(dentry("a", 2, "x", ""), dentry("b", 1)),
	} {
		if a.Equal(c) || c.Equal(a) {
			t.Errorf("%s equals %s", fmtState(a), fmtState(c))
		}
	}
}

// Sync, Discard and Update never write to their arguments.
func TestDVVNoAliasingWrites(t *testing.T) {
	a := dstate(dentry("a", 3, "a3", "a2"), dentry("b", 1, "b1"))
	b := dstate(dentry("a", 4, "a4", "a3"), dentry("c", 1, "c1"))
	ctx := dctx("a", 3, "c", 1)
	ac, bc, cc := deepCopyState(a), deepCopyState(b), slices.Clone(ctx)
	_ = Sync(a, b)
	_ = Sync(b, a)
	_ = Discard(a, ctx)
	u := mustUpdate(t, a, ctx, "a", "new")
	u2 := mustUpdate(t, u, nil, "a", "newer") // appending must not reach u
	if !reflect.DeepEqual(a, ac) || !reflect.DeepEqual(b, bc) || !reflect.DeepEqual(ctx, cc) {
		t.Fatalf("arguments modified: %s %s %v", fmtState(a), fmtState(b), ctx)
	}
	assertState(t, "u", u, "[a:4[new] b:1[b1] c:1[]]")
	assertState(t, "u2", u2, "[a:5[newer new] b:1[b1] c:1[]]")
}

func deepCopyState(s DVVSet) DVVSet {
	var out DVVSet
	for _, e := range s.Entries {
		c := DVVEntry{Actor: e.Actor, Counter: e.Counter}
		for _, v := range e.Values {
			c.Values = append(c.Values, Value{Data: slices.Clone(v.Data), Tombstone: v.Tombstone})
		}
		out.Entries = append(out.Entries, c)
	}
	return out
}

// Two states that disagree on a dot's Value (one actor id on two nodes)
// still merge deterministically.
func TestDVVSyncMalformedAgreement(t *testing.T) {
	a := dstate(dentry("a", 3, "x", "p", "q"))
	b := dstate(dentry("a", 3, "y", "z"))
	want := "[a:3[y z]]"
	assertState(t, "a∨b", Sync(a, b), want)
	assertState(t, "b∨a", Sync(b, a), want)
	c := dstate(dentry("a", 3, "†", "a"))
	want = "[a:3[† z]]"
	assertState(t, "(a∨b)∨c", Sync(Sync(a, b), c), want)
	assertState(t, "a∨(b∨c)", Sync(a, Sync(b, c)), want)
}

func TestDVVContextEncoding(t *testing.T) {
	tests := []struct {
		ctx  DVVContext
		want string
	}{
		{nil, ""},
		{DVVContext{}, ""},
		// 02 "n1" 01
		{dctx("n1", 1), "d1.Am4xAQ"},
		// 04 "n1.1" ac 02 | 04 "n2.1" ff ff ff ff ff ff ff ff ff 01
		{dctx("n1.1", 300, "n2.1", uint64(math.MaxUint64)), "d1.BG4xLjGsAgRuMi4x____________AQ"},
	}
	for _, tt := range tests {
		s := EncodeDVVContext(tt.ctx)
		if s != tt.want {
			t.Errorf("EncodeDVVContext(%v) = %q, want %q", tt.ctx, s, tt.want)
		}
		got, err := DecodeDVVContext(s)
		if err != nil || len(got) != len(tt.ctx) || (len(got) > 0 && !reflect.DeepEqual(got, tt.ctx)) {
			t.Errorf("DecodeDVVContext(%q) = %v, %v; want %v", s, got, err, tt.ctx)
		}
	}
	s := mustUpdate(t, DVVSet{}, nil, ReplicaActor("node-a", 0x5eed), "x")
	s = mustUpdate(t, s, nil, ReplicaActor("node-b", 1), "y")
	enc := EncodeDVVContext(s.Join())
	if strings.Trim(enc, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != "" {
		t.Errorf("context %q has characters outside the URL-safe set", enc)
	}
	if got, err := DecodeDVVContext(enc); err != nil || !reflect.DeepEqual(got, s.Join()) {
		t.Errorf("round trip of %v: %v, %v", s.Join(), got, err)
	}
}

func TestDecodeDVVContextRejects(t *testing.T) {
	good := EncodeDVVContext(dctx("a", 1, "b", 2))
	bad := map[string]string{
		"lww context":        EncodeContext(Dot{Counter: 1, Actor: "n1"}),
		"no prefix":          good[len(DVVContextPrefix):],
		"prefix only":        DVVContextPrefix,
		"padding":            DVVContextPrefix + "AWEB" + "==",
		"newline":            good[:5] + "\n" + good[5:],
		"bad char":           DVVContextPrefix + "AW*B",
		"non-canonical b64":  DVVContextPrefix + "Am4xAR", // trailing bits set: "Am4xAQ" is canonical
		"truncated actor":    DVVContextPrefix + ctxEncoding.EncodeToString([]byte{5, 'a'}),
		"missing counter":    DVVContextPrefix + ctxEncoding.EncodeToString([]byte{1, 'a'}),
		"truncated counter":  DVVContextPrefix + ctxEncoding.EncodeToString([]byte{1, 'a', 0x80}),
		"overlong counter":   DVVContextPrefix + ctxEncoding.EncodeToString([]byte{1, 'a', 0x81, 0x00}),
		"overlong length":    DVVContextPrefix + ctxEncoding.EncodeToString([]byte{0x81, 0x00, 'a', 1}),
		"varint overflow":    DVVContextPrefix + ctxEncoding.EncodeToString([]byte{1, 'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02}),
		"huge actor length":  DVVContextPrefix + ctxEncoding.EncodeToString([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 'a'}),
		"zero counter":       DVVContextPrefix + ctxEncoding.EncodeToString([]byte{1, 'a', 0}),
		"empty actor":        DVVContextPrefix + ctxEncoding.EncodeToString([]byte{0, 1}),
		"unsorted actors":    EncodeDVVContext(dctx("b", 1, "a", 1)),
		"repeated actor":     EncodeDVVContext(dctx("a", 1, "a", 2)),
		"encoded empty list": DVVContextPrefix + ctxEncoding.EncodeToString([]byte{}),
	}
	if _, err := DecodeDVVContext(DVVContextPrefix + "Am4xAQ"); err != nil {
		t.Fatalf("canonical control case: %v", err)
	}
	for name, s := range bad {
		c, err := DecodeDVVContext(s)
		if !errors.Is(err, ErrBadContext) || c != nil {
			t.Errorf("%s: DecodeDVVContext(%q) = %v, %v; want ErrBadContext", name, s, c, err)
		}
	}
	// The lww decoder rejects DVV contexts too.
	if _, err := DecodeContext(good); !errors.Is(err, ErrBadContext) {
		t.Errorf("DecodeContext(%q) = %v", good, err)
	}
}

func TestDVVContextCovers(t *testing.T) {
	c := dctx("a", 3, "c", 1)
	for _, tt := range []struct {
		d    Dot
		want bool
	}{
		{Dot{Counter: 1, Actor: "a"}, true},
		{Dot{Counter: 3, Actor: "a"}, true},
		{Dot{Counter: 4, Actor: "a"}, false},
		{Dot{Counter: 1, Actor: "b"}, false},
		{Dot{Counter: 1, Actor: "c"}, true},
		{Dot{Counter: 0, Actor: "a"}, false},
		{Dot{}, false},
	} {
		if got := c.Covers(tt.d); got != tt.want {
			t.Errorf("Covers(%+v) = %v", tt.d, got)
		}
	}
	if c.Get("a") != 3 || c.Get("b") != 0 || c.Get("d") != 0 || DVVContext(nil).Get("a") != 0 {
		t.Error("Get")
	}
}

func TestDVVMsgpackRoundTrip(t *testing.T) {
	states := []DVVSet{
		{},
		dstate(dentry("a", 1)),
		dstate(
			DVVEntry{Actor: "n1.1f", Counter: 7, Values: []Value{{Data: []byte("x")}, {Tombstone: true}, {Data: []byte{}}}},
			dentry("n2.0", math.MaxUint64, "big"),
		),
	}
	for _, s := range states {
		b, err := msgpack.Marshal(s)
		if err != nil {
			t.Fatalf("Marshal(%s): %v", fmtState(s), err)
		}
		// as_array: a 1-array holding the entries (nil when there are none).
		if len(b) < 2 || b[0] != 0x91 {
			t.Fatalf("Marshal(%s) = % x, want a 1-array", fmtState(s), b)
		}
		var got DVVSet
		if err := msgpack.Unmarshal(b, &got); err != nil {
			t.Fatalf("Unmarshal(% x): %v", b, err)
		}
		if !got.Equal(s) {
			t.Errorf("round trip of %s gave %s", fmtState(s), fmtState(got))
		}
		if err := got.Validate(); err != nil {
			t.Errorf("decoded %s invalid: %v", fmtState(got), err)
		}
	}
	// The entry shape is [Actor, Counter, [[Data, Tombstone] …]].
	b, err := msgpack.Marshal(dstate(dentry("a", 1, "x")))
	if err != nil {
		t.Fatal(err)
	}
	var generic []any
	if err := msgpack.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]any{[]any{[]any{"a", uint64(1), []any{[]any{[]byte("x"), false}}}}})
	if got := fmt.Sprint(generic); got != want {
		t.Errorf("wire shape %s, want %s", got, want)
	}
	// Contexts and siblings encode too.
	for _, v := range []any{dctx("a", 1, "b", 2), Sibling{Dot: Dot{Counter: 2, Actor: "a"}, Value: dval("x")}} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		p := reflect.New(reflect.TypeOf(v))
		if err := msgpack.Unmarshal(b, p.Interface()); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(p.Elem().Interface(), v) {
			t.Errorf("round trip of %+v gave %+v", v, p.Elem().Interface())
		}
	}
}

// tagDVVSet has DVVSet's layout but no custom codec: msgpack encodes and
// decodes it by its as_array tags alone.
type tagDVVSet struct {
	_msgpack struct{} `msgpack:",as_array"`
	Entries  []DVVEntry
}

// The custom codec of DVVSet speaks exactly the layout of its tags, in both
// directions, whatever integer width the counters were written in.
func TestDVVMsgpackMatchesTags(t *testing.T) {
	for _, s := range []DVVSet{
		{},
		{Entries: []DVVEntry{}},
		dstate(dentry("a", 1)),
		dstate(
			DVVEntry{Actor: "n1.1f", Counter: 700, Values: []Value{{Data: []byte("x")}, {Tombstone: true}, {Data: []byte{}}}},
			dentry("n2.0", math.MaxUint64, "big"),
		),
	} {
		custom, err := msgpack.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		tagged, err := msgpack.Marshal(tagDVVSet{Entries: s.Entries})
		if err != nil {
			t.Fatal(err)
		}
		if len(custom) > len(tagged) {
			t.Errorf("custom encoding of %s is longer (%d) than the tagged one (%d)", fmtState(s), len(custom), len(tagged))
		}
		var fromTagged DVVSet
		if err := msgpack.Unmarshal(tagged, &fromTagged); err != nil || !fromTagged.Equal(s) {
			t.Errorf("tagged encoding of %s decoded to %s, %v", fmtState(s), fmtState(fromTagged), err)
		}
		var viaTags tagDVVSet
		if err := msgpack.Unmarshal(custom, &viaTags); err != nil || !DVVSet(viaTags).Equal(s) {
			t.Errorf("custom encoding of %s decoded by tags to %+v, %v", fmtState(s), viaTags, err)
		}
	}
	// Inside another message, as the storage node would send it.
	type reply struct {
		Key   string
		State DVVSet
		Ctx   DVVContext
	}
	in := reply{Key: "k", State: dstate(dentry("a", 2, "x")), Ctx: dctx("a", 2)}
	b, err := msgpack.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out reply
	if err := msgpack.Unmarshal(b, &out); err != nil || !out.State.Equal(in.State) || !sameContext(out.Ctx, in.Ctx) || out.Key != "k" {
		t.Errorf("reply round trip: %+v, %v", out, err)
	}
}

// hugeClaims are tiny msgpack inputs whose headers claim 2³²-1 elements or
// bytes at each level of a DVVSet.
var hugeClaims = [][]byte{
	{0xdd, 0xff, 0xff, 0xff, 0xff},
	{0x91, 0xdd, 0xff, 0xff, 0xff, 0xff},
	{0x91, 0x91, 0x93, 0xa1, 'a', 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff},
	{0x91, 0x91, 0x93, 0xa1, 'a', 0x01, 0x91, 0x92, 0xc6, 0xff, 0xff, 0xff, 0xff},
	{0x91, 0x91, 0x93, 0xdb, 0xff, 0xff, 0xff, 0xff},
}

// Decoding allocates in proportion to the input, not to the lengths it
// claims. (msgpack v5.4.1's own slice decoding preallocates the claimed
// length: 2³²-1 DVVEntry would be hundreds of gigabytes.) The bound allows
// the 1 to 2 MiB that msgpack's own (bounded) string decoding allocates
// ahead for a long string claim. Allocated bytes for a given input are
// deterministic: a bound broken here means a hostile 8-byte message can make
// a node allocate gigabytes (a bug), not that decoding got slower.
func TestDVVDecodeHugeClaims(t *testing.T) {
	for _, b := range hugeClaims {
		var s DVVSet
		allocated := allocatedBytes(func() {
			if err := msgpack.Unmarshal(b, &s); !errors.Is(err, ErrBadDVVSet) {
				t.Errorf("Unmarshal(% x) = %v, want ErrBadDVVSet", b, err)
			}
		})
		if allocated > 4<<20 {
			t.Errorf("Unmarshal(% x) allocated %d bytes", b, allocated)
		}
	}
	var c DVVContext
	allocated := allocatedBytes(func() {
		if err := msgpack.Unmarshal(hugeClaims[0], &c); !errors.Is(err, ErrBadContext) {
			t.Errorf("DVVContext: %v, want ErrBadContext", err)
		}
	})
	if allocated > 1<<20 {
		t.Errorf("DVVContext decode allocated %d bytes", allocated)
	}
}

func allocatedBytes(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

func TestDVVDecodeRejectsInvalid(t *testing.T) {
	for _, s := range []DVVSet{
		dstate(dentry("b", 1), dentry("a", 1)),
		dstate(dentry("a", 1, "x", "y")),
		dstate(dentry("a", 0)),
	} {
		b, err := msgpack.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		got := dstate(dentry("stale", 1))
		if err := msgpack.Unmarshal(b, &got); !errors.Is(err, ErrBadDVVSet) || got.Entries != nil {
			t.Errorf("decoding %s: %s, %v; want ErrBadDVVSet and the zero state", fmtState(s), fmtState(got), err)
		}
	}
	b, err := msgpack.Marshal([]ActorCounter{{Actor: "b", Counter: 1}, {Actor: "a", Counter: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var c DVVContext
	if err := msgpack.Unmarshal(b, &c); !errors.Is(err, ErrBadContext) || c != nil {
		t.Errorf("unsorted context decoded to %v, %v", c, err)
	}
}

// TestDVVAllocs counts allocations, which are deterministic: a DVVSet
// operation that starts allocating beyond its bound has lost the buffer
// reuse the siblings path depends on (a bug), not merely become slower.
func TestDVVAllocs(t *testing.T) {
	a, b := benchStates()
	ctx := Sync(a, b).Join()
	var out DVVSet
	v := dval("v")
	if n := testing.AllocsPerRun(100, func() { out = Sync(a, b) }); n != 1 {
		t.Errorf("Sync: %v allocs, want 1", n)
	}
	if n := testing.AllocsPerRun(100, func() { out, _, _ = Update(a, ctx, "n2.1", v) }); n != 2 {
		t.Errorf("Update: %v allocs, want 2", n)
	}
	if n := testing.AllocsPerRun(100, func() { out, _, _ = Update(a, nil, "n9.1", v) }); n != 2 {
		t.Errorf("Update new actor: %v allocs, want 2", n)
	}
	_ = out
}

// benchStates returns two small concurrent states of a key with three
// replicas, as a quorum read would see them.
func benchStates() (DVVSet, DVVSet) {
	var r1, r2, r3 DVVSet
	r1, _, _ = Update(r1, nil, "n1.1", Value{Data: []byte("value-1")})
	r2 = Sync(r2, r1)
	r2, _, _ = Update(r2, r2.Join(), "n2.1", Value{Data: []byte("value-2")})
	r3, _, _ = Update(r3, nil, "n3.1", Value{Data: []byte("value-3")})
	r1, _, _ = Update(r1, nil, "n1.1", Value{Data: []byte("value-4")})
	return Sync(r1, r3), Sync(r2, r3)
}

var sinkDVV DVVSet

func BenchmarkDVVSync(b *testing.B) {
	x, y := benchStates()
	b.ReportAllocs()
	for b.Loop() {
		sinkDVV = Sync(x, y)
	}
}

func BenchmarkDVVUpdate(b *testing.B) {
	x, y := benchStates()
	ctx := Sync(x, y).Join()
	v := Value{Data: []byte("new value")}
	b.ReportAllocs()
	for b.Loop() {
		var err error
		sinkDVV, _, err = Update(x, ctx, "n2.1", v)
		if err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDVVEncodeContext(b *testing.B) {
	x, y := benchStates()
	ctx := Sync(x, y).Join()
	b.ReportAllocs()
	for b.Loop() {
		sinkString = EncodeDVVContext(ctx)
	}
}

func BenchmarkDVVDecodeContext(b *testing.B) {
	x, y := benchStates()
	s := EncodeDVVContext(Sync(x, y).Join())
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeDVVContext(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDVVMsgpackRoundTrip(b *testing.B) {
	x, y := benchStates()
	s := Sync(x, y)
	b.ReportAllocs()
	for b.Loop() {
		buf, err := msgpack.Marshal(s)
		if err != nil {
			b.Fatal(err)
		}
		if err := msgpack.Unmarshal(buf, &sinkDVV); err != nil {
			b.Fatal(err)
		}
	}
}

// A quorum read of two replicas, a write back with its context through a
// third, and the replication of the coordinating replica's state.
func ExampleUpdate() {
	n1, n2, n3 := ReplicaActor("n1", 1), ReplicaActor("n2", 1), ReplicaActor("n3", 1)

	// Two clients write the absent key concurrently, without contexts.
	r1, _, _ := Update(DVVSet{}, nil, n1, Value{Data: []byte("blue")})
	r2, _, _ := Update(DVVSet{}, nil, n2, Value{Data: []byte("green")})

	// A read merges both replicas and returns the siblings and a context.
	read := Sync(r1, r2)
	for _, s := range read.Siblings() {
		fmt.Printf("sibling %s:%d %s\n", s.Dot.Actor, s.Dot.Counter, s.Value.Data)
	}
	ctx := EncodeDVVContext(read.Join())
	fmt.Println("context:", ctx)

	// The client resolves them, writing through n3 with the context.
	c, err := DecodeDVVContext(ctx)
	if err != nil {
		panic(err) // a client error in a real server
	}
	r3, dot, _ := Update(DVVSet{}, c, n3, Value{Data: []byte("teal")})
	fmt.Printf("minted %s:%d\n", dot.Actor, dot.Counter)

	// n3 ships its complete state; every replica converges on one value.
	r1, r2 = Sync(r1, r3), Sync(r2, r3)
	fmt.Println("converged:", r1.Equal(r2) && r2.Equal(r3), "values:", len(r1.Values()), string(r1.Values()[0].Data))

	// Output:
	// sibling n2.1:1 green
	// sibling n1.1:1 blue
	// context: d1.BG4xLjEBBG4yLjEB
	// minted n3.1:1
	// converged: true values: 1 teal
}
