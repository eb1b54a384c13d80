package ring

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"testing"
)

func claimNodes(ids ...int) []Node {
	ns := make([]Node, len(ids))
	for i, id := range ids {
		ns[i] = Node{ID: fmt.Sprintf("node-%d", id)}
	}
	return ns
}

func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func mustClaim(tb testing.TB, prev *Map, nodes []Node, q int) *Map {
	tb.Helper()
	m, err := Claim(prev, nodes, q)
	if err != nil {
		tb.Fatalf("Claim(%d nodes, q=%d): %v", len(nodes), q, err)
	}
	return m
}

// checkMap fails unless m is a well-formed map over exactly nodes.
func checkMap(tb testing.TB, m *Map, nodes []Node) {
	tb.Helper()
	ids := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n.ID != "" && !slices.Contains(ids, n.ID) {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	if !slices.Equal(m.Nodes(), ids) {
		tb.Fatalf("nodes %v, want %v", m.Nodes(), ids)
	}
	if want := min(MaxReplicas, len(ids)); m.Replicas() != want {
		tb.Fatalf("R = %d, want %d", m.Replicas(), want)
	}
	var buf []string
	for p := 0; p < m.Partitions(); p++ {
		buf = m.Owners(uint32(p), buf)
		if len(buf) != m.Replicas() {
			tb.Fatalf("partition %d: %d owners, want %d", p, len(buf), m.Replicas())
		}
		for i, id := range buf {
			if slices.Contains(buf[:i], id) {
				tb.Fatalf("partition %d: owner %s repeated in %v", p, id, buf)
			}
		}
	}
}

// balanceDev returns, over every node and prefix length r in 1..R, the
// largest |count - mean| and the same as a fraction of the mean, where count
// is the node's number of partitions in which it is among the first r owners
// and mean = Q·r/N.
func balanceDev(m *Map) (abs, rel float64) {
	n := float64(len(m.nodes))
	for r := 1; r <= m.Replicas(); r++ {
		mean := float64(m.Partitions()*r) / n
		for _, c := range m.Load(r) {
			d := math.Abs(float64(c) - mean)
			abs = max(abs, d)
			rel = max(rel, d/mean)
		}
	}
	return abs, rel
}

// checkBalance enforces the balance criterion: for every prefix length r,
// every node's count is within max(1, 2% of the mean) of the mean Q·r/N.
// Claim in fact promises floor or ceil of the mean, which is checked too.
func checkBalance(tb testing.TB, m *Map) {
	tb.Helper()
	n := len(m.nodes)
	for r := 1; r <= m.Replicas(); r++ {
		mean := float64(m.Partitions()*r) / float64(n)
		lo, hi := m.Partitions()*r/n, (m.Partitions()*r+n-1)/n
		for id, c := range m.Load(r) {
			if math.Abs(float64(c)-mean) > max(1, 0.02*mean) || c < lo || c > hi {
				tb.Fatalf("N=%d Q=%d r=%d: %s has %d, mean %.2f", n, m.Partitions(), r, id, c, mean)
			}
		}
	}
}

// moved returns the number of (partition, node) pairs in which the node is
// among the first r owners in next but not in prev: the partition copies a
// tenant with RF r must stream.
func moved(prev, next *Map, r int) int {
	total := 0
	var a, b []string
	for p := 0; p < next.Partitions(); p++ {
		a = prev.Owners(uint32(p), a)
		b = next.Owners(uint32(p), b)
		for _, id := range b[:min(r, len(b))] {
			if !slices.Contains(a[:min(r, len(a))], id) {
				total++
			}
		}
	}
	return total
}

// movementBound is the most slots a change may move for a tenant with RF
// r, given the ideal (the joining node's share Q·r/(N+1), or what the
// leaving node held). With the default Q=1024 it is issue 14's goal, 1.1×
// the ideal. With few partitions per node (Q=64 or 256 and tens of nodes) a
// node holds a handful of slots per position, rows are nearly full and one
// extra slot is already more than 10% of the ideal; there the claim is only
// held to twice the ideal plus one slot per position, and the test logs the
// worst ratio seen.
func movementBound(q int, ideal float64, r int) float64 {
	if q >= DefaultPartitions {
		return 1.1 * ideal
	}
	return 2*ideal + float64(r)
}

func TestClaimProperties(t *testing.T) {
	for _, q := range []int{64, 256, 1024} {
		worstJoin, worstLeave := 0.0, 0.0
		for n := 1; n <= 64; n++ {
			ns := claimNodes(seq(1, n)...)
			m := mustClaim(t, nil, ns, q)
			checkMap(t, m, ns)
			checkBalance(t, m)

			// Determinism: same inputs in another order, same map.
			rev := slices.Clone(ns)
			slices.Reverse(rev)
			if m2 := mustClaim(t, nil, rev, q); !m2.Equal(m) {
				t.Fatalf("Q=%d N=%d: node order changes the map", q, n)
			}

			// Join: node n+1 added.
			joined := mustClaim(t, m, claimNodes(seq(1, n+1)...), q)
			checkMap(t, joined, claimNodes(seq(1, n+1)...))
			checkBalance(t, joined)
			if joined.Version() != m.Version()+1 {
				t.Fatalf("version %d after %d", joined.Version(), m.Version())
			}
			for r := 1; r <= min(m.Replicas(), joined.Replicas()); r++ {
				ideal := float64(q*r) / float64(n+1)
				got := moved(m, joined, r)
				if float64(got) > movementBound(q, ideal, r) {
					t.Errorf("Q=%d N=%d join, RF %d: %d moved, ideal %.1f", q, n, r, got, ideal)
				}
				worstJoin = max(worstJoin, float64(got)/ideal)
			}

			// Leave: node 1 removed.
			if n == 1 {
				continue
			}
			left := mustClaim(t, m, claimNodes(seq(2, n)...), q)
			checkMap(t, left, claimNodes(seq(2, n)...))
			checkBalance(t, left)
			for r := 1; r <= min(m.Replicas(), left.Replicas()); r++ {
				ideal := float64(m.Load(r)["node-1"])
				got := moved(m, left, r)
				if float64(got) > movementBound(q, ideal, r) {
					t.Errorf("Q=%d N=%d leave, RF %d: %d moved, node held %.0f", q, n, r, got, ideal)
				}
				worstLeave = max(worstLeave, float64(got)/ideal)
			}
		}
		t.Logf("Q=%d: worst moved/ideal: join %.3f, leave %.3f", q, worstJoin, worstLeave)
	}
}

func TestClaimErrors(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3), 64)
	for name, tc := range map[string]struct {
		prev  *Map
		nodes []Node
		q     int
		want  error
	}{
		"bad q":       {nil, claimNodes(1), 100, ErrPartitions},
		"q changed":   {m, claimNodes(1, 2, 3), 128, ErrPartitionsChanged},
		"no nodes":    {nil, nil, 64, ErrNoNodes},
		"only empty":  {nil, []Node{{ID: ""}}, 64, ErrNoNodes},
		"zero q":      {nil, claimNodes(1), 0, ErrPartitions},
		"too large q": {nil, claimNodes(1), 1 << 17, ErrPartitions},
	} {
		if _, err := Claim(tc.prev, tc.nodes, tc.q); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", name, err, tc.want)
		}
	}
}

func TestClaimNormalisesNodes(t *testing.T) {
	a := mustClaim(t, nil, []Node{{ID: "b"}, {ID: ""}, {ID: "a", Zone: "x"}, {ID: "a"}, {ID: "c"}}, 64)
	b := mustClaim(t, nil, []Node{{ID: "c"}, {ID: "a"}, {ID: "b"}}, 64)
	if !a.Equal(b) || !slices.Equal(a.Nodes(), []string{"a", "b", "c"}) {
		t.Fatalf("nodes %v vs %v", a.Nodes(), b.Nodes())
	}
}

// TestClaimUnchangedNodesMoveNothing: re-claiming with the same nodes is
// a no-op apart from the version.
func TestClaimUnchangedNodesMoveNothing(t *testing.T) {
	for _, n := range []int{1, 3, 10, 64} {
		m := mustClaim(t, nil, claimNodes(seq(1, n)...), DefaultPartitions)
		again := mustClaim(t, m, claimNodes(seq(1, n)...), DefaultPartitions)
		if !again.Equal(m) || again.Version() != 2 {
			t.Fatalf("N=%d: a claim with the same nodes changed the map", n)
		}
	}
}

// TestClaimReplace: replacing a node (one leaves, one joins in the same
// claim) gives the new node the old one's slots and moves nothing else.
func TestClaimReplace(t *testing.T) {
	q := DefaultPartitions
	m := mustClaim(t, nil, claimNodes(seq(1, 5)...), q)
	next := mustClaim(t, m, claimNodes(append(seq(2, 5), 99)...), q)
	checkBalance(t, next)
	for r := 1; r <= 5; r++ {
		if got, held := moved(m, next, r), m.Load(r)["node-1"]; got != held {
			t.Errorf("RF %d: %d moved, node-1 held %d", r, got, held)
		}
	}
}

// TestClaimRule shows the rule is pluggable: a zone rule spreads each
// partition's first three owners over three zones.
func TestClaimRule(t *testing.T) {
	var ns []Node
	for i := 1; i <= 9; i++ {
		ns = append(ns, Node{ID: fmt.Sprintf("node-%d", i), Zone: fmt.Sprintf("z%d", i%3)})
	}
	zone := map[string]string{}
	for _, n := range ns {
		zone[n.ID] = n.Zone
	}
	spread := func(c Node, owners []Node) bool {
		if !DistinctNodes(c, owners) {
			return false
		}
		if len(owners) >= 3 {
			return true // only the first three positions are spread
		}
		return !slices.ContainsFunc(owners, func(o Node) bool { return o.Zone == c.Zone })
	}
	m, err := ClaimRule(nil, ns, 256, spread)
	if err != nil {
		t.Fatal(err)
	}
	checkMap(t, m, ns)
	var buf []string
	bad := 0
	for p := 0; p < m.Partitions(); p++ {
		buf = m.Owners(uint32(p), buf)
		if zone[buf[0]] == zone[buf[1]] || zone[buf[0]] == zone[buf[2]] || zone[buf[1]] == zone[buf[2]] {
			bad++
		}
	}
	if bad != 0 {
		t.Fatalf("%d of %d partitions have two of their first three owners in one zone", bad, m.Partitions())
	}
}

// FuzzClaim applies random sequences of joins and leaves and checks the
// invariants after each: well-formed, balanced, deterministic.
func FuzzClaim(f *testing.F) {
	f.Add(uint8(3), []byte{1, 2, 3, 200, 7})
	f.Add(uint8(1), []byte{0, 0, 0})
	f.Add(uint8(64), []byte{255, 128, 3})
	f.Fuzz(func(t *testing.T, start uint8, ops []byte) {
		q := 64 << (start % 3 * 2) // 64, 256, 1024
		in := map[int]bool{}
		for i := 1; i <= int(start%64)+1; i++ {
			in[i] = true
		}
		list := func() []Node {
			var ids []int
			for id := range in {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			return claimNodes(ids...)
		}
		m := mustClaim(t, nil, list(), q)
		if len(ops) > 8 {
			ops = ops[:8]
		}
		for _, op := range ops {
			id := int(op%80) + 1
			if in[id] && len(in) > 1 {
				delete(in, id)
			} else if len(in) < 64 {
				in[id] = true
			}
			next := mustClaim(t, m, list(), q)
			checkMap(t, next, list())
			checkBalance(t, next)
			if again := mustClaim(t, m, list(), q); !again.Equal(next) {
				t.Fatal("claim not deterministic")
			}
			m = next
		}
	})
}
