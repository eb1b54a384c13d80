// Package hashtree is the Merkle tree of one partition of one replica,
// the building block of anti-entropy (issue 15), in the style of Riak's
// hashtree and its successor TicTac AAE, and of Cassandra's MerkleTree.
// It is pure: no I/O, no NATS, no Pebble. It is not wired into storage
// nodes yet.
//
//   - A key's leaf bucket is the low bits of [ring.KeyHash](tenant, key)
//     ([BucketOf]): a function of the key alone, so two replicas bucket a
//     key the same way whatever else they hold. (A partition is a range of
//     the high bits of the same hash, so the low bits spread its keys.)
//   - A leaf is the XOR of the [EntryHash] of its (key, version) pairs,
//     where the version hash is [VersionHash] of the stored msgpack state.
//     XOR makes the leaf independent of write order and makes a write a
//     delta: [Tree.Update] removes the old contribution and adds the new.
//     A write hashes the key once ([KeyDigest]) and each version with it
//     as 32 bytes, marks O(1) amortised dirty nodes, and does not allocate.
//   - An inner node is the 128-bit hash of its FanOut children (zero for an
//     empty subtree). Inner nodes are rehashed lazily, only the dirty ones,
//     when [Tree.Root], [Tree.Level] or [Tree.Children] is asked.
//   - [Build] makes the same tree from a full scan, for a start after a
//     crash or whenever the incremental tree cannot be trusted.
//   - [Diff] compares two [Source]s breadth-first, one request-reply per
//     side per level, descending only into differing subtrees, and returns
//     the differing leaf buckets with what the exchange cost ([DiffStats]).
//     It checks every level against the parents a side sent before, so a
//     side that changes mid-exchange is [ErrInconsistent]; serve from a
//     snapshot ([Tree.Clone]).
//     A network Source can implement the same three methods over NATS
//     request-reply.
//   - [Tree.MarshalBinary] and [Decode] persist a tree: the non-empty
//     leaves and a root that Decode checks.
//
// # Caller contract
//
// The tree keeps hashes, not keys, so it trusts its caller: every change
// of the partition exactly once, each with the version it replaces. See
// [Tree] for what happens when that breaks (a Delete of a never-inserted
// key) and how it is found.
//
// # Protocol
//
// [KeyDigest], [BucketOf], [EntryHash], [VersionHash] and [HashChildren] (xxhash64 of
// the same bytes under two fixed seeds for the two 64-bit lanes) are part
// of the anti-entropy protocol: every node must compute them identically.
// TestGolden pins them. They are not collision resistant against a
// deliberate attacker; a tenant that crafted a collision could only hide a
// divergence of its own keys from anti-entropy.
package hashtree
