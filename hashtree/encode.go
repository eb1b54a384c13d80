package hashtree

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Encoding of a tree for persistence (beside the partition's data, so a
// restart need not rescan it when the tree can be trusted):
//
//	"QKHT" | version (1) | log2(FanOut) (1) | Depth (1) | uvarint key count
//	| bitmap of non-empty leaves, Leaves/8 bytes (at least 1), bit i of byte i/8 LSB first
//	| per non-empty leaf, in order: uvarint count (>0), 16-byte leaf hash
//	| 16-byte root
//
// Inner nodes are not stored: [Decode] rehashes them and checks the root,
// so a torn or corrupted file is an error, never a wrong tree. A default
// tree (4096 leaves) takes 536 bytes empty and ~17.5 bytes per non-empty
// leaf, about 72 KiB full.

// encodingVersion is the version byte of the encoding. ONLY APPEND new
// versions; Decode rejects versions it does not know.
const encodingVersion = 1

var magic = [4]byte{'Q', 'K', 'H', 'T'}

// ErrCorrupt reports an encoding that Decode cannot accept.
var ErrCorrupt = errors.New("hashtree: corrupt encoding")

// MarshalBinary returns the encoding of t.
func (t *Tree) MarshalBinary() ([]byte, error) {
	return t.AppendBinary(nil)
}

// AppendBinary appends the encoding of t to dst.
func (t *Tree) AppendBinary(dst []byte) ([]byte, error) {
	root := t.Root()
	leaves := t.nodes[t.off[t.cfg.Depth]:]
	dst = append(dst, magic[:]...)
	dst = append(dst, encodingVersion, byte(t.shift), byte(t.cfg.Depth))
	dst = binary.AppendUvarint(dst, uint64(t.n))
	bm := len(dst)
	dst = append(dst, make([]byte, bitmapLen(len(leaves)))...)
	for i, c := range t.counts {
		if c == 0 {
			continue
		}
		dst[bm+i/8] |= 1 << (i % 8)
		dst = binary.AppendUvarint(dst, uint64(c))
		dst = appendHash(dst, leaves[i])
	}
	return appendHash(dst, root), nil
}

// uvarintLen returns the length of the canonical uvarint of x; Decode
// refuses others, so an encoding has one form.
func uvarintLen(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

func bitmapLen(leaves int) int { return (leaves + 7) / 8 }

// Decode returns the tree encoded in b. It returns an error wrapping
// ErrCorrupt (or ErrConfig) for any input that is not an encoding
// [Tree.MarshalBinary] produced, and never panics. It allocates memory in
// proportion to the tree the header names only after checking that b is
// long enough to hold its bitmap.
func Decode(b []byte) (*Tree, error) {
	if len(b) < 7 || [4]byte(b[:4]) != magic {
		return nil, fmt.Errorf("%w: no header", ErrCorrupt)
	}
	if b[4] != encodingVersion {
		return nil, fmt.Errorf("%w: unknown version %d", ErrCorrupt, b[4])
	}
	if b[5] >= 9 {
		return nil, fmt.Errorf("%w: fan-out 2^%d", ErrConfig, b[5])
	}
	cfg := Config{FanOut: 1 << b[5], Depth: int(b[6])}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b = b[7:]
	n, k := binary.Uvarint(b)
	if k <= 0 || k != uvarintLen(n) {
		return nil, fmt.Errorf("%w: key count", ErrCorrupt)
	}
	b = b[k:]
	nl := cfg.Leaves()
	if len(b) < bitmapLen(nl)+16 {
		return nil, fmt.Errorf("%w: %d bytes cannot hold %d leaves", ErrCorrupt, len(b), nl)
	}
	bm := b[:bitmapLen(nl)]
	b = b[len(bm):]
	if nl%8 != 0 && bm[len(bm)-1]>>(nl%8) != 0 {
		return nil, fmt.Errorf("%w: bitmap bits beyond the leaves", ErrCorrupt)
	}
	t, err := New(cfg)
	if err != nil {
		return nil, err
	}
	leaves := t.nodes[t.off[cfg.Depth]:]
	var sum uint64
	for i := range nl {
		if bm[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		c, k := binary.Uvarint(b)
		if k <= 0 || k != uvarintLen(c) || c == 0 || c > 1<<32-1 {
			return nil, fmt.Errorf("%w: count of leaf %d", ErrCorrupt, i)
		}
		b = b[k:]
		if len(b) < 16 {
			return nil, fmt.Errorf("%w: leaf %d truncated", ErrCorrupt, i)
		}
		t.counts[i] = uint32(c)
		leaves[i] = readHash(b)
		b = b[16:]
		var carry uint64
		sum, carry = bits.Add64(sum, c, 0)
		if carry != 0 {
			return nil, fmt.Errorf("%w: key count overflows", ErrCorrupt)
		}
	}
	if sum != n {
		return nil, fmt.Errorf("%w: leaves hold %d keys, header says %d", ErrCorrupt, sum, n)
	}
	if len(b) != 16 {
		return nil, fmt.Errorf("%w: %d bytes after the leaves, want 16", ErrCorrupt, len(b))
	}
	t.n = int(n)
	t.rehashAll()
	if t.nodes[0] != readHash(b) {
		return nil, fmt.Errorf("%w: root does not match the leaves", ErrCorrupt)
	}
	return t, nil
}
