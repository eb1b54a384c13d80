package vclock

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// The fuzz targets below build DVVSets the only way the store does — by
// Update and Sync on a simulated cluster, driven by the fuzz input read as a
// program — because Sync is only specified on states of one execution (in
// which a dot names one value). FuzzDVVSetMsgpack covers arbitrary states.

// dvvProg reads a fuzz input as a program; reading past its end yields 0.
type dvvProg struct {
	b []byte
	i int
}

func (p *dvvProg) done() bool { return p.i >= len(p.b) }

func (p *dvvProg) next() byte {
	if p.done() {
		return 0
	}
	p.i++
	return p.b[p.i-1]
}

// intn returns a number in [0, n); n > 0.
func (p *dvvProg) intn(n int) int { return int(p.next()) % n }

// dvvWrite is one client write of a simulation.
type dvvWrite struct {
	dot Dot
	val Value
	ctx DVVContext
}

// dvvMsg is a state shipped to replica to and not yet delivered.
type dvvMsg struct {
	to    int
	state DVVSet
}

// dvvSim is a cluster of replicas of one key under the siblings policy.
type dvvSim struct {
	t       testing.TB
	actors  []string
	epochs  []uint64
	states  []DVVSet
	history []DVVSet // every state any replica has held, the empty one first
	writes  []dvvWrite
	pending []dvvMsg
	minted  map[Dot]bool
}

// dvvMaxOps bounds the operations of one simulation, so that each fuzz
// execution stays fast whatever the input length.
const dvvMaxOps = 300

// runDVVSim runs prog on 2 to 4 replicas. Operations: a client write (the
// client reads nothing, or one replica, or a stale state, or two replicas
// merged; writes to a random coordinating replica, which ships its new
// complete state to a random subset of the others); a direct sync of one
// replica from another; the delivery (possibly duplicated) or loss of a
// shipped state; and, rarely, the rebuild of a replica under a new epoch
// after handing its state to a neighbour.
func runDVVSim(t testing.TB, prog []byte) *dvvSim {
	p := &dvvProg{b: prog}
	n := 2 + p.intn(3)
	sim := &dvvSim{
		t:       t,
		actors:  make([]string, n),
		epochs:  make([]uint64, n),
		states:  make([]DVVSet, n),
		history: []DVVSet{{}},
		minted:  map[Dot]bool{},
	}
	for i := range n {
		sim.epochs[i] = 1
		sim.actors[i] = ReplicaActor(fmt.Sprintf("n%d", i), 1)
	}
	for ops := 0; !p.done() && ops < dvvMaxOps; ops++ {
		switch op := p.next(); op % 8 {
		case 0, 1, 2:
			sim.write(p)
		case 3:
			i, j := p.intn(n), p.intn(n)
			sim.set(i, Sync(sim.states[i], sim.states[j]))
		case 4, 5:
			if len(sim.pending) == 0 {
				continue
			}
			k := p.intn(len(sim.pending))
			m := sim.pending[k]
			sim.set(m.to, Sync(sim.states[m.to], m.state))
			if p.intn(2) == 0 {
				sim.pending = slices.Delete(sim.pending, k, k+1)
			}
		case 6:
			if len(sim.pending) > 0 {
				k := p.intn(len(sim.pending))
				sim.pending = slices.Delete(sim.pending, k, k+1)
			}
		case 7:
			if op < 128 {
				i, j := p.intn(n), p.intn(n) // read repair between two
				m := Sync(sim.states[i], sim.states[j])
				sim.set(i, m)
				sim.set(j, m)
				continue
			}
			i := p.intn(n)
			next := (i + 1) % n
			sim.set(next, Sync(sim.states[next], sim.states[i]))
			sim.states[i] = DVVSet{}
			sim.epochs[i]++
			sim.actors[i] = ReplicaActor(fmt.Sprintf("n%d", i), sim.epochs[i])
		}
	}
	return sim
}

func (sim *dvvSim) set(i int, s DVVSet) {
	if err := s.Validate(); err != nil {
		sim.t.Fatalf("replica %d: invalid state %s: %v", i, fmtState(s), err)
	}
	sim.states[i] = s
	sim.history = append(sim.history, s)
}

func (sim *dvvSim) write(p *dvvProg) {
	n := len(sim.states)
	c := p.intn(n)
	var ctx DVVContext
	switch p.intn(4) {
	case 1:
		ctx = sim.states[p.intn(n)].Join()
	case 2:
		ctx = sim.history[p.intn(len(sim.history))].Join()
	case 3:
		ctx = Sync(sim.states[p.intn(n)], sim.states[p.intn(n)]).Join()
	}
	val := Value{Data: fmt.Appendf(nil, "w%d", len(sim.writes))}
	if p.intn(4) == 0 {
		val = Value{Tombstone: true}
	}
	if p.intn(3) == 0 {
		val.Expires = int64(1 + p.intn(3)) // a TTL, or a tombstone's delete time
	}
	actor := sim.actors[c]
	s, d, err := Update(sim.states[c], ctx, actor, val)
	if err != nil {
		sim.t.Fatalf("Update: %v", err)
	}
	want := Dot{Counter: max(sim.states[c].Join().Get(actor), ctx.Get(actor)) + 1, Actor: actor}
	if d != want {
		sim.t.Fatalf("Update minted %+v, want %+v", d, want)
	}
	if sim.minted[d] {
		sim.t.Fatalf("dot %+v minted twice", d)
	}
	sim.minted[d] = true
	sim.writes = append(sim.writes, dvvWrite{dot: d, val: val, ctx: ctx})
	sim.set(c, s)
	mask := p.next()
	for j := range n {
		if j != c && mask>>j&1 == 1 {
			sim.pending = append(sim.pending, dvvMsg{to: j, state: s})
		}
	}
}

// pick returns a state the simulation has held, chosen by i.
func (sim *dvvSim) pick(i uint16) DVVSet {
	return sim.history[int(i)%len(sim.history)]
}

// sibMap returns the siblings of s by dot.
func sibMap(t testing.TB, s DVVSet) map[Dot]Value {
	t.Helper()
	m := map[Dot]Value{}
	for _, x := range s.Siblings() {
		if _, dup := m[x.Dot]; dup {
			t.Fatalf("dot %+v twice in %s", x.Dot, fmtState(s))
		}
		m[x.Dot] = x.Value
	}
	return m
}

func sameValue(a, b Value) bool {
	return a.Tombstone == b.Tombstone && a.Expires == b.Expires && bytes.Equal(a.Data, b.Data)
}

func sameSiblings(a, b map[Dot]Value) bool {
	return maps.EqualFunc(a, b, sameValue)
}

// maxContext is the element-wise maximum of two valid contexts.
func maxContext(a, b DVVContext) DVVContext {
	var out DVVContext
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case j == len(b) || (i < len(a) && a[i].Actor < b[j].Actor):
			out = append(out, a[i])
			i++
		case i == len(a) || b[j].Actor < a[i].Actor:
			out = append(out, b[j])
			j++
		default:
			out = append(out, ActorCounter{Actor: a[i].Actor, Counter: max(a[i].Counter, b[j].Counter)})
			i++
			j++
		}
	}
	return out
}

func sameContext(a, b DVVContext) bool {
	return slices.EqualFunc(a, b, func(x, y ActorCounter) bool { return x.Actor == y.Actor && x.Counter == y.Counter })
}

// checkSyncSpec checks Sync(a, b) against the DVVSet sync rule stated on
// dots: a sibling of either survives exactly when the other state has it
// too or has not seen its dot; the history is the maximum of both.
func checkSyncSpec(t testing.TB, a, b DVVSet) DVVSet {
	t.Helper()
	got := Sync(a, b)
	if err := got.Validate(); err != nil {
		t.Fatalf("Sync(%s, %s) = %s invalid: %v", fmtState(a), fmtState(b), fmtState(got), err)
	}
	am, bm := sibMap(t, a), sibMap(t, b)
	ja, jb := a.Join(), b.Join()
	want := map[Dot]Value{}
	for d, v := range am {
		w, inB := bm[d]
		if inB && !sameValue(v, w) {
			t.Fatalf("dot %+v has two values: %+v, %+v", d, v, w)
		}
		if inB || !jb.Covers(d) {
			want[d] = v
		}
	}
	for d, v := range bm {
		if _, inA := am[d]; inA || !ja.Covers(d) {
			want[d] = v
		}
	}
	if gm := sibMap(t, got); !sameSiblings(gm, want) {
		t.Fatalf("Sync(%s, %s) = %s; want siblings %v", fmtState(a), fmtState(b), fmtState(got), sibStringsOf(want))
	}
	if j := got.Join(); !sameContext(j, maxContext(ja, jb)) {
		t.Fatalf("Join(Sync(%s, %s)) = %v, want %v", fmtState(a), fmtState(b), j, maxContext(ja, jb))
	}
	return got
}

func sibStringsOf(m map[Dot]Value) []string {
	var out []string
	for d, v := range m {
		out = append(out, fmt.Sprintf("%s:%d=%s/%v/%d", d.Actor, d.Counter, v.Data, v.Tombstone, v.Expires))
	}
	slices.Sort(out)
	return out
}

func mustEqual(t testing.TB, what string, got, want DVVSet) {
	t.Helper()
	if !got.Equal(want) {
		t.Fatalf("%s: %s, want %s", what, fmtState(got), fmtState(want))
	}
}

// addDVVSeeds adds hand-written programs and deterministic random ones.
func addDVVSeeds(f *testing.F, add func(prog []byte, r *rand.Rand)) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, prog := range [][]byte{
		nil,
		{0},
		// 3 replicas; concurrent blind writes at 0 and 1, shipped nowhere;
		// sync 2←0, 2←1; a write at 2 with its own context.
		{1, 0, 0, 0, 0, 8, 1, 0, 0, 0, 3, 2, 0, 3, 2, 1, 0, 2, 1, 2, 1, 0},
		// Stale context: write, write with context, write with stale context.
		{0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1, 0, 0, 2, 1, 0, 1},
		// Delete with context, shipped everywhere, duplicated deliveries.
		{2, 0, 0, 0, 1, 255, 0, 0, 1, 0, 0, 255, 4, 0, 1, 4, 0, 0, 5, 1, 1},
		// Rebuild of a replica under a new epoch, then writes there.
		{0, 0, 0, 0, 0, 255, 135, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 3, 1, 0},
	} {
		add(prog, r)
	}
	for range 24 {
		prog := make([]byte, 8+r.IntN(120))
		for i := range prog {
			prog[i] = byte(r.Uint32())
		}
		add(prog, r)
	}
}

func FuzzSyncCommutative(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, r *rand.Rand) {
		f.Add(prog, uint16(r.Uint32()), uint16(r.Uint32()))
	})
	f.Fuzz(func(t *testing.T, prog []byte, i, j uint16) {
		sim := runDVVSim(t, prog)
		a, b := sim.pick(i), sim.pick(j)
		ab := checkSyncSpec(t, a, b)
		mustEqual(t, "Sync(b, a)", checkSyncSpec(t, b, a), ab)
		// Replicas' current states too.
		x, y := sim.states[int(i)%len(sim.states)], sim.states[int(j)%len(sim.states)]
		mustEqual(t, "Sync(y, x)", checkSyncSpec(t, y, x), checkSyncSpec(t, x, y))
	})
}

func FuzzSyncAssociative(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, r *rand.Rand) {
		f.Add(prog, uint16(r.Uint32()), uint16(r.Uint32()), uint16(r.Uint32()))
	})
	f.Fuzz(func(t *testing.T, prog []byte, i, j, k uint16) {
		sim := runDVVSim(t, prog)
		a, b, c := sim.pick(i), sim.pick(j), sim.pick(k)
		left := checkSyncSpec(t, checkSyncSpec(t, a, b), c)
		right := checkSyncSpec(t, a, checkSyncSpec(t, b, c))
		mustEqual(t, "a∨(b∨c) vs (a∨b)∨c", right, left)
		mustEqual(t, "SyncAll(c, a, b)", SyncAll(c, a, b), left)
		mustEqual(t, "(a∨c)∨b", Sync(Sync(a, c), b), left)
	})
}

func FuzzSyncIdempotent(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, r *rand.Rand) {
		f.Add(prog, uint16(r.Uint32()), uint16(r.Uint32()))
	})
	f.Fuzz(func(t *testing.T, prog []byte, i, j uint16) {
		sim := runDVVSim(t, prog)
		a, b := sim.pick(i), sim.pick(j)
		mustEqual(t, "Sync(a, a)", checkSyncSpec(t, a, a), a)
		ab := Sync(a, b)
		// Receiving either state again changes nothing.
		mustEqual(t, "Sync(ab, a)", Sync(ab, a), ab)
		mustEqual(t, "Sync(ab, b)", Sync(ab, b), ab)
		mustEqual(t, "Sync(b, ab)", Sync(b, ab), ab)
		mustEqual(t, "Sync(ab, ab)", Sync(ab, ab), ab)
		mustEqual(t, "SyncAll(a, b, a, b)", SyncAll(a, b, a, b), ab)
		// Discarding twice with one context is discarding once; discarding
		// with the empty context changes nothing.
		d := Discard(ab, a.Join())
		mustEqual(t, "Discard(Discard(ab, a.Join()), a.Join())", Discard(d, a.Join()), d)
		mustEqual(t, "Discard(ab, nil)", Discard(ab, nil), ab)
	})
}

// FuzzNoLostUpdates checks that Update and Discard drop exactly the
// siblings whose dots the context covers, for states and contexts of a
// simulation, and contexts a little off them (as a buggy or lying client
// could send).
func FuzzNoLostUpdates(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, r *rand.Rand) {
		f.Add(prog, uint16(r.Uint32()), uint16(r.Uint32()), uint16(r.Uint32()), uint8(r.Uint32()), uint8(r.Uint32()))
	})
	f.Fuzz(func(t *testing.T, prog []byte, i, j, k uint16, who, skew uint8) {
		sim := runDVVSim(t, prog)
		s := sim.pick(i)
		ctx := skewContext(sim.pick(j).Join(), skew)
		actor := "z.1" // an actor the simulation never uses
		if int(who) < 4*len(sim.actors) {
			actor = sim.actors[int(who)%len(sim.actors)]
		}
		v := Value{Data: []byte("new")}
		out, d, err := Update(s, ctx, actor, v)
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
		if err := out.Validate(); err != nil {
			t.Fatalf("Update = %s invalid: %v", fmtState(out), err)
		}
		wantDot := Dot{Counter: max(s.Join().Get(actor), ctx.Get(actor)) + 1, Actor: actor}
		if d != wantDot {
			t.Fatalf("minted %+v, want %+v", d, wantDot)
		}
		before, after := sibMap(t, s), sibMap(t, out)
		want := map[Dot]Value{d: v}
		for dot, val := range before {
			if !ctx.Covers(dot) {
				want[dot] = val
			}
		}
		if !sameSiblings(after, want) {
			t.Fatalf("Update(%s, %v) = %s; want siblings %v", fmtState(s), ctx, fmtState(out), sibStringsOf(want))
		}
		wantJoin := maxContext(maxContext(s.Join(), ctx), DVVContext{{Actor: actor, Counter: d.Counter}})
		if !sameContext(out.Join(), wantJoin) {
			t.Fatalf("Join(Update) = %v, want %v", out.Join(), wantJoin)
		}
		// A later discard drops only what its own context covers.
		ctx2 := skewContext(sim.pick(k).Join(), skew>>4)
		disc := Discard(out, ctx2)
		for dot, val := range after {
			if !ctx2.Covers(dot) {
				if got, ok := sibMap(t, disc)[dot]; !ok || !sameValue(got, val) {
					t.Fatalf("Discard(%s, %v) = %s lost %+v", fmtState(out), ctx2, fmtState(disc), dot)
				}
			}
		}
		if disc.Size() != countUncovered(after, ctx2) {
			t.Fatalf("Discard(%s, %v) = %s kept a covered sibling", fmtState(out), ctx2, fmtState(disc))
		}
		if !sameContext(disc.Join(), maxContext(out.Join(), ctx2)) {
			t.Fatalf("Join(Discard) = %v", disc.Join())
		}
	})
}

func countUncovered(m map[Dot]Value, ctx DVVContext) int {
	n := 0
	for d := range m {
		if !ctx.Covers(d) {
			n++
		}
	}
	return n
}

// skewContext moves each counter of c by -1, 0 or +1 as chosen by bits of
// skew (0 leaves c alone), dropping entries that reach 0.
func skewContext(c DVVContext, skew uint8) DVVContext {
	if skew == 0 {
		return c
	}
	var out DVVContext
	for i, e := range c {
		switch (int(skew) >> (i % 4 * 2)) & 3 {
		case 1:
			e.Counter--
		case 2:
			e.Counter++
		}
		if e.Counter > 0 {
			out = append(out, e)
		}
	}
	return out
}

// FuzzConvergence runs a random execution, then syncs every replica with
// every other (pending deliveries may have been lost), and checks that all
// replicas are equal and hold exactly the written values that no write's
// context covered: nothing acknowledged and not superseded is lost,
// nothing superseded comes back.
func FuzzConvergence(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, _ *rand.Rand) { f.Add(prog) })
	f.Fuzz(func(t *testing.T, prog []byte) {
		sim := runDVVSim(t, prog)
		n := len(sim.states)
		for i := range n {
			for j := range n {
				if i != j {
					sim.set(i, checkSyncSpec(t, sim.states[i], sim.states[j]))
				}
			}
		}
		final := sim.states[0]
		for i := 1; i < n; i++ {
			mustEqual(t, fmt.Sprintf("replica %d vs replica 0", i), sim.states[i], final)
		}
		want := map[Dot]Value{}
		for _, w := range sim.writes {
			covered := false
			for _, x := range sim.writes {
				if x.ctx.Covers(w.dot) {
					covered = true
					break
				}
			}
			if !covered {
				want[w.dot] = w.val
			}
		}
		if got := sibMap(t, final); !sameSiblings(got, want) {
			t.Fatalf("final state %s; want siblings %v", fmtState(final), sibStringsOf(want))
		}
		// Every state ever held is subsumed by the final one.
		for _, h := range sim.history {
			mustEqual(t, "Sync(final, past state)", Sync(final, h), final)
		}
		// Deleted and the pick agree with the siblings.
		live := false
		for _, v := range want {
			live = live || !v.Tombstone
		}
		if final.Deleted() == live {
			t.Fatalf("Deleted() = %v with siblings %v", final.Deleted(), sibStringsOf(want))
		}
		if l, ok := final.Last(); ok != (len(want) > 0) || (ok && !sameValue(want[l.Dot], l.Value)) {
			t.Fatalf("Last() = %+v, %v", l, ok)
		}
	})
}

// FuzzDVVSetMsgpack decodes arbitrary bytes as a DVVSet: decoding either
// fails with ErrBadDVVSet or yields a valid state that behaves like any
// state. The same bytes also build an arbitrary, possibly malformed, state
// directly, on which nothing may panic.
func FuzzDVVSetMsgpack(f *testing.F) {
	addDVVSeeds(f, func(prog []byte, r *rand.Rand) {
		sim := runDVVSim(f, prog)
		b, err := msgpack.Marshal(sim.pick(uint16(r.Uint32())))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	})
	for _, s := range []DVVSet{
		dstate(dentry("b", 1), dentry("a", 1)),
		dstate(dentry("a", 1, "x", "y", "z")),
		dstate(dentry("a", 0)),
		dstate(dentry("", 3, "x")),
		dstate(dentry("a", 2, "x", "y"), dentry("a", 2, "x", "z")),
	} {
		b, err := msgpack.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, b := range hugeClaims {
		f.Add(b)
	}
	f.Add([]byte{0xc0})
	ref := dstate(dentry("a", 3, "x", "†"), dentry("m", 1, "y"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s DVVSet
		if err := msgpack.Unmarshal(data, &s); err != nil {
			if !errors.Is(err, ErrBadDVVSet) {
				t.Fatalf("decode error %v does not wrap ErrBadDVVSet", err)
			}
			if s.Entries != nil {
				t.Fatalf("failed decode left %s", fmtState(s))
			}
		} else {
			if err := s.Validate(); err != nil {
				t.Fatalf("decoded an invalid state %s: %v", fmtState(s), err)
			}
			checkAnyState(t, s, ref)
			b, err := msgpack.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var again DVVSet
			if err := msgpack.Unmarshal(b, &again); err != nil || !again.Equal(s) {
				t.Fatalf("re-encoding %s gave %s, %v", fmtState(s), fmtState(again), err)
			}
		}
		checkAnyState(t, arbitraryState(data), ref)
	})
}

// arbitraryState builds a state from data with no regard for validity:
// empty, repeated or unsorted actors, zero or huge counters, more values
// than the counter allows, one dot with different values.
func arbitraryState(data []byte) DVVSet {
	p := &dvvProg{b: data}
	var s DVVSet
	for range p.intn(5) {
		e := DVVEntry{Actor: []string{"", "a", "b", "c"}[p.intn(4)]}
		switch c := p.next(); {
		case c >= 250:
			e.Counter = math.MaxUint64 - uint64(c-250)
		default:
			e.Counter = uint64(c % 6)
		}
		for range p.intn(5) {
			e.Values = append(e.Values, Value{Data: []byte([]string{"", "x", "y"}[p.intn(3)]), Tombstone: p.intn(2) == 0, Expires: int64(p.intn(3))})
		}
		s.Entries = append(s.Entries, e)
	}
	return s
}

// checkAnyState runs every function on s, which may be malformed: none may
// panic. On a valid s (even one no execution makes, where a dot may have
// another value than in ref) it checks the algebra of Sync, Update's
// contract and the context encoding.
func checkAnyState(t *testing.T, s, ref DVVSet) {
	t.Helper()
	_, _, uerr := Update(s, ref.Join(), "a", Value{Data: []byte("v")})
	_ = Sync(s, ref)
	_ = Sync(ref, s)
	_ = Sync(s, s)
	_ = Discard(s, ref.Join())
	_ = s.Siblings()
	_ = s.Values()
	_, _ = s.Last()
	_, _ = s.LastLive()
	_ = s.Deleted()
	_ = s.Size()
	_ = s.Equal(ref)
	enc := EncodeDVVContext(s.Join())
	if err := s.Validate(); err != nil {
		if !errors.Is(err, ErrBadDVVSet) {
			t.Fatalf("Validate error %v does not wrap ErrBadDVVSet", err)
		}
		if !errors.Is(uerr, ErrBadDVVSet) {
			t.Fatalf("Update of invalid state %s: %v", fmtState(s), uerr)
		}
		return
	}
	if uerr != nil && !errors.Is(uerr, ErrCounterExhausted) {
		t.Fatalf("Update of valid state %s: %v", fmtState(s), uerr)
	}
	mustEqual(t, "Sync(s, s)", Sync(s, s), s)
	sr := Sync(s, ref)
	if err := sr.Validate(); err != nil {
		t.Fatalf("Sync of valid states invalid: %v", err)
	}
	mustEqual(t, "Sync(ref, s)", Sync(ref, s), sr)
	mustEqual(t, "Sync(sr, s)", Sync(sr, s), sr)
	mustEqual(t, "Sync(sr, ref)", Sync(sr, ref), sr)
	u := dstate(dentry("a", 2, "p", "q"), dentry("b", 7, "r"))
	mustEqual(t, "associativity", Sync(Sync(s, ref), u), Sync(s, Sync(ref, u)))
	if c, err := DecodeDVVContext(enc); err != nil || !sameContext(c, s.Join()) {
		t.Fatalf("context %q of %s decoded to %v, %v", enc, fmtState(s), c, err)
	}
}

func FuzzDecodeDVVContext(f *testing.F) {
	for _, s := range []string{
		"",
		"d1.Am4xAQ",
		"d1.BG4xLjGsAgRuMi4x____________AQ",
		"d1.BG4xLjEBBG4yLjEB",
		"d1.Am4xAR",
		"d1.",
		"d1",
		"l1.AAAAAAAAAAFuMQ",
		"d1.AWEAAWIB",
		"d1.gQABYQE",
		"d1.Am4x\nAQ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := DecodeDVVContext(s)
		if err != nil {
			if !errors.Is(err, ErrBadContext) {
				t.Fatalf("DecodeDVVContext(%q) error %v does not wrap ErrBadContext", s, err)
			}
			if c != nil {
				t.Fatalf("DecodeDVVContext(%q) = %v with error", s, c)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("DecodeDVVContext(%q) = %v invalid: %v", s, c, err)
		}
		if got := EncodeDVVContext(c); got != s {
			t.Fatalf("EncodeDVVContext(DecodeDVVContext(%q)) = %q", s, got)
		}
		if s != "" && !strings.HasPrefix(s, DVVContextPrefix) {
			t.Fatalf("accepted %q without the prefix", s)
		}
	})
}
