package ring

import (
	"errors"
	"fmt"
	"math/bits"
)

// DefaultPartitions is the number of partitions of a new cluster (Couchbase's
// 1024 vBuckets). It is fixed when the cluster is created.
const DefaultPartitions = 1024

// MaxPartitions is the largest valid partition count.
const MaxPartitions = 1 << 16

// MaxReplicas is the largest replication factor a tenant can have, and the
// length of a partition's owner list once a cluster has that many nodes.
const MaxReplicas = 7

// ErrPartitions reports a partition count that is not a power of two in
// 1..MaxPartitions.
var ErrPartitions = errors.New("ring: partition count must be a power of two in 1..65536")

// ValidatePartitions returns nil when q is a valid partition count: a power of
// two in 1..MaxPartitions. Otherwise it returns an error wrapping
// ErrPartitions.
func ValidatePartitions(q int) error {
	if q < 1 || q > MaxPartitions || q&(q-1) != 0 {
		return fmt.Errorf("%w: got %d", ErrPartitions, q)
	}
	return nil
}

// Partition returns the partition, in [0, q), of key within tenant: the top
// log2(q) bits of [KeyHash](tenant, key).
//
// The high bits, rather than the hash modulo q, make partition p the
// contiguous hash range [p·2^64/q, (p+1)·2^64/q): partitions are in hash
// order, and doubling q splits partition p into exactly 2p and 2p+1, which
// keeps a later split of every partition a local operation.
//
// q must be valid (see [ValidatePartitions]); for any other q > 0 the result
// is still below q, and it is 0 when q <= 0. It does not allocate. Like
// KeyHash, it is part of the cluster protocol.
func Partition(tenant, key string, q int) uint32 {
	return PartitionOf(KeyHash(tenant, key), q)
}

// PartitionOf is [Partition] for a hash already computed with [KeyHash].
func PartitionOf(h uint64, q int) uint32 {
	if q <= 1 {
		return 0
	}
	// For a power of two, TrailingZeros is log2(q). A shift by 64 or more
	// yields 0 in Go, but q > 1 keeps it below 64 here.
	return uint32(h >> (64 - bits.TrailingZeros64(uint64(q))))
}
