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
// Every owner list has the same length, R = min(MaxReplicas, number of
// nodes), long enough for the largest replication factor the cluster can
// serve. Maps are built by [Claim] or [Decode], carry a version that
// increases with every claim, and are immutable: a Map is safe for
// concurrent use, and a change of membership builds a new Map.
//
// The zero Map has no partitions and no nodes; lookups on it return empty
// lists.
type Map struct {
	version uint64
	q       int
	r       int
	// nodes holds the node ids, sorted, distinct and non-empty.
	nodes []string
	// owners holds q rows of r indexes into nodes: partition p's owners are
	// owners[p*r : p*r+r], in preference order.
	owners []uint16
}

// Version returns the map's version. Claim numbers maps 1, 2, 3, ... from
// its prev; the metadata store uses it for optimistic locking.
func (m *Map) Version() uint64 { return m.version }

// WithVersion returns a map that places every partition as m does, with
// version v. It shares m's (immutable) contents. The metadata store numbers
// its records, and a record may hold no map (no node was active), so the
// claim that follows one gets the record's next number this way.
func (m *Map) WithVersion(v uint64) *Map {
	c := *m
	c.version = v
	return &c
}

// Partitions returns Q, the number of partitions.
func (m *Map) Partitions() int { return m.q }

// Replicas returns R, the length of every owner list: min(MaxReplicas,
// number of nodes).
func (m *Map) Replicas() int { return m.r }

// Nodes returns a copy of the map's node ids, sorted.
func (m *Map) Nodes() []string { return slices.Clone(m.nodes) }

// HasNode reports whether id is one of the map's nodes.
func (m *Map) HasNode(id string) bool {
	_, ok := slices.BinarySearch(m.nodes, id)
	return ok
}

// Partition returns the partition of key within tenant under this map's Q.
func (m *Map) Partition(tenant, key string) uint32 { return Partition(tenant, key, m.q) }

// Owners appends to dst[:0] the owners of partition p in preference order
// and returns the extended slice: R ids, or none when p >= Q. It does not
// allocate when cap(dst) >= R. The strings are shared with the map and may
// be kept.
func (m *Map) Owners(p uint32, dst []string) []string {
	return m.appendOwners(p, m.r, dst[:0])
}

// PreferenceList appends to dst[:0] the first min(rf, R) owners of the
// partition of key within tenant, and returns the extended slice; the first
// is the key's primary. Like [Ring.PreferenceList], it is empty when rf <= 0,
// does not allocate when cap(dst) is large enough, and the strings may be
// kept.
func (m *Map) PreferenceList(tenant, key string, rf int, dst []string) []string {
	return m.appendOwners(Partition(tenant, key, m.q), rf, dst[:0])
}

// PreferenceListHash is PreferenceList for a key whose hash was computed
// with KeyHash.
func (m *Map) PreferenceListHash(h uint64, rf int, dst []string) []string {
	return m.appendOwners(PartitionOf(h, m.q), rf, dst[:0])
}

func (m *Map) appendOwners(p uint32, n int, dst []string) []string {
	n = min(n, m.r)
	if n <= 0 || int(p) >= m.q {
		return dst
	}
	if cap(dst)-len(dst) < n {
		dst = slices.Grow(dst, n)
	}
	for _, o := range m.owners[int(p)*m.r : int(p)*m.r+n] {
		dst = append(dst, m.nodes[o])
	}
	return dst
}

// Load returns, for each node, the number of partitions in which it is one
// of the first rf owners (rf is clamped to 1..R): with rf = 1, the partitions
// it is primary for. The map is new and owned by the caller.
func (m *Map) Load(rf int) map[string]int {
	rf = max(1, min(rf, m.r))
	load := make(map[string]int, len(m.nodes))
	for _, id := range m.nodes {
		load[id] = 0
	}
	for p := 0; p < m.q; p++ {
		for _, o := range m.owners[p*m.r : p*m.r+rf] {
			load[m.nodes[o]]++
		}
	}
	return load
}

// Equal reports whether m and o place every partition identically; the
// versions are not compared.
func (m *Map) Equal(o *Map) bool {
	return m.q == o.q && m.r == o.r && slices.Equal(m.nodes, o.nodes) && slices.Equal(m.owners, o.owners)
}

// The binary form (format 1), all integers unsigned varints unless noted:
//
//	magic "qkpm" (4 bytes), format (1 byte, = 1)
//	version
//	log2(Q) (1 byte), R (1 byte)
//	N, then N node ids, each as length + bytes, strictly ascending
//	Q×R owner indexes into the node ids, partition by partition
//
// It is deterministic: equal maps encode to equal bytes. With up to 127
// nodes an owner index takes one byte, so a map of 1024 partitions and 7
// owners is about 7 KiB plus the ids.
const (
	mapMagic  = "qkpm"
	mapFormat = 1
)

// ErrBadMap reports bytes that Decode cannot read as a placement map.
var ErrBadMap = errors.New("ring: bad placement map encoding")

// AppendBinary appends the map's binary form to b (encoding.BinaryAppender).
func (m *Map) AppendBinary(b []byte) ([]byte, error) {
	b = append(b, mapMagic...)
	b = append(b, mapFormat)
	b = binary.AppendUvarint(b, m.version)
	b = append(b, byte(bits.TrailingZeros(uint(m.q))), byte(m.r))
	b = binary.AppendUvarint(b, uint64(len(m.nodes)))
	for _, id := range m.nodes {
		b = binary.AppendUvarint(b, uint64(len(id)))
		b = append(b, id...)
	}
	for _, o := range m.owners {
		b = binary.AppendUvarint(b, uint64(o))
	}
	return b, nil
}

// MarshalBinary returns the map's binary form (encoding.BinaryMarshaler);
// [Decode] reads it back. Store it as a msgpack bin or a bytea.
func (m *Map) MarshalBinary() ([]byte, error) { return m.AppendBinary(nil) }

// Decode reads a map written by [Map.MarshalBinary]. It checks every
// invariant a Map holds (a valid Q, R = min(MaxReplicas, N), sorted distinct
// non-empty ids, distinct owners within each partition, no trailing bytes)
// and returns an error wrapping ErrBadMap otherwise. It never panics, and
// it allocates no more than a small multiple of len(data).
func Decode(data []byte) (*Map, error) {
	d := decoder{b: data}
	if len(d.b) < len(mapMagic)+1 || string(d.b[:len(mapMagic)]) != mapMagic {
		return nil, fmt.Errorf("%w: no magic", ErrBadMap)
	}
	if f := d.b[len(mapMagic)]; f != mapFormat {
		return nil, fmt.Errorf("%w: unknown format %d", ErrBadMap, f)
	}
	d.b = d.b[len(mapMagic)+1:]
	m := &Map{}
	m.version = d.uvarint()
	lq, r := d.byte(), d.byte()
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
	if int(r) != min(MaxReplicas, int(n)) {
		return nil, fmt.Errorf("%w: R = %d for %d nodes", ErrBadMap, r, n)
	}
	m.r = int(r)
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
	total := m.q * m.r
	if total > len(d.b) {
		return nil, fmt.Errorf("%w: %d owner indexes in %d bytes", ErrBadMap, total, len(d.b))
	}
	m.owners = make([]uint16, total)
	for i := range m.owners {
		o := d.uvarint()
		if d.err == nil && o >= n {
			d.err = fmt.Errorf("%w: owner index %d of %d nodes", ErrBadMap, o, n)
		}
		if d.err != nil {
			return nil, d.err
		}
		m.owners[i] = uint16(o)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrBadMap, len(d.b))
	}
	for p := 0; p < m.q; p++ {
		if !distinct(m.owners[p*m.r : p*m.r+m.r]) {
			return nil, fmt.Errorf("%w: partition %d has a repeated owner", ErrBadMap, p)
		}
	}
	return m, nil
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
	if n <= 0 {
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
