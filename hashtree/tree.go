package hashtree

import (
	"errors"
	"fmt"
	"iter"
	"math/bits"

	"github.com/quorumkv/quorumkv/ring"
)

// Limits of a [Config].
const (
	MinFanOut = 2
	MaxFanOut = 256
	MinDepth  = 1
	MaxDepth  = 8
	// MaxLeaves bounds FanOut^Depth: 1 Mi leaves are 16 MiB of leaf hashes
	// plus 4 MiB of counts.
	MaxLeaves = 1 << 20
)

// ErrConfig reports a [Config] outside the limits above.
var ErrConfig = errors.New("hashtree: invalid config")

// ErrNotPresent reports a [Tree.Delete] or [Tree.Update] of a key from a
// bucket that holds no key, which breaks the caller contract (see
// [Tree]).
var ErrNotPresent = errors.New("hashtree: delete from an empty bucket")

// Config is the shape of a tree. Two trees can be compared only when their
// configs are equal.
type Config struct {
	// FanOut is the number of children of each inner node: a power of two
	// in [MinFanOut, MaxFanOut]. Default 16.
	FanOut int
	// Depth is the number of levels below the root; the leaves are level
	// Depth and there are FanOut^Depth of them, at most MaxLeaves.
	// Default 3 (4096 leaves).
	Depth int
}

// DefaultConfig returns the default shape: 16-way, 3 levels below the
// root, 4096 leaves. At 1M keys per partition a leaf holds ~256 keys;
// at the ~1k keys of a small partition most leaves hold none or one.
func DefaultConfig() Config { return Config{FanOut: 16, Depth: 3} }

// Validate returns nil when c is within the limits, otherwise an error
// wrapping ErrConfig.
func (c Config) Validate() error {
	if c.FanOut < MinFanOut || c.FanOut > MaxFanOut || c.FanOut&(c.FanOut-1) != 0 {
		return fmt.Errorf("%w: fan-out %d is not a power of two in %d..%d", ErrConfig, c.FanOut, MinFanOut, MaxFanOut)
	}
	if c.Depth < MinDepth || c.Depth > MaxDepth {
		return fmt.Errorf("%w: depth %d is not in %d..%d", ErrConfig, c.Depth, MinDepth, MaxDepth)
	}
	if bits.TrailingZeros(uint(c.FanOut))*c.Depth > bits.TrailingZeros(MaxLeaves) {
		return fmt.Errorf("%w: %d^%d leaves exceed %d", ErrConfig, c.FanOut, c.Depth, MaxLeaves)
	}
	return nil
}

// Leaves returns FanOut^Depth, the number of leaf buckets. c must be valid.
func (c Config) Leaves() int { return c.Width(c.Depth) }

// Width returns the number of nodes at level l (FanOut^l; the root is level
// 0). c must be valid and 0 <= l <= Depth.
func (c Config) Width(l int) int { return 1 << (bits.TrailingZeros(uint(c.FanOut)) * l) }

// Tree is the Merkle tree of one partition of one replica. Each leaf is a
// bucket of keys, chosen by [BucketOf]; its hash is the XOR of the
// [EntryHash] of the (key, version) pairs it holds, so the order of
// writes does not matter and a write is a delta: remove the old
// contribution, add the new. An inner node is the hash of its children's
// hashes, recomputed lazily: a write marks its ancestors dirty, and
// [Tree.Root], [Tree.Level] and [Tree.Children] rehash the dirty nodes
// first.
//
// # Caller contract
//
// The tree keeps no keys, only hashes. It is correct only if the caller
// feeds it every change of the partition exactly once, with the version it
// replaces: [Tree.Insert] for a key the partition did not hold,
// [Tree.Update] with the old and new version, [Tree.Delete] with the
// version removed. A storage node holds the old state when it writes,
// since it reads it to merge. A Delete or Update that names a version the
// tree never got (a never-inserted key, a stale old version) cannot be
// told from a correct one except when its bucket is empty (ErrNotPresent):
// the leaf then differs from the data, and only a comparison with a tree
// rebuilt from a scan ([Build]) or with another replica finds it, in
// exactly that bucket. Rebuild from a scan whenever the tree cannot be
// trusted (after a crash, a failed write, on a schedule).
//
// A Tree is not safe for concurrent use: it belongs to the partition's
// write loop. Readers (an exchange) must go through that owner or work on
// a copy ([Tree.Clone]).
type Tree struct {
	cfg   Config
	shift uint // log2(FanOut)
	// nodes holds every level, root first: level l starts at off[l].
	nodes []Hash
	off   []int
	// counts[i] is the number of keys in leaf i.
	counts []uint32
	n      int
	// dirty[l] (l < Depth) is a bitset of the inner nodes of level l whose
	// hash is stale, and dlist[l] lists them (capacity Width(l), so
	// appending never allocates). A dirty node's ancestors are dirty.
	dirty [][]uint64
	dlist [][]uint32
	// buf is scratch space for hashing one node's children.
	buf []byte
}

// New returns an empty tree of shape cfg.
func New(cfg Config) (*Tree, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Tree{cfg: cfg, shift: uint(bits.TrailingZeros(uint(cfg.FanOut)))}
	total := 0
	t.off = make([]int, cfg.Depth+1)
	for l := 0; l <= cfg.Depth; l++ {
		t.off[l] = total
		total += cfg.Width(l)
	}
	t.nodes = make([]Hash, total)
	t.counts = make([]uint32, cfg.Leaves())
	t.dirty = make([][]uint64, cfg.Depth)
	t.dlist = make([][]uint32, cfg.Depth)
	for l := 0; l < cfg.Depth; l++ {
		w := cfg.Width(l)
		t.dirty[l] = make([]uint64, (w+63)/64)
		t.dlist[l] = make([]uint32, 0, w)
	}
	t.buf = make([]byte, 0, 16*cfg.FanOut)
	return t, nil
}

// Config returns the shape of t.
func (t *Tree) Config() Config { return t.cfg }

// Len returns the number of keys t holds.
func (t *Tree) Len() int { return t.n }

// BucketCount returns the number of keys in leaf bucket b.
func (t *Tree) BucketCount(b int) int { return int(t.counts[b]) }

// Bucket returns the leaf bucket of (tenant, key) in t.
func (t *Tree) Bucket(tenant, key string) int {
	return BucketOf(ring.KeyHash(tenant, key), t.cfg.Leaves())
}

// Insert adds (tenant, key) at version; the tree must not hold the key.
// It costs a hash of the key, one of 32 bytes and O(1) amortised dirty
// marks, and does not allocate.
func (t *Tree) Insert(tenant, key string, version Hash) {
	kd := KeyDigest(tenant, key)
	b := BucketOf(kd[1], len(t.counts))
	t.counts[b]++
	t.n++
	t.apply(b, entryOf(kd, version))
}

// Update replaces version old of (tenant, key) with version new. It
// returns ErrNotPresent, and changes nothing, when the key's bucket is
// empty. It does not allocate.
func (t *Tree) Update(tenant, key string, old, new Hash) error {
	kd := KeyDigest(tenant, key)
	b := BucketOf(kd[1], len(t.counts))
	if t.counts[b] == 0 {
		return fmt.Errorf("update %q/%q: %w", tenant, key, ErrNotPresent)
	}
	if old == new {
		return nil
	}
	t.apply(b, entryOf(kd, old).xor(entryOf(kd, new)))
	return nil
}

// Delete removes (tenant, key) at version old. It returns ErrNotPresent,
// and changes nothing, when the key's bucket is empty. A tombstone is a
// version like any other: a storage node deletes from the tree only what
// it removes from disk (a reaped tombstone, an expired key, a partition
// handed off).
func (t *Tree) Delete(tenant, key string, old Hash) error {
	kd := KeyDigest(tenant, key)
	b := BucketOf(kd[1], len(t.counts))
	if t.counts[b] == 0 {
		return fmt.Errorf("delete %q/%q: %w", tenant, key, ErrNotPresent)
	}
	t.counts[b]--
	t.n--
	t.apply(b, entryOf(kd, old))
	return nil
}

// apply XORs delta into leaf b and marks its ancestors dirty, stopping at
// the first one already dirty.
func (t *Tree) apply(b int, delta Hash) {
	leaf := &t.nodes[t.off[t.cfg.Depth]+b]
	*leaf = leaf.xor(delta)
	idx := uint32(b)
	for l := t.cfg.Depth - 1; l >= 0; l-- {
		idx >>= t.shift
		w, m := idx/64, uint64(1)<<(idx%64)
		if t.dirty[l][w]&m != 0 {
			return
		}
		t.dirty[l][w] |= m
		t.dlist[l] = append(t.dlist[l], idx)
	}
}

// Dirty returns the number of inner nodes whose hash is stale.
func (t *Tree) Dirty() int {
	n := 0
	for _, d := range t.dlist {
		n += len(d)
	}
	return n
}

// flush rehashes the dirty inner nodes, deepest level first, so a node's
// children are clean when it is hashed. It costs O(dirty nodes) and does
// not allocate.
func (t *Tree) flush() {
	for l := t.cfg.Depth - 1; l >= 0; l-- {
		child := t.off[l+1]
		for _, idx := range t.dlist[l] {
			first := child + int(idx)<<t.shift
			t.nodes[t.off[l]+int(idx)] = t.hashChildren(t.nodes[first : first+t.cfg.FanOut])
			t.dirty[l][idx/64] &^= 1 << (idx % 64)
		}
		t.dlist[l] = t.dlist[l][:0]
	}
}

// hashChildren returns the hash of an inner node with the given children:
// zero when all are zero (an empty subtree), otherwise the 128-bit hash of
// their 16-byte big-endian forms in order.
func (t *Tree) hashChildren(children []Hash) Hash {
	return HashChildren(t.buf[:0], children)
}

// HashChildren returns the hash of an inner node whose children hash to
// children, using buf (which may be nil) as scratch space: zero when every
// child is zero, otherwise the 128-bit hash of their 16-byte big-endian
// forms in order. A remote peer's level can be checked against its parent
// with it.
func HashChildren(buf []byte, children []Hash) Hash {
	var or uint64
	for _, c := range children {
		or |= c[0] | c[1]
	}
	if or == 0 {
		return Hash{}
	}
	for _, c := range children {
		buf = appendHash(buf, c)
	}
	return sum128(buf)
}

// Root returns the root hash, rehashing dirty nodes first. Two trees of
// the same config over the same (key, version) set have the same root,
// whatever order the writes came in; an empty tree's root is zero.
func (t *Tree) Root() Hash {
	t.flush()
	return t.nodes[0]
}

// Level appends the hashes of every node of level l (0 = root, Depth =
// leaves), left to right, to dst and returns it. It returns an error for
// l out of range.
func (t *Tree) Level(dst []Hash, l int) ([]Hash, error) {
	if l < 0 || l > t.cfg.Depth {
		return dst, fmt.Errorf("hashtree: level %d out of 0..%d", l, t.cfg.Depth)
	}
	t.flush()
	return append(dst, t.nodes[t.off[l]:t.off[l]+t.cfg.Width(l)]...), nil
}

// Children appends to dst the FanOut hashes of the children of each node
// in parents, which are indices within level l (l < Depth), in order:
// the children of parents[i] are dst[len(dst)+i*FanOut:][:FanOut]. It is
// the one call a breadth-first exchange makes per level ([Diff]). It
// refuses an index outside the level and more parents than the level
// holds, so a peer's request cannot make it allocate more than a level.
func (t *Tree) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	if l < 0 || l >= t.cfg.Depth {
		return dst, fmt.Errorf("hashtree: parent level %d out of 0..%d", l, t.cfg.Depth-1)
	}
	w := uint32(t.cfg.Width(l))
	if len(parents) > int(w) {
		// A peer's request: an exchange never asks a node twice.
		return dst, fmt.Errorf("hashtree: %d parents asked of level %d (width %d)", len(parents), l, w)
	}
	t.flush()
	child := t.off[l+1]
	for _, p := range parents {
		if p >= w {
			return dst, fmt.Errorf("hashtree: node %d out of level %d (width %d)", p, l, w)
		}
		first := child + int(p)<<t.shift
		dst = append(dst, t.nodes[first:first+t.cfg.FanOut]...)
	}
	return dst, nil
}

// Leaf returns the hash of leaf bucket b.
func (t *Tree) Leaf(b int) Hash { return t.nodes[t.off[t.cfg.Depth]+b] }

// Reset empties t, keeping its memory.
func (t *Tree) Reset() {
	clear(t.nodes)
	clear(t.counts)
	t.n = 0
	for l := range t.dirty {
		clear(t.dirty[l])
		t.dlist[l] = t.dlist[l][:0]
	}
}

// Clone returns a deep copy of t, for an exchange to read while the owner
// keeps writing.
func (t *Tree) Clone() *Tree {
	t.flush()
	c, _ := New(t.cfg) // t.cfg was validated by New
	copy(c.nodes, t.nodes)
	copy(c.counts, t.counts)
	c.n = t.n
	return c
}

// Entry is one (tenant, key, version) of a partition, as a full scan
// yields it.
type Entry struct {
	Tenant, Key string
	Version     Hash
}

// Build returns the tree of the entries a full scan of a partition yields,
// each key once. It equals the tree the same set reaches through any
// sequence of Insert, Update and Delete that keeps the caller contract.
// Inner nodes are hashed once at the end, not per entry.
func Build(cfg Config, scan iter.Seq[Entry]) (*Tree, error) {
	t, err := New(cfg)
	if err != nil {
		return nil, err
	}
	leaves := t.nodes[t.off[cfg.Depth]:]
	for e := range scan {
		kd := KeyDigest(e.Tenant, e.Key)
		b := BucketOf(kd[1], len(leaves))
		leaves[b] = leaves[b].xor(entryOf(kd, e.Version))
		t.counts[b]++
		t.n++
	}
	t.rehashAll()
	return t, nil
}

// rehashAll recomputes every inner node from the leaves up.
func (t *Tree) rehashAll() {
	for l := t.cfg.Depth - 1; l >= 0; l-- {
		child := t.off[l+1]
		for i := range t.cfg.Width(l) {
			first := child + i<<t.shift
			t.nodes[t.off[l]+i] = t.hashChildren(t.nodes[first : first+t.cfg.FanOut])
		}
		clear(t.dirty[l])
		t.dlist[l] = t.dlist[l][:0]
	}
}
