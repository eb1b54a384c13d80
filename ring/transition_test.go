package ring

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func mustRetarget(tb testing.TB, m, target *Map, v uint64) *Map {
	tb.Helper()
	next, err := m.Retarget(target, v)
	if err != nil {
		tb.Fatalf("Retarget to version %d: %v", v, err)
	}
	checkInvariants(tb, next)
	return next
}

// checkInvariants fails unless m holds every invariant of a Map and
// survives an encoding round trip.
func checkInvariants(tb testing.TB, m *Map) {
	tb.Helper()
	if err := m.Check(); err != nil {
		tb.Fatalf("version %d: %v", m.Version(), err)
	}
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		tb.Fatalf("version %d does not decode: %v", m.Version(), err)
	}
	if !got.Equal(m) || got.Version() != m.Version() || !slices.Equal(got.since, m.since) || got.Replicas() != m.Replicas() {
		tb.Fatalf("version %d: round trip differs", m.Version())
	}
}

// receivingAll returns, for every node of m, Receiving(node).
func receivingAll(m *Map) map[string][]uint32 {
	out := map[string][]uint32{}
	for _, id := range m.Nodes() {
		if ps := m.Receiving(id, nil); len(ps) > 0 {
			out[id] = ps
		}
	}
	return out
}

// finish marks every receiver done, node by node, and returns the final
// map; each MarkDone must flip exactly what it completes.
func finish(tb testing.TB, m *Map) *Map {
	tb.Helper()
	for id, ps := range receivingAll(m) {
		next, flipped, err := m.MarkDone(id, ps, m.Version()+1)
		if err != nil {
			tb.Fatal(err)
		}
		checkInvariants(tb, next)
		checkFlipped(tb, m, next, flipped)
		m = next
	}
	if m.moving() {
		tb.Fatalf("partitions still moving after every receiver is done: %v", receivingAll(m))
	}
	return m
}

// checkFlipped: each flipped partition moved in prev, is no longer moving,
// and its current row is prev's target row, changed at next's version;
// every other partition's current row is unchanged.
func checkFlipped(tb testing.TB, prev, next *Map, flipped []uint32) {
	tb.Helper()
	if !slices.IsSorted(flipped) || len(slices.Compact(slices.Clone(flipped))) != len(flipped) {
		tb.Fatalf("flipped %v not ascending and distinct", flipped)
	}
	for p := range uint32(prev.Partitions()) {
		was, now := prev.Owners(p, nil), next.Owners(p, nil)
		if slices.Contains(flipped, p) {
			if !prev.Moving(p) || next.Moving(p) || !slices.Equal(now, prev.Target(p, nil)) || next.Since(p) != next.Version() {
				tb.Fatalf("partition %d flipped badly: moving %v→%v, current %v, target was %v, since %d",
					p, prev.Moving(p), next.Moving(p), now, prev.Target(p, nil), next.Since(p))
			}
		} else if !slices.Equal(was, now) {
			tb.Fatalf("partition %d: current row changed from %v to %v without a flip", p, was, now)
		}
	}
}

// TestStillMapBehavesAsBefore: a map without moving partitions answers the
// transition questions with its current rows.
func TestStillMapBehavesAsBefore(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3, 4), 64)
	checkInvariants(t, m)
	if m.TargetMap() != m || !slices.Equal(m.CurrentNodes(), m.Nodes()) || !slices.Equal(m.TargetNodes(), m.Nodes()) {
		t.Fatal("node sets or TargetMap of a still map differ")
	}
	for p := range uint32(64) {
		own := m.Owners(p, nil)
		if m.Moving(p) || m.Since(p) != 1 || !slices.Equal(m.Target(p, nil), own) {
			t.Fatalf("partition %d: moving %v since %d target %v", p, m.Moving(p), m.Since(p), m.Target(p, nil))
		}
		for rf := 0; rf <= 5; rf++ {
			set, counted := m.WriteSet(p, rf, nil)
			if want := own[:min(rf, len(own))]; !slices.Equal(set, want) || counted != len(want) {
				t.Fatalf("WriteSet(%d, %d) = %v, %d", p, rf, set, counted)
			}
		}
		if len(m.Receivers(p, nil)) != 0 || m.Done(p, own[0]) || !m.Owns(p, own[3]) {
			t.Fatalf("partition %d: receivers, done or owns wrong", p)
		}
	}
	if len(receivingAll(m)) != 0 {
		t.Fatal("a still map has receivers")
	}
	if m.Since(64) != 0 || m.Moving(64) || m.Owns(64, "node-1") {
		t.Fatal("out of range partition")
	}
}

// TestRetargetJoin: adding a node moves only the partitions the claim
// gives it; the new node is their only receiver; writes go to it but do
// not count; reads do not see it until the flip.
func TestRetargetJoin(t *testing.T) {
	q := 256
	m := mustClaim(t, nil, claimNodes(1, 2, 3, 4), q)
	claimed := mustClaim(t, m, claimNodes(1, 2, 3, 4, 5), q)
	next := mustRetarget(t, m, claimed, 2)
	if next.Replicas() != 4 || !slices.Equal(next.TargetNodes(), claimed.Nodes()) || !slices.Equal(next.CurrentNodes(), m.Nodes()) {
		t.Fatalf("R %d, target nodes %v, current nodes %v", next.Replicas(), next.TargetNodes(), next.CurrentNodes())
	}
	if !next.TargetMap().Equal(claimed) {
		t.Fatal("TargetMap is not the claimed map")
	}
	recv := receivingAll(next)
	if len(recv) != 1 || len(recv["node-5"]) == 0 {
		t.Fatalf("receivers %v, want only node-5", recv)
	}
	for p := range uint32(q) {
		cur, tgt := m.Owners(p, nil), claimed.Owners(p, nil)
		changed := !slices.Equal(cur, tgt)
		if !slices.Equal(next.Owners(p, nil), cur) || !slices.Equal(next.Target(p, nil), tgt) {
			t.Fatalf("partition %d: rows changed", p)
		}
		if next.Moving(p) != slices.Contains(recv["node-5"], p) {
			t.Fatalf("partition %d: moving %v, node-5 receiving %v", p, next.Moving(p), slices.Contains(recv["node-5"], p))
		}
		if changed {
			if next.Since(p) != 2 {
				t.Fatalf("partition %d changed with since %d", p, next.Since(p))
			}
		} else if next.Since(p) != 1 {
			t.Fatalf("unchanged partition %d has since %d", p, next.Since(p))
		}
		if changed && !next.Moving(p) {
			// Only reorders the current owners later: flipped at once.
			if !slices.Equal(next.Owners(p, nil), tgt) {
				t.Fatalf("partition %d: unmoving but current %v, target %v", p, next.Owners(p, nil), tgt)
			}
		}
		set, counted := next.WriteSet(p, 3, nil)
		if counted != 3 || !slices.Equal(set[:3], cur[:3]) {
			t.Fatalf("partition %d: write set %v counted %d, current %v", p, set, counted, cur)
		}
		for _, id := range tgt[:3] {
			if !slices.Contains(set, id) {
				t.Fatalf("partition %d: write set %v misses target owner %s", p, set, id)
			}
		}
		if next.Moving(p) && next.Owns(p, "node-5") != true {
			t.Fatalf("partition %d: node-5 does not own a partition it receives", p)
		}
	}
	done := finish(t, next)
	if !done.Equal(claimed) || done.Version() != 3 || done.Replicas() != 5 {
		t.Fatalf("after every receiver is done: equal %v, version %d", done.Equal(claimed), done.Version())
	}
}

// TestRetargetGrowAndShrinkR: going from 2 to 3 nodes widens the rows;
// Replicas stays at the shortest current row until the last flip.
// Draining back to 2 narrows them; the leaving node leaves the map only
// when the last partition it held flips away.
func TestRetargetGrowAndShrinkR(t *testing.T) {
	q := 16
	m := mustClaim(t, nil, claimNodes(1, 2), q)
	grown := mustRetarget(t, m, mustClaim(t, m, claimNodes(1, 2, 3), q), 2)
	if grown.Replicas() != 2 || len(grown.Receiving("node-3", nil)) != q {
		t.Fatalf("R %d, node-3 receives %v", grown.Replicas(), grown.Receiving("node-3", nil))
	}
	half, flipped, err := grown.MarkDone("node-3", []uint32{0, 1, 2}, 3)
	if err != nil || !slices.Equal(flipped, []uint32{0, 1, 2}) || half.Replicas() != 2 {
		t.Fatalf("flipped %v, R %d, %v", flipped, half.Replicas(), err)
	}
	checkInvariants(t, half)
	if len(half.Owners(0, nil)) != 3 || len(half.Owners(5, nil)) != 2 {
		t.Fatal("flipped rows should be 3 long, the others 2")
	}
	full := finish(t, half)
	if full.Replicas() != 3 {
		t.Fatalf("R = %d after growing", full.Replicas())
	}

	shrunk := mustRetarget(t, full, mustClaim(t, full.TargetMap(), claimNodes(1, 2), q), full.Version()+1)
	if !shrunk.HasNode("node-3") || slices.Contains(shrunk.TargetNodes(), "node-3") || shrunk.Replicas() != 2 {
		t.Fatalf("leaving node: in map %v, target nodes %v, R %d", shrunk.HasNode("node-3"), shrunk.TargetNodes(), shrunk.Replicas())
	}
	for p := range uint32(q) {
		cur := full.Owners(p, nil)
		// node-3 last: dropping it needs no data, so the partition flips
		// at once; else the node moving up is a receiver.
		if last := cur[2] == "node-3"; last == shrunk.Moving(p) {
			t.Fatalf("partition %d (%v): moving %v", p, cur, shrunk.Moving(p))
		}
		if slices.Contains(shrunk.Receivers(p, nil), "node-3") {
			t.Fatalf("partition %d: the leaving node receives", p)
		}
	}
	gone := finish(t, shrunk)
	if gone.HasNode("node-3") || gone.Replicas() != 2 {
		t.Fatalf("after the drain: node-3 in map %v, R %d", gone.HasNode("node-3"), gone.Replicas())
	}
}

// TestRetargetNewCluster: with no current owners there is nothing to
// stream; the target becomes current at once.
func TestRetargetNewCluster(t *testing.T) {
	target := mustClaim(t, nil, claimNodes(1, 2, 3), 64)
	for _, m := range []*Map{nil, {}} {
		got := mustRetarget(t, m, target, 5)
		if got.moving() || !got.Equal(target) || got.Version() != 5 || got.Since(7) != 5 {
			t.Fatalf("new cluster: moving %v, equal %v, version %d", got.moving(), got.Equal(target), got.Version())
		}
	}
	if _, err := (&Map{}).Retarget(target, 0); !errors.Is(err, ErrVersion) {
		t.Fatalf("version 0: %v", err)
	}
}

func TestTransitionErrors(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3), 64)
	if _, err := m.Retarget(mustClaim(t, nil, claimNodes(1, 2), 64), 1); !errors.Is(err, ErrVersion) {
		t.Fatalf("Retarget to the same version: %v", err)
	}
	if _, err := m.Retarget(mustClaim(t, nil, claimNodes(1, 2), 32), 2); !errors.Is(err, ErrPartitionsChanged) {
		t.Fatalf("Retarget to another Q: %v", err)
	}
	if _, err := m.Retarget(nil, 2); err == nil {
		t.Fatal("Retarget to nil")
	}
	if _, _, err := m.MarkDone("node-1", nil, 1); !errors.Is(err, ErrVersion) {
		t.Fatalf("MarkDone at the same version: %v", err)
	}
	if _, err := m.Substitute("node-9", "node-10"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("Substitute of an unknown node: %v", err)
	}
	if _, err := m.Substitute("node-1", "node-2"); !errors.Is(err, ErrNodeInUse) {
		t.Fatalf("Substitute onto a node in use: %v", err)
	}
	if _, err := m.Substitute("node-1", ""); err == nil {
		t.Fatal("Substitute with an empty id")
	}
}

// TestMarkDoneIgnores: reports of non-receivers, still or out-of-range
// partitions change nothing; a repeated report flips once.
func TestMarkDoneIgnores(t *testing.T) {
	q := 64
	m := mustClaim(t, nil, claimNodes(1, 2, 3), q)
	next := mustRetarget(t, m, mustClaim(t, m, claimNodes(1, 2, 3, 4), q), 2)
	recv := next.Receiving("node-4", nil)
	var still []uint32
	for p := range uint32(q) {
		if !next.Moving(p) {
			still = append(still, p)
		}
	}
	same, flipped, err := next.MarkDone("node-1", recv, 3)
	if err != nil || len(flipped) != 0 || !same.Equal(next) {
		t.Fatalf("a non-receiver's report changed the map: flipped %v, %v", flipped, err)
	}
	same, flipped, _ = next.MarkDone("node-4", append(still, uint32(q), 1<<31), 3)
	if len(flipped) != 0 || !same.Equal(next) {
		t.Fatalf("reports of still partitions changed the map: %v", flipped)
	}
	p := recv[0]
	one, flipped, _ := next.MarkDone("node-4", []uint32{p, p}, 3)
	if !slices.Equal(flipped, []uint32{p}) || one.Moving(p) || one.Done(p, "node-4") {
		t.Fatalf("flipped %v", flipped)
	}
	checkFlipped(t, next, one, flipped)
}

// TestStillCurrent: a report made under an older map speaks only for the
// partitions that did not change since.
func TestStillCurrent(t *testing.T) {
	q := 64
	m := mustClaim(t, nil, claimNodes(1, 2, 3), q)
	a := mustRetarget(t, m, mustClaim(t, m, claimNodes(1, 2, 3, 4), q), 2)
	recv := a.Receiving("node-4", nil)
	// A fifth node changes some of node-4's partitions' targets.
	b := mustRetarget(t, a, mustClaim(t, a.TargetMap(), claimNodes(1, 2, 3, 4, 5), q), 3)
	got := b.StillCurrent(append(slices.Clone(recv), uint32(q)), 2, nil)
	for _, p := range recv {
		if slices.Contains(got, p) != (b.Since(p) <= 2) {
			t.Fatalf("partition %d (since %d): still current %v", p, b.Since(p), slices.Contains(got, p))
		}
	}
	if len(got) == len(recv) || slices.Contains(got, uint32(q)) {
		t.Fatalf("nothing filtered: %d of %d", len(got), len(recv))
	}
	if len(b.StillCurrent(recv, 3, nil)) != len(recv) {
		t.Fatal("a report at the current version is filtered")
	}
}

// TestMarkDoneWaitsForEveryReceiver: a partition with two receivers flips
// only when both are done.
func TestMarkDoneWaitsForEveryReceiver(t *testing.T) {
	q := 64
	m := mustClaim(t, nil, claimNodes(1, 2, 3), q)
	next := mustRetarget(t, m, mustClaim(t, m, claimNodes(1, 2, 3, 4, 5), q), 2)
	var p uint32
	found := false
	for p = range uint32(q) {
		if r := next.Receivers(p, nil); len(r) == 2 {
			found = true
			break
		}
	}
	if !found {
		t.Skip("no partition with two receivers")
	}
	r := next.Receivers(p, nil)
	a, flipped, _ := next.MarkDone(r[0], []uint32{p}, 3)
	if len(flipped) != 0 || !a.Done(p, r[0]) || a.Done(p, r[1]) || !a.Moving(p) {
		t.Fatalf("one of two receivers done: flipped %v", flipped)
	}
	if slices.Contains(a.Receiving(r[0], nil), p) || !slices.Contains(a.Receiving(r[1], nil), p) {
		t.Fatal("Receiving does not reflect the done mark")
	}
	b, flipped, _ := a.MarkDone(r[1], []uint32{p}, 4)
	if !slices.Equal(flipped, []uint32{p}) || b.Moving(p) {
		t.Fatalf("both done: flipped %v", flipped)
	}
}

// TestRetargetMidTransition: a second change while partitions move keeps
// the progress of partitions whose target stays, restarts the others, and
// a partition retargeted back to its current row stops moving.
func TestRetargetMidTransition(t *testing.T) {
	q := 256
	m := mustClaim(t, nil, claimNodes(1, 2, 3), q)
	t4 := mustClaim(t, m, claimNodes(1, 2, 3, 4), q)
	a := mustRetarget(t, m, t4, 2)
	recv := a.Receiving("node-4", nil)
	half := recv[:len(recv)/2]
	// Mark half done without completing: a second receiver would be
	// needed to see marks kept, so use a 5th node joining too.
	t45 := mustClaim(t, t4, claimNodes(1, 2, 3, 4, 5), q)
	b := mustRetarget(t, a, t45, 3)
	for p := range uint32(q) {
		if slices.Equal(a.Target(p, nil), b.Target(p, nil)) != (b.Since(p) == a.Since(p)) {
			t.Fatalf("partition %d: since %d → %d, target changed %v", p, a.Since(p), b.Since(p), !slices.Equal(a.Target(p, nil), b.Target(p, nil)))
		}
	}
	// Back to the original node set: the claim goes back near m, and every
	// partition whose target is its current row stops moving.
	back := mustRetarget(t, b, m.WithVersion(3), 4)
	for p := range uint32(q) {
		if back.Moving(p) {
			t.Fatalf("partition %d still moves after retargeting to the current rows", p)
		}
	}
	if !back.Equal(m) {
		t.Fatal("retargeting to the current rows is not the current map")
	}
	_ = half
	// Done marks survive a retarget that keeps the partition's target.
	c, _, err := a.MarkDone("node-4", half, 3)
	if err != nil {
		t.Fatal(err)
	}
	same := mustRetarget(t, c, c.TargetMap(), 4)
	if !same.Equal(c) {
		t.Fatal("retargeting to the same target changed the map")
	}
}

// TestSubstitute: the replacement takes the dead node's slots and nothing
// else moves; after Retarget it is the only receiver, of exactly the dead
// node's partitions.
func TestSubstitute(t *testing.T) {
	q := 128
	m := mustClaim(t, nil, claimNodes(1, 2, 3, 4), q)
	sub, err := m.Substitute("node-2", "node-9")
	if err != nil {
		t.Fatal(err)
	}
	checkInvariants(t, sub)
	if sub.Version() != m.Version() || sub.HasNode("node-2") || !sub.HasNode("node-9") {
		t.Fatalf("version %d, nodes %v", sub.Version(), sub.Nodes())
	}
	next := mustRetarget(t, m, sub, 2)
	recv := receivingAll(next)
	if len(recv) != 1 {
		t.Fatalf("receivers %v", recv)
	}
	for p := range uint32(q) {
		cur := m.Owners(p, nil)
		want := slices.Clone(cur)
		if j := slices.Index(want, "node-2"); j >= 0 {
			want[j] = "node-9"
		}
		if !slices.Equal(next.Target(p, nil), want) {
			t.Fatalf("partition %d: target %v, want %v", p, next.Target(p, nil), want)
		}
		if slices.Contains(cur, "node-2") != slices.Contains(recv["node-9"], p) {
			t.Fatalf("partition %d: node-9 receiving %v, dead owner %v", p, slices.Contains(recv["node-9"], p), cur)
		}
	}
	// Mid-transition, Substitute works on the target.
	grow := mustRetarget(t, m, mustClaim(t, m, claimNodes(1, 2, 3, 4, 5), q), 2)
	sub2, err := grow.Substitute("node-5", "node-6")
	if err != nil || !slices.Equal(sub2.Nodes(), []string{"node-1", "node-2", "node-3", "node-4", "node-6"}) {
		t.Fatalf("substitute of a joining node: %v %v", sub2.Nodes(), err)
	}
	next2 := mustRetarget(t, grow, sub2, 3)
	if len(next2.Receiving("node-5", nil)) != 0 || len(next2.Receiving("node-6", nil)) != len(grow.Receiving("node-5", nil)) {
		t.Fatal("the replacement of a joining node does not take over its receipts")
	}
}

// TestWriteSetNoAlloc: WriteSet runs on every write.
func TestWriteSetNoAlloc(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(seq(1, 10)...), DefaultPartitions)
	next := mustRetarget(t, m, mustClaim(t, m, claimNodes(seq(1, 12)...), DefaultPartitions), 2)
	buf := make([]string, 0, 6)
	h := KeyHash("default", "user:1234567")
	var moving uint32
	for p := range uint32(DefaultPartitions) {
		if next.Moving(p) {
			moving = p
			break
		}
	}
	if a := testing.AllocsPerRun(100, func() { buf, _ = next.WriteSet(moving, 3, buf) }); a != 0 {
		t.Fatalf("WriteSet allocates %.1f times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { buf, _ = next.WriteSetHash(h, 3, buf) }); a != 0 {
		t.Fatalf("WriteSetHash allocates %.1f times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { buf = next.PreferenceListHash(h, 3, buf) }); a != 0 {
		t.Fatalf("PreferenceListHash allocates %.1f times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { _ = next.Since(moving); _ = next.Owns(moving, "node-3") }); a != 0 {
		t.Fatalf("Since/Owns allocate %.1f times per call", a)
	}
}

// transitionStep applies one random operation to m: a join or a leave
// (Claim on the target map, Retarget), a node replace (Substitute,
// Retarget) or a receiver's report (MarkDone of a random subset), and
// checks the invariants and what the operation promises. holders[p][id]
// = k models what node id holds of partition p: every write counted for a
// tenant with rf >= k. A current owner at position j starts with k = j+1
// (it was sent the writes of tenants with rf > j); a receiver that reports
// done pulled the union of the current owners and has k = 1; a node that
// owns p in neither row forgets it (it drops the range).
func transitionStep(tb testing.TB, rng *rand.Rand, m *Map, holders []map[string]int, nextID *int) *Map {
	tb.Helper()
	v := m.Version() + 1
	tgt := m.TargetNodes()
	var next *Map
	switch op := rng.IntN(6); {
	case op == 0 && len(tgt) < 12: // join
		*nextID++
		nodes := append(slices.Clone(tgt), fmt.Sprintf("node-%d", *nextID))
		next = mustRetarget(tb, m, mustClaim(tb, m.TargetMap(), idNodes(nodes), m.Partitions()), v)
	case op == 1 && len(tgt) > 1: // leave
		i := rng.IntN(len(tgt))
		nodes := slices.Delete(slices.Clone(tgt), i, i+1+rng.IntN(len(tgt)-i-1+1)/2)
		if len(nodes) == 0 {
			nodes = tgt[:1]
		}
		next = mustRetarget(tb, m, mustClaim(tb, m.TargetMap(), idNodes(nodes), m.Partitions()), v)
	case op == 2: // replace
		*nextID++
		sub, err := m.Substitute(tgt[rng.IntN(len(tgt))], fmt.Sprintf("node-%d", *nextID))
		if err != nil {
			tb.Fatal(err)
		}
		next = mustRetarget(tb, m, sub, v)
	default: // a receiver reports some of its partitions
		recv := receivingAll(m)
		if len(recv) == 0 {
			return m
		}
		ids := make([]string, 0, len(recv))
		for id := range recv {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		id := ids[rng.IntN(len(ids))]
		var ps []uint32
		for _, p := range recv[id] {
			if rng.IntN(3) > 0 {
				ps = append(ps, p)
			}
		}
		if rng.IntN(4) == 0 {
			ps = append(ps, uint32(rng.IntN(m.Partitions()))) // maybe not its own
		}
		var flipped []uint32
		var err error
		next, flipped, err = m.MarkDone(id, ps, v)
		if err != nil {
			tb.Fatal(err)
		}
		checkInvariants(tb, next)
		checkFlipped(tb, m, next, flipped)
		for _, p := range ps {
			if m.Moving(p) && slices.Contains(m.Receivers(p, nil), id) {
				holders[p][id] = 1
			}
		}
	}
	for p := range uint32(m.Partitions()) {
		if next.Since(p) > next.Version() {
			tb.Fatalf("partition %d: since %d above version %d", p, next.Since(p), next.Version())
		}
		changed := !slices.Equal(m.Owners(p, nil), next.Owners(p, nil)) || !slices.Equal(m.Target(p, nil), next.Target(p, nil))
		if changed && next.Since(p) != v {
			tb.Fatalf("partition %d changed but since is %d, not %d", p, next.Since(p), v)
		}
		if !changed && next.Since(p) != m.Since(p) {
			tb.Fatalf("partition %d unchanged but since went %d → %d", p, m.Since(p), next.Since(p))
		}
		// Safety: the current owner at position j holds every write
		// counted for rf > j, so a read of current[:rf] meets every
		// acknowledged write at rf.
		for j, id := range next.Owners(p, nil) {
			if k, ok := holders[p][id]; !ok || k > j+1 {
				tb.Fatalf("partition %d: current owner %s at position %d holds only rf >= %d (held: %v; current %v, was %v → %v)",
					p, id, j, k, ok, next.Owners(p, nil), m.Owners(p, nil), m.Target(p, nil))
			}
		}
		for j, id := range next.Target(p, nil) {
			if k, ok := holders[p][id]; (!ok || k > j+1) && !slices.Contains(next.Receivers(p, nil), id) {
				tb.Fatalf("partition %d: target owner %s at position %d neither holds the data nor receives", p, id, j)
			}
		}
		for id := range holders[p] {
			if !next.Owns(p, id) {
				delete(holders[p], id)
			}
		}
	}
	return next
}

func idNodes(ids []string) []Node {
	ns := make([]Node, len(ids))
	for i, id := range ids {
		ns[i] = Node{ID: id}
	}
	return ns
}

func runTransitions(tb testing.TB, seed uint64, n, q, steps int) {
	rng := rand.New(rand.NewPCG(seed, 14))
	m := mustClaim(tb, nil, claimNodes(seq(1, n)...), q)
	nextID := n
	holders := make([]map[string]int, q)
	for p := range holders {
		holders[p] = map[string]int{}
		for j, id := range m.Owners(uint32(p), nil) {
			holders[p][id] = j + 1
		}
	}
	for range steps {
		m = transitionStep(tb, rng, m, holders, &nextID)
	}
	// Every sequence can finish: all receivers done leaves nothing moving,
	// and the result is the target map.
	want := m.TargetMap()
	done := finish(tb, m)
	if !done.Equal(want) {
		tb.Fatal("finishing every receipt does not reach the target map")
	}
}

// TestTransitionsRandom is the property test: random sequences of joins,
// leaves, replaces and reports keep every invariant, flip only complete
// partitions (current == target after), and never make a node a current
// owner before it holds the partition's data.
func TestTransitionsRandom(t *testing.T) {
	for seed := range uint64(60) {
		runTransitions(t, seed, 1+int(seed%6), 16<<(seed%3), 25)
	}
}

// FuzzTransitions runs the property test on fuzzed seeds and sizes.
func FuzzTransitions(f *testing.F) {
	f.Add(uint64(1), uint8(3), uint8(0), uint8(20))
	f.Add(uint64(7), uint8(1), uint8(2), uint8(40))
	f.Fuzz(func(t *testing.T, seed uint64, n, lq, steps uint8) {
		runTransitions(t, seed, 1+int(n%8), 1<<(lq%8), int(steps%48))
	})
}

// sampleMovingMaps returns maps in the middle of transitions, for fuzz
// seeds.
func sampleMovingMaps(tb testing.TB) []*Map {
	m := mustClaim(tb, nil, claimNodes(1, 2), 8)
	grow, err := m.Retarget(mustClaim(tb, m, claimNodes(1, 2, 3), 8), 2)
	if err != nil {
		tb.Fatal(err)
	}
	half, _, err := grow.MarkDone("node-3", []uint32{0, 1}, 3)
	if err != nil {
		tb.Fatal(err)
	}
	sub, err := half.Substitute("node-1", "node-4")
	if err != nil {
		tb.Fatal(err)
	}
	repl, err := half.Retarget(sub, 4)
	if err != nil {
		tb.Fatal(err)
	}
	return []*Map{grow, half, repl}
}
