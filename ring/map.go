package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// MaxNodes is the largest number of nodes a [Map] can name.
const MaxNodes = 1<<16 - 1

// Map is a placement map: for each of Q fixed partitions, an ordered list of
// distinct owner nodes. A tenant with replication factor rf uses the first
// rf owners of a key's partition; the first is the partition's primary.
//
// A partition has a current owner row, which serves reads and counts
// writes, and, while it moves, a target row (DESIGN.md §3, issue 14
// transitions): writes go to both ([Map.WriteSet]), the target's new
// members pull the partition ([Map.Receiving]), and once they all report
// done ([Map.MarkDone]) the partition flips, current := target. Every
// lookup that does not name the target ([Map.Owners],
// [Map.PreferenceList], [Map.Load], [Map.Replicas]) describes the current
// rows; a map without moving partitions behaves as a map always did.
//
// In a map without moving partitions every owner list has the same length,
// R = min(MaxReplicas, number of nodes), long enough for the largest
// replication factor the cluster can serve. While partitions move, the
// current rows of flipped and unflipped partitions may differ in length
// (going from 2 to 3 nodes grows R from 2 to 3); [Map.Replicas] is then the
// shortest. Maps are built by [Claim], [Map.Retarget], [Map.MarkDone],
// [Map.Substitute] or [Decode], carry a version, and are immutable: a Map
// is safe for concurrent use, and a change builds a new Map.
//
// The zero Map has no partitions and no nodes; lookups on it return empty
// lists.
type Map struct {
	version uint64
	q       int
	// r is the length of the shortest current row (Replicas).
	r int
	// w is the row stride: the length of the longest row, current or
	// target. Shorter rows end in none.
	w int
	// nodes holds the node ids, sorted, distinct and non-empty: the target
	// node set and every id named in a row.
	nodes []string
	// inTarget[i] reports whether nodes[i] is in the target node set; nil
	// when every node is (always so when no partition moves).
	inTarget []bool
	// owners holds q current rows of w indexes into nodes: partition p's
	// owners are owners[p*w : p*w+w] up to the first none, in preference
	// order.
	owners []uint16
	// target holds q target rows like owners; nil when no partition moves.
	// A partition moves when its target row differs from its current one.
	target []uint16
	// since[p] is the version in which partition p's current or target row
	// last changed.
	since []uint64
	// done[p] bit j is set when target row p's j-th owner, a receiver,
	// reported p done; nil when no partition moves.
	done []uint8
}

// none marks the end of a row shorter than the stride. MaxNodes keeps it
// out of the index range.
const none = MaxNodes

// Version returns the map's version. Claim numbers maps 1, 2, 3, ... from
// its prev; the metadata store uses it for optimistic locking.
func (m *Map) Version() uint64 { return m.version }

// WithVersion returns a map that places every partition as m does, with
// version v. It shares m's (immutable) rows. The metadata store numbers
// its records, and a record may hold no map (no node was active), so the
// claim that follows one gets the record's next number this way. The
// partitions that changed in m's version are renumbered as changed in v,
// and no since exceeds v.
func (m *Map) WithVersion(v uint64) *Map {
	c := *m
	c.version = v
	if m.since != nil {
		c.since = make([]uint64, len(m.since))
		for p, s := range m.since {
			if s == m.version || s > v {
				s = v
			}
			c.since[p] = s
		}
	}
	return &c
}

// Partitions returns Q, the number of partitions.
func (m *Map) Partitions() int { return m.q }

// Replicas returns R, the length of the shortest current owner list; in a
// map without moving partitions, the length of every owner list:
// min(MaxReplicas, number of nodes).
func (m *Map) Replicas() int { return m.r }

// Nodes returns a copy of the map's node ids, sorted: the union of
// [Map.CurrentNodes] and [Map.TargetNodes].
func (m *Map) Nodes() []string { return slices.Clone(m.nodes) }

// HasNode reports whether id is one of the map's nodes: named in a current
// or target row, or in the target node set. A node leaving the cluster
// stops being one when the last partition it held flips away.
func (m *Map) HasNode(id string) bool {
	_, ok := slices.BinarySearch(m.nodes, id)
	return ok
}

// Partition returns the partition of key within tenant under this map's Q.
func (m *Map) Partition(tenant, key string) uint32 { return Partition(tenant, key, m.q) }

// Owners appends to dst[:0] the current owners of partition p in preference
// order and returns the extended slice: R ids (see [Map.Replicas]), or none
// when p >= Q. It does not allocate when cap(dst) >= the row's length. The
// strings are shared with the map and may be kept.
func (m *Map) Owners(p uint32, dst []string) []string {
	return m.appendRow(m.owners, p, m.w, dst[:0])
}

// PreferenceList appends to dst[:0] the first min(rf, R) current owners of
// the partition of key within tenant, and returns the extended slice; the
// first is the key's primary. It is empty when rf <= 0, does not allocate
// when cap(dst) is large enough, and the strings may be kept.
func (m *Map) PreferenceList(tenant, key string, rf int, dst []string) []string {
	return m.appendRow(m.owners, Partition(tenant, key, m.q), rf, dst[:0])
}

// PreferenceListHash is PreferenceList for a key whose hash was computed
// with KeyHash.
func (m *Map) PreferenceListHash(h uint64, rf int, dst []string) []string {
	return m.appendRow(m.owners, PartitionOf(h, m.q), rf, dst[:0])
}

// row returns partition p's row of rows (owners or target), without its
// trailing none entries; nil when p >= Q.
func (m *Map) row(rows []uint16, p uint32) []uint16 {
	if int(p) >= m.q {
		return nil
	}
	r := rows[int(p)*m.w : int(p)*m.w+m.w]
	for i, o := range r {
		if o == none {
			return r[:i]
		}
	}
	return r
}

// targetRow is partition p's target row: its current row when p does not
// move.
func (m *Map) targetRow(p uint32) []uint16 {
	if m.target == nil {
		return m.row(m.owners, p)
	}
	return m.row(m.target, p)
}

func (m *Map) appendRow(rows []uint16, p uint32, n int, dst []string) []string {
	if n <= 0 {
		return dst
	}
	r := m.row(rows, p)
	r = r[:min(n, len(r))]
	if cap(dst)-len(dst) < len(r) {
		dst = slices.Grow(dst, len(r))
	}
	for _, o := range r {
		dst = append(dst, m.nodes[o])
	}
	return dst
}

// Load returns, for each node of the map, the number of partitions in
// which it is one of the first rf current owners (rf is clamped to 1..R):
// with rf = 1, the partitions it is primary for. The map is new and owned
// by the caller.
func (m *Map) Load(rf int) map[string]int {
	rf = max(1, min(rf, m.r))
	load := make(map[string]int, len(m.nodes))
	for _, id := range m.nodes {
		load[id] = 0
	}
	for p := 0; p < m.q; p++ {
		r := m.row(m.owners, uint32(p))
		for _, o := range r[:min(rf, len(r))] {
			load[m.nodes[o]]++
		}
	}
	return load
}

// Equal reports whether m and o place every partition identically: the
// same nodes, current and target rows, target node set and done marks.
// Neither the versions nor the since versions are compared.
func (m *Map) Equal(o *Map) bool {
	return m.q == o.q && m.w == o.w && slices.Equal(m.nodes, o.nodes) &&
		slices.Equal(m.inTarget, o.inTarget) && slices.Equal(m.owners, o.owners) &&
		slices.Equal(m.target, o.target) && slices.Equal(m.done, o.done)
}

// The binary form, all integers unsigned varints unless noted. Format 2:
//
//	magic "qkpm" (4 bytes), format (1 byte, = 2)
//	version
//	log2(Q) (1 byte), W (1 byte): the longest row
//	N, then N node ids, each as length + bytes, strictly ascending
//	T, then the T indexes of the target node set, strictly ascending
//	moving (1 byte, 0 or 1)
//	Q×W current owner entries, partition by partition: index+1, or 0
//	    after the end of a shorter row
//	if moving: Q×W target owner entries, the same way
//	Q since distances: version - since(p)
//	if moving: Q done bytes, bit j for the j-th target owner
//
// Format 1, which Decode still reads (maps stored before transitions):
//
//	magic "qkpm", format (1 byte, = 1)
//	version
//	log2(Q) (1 byte), R (1 byte)
//	N, then N node ids, each as length + bytes, strictly ascending
//	Q×R owner indexes into the node ids, partition by partition
//
// A format 1 map has no moving partition, and since(p) = version for
// every p: its history is unknown, so a node fences every sender older
// than the map (sound: such a sender is refused and reloads; it never
// counts an answer it should not).
//
// The form is canonical: equal maps encode to equal bytes, and Decode
// rejects anything else (unused nodes, trailing row ends, done marks of
// non-receivers, moving with nothing moving). With up to 126 nodes an
// owner entry takes one byte, so a map of 1024 partitions and 7 owners is
// about 8 KiB plus the ids, twice that while partitions move.
const (
	mapMagic   = "qkpm"
	mapFormat1 = 1
	mapFormat  = 2
)

// ErrBadMap reports bytes that Decode cannot read as a placement map.
var ErrBadMap = errors.New("ring: bad placement map encoding")

// AppendBinary appends the map's binary form to b (encoding.BinaryAppender).
func (m *Map) AppendBinary(b []byte) ([]byte, error) {
	if m.q == 0 {
		return nil, errors.New("ring: the zero map has no binary form")
	}
	b = append(b, mapMagic...)
	b = append(b, mapFormat)
	b = binary.AppendUvarint(b, m.version)
	b = append(b, byte(bits.TrailingZeros(uint(m.q))), byte(m.w))
	b = binary.AppendUvarint(b, uint64(len(m.nodes)))
	for _, id := range m.nodes {
		b = binary.AppendUvarint(b, uint64(len(id)))
		b = append(b, id...)
	}
	b = binary.AppendUvarint(b, uint64(m.targetCount()))
	for i := range m.nodes {
		if m.inTarget == nil || m.inTarget[i] {
			b = binary.AppendUvarint(b, uint64(i))
		}
	}
	moving := byte(0)
	if m.target != nil {
		moving = 1
	}
	b = append(b, moving)
	b = appendRows(b, m.owners)
	b = appendRows(b, m.target)
	for _, s := range m.since {
		b = binary.AppendUvarint(b, m.version-s)
	}
	b = append(b, m.done...)
	return b, nil
}

func appendRows(b []byte, rows []uint16) []byte {
	for _, o := range rows {
		if o == none {
			b = append(b, 0)
		} else {
			b = binary.AppendUvarint(b, uint64(o)+1)
		}
	}
	return b
}

func (m *Map) targetCount() int {
	if m.inTarget == nil {
		return len(m.nodes)
	}
	n := 0
	for _, in := range m.inTarget {
		if in {
			n++
		}
	}
	return n
}

// MarshalBinary returns the map's binary form (encoding.BinaryMarshaler);
// [Decode] reads it back. Store it as a msgpack bin or a bytea. The zero
// Map has none (an error).
func (m *Map) MarshalBinary() ([]byte, error) { return m.AppendBinary(nil) }

// Decode reads a map written by [Map.MarshalBinary], in format 2 or 1. It
// checks every invariant a Map holds (see [Map.Check]; no trailing bytes)
// and returns an error wrapping ErrBadMap otherwise. It never panics, and
// it allocates no more than a small multiple of len(data).
func Decode(data []byte) (*Map, error) {
	d := decoder{b: data}
	if len(d.b) < len(mapMagic)+1 || string(d.b[:len(mapMagic)]) != mapMagic {
		return nil, fmt.Errorf("%w: no magic", ErrBadMap)
	}
	format := d.b[len(mapMagic)]
	if format != mapFormat && format != mapFormat1 {
		return nil, fmt.Errorf("%w: unknown format %d", ErrBadMap, format)
	}
	d.b = d.b[len(mapMagic)+1:]
	m := &Map{}
	m.version = d.uvarint()
	lq, w := d.byte(), d.byte()
	n := d.uvarint()
	if d.err != nil {
		return nil, d.err
	}
	if lq > 16 {
		return nil, fmt.Errorf("%w: log2(Q) = %d", ErrBadMap, lq)
	}
	m.q = 1 << lq
	// Every id takes at least two bytes, which bounds n before allocating.
	if n == 0 || n > MaxNodes || n > uint64(len(d.b))/2 {
		return nil, fmt.Errorf("%w: %d nodes", ErrBadMap, n)
	}
	if w == 0 || w > MaxReplicas {
		return nil, fmt.Errorf("%w: rows of %d owners", ErrBadMap, w)
	}
	m.w = int(w)
	m.nodes = make([]string, n)
	for i := range m.nodes {
		l := d.uvarint()
		if d.err == nil && (l == 0 || l > uint64(len(d.b))) {
			d.err = fmt.Errorf("%w: node id length %d", ErrBadMap, l)
		}
		if d.err != nil {
			return nil, d.err
		}
		m.nodes[i] = string(d.b[:l])
		d.b = d.b[l:]
		if i > 0 && m.nodes[i-1] >= m.nodes[i] {
			return nil, fmt.Errorf("%w: node ids not strictly ascending", ErrBadMap)
		}
	}
	if format == mapFormat1 {
		if err := m.decodeFormat1(&d); err != nil {
			return nil, err
		}
	} else if err := m.decodeFormat2(&d); err != nil {
		return nil, err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadMap, len(d.b))
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadMap, err)
	}
	return m, nil
}

func (m *Map) decodeFormat1(d *decoder) error {
	if m.w != min(MaxReplicas, len(m.nodes)) {
		return fmt.Errorf("%w: R = %d for %d nodes", ErrBadMap, m.w, len(m.nodes))
	}
	total := m.q * m.w
	if total > len(d.b) {
		return fmt.Errorf("%w: %d owner indexes in %d bytes", ErrBadMap, total, len(d.b))
	}
	m.owners = make([]uint16, total)
	for i := range m.owners {
		o := d.uvarint()
		if d.err == nil && o >= uint64(len(m.nodes)) {
			d.err = fmt.Errorf("%w: owner index %d of %d nodes", ErrBadMap, o, len(m.nodes))
		}
		if d.err != nil {
			return d.err
		}
		m.owners[i] = uint16(o)
	}
	m.r = m.w
	m.since = make([]uint64, m.q)
	for p := range m.since {
		m.since[p] = m.version
	}
	return nil
}

func (m *Map) decodeFormat2(d *decoder) error {
	n := uint64(len(m.nodes))
	t := d.uvarint()
	if d.err == nil && (t == 0 || t > n) {
		d.err = fmt.Errorf("%w: %d target nodes of %d", ErrBadMap, t, n)
	}
	if d.err != nil {
		return d.err
	}
	if t < n {
		m.inTarget = make([]bool, n)
		prev := -1
		for range t {
			i := d.uvarint()
			if d.err == nil && (i >= n || int(i) <= prev) {
				d.err = fmt.Errorf("%w: target node index %d", ErrBadMap, i)
			}
			if d.err != nil {
				return d.err
			}
			m.inTarget[i] = true
			prev = int(i)
		}
	} else {
		for i := range t {
			if d.uvarint() != i && d.err == nil {
				d.err = fmt.Errorf("%w: target node index out of order", ErrBadMap)
			}
		}
		if d.err != nil {
			return d.err
		}
	}
	moving := d.byte()
	if d.err == nil && moving > 1 {
		d.err = fmt.Errorf("%w: moving flag %d", ErrBadMap, moving)
	}
	if d.err != nil {
		return d.err
	}
	// Every entry takes a byte, which bounds the rows before allocating.
	total := m.q * m.w
	if rows := 1 + int(moving); total*rows > len(d.b) {
		return fmt.Errorf("%w: %d owner entries in %d bytes", ErrBadMap, total*rows, len(d.b))
	}
	var err error
	if m.owners, err = d.rows(total, n); err != nil {
		return err
	}
	if moving == 1 {
		if m.target, err = d.rows(total, n); err != nil {
			return err
		}
	}
	if m.q > len(d.b) {
		return fmt.Errorf("%w: %d since entries in %d bytes", ErrBadMap, m.q, len(d.b))
	}
	m.since = make([]uint64, m.q)
	for p := range m.since {
		dist := d.uvarint()
		if d.err == nil && dist > m.version {
			d.err = fmt.Errorf("%w: partition %d changed after the map's version", ErrBadMap, p)
		}
		if d.err != nil {
			return d.err
		}
		m.since[p] = m.version - dist
	}
	if moving == 1 {
		if m.q > len(d.b) {
			return fmt.Errorf("%w: %d done marks in %d bytes", ErrBadMap, m.q, len(d.b))
		}
		m.done = slices.Clone(d.b[:m.q])
		d.b = d.b[m.q:]
	}
	m.r = m.w
	for p := 0; p < m.q; p++ {
		m.r = min(m.r, len(m.row(m.owners, uint32(p))))
	}
	return nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	// A minimal varint's last byte is non-zero unless it is the only one:
	// the encoding stays canonical.
	if n <= 0 || (n > 1 && d.b[n-1] == 0) {
		d.err = fmt.Errorf("%w: truncated or overlong varint", ErrBadMap)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = fmt.Errorf("%w: truncated", ErrBadMap)
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// rows reads total format 2 owner entries over n nodes.
func (d *decoder) rows(total int, n uint64) ([]uint16, error) {
	rows := make([]uint16, total)
	for i := range rows {
		o := d.uvarint()
		if d.err == nil && o > n {
			d.err = fmt.Errorf("%w: owner index %d of %d nodes", ErrBadMap, o-1, n)
		}
		if d.err != nil {
			return nil, d.err
		}
		rows[i] = uint16(o - 1) // 0 - 1 wraps to none
	}
	return rows, nil
}

// distinct reports whether row has no repeated index; rows are at most
// MaxReplicas long.
func distinct(row []uint16) bool {
	for i := 1; i < len(row); i++ {
		if slices.Contains(row[:i], row[i]) {
			return false
		}
	}
	return true
}
