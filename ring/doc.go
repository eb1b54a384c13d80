// Package ring decides which storage nodes hold a key: fixed partitions
// and a placement map (DESIGN.md §3 "Placement: fixed partitions", issue
// 14). It replaced the virtual-node ring the request path used before.
//
//   - [Partition] maps a key to one of Q partitions (a power of two,
//     [DefaultPartitions] = 1024, fixed at cluster creation): the top
//     log2(Q) bits of [KeyHash], so partitions are contiguous hash ranges in
//     hash order.
//   - A [Map] gives every partition an ordered list of R = min(7, nodes)
//     distinct owners; a tenant with RF r uses the first r
//     ([Map.PreferenceList], zero-alloc). Maps are versioned, immutable and
//     have a compact binary form ([Map.MarshalBinary], [Decode]) that the
//     metadata store keeps; coordinators reload it on kv.v1.events.ring.
//   - [Claim] computes the next Map from the previous one and the node set,
//     deterministically: owners distinct (plus an optional [Rule], e.g. for
//     zones), every node's count for every prefix of the owner lists within
//     floor/ceil of the mean, and only the slots that balance needs move.
//
// [KeyHash], [Partition] and the claim algorithm are part of the cluster
// protocol: every coordinator must compute the same partitions, and every
// coordinator that claims from the same previous map and node set must
// store the same next map. The golden tests in this package pin them.
//
// A change of membership does not swap the map at once: [Map.Retarget]
// gives each partition whose owners change a target row next to its
// current one. Writes go to both rows and count on the current one
// ([Map.WriteSet]); the target's new members ([Map.Receiving]) pull the
// partition and report it done ([Map.MarkDone]), which flips it: current
// := target. Each partition records the version it last changed in
// ([Map.Since]), which storage nodes use to fence senders holding an older
// map. [Map.TargetMap] is where the moves lead, the prev of the next
// Claim; [Map.Substitute] builds the target of a node replace. The
// transitions are pure functions of the map; the metadata store keeps the
// result under optimistic locking.
//
// # Concurrency and cost
//
// A [Map] is immutable and safe for concurrent use by any number of
// goroutines; a membership change builds a new Map, which callers swap in
// (for example through an atomic.Pointer). A lookup is a hash, a shift and
// a copy of at most R strings, with no allocation when dst has room.
// [Claim] costs O(Q·R·N) for a new map and less for a change. The package
// does no I/O.
package ring
