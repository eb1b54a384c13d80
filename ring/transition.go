package ring

import (
	"errors"
	"fmt"
	"slices"
)

// Transitions (DESIGN.md §3, issue 14): a partition moves when its target
// row differs from its current row. Writes go to current[:rf] ∪
// target[:rf] and count on current[:rf] ([Map.WriteSet]). A receiver of a
// moving partition is a node in target[:rf] but not in current[:rf] for
// some rf: it is new to the partition or moved to an earlier position, so
// it may lack writes some tenant counted. Receivers pull the partition from
// the current owners and report it done ([Map.MarkDone]); when every
// receiver of a partition is done, the partition flips: current := target.
// A moving partition without receivers (its target only drops owners or
// moves them later) flips as soon as it is retargeted: its new owners
// already hold every write any tenant counted.

var (
	// ErrVersion reports a transition to a version not above the map's.
	ErrVersion = errors.New("ring: a transition needs a version above the map's")
	// ErrUnknownNode reports a Substitute of a node not in the target.
	ErrUnknownNode = errors.New("ring: node not in the target")
	// ErrNodeInUse reports a Substitute onto a node already in the target.
	ErrNodeInUse = errors.New("ring: node already in the target")
)

// Since returns the version in which partition p's current or target row
// last changed. A request for p from a sender whose map version is below it
// is refused (not_owner). It is 0 when p >= Q.
func (m *Map) Since(p uint32) uint64 {
	if int(p) >= m.q {
		return 0
	}
	return m.since[p]
}

// moving reports whether any partition moves.
func (m *Map) moving() bool { return m.target != nil }

// Moving reports whether p has a target row different from its current one.
func (m *Map) Moving(p uint32) bool {
	return m.target != nil && int(p) < m.q && !slices.Equal(m.row(m.owners, p), m.row(m.target, p))
}

// Target appends to dst[:0] p's target owners in preference order (its
// current ones when p does not move) and returns the extended slice. Like
// [Map.Owners], it does not allocate when dst has room.
func (m *Map) Target(p uint32, dst []string) []string {
	if m.target == nil {
		return m.appendRow(m.owners, p, m.w, dst[:0])
	}
	return m.appendRow(m.target, p, m.w, dst[:0])
}

// WriteSet appends to dst[:0] current[:rf] of partition p followed by the
// members of target[:rf] not in current[:rf], and returns it with counted =
// len(current[:rf]): a write goes to all of set, and its consistency
// level counts acks from set[:counted] only. Zero-alloc when cap(dst) >=
// 2*rf. Empty when rf <= 0 or p >= Q.
func (m *Map) WriteSet(p uint32, rf int, dst []string) (set []string, counted int) {
	dst = dst[:0]
	if rf <= 0 {
		return dst, 0
	}
	cur := m.row(m.owners, p)
	cur = cur[:min(rf, len(cur))]
	var tgt []uint16
	if m.target != nil {
		tgt = m.row(m.target, p)
		tgt = tgt[:min(rf, len(tgt))]
	}
	if cap(dst) < len(cur)+len(tgt) {
		dst = slices.Grow(dst, len(cur)+len(tgt))
	}
	for _, o := range cur {
		dst = append(dst, m.nodes[o])
	}
	for _, o := range tgt {
		if !slices.Contains(cur, o) {
			dst = append(dst, m.nodes[o])
		}
	}
	return dst, len(cur)
}

// WriteSetHash is WriteSet for the partition of key hash h (see [KeyHash]).
func (m *Map) WriteSetHash(h uint64, rf int, dst []string) (set []string, counted int) {
	return m.WriteSet(PartitionOf(h, m.q), rf, dst)
}

// receiver reports whether the j-th owner of target row tgt is a receiver
// given current row cur: not among cur's first j+1 owners.
func receiver(cur, tgt []uint16, j int) bool {
	return !slices.Contains(cur[:min(j+1, len(cur))], tgt[j])
}

// index returns node's index in m.nodes, or -1.
func (m *Map) index(node string) int {
	i, ok := slices.BinarySearch(m.nodes, node)
	if !ok {
		return -1
	}
	return i
}

// Receiving appends to dst[:0] the partitions node must pull and has not
// reported done: moving partitions where, for some rf, node is in
// target[:rf] but not in current[:rf]. Ascending.
func (m *Map) Receiving(node string, dst []uint32) []uint32 {
	dst = dst[:0]
	i := m.index(node)
	if i < 0 || m.target == nil {
		return dst
	}
	for p := range m.q {
		tgt := m.row(m.target, uint32(p))
		j := slices.Index(tgt, uint16(i))
		if j >= 0 && m.done[p]&(1<<j) == 0 && receiver(m.row(m.owners, uint32(p)), tgt, j) {
			dst = append(dst, uint32(p))
		}
	}
	return dst
}

// Receivers appends to dst[:0] p's receivers (done or not), in target
// order; none when p does not move.
func (m *Map) Receivers(p uint32, dst []string) []string {
	dst = dst[:0]
	if !m.Moving(p) {
		return dst
	}
	cur, tgt := m.row(m.owners, p), m.row(m.target, p)
	for j, o := range tgt {
		if receiver(cur, tgt, j) {
			dst = append(dst, m.nodes[o])
		}
	}
	return dst
}

// Done reports whether receiver node reported p done. It is false when p
// does not move or node is not one of its receivers.
func (m *Map) Done(p uint32, node string) bool {
	i := m.index(node)
	if i < 0 || !m.Moving(p) {
		return false
	}
	j := slices.Index(m.row(m.target, p), uint16(i))
	return j >= 0 && m.done[p]&(1<<j) != 0
}

// Owns reports whether node is in p's current or target row.
func (m *Map) Owns(p uint32, node string) bool {
	i := m.index(node)
	if i < 0 || int(p) >= m.q {
		return false
	}
	return slices.Contains(m.row(m.owners, p), uint16(i)) ||
		(m.target != nil && slices.Contains(m.row(m.target, p), uint16(i)))
}

// CurrentNodes returns the sorted ids named in current rows; in a map
// without moving partitions, every node of the map (a node the claim
// placed nowhere, possible only when Q·R is below the node count,
// included).
func (m *Map) CurrentNodes() []string {
	if m.target == nil {
		return m.Nodes()
	}
	return m.named(m.owners)
}

// TargetNodes returns the sorted ids of the target node set: the nodes the
// target was claimed for, every id named in a target row. Without moving
// partitions, every node of the map.
func (m *Map) TargetNodes() []string {
	if m.inTarget == nil {
		return m.Nodes()
	}
	var ids []string
	for i, id := range m.nodes {
		if m.inTarget[i] {
			ids = append(ids, id)
		}
	}
	return ids
}

func (m *Map) named(rows []uint16) []string {
	seen := make([]bool, len(m.nodes))
	for _, o := range rows {
		if o != none {
			seen[o] = true
		}
	}
	var ids []string
	for i, id := range m.nodes {
		if seen[i] {
			ids = append(ids, id)
		}
	}
	return ids
}

// TargetMap returns the map every partition would have once all moves
// finish: current := target everywhere, no moving partitions, the target
// node set, version m.Version() and m's since versions. It is the prev for
// Claim when the node set changes again.
func (m *Map) TargetMap() *Map {
	if m.target == nil {
		return m
	}
	d := m.draft()
	for p := range d.tgt {
		if d.tgt[p] != nil {
			d.cur[p], d.tgt[p], d.done[p] = d.tgt[p], nil, 0
		}
	}
	return d.build()
}

// Retarget returns version v of m heading for target (a map without
// moving partitions, e.g. from Claim(m.TargetMap(), nodes, q) or
// Substitute; of a map with moving partitions its target rows are taken):
// partitions whose target row changes get since = v and their done marks
// cleared; partitions whose target equals current stop moving; partitions
// that move but have no receiver flip at once (since = v). Current rows
// never change otherwise, and done marks of a partition whose target row
// is unchanged are kept.
//
// When m has no current owners at all (nil or the zero Map: a new cluster)
// every partition takes target as current at once: there is no data to
// stream.
//
// It returns ErrVersion unless v > m.Version(), and ErrPartitionsChanged
// when target's Q differs from m's.
func (m *Map) Retarget(target *Map, v uint64) (*Map, error) {
	if target == nil || target.q == 0 {
		return nil, errors.New("ring: retarget to an empty map")
	}
	if m == nil || m.q == 0 {
		if v == 0 {
			return nil, fmt.Errorf("%w: %d", ErrVersion, v)
		}
		t := target.TargetMap().WithVersion(v)
		t.since = make([]uint64, t.q)
		for p := range t.since {
			t.since[p] = v
		}
		return t, nil
	}
	if v <= m.version {
		return nil, fmt.Errorf("%w: %d, map is at %d", ErrVersion, v, m.version)
	}
	if target.q != m.q {
		return nil, fmt.Errorf("%w: %d, was %d", ErrPartitionsChanged, target.q, m.q)
	}
	d := m.draft()
	d.version = v
	d.tset = target.TargetNodes()
	for p := range d.q {
		next := target.Target(uint32(p), nil)
		if !slices.Equal(d.targetRow(p), next) {
			d.tgt[p], d.done[p], d.since[p] = next, 0, v
		}
		d.flipIfDone(p, v)
	}
	return d.build(), nil
}

// MarkDone returns version v of m with node's receipt of ps recorded
// (partitions not moving, out of range, or where node is not a receiver
// are ignored) and every partition whose receivers are now all done
// flipped: current := target, since = v. flipped lists them, ascending.
// It returns ErrVersion unless v > m.Version().
//
// A receiver reports what it pulled under some map version r (the map it
// worked from). A partition whose rows changed after r may have a new
// target the pull did not serve (or the receiver may have left and come
// back, and dropped its data in between), so pass only the
// [Map.StillCurrent] partitions of the report.
func (m *Map) MarkDone(node string, ps []uint32, v uint64) (next *Map, flipped []uint32, err error) {
	if v <= m.version {
		return nil, nil, fmt.Errorf("%w: %d, map is at %d", ErrVersion, v, m.version)
	}
	d := m.draft()
	d.version = v
	for _, p := range ps {
		if int(p) >= d.q || d.tgt[p] == nil {
			continue
		}
		j := slices.Index(d.tgt[p], node)
		if j < 0 || slices.Contains(d.cur[p][:min(j+1, len(d.cur[p]))], node) {
			continue
		}
		d.done[p] |= 1 << j
		if d.flipIfDone(int(p), v) {
			flipped = append(flipped, p)
		}
	}
	slices.Sort(flipped)
	return d.build(), flipped, nil
}

// StillCurrent appends to dst[:0] the partitions of ps whose rows have not
// changed since map version asOf (Since(p) <= asOf, p < Q), in ps's
// order: those a transfer report made under map asOf speaks for.
func (m *Map) StillCurrent(ps []uint32, asOf uint64, dst []uint32) []uint32 {
	dst = dst[:0]
	for _, p := range ps {
		if int(p) < m.q && m.since[p] <= asOf {
			dst = append(dst, p)
		}
	}
	return dst
}

// Substitute returns m's target map with node dead replaced by node repl
// in every row it appears in and in the node set, version m.Version() (for
// `node replace`: Retarget to it). It returns ErrUnknownNode when dead is
// not in the target and ErrNodeInUse when repl already is.
func (m *Map) Substitute(dead, repl string) (*Map, error) {
	t := m.TargetMap()
	if repl == "" {
		return nil, errors.New("ring: substitute with an empty node id")
	}
	if !slices.Contains(t.nodes, dead) {
		return nil, fmt.Errorf("%w: %q", ErrUnknownNode, dead)
	}
	if slices.Contains(t.nodes, repl) {
		return nil, fmt.Errorf("%w: %q", ErrNodeInUse, repl)
	}
	d := t.draft()
	for _, row := range d.cur {
		if j := slices.Index(row, dead); j >= 0 {
			row[j] = repl
		}
	}
	d.tset[slices.Index(d.tset, dead)] = repl
	slices.Sort(d.tset)
	return d.build(), nil
}

// draft is a map being changed: rows as ids, one slice per partition.
type draft struct {
	version uint64
	q       int
	cur     [][]string
	tgt     [][]string // nil where the partition does not move
	since   []uint64
	done    []uint8
	tset    []string // the target node set, sorted
}

func (m *Map) draft() *draft {
	d := &draft{
		version: m.version,
		q:       m.q,
		cur:     make([][]string, m.q),
		tgt:     make([][]string, m.q),
		since:   slices.Clone(m.since),
		done:    make([]uint8, m.q),
		tset:    m.TargetNodes(),
	}
	if m.done != nil {
		copy(d.done, m.done)
	}
	for p := range m.q {
		d.cur[p] = m.Owners(uint32(p), nil)
		if m.Moving(uint32(p)) {
			d.tgt[p] = m.Target(uint32(p), nil)
		}
	}
	return d
}

func (d *draft) targetRow(p int) []string {
	if d.tgt[p] == nil {
		return d.cur[p]
	}
	return d.tgt[p]
}

// flipIfDone flips partition p when it moves and all its receivers are
// done (or it has none), and reports whether it did. A partition whose
// target equals its current row stops moving.
func (d *draft) flipIfDone(p int, v uint64) bool {
	tgt := d.tgt[p]
	if tgt == nil {
		return false
	}
	cur := d.cur[p]
	if slices.Equal(cur, tgt) {
		d.tgt[p], d.done[p] = nil, 0
		return false
	}
	for j, id := range tgt {
		if !slices.Contains(cur[:min(j+1, len(cur))], id) && d.done[p]&(1<<j) == 0 {
			return false
		}
	}
	d.cur[p], d.tgt[p], d.done[p], d.since[p] = tgt, nil, 0, v
	return true
}

// build returns the canonical Map of d: nodes are the target set and the
// ids its rows name, done marks only on receivers of moving partitions,
// no target rows when nothing moves.
func (d *draft) build() *Map {
	m := &Map{version: d.version, q: d.q, since: d.since}
	seen := make(map[string]uint16, len(d.tset)+8)
	add := func(row []string) {
		for _, id := range row {
			if _, ok := seen[id]; !ok {
				seen[id] = 0
				m.nodes = append(m.nodes, id)
			}
		}
	}
	add(d.tset)
	moving := false
	for p := range d.q {
		add(d.cur[p])
		if d.tgt[p] != nil {
			moving = true
			add(d.tgt[p])
			m.w = max(m.w, len(d.tgt[p]))
		}
		m.w = max(m.w, len(d.cur[p]))
	}
	slices.Sort(m.nodes)
	for i, id := range m.nodes {
		seen[id] = uint16(i)
	}
	if len(m.nodes) != len(d.tset) {
		m.inTarget = make([]bool, len(m.nodes))
		for _, id := range d.tset {
			m.inTarget[seen[id]] = true
		}
	}
	m.owners = d.rows(m, d.cur, seen)
	m.r = m.w
	for _, row := range d.cur {
		m.r = min(m.r, len(row))
	}
	if moving {
		m.target = d.rows(m, d.tgt, seen)
		m.done = make([]uint8, d.q)
		for p := range d.q {
			if d.tgt[p] == nil {
				continue
			}
			cur := d.cur[p]
			for j, id := range d.tgt[p] {
				if !slices.Contains(cur[:min(j+1, len(cur))], id) {
					m.done[p] |= d.done[p] & (1 << j)
				}
			}
		}
	}
	return m
}

// rows lays out rows (nil: the current row) as indexes into m.nodes,
// which index maps ids to.
func (d *draft) rows(m *Map, rows [][]string, index map[string]uint16) []uint16 {
	out := make([]uint16, d.q*m.w)
	for p := range d.q {
		row := rows[p]
		if row == nil {
			row = d.cur[p]
		}
		r := out[p*m.w : p*m.w+m.w]
		for j := range r {
			r[j] = none
			if j < len(row) {
				r[j] = index[row[j]]
			}
		}
	}
	return out
}

// Check reports the first invariant m breaks, or nil. Every Map built by
// this package holds them; [Decode] checks them on what it reads, and
// tests on what the transitions build:
//   - Q is a valid partition count, the node ids sorted, distinct and
//     non-empty; every node is in the target node set or named in a row;
//   - every row is non-empty, its owners distinct, known nodes, padded
//     only at its end; the stride is the longest row; R the shortest
//     current row;
//   - every target row (every row, when none moves) has min(MaxReplicas,
//     target nodes) owners, all in the target node set;
//   - some partition moves when target rows are kept, and each moving one
//     has a receiver not yet done; done marks only on receivers;
//   - since(p) <= version.
func (m *Map) Check() error {
	if m.q == 0 {
		if len(m.nodes) != 0 || m.owners != nil || m.target != nil {
			return errors.New("a map without partitions names nodes")
		}
		return nil
	}
	if err := ValidatePartitions(m.q); err != nil {
		return err
	}
	n := len(m.nodes)
	if n == 0 || n > MaxNodes {
		return fmt.Errorf("%d nodes", n)
	}
	for i, id := range m.nodes {
		if id == "" || (i > 0 && m.nodes[i-1] >= id) {
			return errors.New("node ids not sorted, distinct and non-empty")
		}
	}
	inT := func(i uint16) bool { return m.inTarget == nil || m.inTarget[i] }
	t := m.targetCount()
	if m.inTarget != nil && (len(m.inTarget) != n || t == 0 || t == n) {
		return fmt.Errorf("target node set of %d in %d nodes", t, n)
	}
	if m.w < 1 || m.w > MaxReplicas || len(m.owners) != m.q*m.w || len(m.since) != m.q {
		return fmt.Errorf("rows of %d owners", m.w)
	}
	if (m.target == nil) != (m.done == nil) || (m.target != nil && (len(m.target) != len(m.owners) || len(m.done) != m.q)) {
		return errors.New("target rows and done marks disagree")
	}
	if m.target == nil && m.inTarget != nil {
		return errors.New("nodes outside the target while nothing moves")
	}
	rt := min(MaxReplicas, t)
	used := make([]bool, n)
	longest, shortest, moving := 0, MaxReplicas, false
	for p := range m.q {
		if m.since[p] > m.version {
			return fmt.Errorf("partition %d changed at %d, after the map's version %d", p, m.since[p], m.version)
		}
		for _, rows := range [][]uint16{m.owners, m.target} {
			if rows == nil {
				continue
			}
			full := rows[p*m.w : p*m.w+m.w]
			row := m.row(rows, uint32(p))
			if len(row) == 0 || slices.ContainsFunc(full[len(row):], func(o uint16) bool { return o != none }) {
				return fmt.Errorf("partition %d: a row empty or with a gap", p)
			}
			if slices.ContainsFunc(row, func(o uint16) bool { return int(o) >= n }) || !distinct(row) {
				return fmt.Errorf("partition %d has an unknown or repeated owner", p)
			}
			for _, o := range row {
				used[o] = true
			}
			longest = max(longest, len(row))
		}
		cur, tgt := m.row(m.owners, uint32(p)), m.targetRow(uint32(p))
		shortest = min(shortest, len(cur))
		if len(tgt) != rt || slices.ContainsFunc(tgt, func(o uint16) bool { return !inT(o) }) {
			return fmt.Errorf("partition %d: target row %d long or outside the target nodes, want %d", p, len(tgt), rt)
		}
		if m.target == nil {
			continue
		}
		if !slices.Equal(cur, tgt) {
			moving = true
			waiting := false
			for j := range tgt {
				if receiver(cur, tgt, j) {
					waiting = waiting || m.done[p]&(1<<j) == 0
				} else if m.done[p]&(1<<j) != 0 {
					return fmt.Errorf("partition %d: a done mark on a non-receiver", p)
				}
			}
			if m.done[p]>>len(tgt) != 0 || !waiting {
				return fmt.Errorf("partition %d: moving with no receiver left to wait for", p)
			}
		} else if m.done[p] != 0 {
			return fmt.Errorf("partition %d: done marks while not moving", p)
		}
	}
	if m.target != nil && !moving {
		return errors.New("target rows kept while nothing moves")
	}
	if longest != m.w || shortest != m.r {
		return fmt.Errorf("stride %d / R %d, rows %d..%d long", m.w, m.r, shortest, longest)
	}
	for i := range n {
		if !used[i] && !inT(uint16(i)) {
			return fmt.Errorf("node %q neither in a row nor in the target", m.nodes[i])
		}
	}
	return nil
}
