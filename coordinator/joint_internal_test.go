package coordinator

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// jointRows returns, for replication factor rf, the current row
// [n0..n(rf-1)] and target rows of every shape a move takes: shifted by
// s nodes (s = 0: the same members; s = rf: disjoint rows), in order and
// reversed (a member moved to another position).
func jointRows(rf int) (cur []string, targets [][]string) {
	for i := 0; i < rf; i++ {
		cur = append(cur, fmt.Sprintf("n%d", i))
	}
	for s := 0; s <= rf; s++ {
		var tgt []string
		for i := 0; i < rf; i++ {
			tgt = append(tgt, fmt.Sprintf("n%d", i+s))
		}
		rev := slices.Clone(tgt)
		slices.Reverse(rev)
		targets = append(targets, tgt, rev)
	}
	return cur, targets
}

// union returns cur followed by the members of tgt not in cur: the write
// set (ring.Map.WriteSet).
func union(cur, tgt []string) []string {
	set := slices.Clone(cur)
	for _, n := range tgt {
		if !slices.Contains(set, n) {
			set = append(set, n)
		}
	}
	return set
}

// countIn returns how many of nodes are in row.
func countIn(nodes, row []string) int {
	n := 0
	for _, x := range nodes {
		if slices.Contains(row, x) {
			n++
		}
	}
	return n
}

// TestTallyJointExhaustive walks every ack/fail assignment of a moving
// partition's write set, in write-set order and reversed, for every level,
// rf and target shape: the tally decides exactly when both rows have the
// level's acks (a node in both rows counting in both) or one row can no
// longer get them, never both, and never stays undecided once all answered.
func TestTallyJointExhaustive(t *testing.T) {
	for rf := 1; rf <= 4; rf++ {
		cur, targets := jointRows(rf)
		for _, tgt := range targets {
			set := union(cur, tgt)
			for _, level := range []string{"one", "quorum", "all"} {
				req := Required(level, rf)
				for mask := 0; mask < 1<<len(set); mask++ { // bit i set = set[i] acks
					var acked []string
					for i, n := range set {
						if mask&(1<<i) != 0 {
							acked = append(acked, n)
						}
					}
					want := countIn(acked, cur) >= req && countIn(acked, tgt) >= req
					for _, reverse := range []bool{false, true} {
						order := slices.Clone(set)
						if reverse {
							slices.Reverse(order)
						}
						tl := tally{required: req, total: len(cur), counted: cur, target: tgt}
						decided, success := false, false
						for _, n := range order {
							if !tl.counts(n) {
								t.Fatalf("%v->%v: %s does not count", cur, tgt, n)
							}
							if slices.Contains(acked, n) {
								if tl.ackFrom(n) {
									decided, success = true, true
								}
							} else if tl.failFrom(n) {
								decided, success = true, false
							}
							if tl.met() && tl.impossible() {
								t.Fatalf("rf=%d %s %v->%v acked=%v: met and impossible at once", rf, level, cur, tgt, acked)
							}
							if decided {
								break
							}
						}
						if !decided {
							t.Fatalf("rf=%d %s %v->%v acked=%v: undecided after all replies", rf, level, cur, tgt, acked)
						}
						if success != want {
							t.Fatalf("rf=%d %s %v->%v acked=%v reverse=%v: success=%v, want %v", rf, level, cur, tgt, acked, reverse, success, want)
						}
					}
				}
			}
		}
	}
}

// TestTallyJointF1 is the review's case: RF 3, [A B C] -> [A B D]; A and
// C acknowledge, B times out, D (the receiver) refuses. Counting the
// current row only met quorum; the joint rule does not, and its message
// names both rows.
func TestTallyJointF1(t *testing.T) {
	cur, tgt := []string{"A", "B", "C"}, []string{"A", "B", "D"}
	tl := tally{required: 2, total: 3, counted: cur, target: tgt}
	if tl.ackFrom("A") || tl.ackFrom("C") {
		t.Fatal("met with A and C only: the target row has one ack")
	}
	if tl.acks != 2 || tl.tacks != 1 {
		t.Fatalf("acks %d/%d, want 2 current, 1 target", tl.acks, tl.tacks)
	}
	if tl.failFrom("D") {
		t.Fatal("impossible after D failed: B may still answer")
	}
	if !tl.failFrom("B") {
		t.Fatal("not impossible after B and D failed")
	}
	msg := tl.rowsStatus("quorum")
	for _, want := range []string{"current [A B C] 2 acknowledged, 1 failed", "target [A B D] 1 acknowledged, 2 failed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
	}
	// The receiver acks and one current owner (C) is down: met.
	tl = tally{required: 2, total: 3, counted: cur, target: tgt}
	tl.failFrom("C")
	tl.ackFrom("D")
	if tl.ackFrom("B") {
		t.Fatal("met with B and D: the current row has one ack")
	}
	if !tl.ackFrom("A") {
		t.Fatal("not met with A, B, D acked")
	}
	// Not moving (target nil): the stable rule, unchanged.
	tl = tally{required: 2, total: 3, counted: cur}
	tl.ackFrom("A")
	if !tl.ackFrom("C") {
		t.Fatal("stable: not met with A and C")
	}
	if tl.counts("D") {
		t.Fatal("stable: a node outside the row counts")
	}
}

// TestTallyJointLoss: the re-stamp after a loss waits for each row to
// answer (acks and losses) as many as the level needs, whichever outcome
// completes it; and with lossIsAck (a re-stamped write) a loss is an ack
// in each row it counts in.
func TestTallyJointLoss(t *testing.T) {
	cur, tgt := []string{"A", "B", "C"}, []string{"A", "B", "D"}
	cases := []struct {
		name   string
		events string // per step: node then a (ack), l (loss), f (fail)
		lostAt int    // step (0-based) at which the re-stamp is decided; -1 never
	}{
		{"loss in both rows then an ack in both", "Bl Aa", 1},
		{"current row answered, target not yet", "Al Ca", -1},
		{"the target row completes by an ack", "Al Ca Da", 2},
		{"the target row completes by a receiver's loss", "Aa Ca Dl", 2},
		{"receiver-only loss: current row met, target answered", "Dl Aa Ca", 2},
		{"receiver-only loss, target row not answered yet", "Dl Ca", -1},
		{"acks meet both rows before any loss counts", "Aa Ba Dl", -1},
		{"loss then a failure: rows still answered", "Al Bf Ca Da", 3},
		{"losses never reach the level in the target", "Cl Af Bf", -1},
	}
	for _, tc := range cases {
		tl := tally{required: 2, total: 3, counted: cur, target: tgt}
		got := -1
		for i, ev := range splitEvents(tc.events) {
			node, kind := ev[:1], ev[1:]
			switch kind {
			case "a":
				tl.ackFrom(node)
			case "l":
				tl.lossFrom(node)
			case "f":
				tl.failFrom(node)
			}
			if got < 0 && tl.lost() {
				got = i
			}
		}
		if got != tc.lostAt {
			t.Errorf("%s: re-stamp decided at step %d, want %d", tc.name, got, tc.lostAt)
		}
	}
	// Not moving: a loss, a failure, then an ack decide the re-stamp (the
	// rows answered); await used to check only on a loss and waited out
	// the deadline here.
	st := tally{required: 2, total: 3, counted: cur}
	st.lossFrom("A")
	st.failFrom("B")
	if st.lost() {
		t.Fatal("stable: re-stamp decided with one answer of two")
	}
	if st.ackFrom("C") || !st.lost() {
		t.Fatal("stable: loss, failure, ack: re-stamp not decided")
	}
	// A re-stamped write counts a loss as an ack: await passes it to
	// ackFrom (lossIsAck), so it counts per row like any ack.
	tl := tally{required: 2, total: 3, counted: cur, target: tgt, lossIsAck: true}
	tl.ackFrom("B")
	if !tl.ackFrom("A") {
		t.Fatal("lossIsAck: A and B (in both rows) do not meet the joint level")
	}
}

func splitEvents(s string) []string {
	return strings.Fields(s)
}

// TestPickJointExhaustive: for every rf, target shape and set of
// suspected nodes, a joint quorum read asks nodes that meet the quorum in
// both rows (so it needs no spare when they all answer), asks no node that
// adds to no row short of it, keeps every other node of both rows in
// reserve (each node exactly once), and asks a suspected node only when
// the unsuspected ones cannot meet both rows.
func TestPickJointExhaustive(t *testing.T) {
	for rf := 1; rf <= 4; rf++ {
		cur, targets := jointRows(rf)
		need := Required("quorum", rf)
		for _, tgt := range targets {
			set := union(cur, tgt)
			for mask := 0; mask < 1<<len(set); mask++ { // bit i set = set[i] suspected
				var sus []string
				for i, n := range set {
					if mask&(1<<i) != 0 {
						sus = append(sus, n)
					}
				}
				ask, rest := pickJoint(set, len(cur), tgt, need, func(n string) bool { return slices.Contains(sus, n) })
				desc := fmt.Sprintf("rf=%d %v->%v suspected %v: ask %v rest %v", rf, cur, tgt, sus, ask, rest)
				if countIn(ask, cur) < need || countIn(ask, tgt) < need {
					t.Fatalf("%s: does not meet quorum %d in both rows", desc, need)
				}
				all := append(slices.Clone(ask), rest...)
				slices.Sort(all)
				want := slices.Clone(set)
				slices.Sort(want)
				if !slices.Equal(all, want) {
					t.Fatalf("%s: asked and reserve are not the write set %v", desc, set)
				}
				// Every asked node adds to a row that the nodes asked
				// before it left short.
				for i, n := range ask {
					if !(slices.Contains(cur, n) && countIn(ask[:i], cur) < need) && !(slices.Contains(tgt, n) && countIn(ask[:i], tgt) < need) {
						t.Fatalf("%s: %s adds nothing", desc, n)
					}
				}
				// With no node suspected, it asks as few nodes as can meet
				// both rows: every shared node up to the quorum, then one
				// of each row per shared node short of it.
				if len(sus) == 0 {
					shared := countIn(cur, tgt)
					if want := need + max(0, need-shared); len(ask) != want {
						t.Fatalf("%s: asks %d nodes, the fewest that meet both rows is %d", desc, len(ask), want)
					}
				}
				var healthy []string
				for _, n := range set {
					if !slices.Contains(sus, n) {
						healthy = append(healthy, n)
					}
				}
				if countIn(healthy, cur) >= need && countIn(healthy, tgt) >= need {
					for _, n := range ask {
						if slices.Contains(sus, n) {
							t.Fatalf("%s: asks suspected %s although the healthy nodes meet both rows", desc, n)
						}
					}
				}
			}
		}
	}
}

// TestPickJointSharedFirst: a join moves one owner, [A B C] -> [A B D];
// a quorum read asks the two owners in both rows, as many nodes as a read
// of a partition that does not move.
func TestPickJointSharedFirst(t *testing.T) {
	ask, rest := pickJoint([]string{"A", "B", "C", "D"}, 3, []string{"A", "B", "D"}, 2, func(string) bool { return false })
	if !slices.Equal(ask, []string{"A", "B"}) || !slices.Equal(rest, []string{"C", "D"}) {
		t.Fatalf("ask %v rest %v, want [A B] and [C D]", ask, rest)
	}
	// B suspected: A, then C for the current row and D for the target.
	ask, rest = pickJoint([]string{"A", "B", "C", "D"}, 3, []string{"A", "B", "D"}, 2, func(n string) bool { return n == "B" })
	if !slices.Equal(ask, []string{"A", "C", "D"}) || !slices.Equal(rest, []string{"B"}) {
		t.Fatalf("with B suspected: ask %v rest %v, want [A C D] and [B]", ask, rest)
	}
}

// BenchmarkPickJoint is a quorum read's choice of nodes for a partition
// moving in a 3 → 4 join, with a suspicion check as costly as the replica
// client's (a lock and a map lookup).
func BenchmarkPickJoint(b *testing.B) {
	var mu sync.RWMutex
	state := map[string]int64{"n1": 0, "n2": 0, "n3": 0, "n4": 0}
	suspected := func(n string) bool {
		mu.RLock()
		defer mu.RUnlock()
		return state[n] > 0
	}
	nodes, target := []string{"n1", "n2", "n3", "n4"}, []string{"n1", "n2", "n4"}
	for b.Loop() {
		ask, _ := pickJoint(nodes, 3, target, 2, suspected)
		if len(ask) != 2 {
			b.Fatalf("asked %v", ask)
		}
	}
}
