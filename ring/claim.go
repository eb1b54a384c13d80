package ring

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cespare/xxhash/v2"
)

// Node is a storage node as the claim algorithm sees it.
type Node struct {
	ID   string // node id, non-empty
	Zone string // failure domain; only a Rule reads it (none does yet)
}

// Rule decides whether candidate may join a partition whose other owners
// are owners (in preference order, without the slot being filled). [Claim]
// keeps owners distinct whatever the rule says; a rule can only restrict
// further, for example to spread a partition's owners across zones. Where no
// node satisfies the rule, the claim falls back to distinct nodes for that
// slot. A Rule must be a pure function of its arguments.
type Rule func(candidate Node, owners []Node) bool

// DistinctNodes is the default Rule: any node not already an owner.
func DistinctNodes(candidate Node, owners []Node) bool {
	return !slices.ContainsFunc(owners, func(o Node) bool { return o.ID == candidate.ID })
}

var (
	// ErrNoNodes reports a claim over an empty node set.
	ErrNoNodes = errors.New("ring: claim needs at least one node")
	// ErrPartitionsChanged reports a claim whose Q differs from its prev
	// map's: Q is fixed when a cluster is created.
	ErrPartitionsChanged = errors.New("ring: partition count differs from the previous map's")
)

// Claim computes the placement map that follows prev (nil for a new
// cluster) for the given nodes and q partitions, with the [DistinctNodes]
// rule. See [ClaimRule].
func Claim(prev *Map, nodes []Node, q int) (*Map, error) {
	return ClaimRule(prev, nodes, q, nil)
}

// ClaimRule computes the placement map that follows prev (nil for a new
// cluster) for nodes and q partitions. The result has version
// prev.Version()+1 (1 when prev is nil) and R = min(MaxReplicas, len(nodes))
// owners per partition.
//
// Nodes with an empty ID are ignored; of nodes sharing an ID, the last wins.
// The result depends only on prev, the set of nodes, q and rule, never on the
// order of nodes. A nil rule means [DistinctNodes].
//
// Guarantees (the tests check them for 1..64 nodes):
//   - Distinct: a partition's owners are distinct nodes.
//   - Balanced: for every prefix length r in 1..R, each node's count of
//     partitions in which it is among the first r owners is floor(q·r/N) or
//     ceil(q·r/N); with rf = 1 that is its primaries. (Only a Rule too strict
//     to satisfy can leave a node off by more.)
//   - Little movement: owners that remain in the node set keep their slots
//     unless balance needs them elsewhere. A slot changes hands only to fill
//     a departed node's place or to move a unit of load from a node above
//     its target to one below, along the shortest chain of moves that keeps
//     owners distinct. Adding a node thus moves about the new node's share;
//     removing one moves about what it held.
//
// It returns ErrPartitions for an invalid q, ErrPartitionsChanged when prev
// has a different Q, and ErrNoNodes (or an error for more than MaxNodes)
// when the node set is empty (or too large). Claim costs O(Q·R·N) time for
// a new map, less for a change; it does no I/O.
func ClaimRule(prev *Map, nodes []Node, q int, rule Rule) (*Map, error) {
	if err := ValidatePartitions(q); err != nil {
		return nil, err
	}
	if prev != nil && prev.q != q {
		return nil, fmt.Errorf("%w: %d, was %d", ErrPartitionsChanged, q, prev.q)
	}
	ns := normaliseNodes(nodes)
	if len(ns) == 0 {
		return nil, ErrNoNodes
	}
	if len(ns) > MaxNodes {
		return nil, fmt.Errorf("ring: claim over %d nodes, at most %d", len(ns), MaxNodes)
	}
	c := newClaimer(prev, ns, q, rule)
	c.targets()
	for j := 0; j < c.r; j++ {
		c.fillHoles(j)
		c.rebalance(j)
	}
	return c.result(prev), nil
}

// normaliseNodes drops empty IDs, keeps the last of duplicates and sorts by
// ID.
func normaliseNodes(nodes []Node) []Node {
	last := make(map[string]int, len(nodes))
	for i, n := range nodes {
		if n.ID != "" {
			last[n.ID] = i
		}
	}
	ns := make([]Node, 0, len(last))
	for i, n := range nodes {
		if n.ID != "" && last[n.ID] == i {
			ns = append(ns, n)
		}
	}
	slices.SortFunc(ns, func(a, b Node) int { return cmp.Compare(a.ID, b.ID) })
	return ns
}

// claimer holds the working state of one claim. Nodes are indexes into
// nodes (sorted by ID); own is the Q×R matrix of owners, -1 for a hole.
type claimer struct {
	nodes []Node
	rule  Rule
	q, r  int
	own   []int32
	// nhash[n] is xxhash64 of node n's ID: the tie-breaks hash it with the
	// partition so that they are deterministic yet spread.
	nhash []uint64
	// tgt[n*(r+1)+k] is node n's target count among the first k owners
	// (k = 0..r), so its target in column j is tgt[..j+1]-tgt[..j].
	tgt []int
	// cnt[n] is node n's count in the column being worked on.
	cnt     []int
	ruleBuf []Node
}

func newClaimer(prev *Map, ns []Node, q int, rule Rule) *claimer {
	n := len(ns)
	c := &claimer{
		nodes: ns,
		rule:  rule,
		q:     q,
		r:     min(MaxReplicas, n),
		nhash: make([]uint64, n),
		cnt:   make([]int, n),
	}
	for i, nd := range ns {
		c.nhash[i] = xxhash.Sum64String(nd.ID)
	}
	c.own = make([]int32, q*c.r)
	for i := range c.own {
		c.own[i] = -1
	}
	if prev == nil {
		return c
	}
	// Carry over every slot whose node remains. Departed nodes leave holes
	// in place (no shifting), so no other owner changes position.
	idx := make([]int32, len(prev.nodes))
	for i, id := range prev.nodes {
		idx[i] = -1
		if k, ok := slices.BinarySearchFunc(ns, id, func(nd Node, id string) int { return cmp.Compare(nd.ID, id) }); ok {
			idx[i] = int32(k)
		}
	}
	// A prev with moving partitions contributes its current rows, which
	// may be shorter than R.
	for p := 0; p < q; p++ {
		row := prev.row(prev.owners, uint32(p))
		for j := 0; j < min(c.r, len(row)); j++ {
			c.own[p*c.r+j] = idx[row[j]]
		}
	}
	return c
}

// mix is splitmix64's finaliser: the tie-break hash of a partition and a
// node.
func mix(p int, h uint64) uint64 {
	x := h ^ uint64(p)*0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// targets sets each node's target count for every prefix of the owner
// lists: floor(Q·k/N), plus one for Q·k mod N of the nodes.
//
// Which nodes get the extra one decides how much moves. Let D(k) be a
// node's target for prefix k minus what it holds there now; the node must
// receive D(k)-D(k-1) slots in column k-1 when that is positive, so the aim
// is a D that never rises for any node that already holds slots. The extras
// for prefix k go, in order:
//  1. to nodes whose target for k-1 already exceeds the floor for k (they
//     keep it, so column targets are never negative);
//  2. to nodes whose D(k) stays <= D(k-1) with the extra;
//  3. to nodes with the least surplus over the floor in the prefixes after
//     k, since those have no slack to give back later;
//  4. to nodes holding the most among the first k owners;
//  5. by the hash of the ID, then the ID.
func (c *claimer) targets() {
	n, r := len(c.nodes), c.r
	c.tgt = make([]int, n*(r+1))
	// held[i*(r+1)+k] is what node i holds now among the first k owners.
	held := make([]int, n*(r+1))
	for k := 1; k <= r; k++ {
		for i := 0; i < n; i++ {
			held[i*(r+1)+k] = held[i*(r+1)+k-1]
		}
		for p := 0; p < c.q; p++ {
			if o := c.own[p*r+k-1]; o >= 0 {
				held[int(o)*(r+1)+k]++
			}
		}
	}
	prevD := make([]int, n) // D(k-1)
	slack := make([]int, n)
	future := make([]int, n)
	order := make([]int, n)
	for k := 1; k <= r; k++ {
		base, extra := c.q*k/n, c.q*k%n
		for i := range order {
			order[i] = i
			h := held[i*(r+1):]
			slack[i] = min(1, prevD[i]-(base-h[k]))
			future[i] = c.q // more than any surplus
			for k2 := k + 1; k2 <= r; k2++ {
				future[i] = min(future[i], h[k2]-c.q*k2/n)
			}
		}
		forced := func(i int) bool { return c.tgt[i*(r+1)+k-1] > base }
		slices.SortFunc(order, func(a, b int) int {
			if fa, fb := forced(a), forced(b); fa != fb {
				if fa {
					return -1
				}
				return 1
			}
			if d := cmp.Compare(slack[b], slack[a]); d != 0 {
				return d
			}
			if d := cmp.Compare(future[a], future[b]); d != 0 {
				return d
			}
			if d := cmp.Compare(held[b*(r+1)+k], held[a*(r+1)+k]); d != 0 {
				return d
			}
			if d := cmp.Compare(c.nhash[a], c.nhash[b]); d != 0 {
				return d
			}
			return cmp.Compare(a, b)
		})
		for rank, i := range order {
			t := base
			if rank < extra {
				t++
			}
			c.tgt[i*(r+1)+k] = t
			prevD[i] = t - held[i*(r+1)+k]
		}
	}
	c.improveTargets(held)
}

// improveTargets refines the greedy targets by local search. With D as in
// targets, a node above its column-(k-1) target must shed D(k-1)-D(k) slots
// there, and every slot shed is one moved beyond the departed nodes' places
// (each is received by someone). So the cost of a node's targets is the sum
// of its drops of D, a drop in column j weighted R-j (the prefixes, i.e.
// the replication factors, that see it). The search moves an extra one of
// some prefix from one node to another while that lowers the total cost;
// costs are integers, so it ends.
func (c *claimer) improveTargets(held []int) {
	n, r := len(c.nodes), c.r
	w := r + 1
	cost := func(i int) int {
		t, h := c.tgt[i*w:i*w+w], held[i*w:i*w+w]
		total := 0
		for k := 1; k <= r; k++ {
			if t[k] < t[k-1] {
				return 1 << 30 // a negative column target: not allowed
			}
			if drop := (t[k-1] - h[k-1]) - (t[k] - h[k]); drop > 0 {
				total += drop * (r - k + 1)
			}
		}
		return total
	}
	// delta returns the change of node i's cost if its target for prefix k
	// moves by d (+1 or -1).
	delta := func(i, k, d int) int {
		before := cost(i)
		c.tgt[i*w+k] += d
		after := cost(i)
		c.tgt[i*w+k] -= d
		return after - before
	}
	for improved := true; improved; {
		improved = false
		for k := 1; k <= r; k++ {
			base := c.q * k / n
			if c.q*k%n == 0 {
				continue // no extras to move
			}
			for {
				give, take := -1, -1
				bestGive, bestTake := 0, 0
				for i := 0; i < n; i++ {
					if c.tgt[i*w+k] > base {
						if d := delta(i, k, -1); give < 0 || d < bestGive {
							give, bestGive = i, d
						}
					} else if d := delta(i, k, +1); take < 0 || d < bestTake {
						take, bestTake = i, d
					}
				}
				if give < 0 || take < 0 || bestGive+bestTake >= 0 {
					break
				}
				c.tgt[give*w+k]--
				c.tgt[take*w+k]++
				improved = true
			}
		}
	}
}

// want returns node n's target count in column j.
func (c *claimer) want(n, j int) int {
	return c.tgt[n*(c.r+1)+j+1] - c.tgt[n*(c.r+1)+j]
}

// allowed reports whether node n may take slot (p, j): it is not among the
// partition's other owners, and the rule (if any) agrees; with strict set,
// only distinctness is checked.
func (c *claimer) allowed(p, j, n int, strict bool) bool {
	row := c.own[p*c.r : p*c.r+c.r]
	for k, o := range row {
		if k != j && o == int32(n) {
			return false
		}
	}
	if c.rule == nil || strict {
		return true
	}
	c.ruleBuf = c.ruleBuf[:0]
	for k, o := range row {
		if k != j && o >= 0 {
			c.ruleBuf = append(c.ruleBuf, c.nodes[o])
		}
	}
	return c.rule(c.nodes[n], c.ruleBuf)
}

func (c *claimer) count(j int) {
	clear(c.cnt)
	for p := 0; p < c.q; p++ {
		if o := c.own[p*c.r+j]; o >= 0 {
			c.cnt[o]++
		}
	}
}

// fillHoles gives the empty slots of column j to nodes below their target
// there. Which node takes which empty slot costs nothing extra (each slot
// moves anyway), so it is a bipartite matching of slots to the nodes' unmet
// targets, found with augmenting paths (Kuhn's algorithm): a slot no needy
// node may take directly can still be filled by moving another empty slot's
// tentative taker. Slots left over, if any, go to the allowed node furthest
// below (or least above) its target, and rebalance sorts them out.
func (c *claimer) fillHoles(j int) {
	c.count(j)
	var holes []int
	for p := 0; p < c.q; p++ {
		if c.own[p*c.r+j] < 0 {
			holes = append(holes, p)
		}
	}
	if len(holes) == 0 {
		return
	}
	n := len(c.nodes)
	m := &matcher{
		c:       c,
		j:       j,
		holes:   holes,
		taker:   make([]int, len(holes)),
		byNode:  make([][]int, n),
		seen:    make([]bool, n),
		cands:   make([][]int, len(holes)),
		freeCap: make([]int, n),
	}
	for i := range n {
		m.freeCap[i] = max(0, c.want(i, j)-c.cnt[i])
	}
	for h, p := range holes {
		m.taker[h] = -1
		for i := range n {
			if m.freeCap[i] > 0 && c.allowed(p, j, i, false) {
				m.cands[h] = append(m.cands[h], i)
			}
		}
		slices.SortFunc(m.cands[h], func(a, b int) int {
			return cmp.Compare(mix(p, c.nhash[a]), mix(p, c.nhash[b]))
		})
	}
	for h := range holes {
		clear(m.seen)
		m.augment(h)
	}
	for h, p := range holes {
		best := m.taker[h]
		if best >= 0 {
			c.own[p*c.r+j] = int32(best)
			c.cnt[best]++
		}
	}
	for h, p := range holes {
		if m.taker[h] >= 0 {
			continue
		}
		best := c.pick(p, j, false)
		if best < 0 {
			best = c.pick(p, j, true) // the rule cannot be met here
		}
		c.own[p*c.r+j] = int32(best)
		c.cnt[best]++
	}
}

// matcher is the state of fillHoles' matching: taker[h] is the node given
// hole h (or -1), byNode[n] the holes given to node n, at most freeCap[n].
type matcher struct {
	c       *claimer
	j       int
	holes   []int
	taker   []int
	byNode  [][]int
	seen    []bool
	cands   [][]int
	freeCap []int
}

// augment finds a taker for hole h, moving other holes between takers if
// that frees one; it reports whether it succeeded.
func (m *matcher) augment(h int) bool {
	for _, n := range m.cands[h] {
		if m.seen[n] {
			continue
		}
		m.seen[n] = true
		if len(m.byNode[n]) < m.freeCap[n] {
			m.taker[h] = n
			m.byNode[n] = append(m.byNode[n], h)
			return true
		}
		for k, h2 := range m.byNode[n] {
			if m.augment(h2) {
				m.byNode[n][k] = h
				m.taker[h] = n
				return true
			}
		}
	}
	return false
}

func (c *claimer) pick(p, j int, strict bool) int {
	best, bestNeed, bestHash := -1, 0, uint64(0)
	for n := range c.nodes {
		if !c.allowed(p, j, n, strict) {
			continue
		}
		need := c.want(n, j) - c.cnt[n]
		h := mix(p, c.nhash[n])
		if best < 0 || need > bestNeed || need == bestNeed && h < bestHash {
			best, bestNeed, bestHash = n, need, h
		}
	}
	return best
}

// rebalance moves slots of column j from nodes above their target to nodes
// below it. Each step takes the shortest chain a0 → a1 → ... → ak from an
// overloaded a0 to an underloaded ak, where ai → ai+1 means some partition
// that ai holds in column j may be given to ai+1; applying the chain moves
// one unit of load and keeps every other node's count.
func (c *claimer) rebalance(j int) {
	c.count(j)
	n := len(c.nodes)
	byHash := make([]int, n)
	for i := range byHash {
		byHash[i] = i
	}
	slices.SortFunc(byHash, func(a, b int) int { return cmp.Compare(c.nhash[a], c.nhash[b]) })
	prev := make([]int, n)
	queue := make([]int, 0, n)
	for {
		// Sources: every overloaded node, most overloaded first.
		queue = queue[:0]
		for i := range prev {
			prev[i] = -2 // unvisited
		}
		for _, a := range byHash {
			if c.cnt[a] > c.want(a, j) {
				queue = append(queue, a)
			}
		}
		if len(queue) == 0 {
			return
		}
		slices.SortStableFunc(queue, func(a, b int) int {
			return cmp.Compare(c.cnt[b]-c.want(b, j), c.cnt[a]-c.want(a, j))
		})
		for _, a := range queue {
			prev[a] = -1
		}
		end := -1
	bfs:
		for qi := 0; qi < len(queue); qi++ {
			a := queue[qi]
			for _, b := range byHash {
				if prev[b] != -2 || !c.canGive(j, a, b) {
					continue
				}
				prev[b] = a
				if c.cnt[b] < c.want(b, j) {
					end = b
					break bfs
				}
				queue = append(queue, b)
			}
		}
		if end < 0 {
			return // no chain exists; only a strict rule gets here
		}
		// Apply the chain from its start, so every hop finds its slot.
		var chain []int
		for b := end; b >= 0; b = prev[b] {
			chain = append(chain, b)
		}
		slices.Reverse(chain)
		for i := 0; i+1 < len(chain); i++ {
			c.give(j, chain[i], chain[i+1])
		}
	}
}

// canGive reports whether some partition that a holds in column j may go
// to b.
func (c *claimer) canGive(j, a, b int) bool {
	for p := 0; p < c.q; p++ {
		if c.own[p*c.r+j] == int32(a) && c.allowed(p, j, b, false) {
			return true
		}
	}
	return false
}

// give moves to b the partition a holds in column j with the smallest
// tie-break hash among those b may take.
func (c *claimer) give(j, a, b int) {
	best, bestHash := -1, uint64(0)
	for p := 0; p < c.q; p++ {
		if c.own[p*c.r+j] != int32(a) || !c.allowed(p, j, b, false) {
			continue
		}
		if h := mix(p, c.nhash[b]); best < 0 || h < bestHash {
			best, bestHash = p, h
		}
	}
	c.own[best*c.r+j] = int32(b)
	c.cnt[a]--
	c.cnt[b]++
}

func (c *claimer) result(prev *Map) *Map {
	m := &Map{q: c.q, r: c.r, w: c.r, version: 1}
	if prev != nil {
		m.version = prev.version + 1
	}
	m.nodes = make([]string, len(c.nodes))
	for i, nd := range c.nodes {
		m.nodes[i] = nd.ID
	}
	m.owners = make([]uint16, len(c.own))
	for i, o := range c.own {
		m.owners[i] = uint16(o)
	}
	// A partition whose owners are prev's current ones, and which did not
	// move in prev, keeps its since; every other changed in this version.
	m.since = make([]uint64, c.q)
	var a, b []string
	for p := range c.q {
		m.since[p] = m.version
		if prev != nil && !prev.Moving(uint32(p)) {
			a, b = prev.Owners(uint32(p), a), m.Owners(uint32(p), b)
			if slices.Equal(a, b) {
				m.since[p] = prev.since[p]
			}
		}
	}
	return m
}
