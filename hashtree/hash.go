package hashtree

import (
	"encoding/binary"

	"github.com/cespare/xxhash/v2"

	"github.com/quorumkv/quorumkv/ring"
)

// Hash is a 128-bit hash: a version hash, a key's contribution to its
// leaf, or a node of the tree. The zero Hash is the hash of an empty leaf
// and of an empty subtree.
type Hash [2]uint64

// IsZero reports whether h is the zero Hash.
func (h Hash) IsZero() bool { return h[0]|h[1] == 0 }

// xor returns h ^ o, lane by lane.
func (h Hash) xor(o Hash) Hash { return Hash{h[0] ^ o[0], h[1] ^ o[1]} }

// appendHash appends h in its 16-byte big-endian wire form.
func appendHash(dst []byte, h Hash) []byte {
	dst = binary.BigEndian.AppendUint64(dst, h[0])
	return binary.BigEndian.AppendUint64(dst, h[1])
}

// readHash reads a Hash from the first 16 bytes of b, which must be that long.
func readHash(b []byte) Hash {
	return Hash{binary.BigEndian.Uint64(b), binary.BigEndian.Uint64(b[8:])}
}

// The two lanes of every 128-bit hash in this package are xxhash64 of the
// same bytes under these two seeds. They are part of the anti-entropy
// protocol: every node must use the same ones.
const (
	seedLo = 0
	seedHi = 0x9e3779b97f4a7c15 // 2^64 / golden ratio
)

// sum128 returns the 128-bit hash of b: xxhash64 of b under seedHi, then
// under seedLo. It does not allocate.
func sum128(b []byte) Hash {
	var d xxhash.Digest
	d.ResetWithSeed(seedHi)
	_, _ = d.Write(b)
	hi := d.Sum64()
	return Hash{hi, xxhash.Sum64(b)}
}

// VersionHash returns the hash of a stored version: the msgpack state
// bytes a storage node keeps for a key (values, vector clock, tombstone
// flag), so two replicas holding the same state hash it the same way.
func VersionHash(state []byte) Hash { return sum128(state) }

// keyStackBuf bounds tenant+1+key lengths that keyDigest hashes from a
// stack buffer; longer inputs are streamed.
const keyStackBuf = 256

// KeyDigest returns the 128-bit hash of tenant 0x00 key. Its second lane
// is [ring.KeyHash](tenant, key), which gives the key's partition and
// ([BucketOf]) its leaf. It does not allocate.
func KeyDigest(tenant, key string) Hash {
	if n := len(tenant) + 1 + len(key); n <= keyStackBuf {
		var buf [keyStackBuf]byte
		copy(buf[:], tenant)
		buf[len(tenant)] = 0
		copy(buf[len(tenant)+1:], key)
		return sum128(buf[:n])
	}
	var d xxhash.Digest
	d.ResetWithSeed(seedHi)
	_, _ = d.WriteString(tenant)
	_, _ = d.Write([]byte{0})
	_, _ = d.WriteString(key)
	return Hash{d.Sum64(), ring.KeyHash(tenant, key)}
}

// EntryHash returns the contribution of (tenant, key) at version to its
// leaf: the 128-bit hash of the 32 bytes [KeyDigest](tenant, key) then
// version, each 16 bytes big endian. Binding the key to its version means
// that two keys of one bucket swapping versions still change the leaf.
// It does not allocate.
func EntryHash(tenant, key string, version Hash) Hash {
	return entryOf(KeyDigest(tenant, key), version)
}

// entryOf is EntryHash for a key digest already computed, so a write
// hashes its key once for the old and the new version.
func entryOf(kd, version Hash) Hash {
	var buf [32]byte
	appendHash(appendHash(buf[:0], kd), version)
	return sum128(buf[:])
}

// BucketOf returns the leaf bucket, in [0, leaves), of a key whose
// [ring.KeyHash] is kh: its low log2(leaves) bits. A partition is a range of
// the high bits of the same hash, so the low bits spread a partition's
// keys evenly over the leaves, and the bucket depends on the key alone,
// never on what else a replica holds. leaves must be a power of two.
func BucketOf(kh uint64, leaves int) int { return int(kh & uint64(leaves-1)) }
