// Package ring decides which storage nodes hold a key.
//
// It holds two placements. The virtual-node [Ring] below is what the
// request path uses today. It is being replaced (issue 14, DESIGN.md §3
// "Placement: fixed partitions") by fixed partitions and a placement map:
//
//   - [Partition] maps a key to one of Q partitions (a power of two,
//     [DefaultPartitions] = 1024, fixed at cluster creation): the top
//     log2(Q) bits of [KeyHash], so partitions are contiguous hash ranges in
//     hash order.
//   - A [Map] gives every partition an ordered list of R = min(7, nodes)
//     distinct owners; a tenant with RF r uses the first r
//     ([Map.PreferenceList], zero-alloc). Maps are versioned, immutable and
//     have a compact binary form ([Map.MarshalBinary], [Decode]) for the
//     metadata store and the ring events.
//   - [Claim] computes the next Map from the previous one and the node set,
//     deterministically: owners distinct (plus an optional [Rule], e.g. for
//     zones), every node's count for every prefix of the owner lists within
//     floor/ceil of the mean, and only the slots that balance needs move.
//
// Nothing outside this package uses the Map yet: the storage layout,
// pending owners, transfers and the metadata store are the rest of issue 14.
//
// # Model of the virtual-node Ring
//
// Every [Member] owns VirtualNodes points on a 64-bit hash ring. The i-th
// point (i counting from 0) of the member with ID id sits at
//
//	xxhash64(id + "#" + strconv.Itoa(i))
//
// A key is identified by its tenant and key, and sits at [KeyHash](tenant,
// key) = xxhash64(tenant + "\x00" + key). Its preference list is built by
// walking clockwise (towards larger hashes, wrapping from the largest point
// back to the smallest) from the first point whose hash is >= the key's hash,
// collecting the owners of the points visited, skipping members already
// collected. Only active members have points on the ring, so inactive members
// never appear and their ranges fall to the next active members clockwise.
// The first entry of a preference list is the key's primary (coordinator),
// the following entries are its replicas.
//
// When two points have the same hash (a 64-bit collision, practically never
// seen), the point of the member with the smaller ID comes first. Placement
// therefore depends only on the set of members, never on the order of the
// slice passed to [New], and every node that builds a ring from the same
// membership computes the same preference lists.
//
// The placement rule and [KeyHash] are part of the cluster protocol: all
// nodes must agree on them, so they must not change without a migration.
// The golden tests in this package pin them.
//
// Consequences operators can rely on:
//   - Adding a member only moves keys to the new member; among the old
//     members no key changes hands, and the new member is inserted somewhere
//     in a key's preference list (pushing the last entry out).
//   - Deactivating a member moves its keys to the next members clockwise and
//     changes nothing else.
//   - A member's share of the hash space is proportional to its
//     VirtualNodes on average; the relative deviation from that is roughly
//     1/sqrt(VirtualNodes), about 9% with DefaultVirtualNodes. More points
//     smooth the load at 12 bytes each. [Ring.Shares] reports the actual
//     shares.
//
// # Concurrency and cost
//
// A [Ring] is immutable once [New] returns and is safe for concurrent use by
// any number of goroutines; membership changes are made by building a new
// Ring and swapping it in (for example through an atomic.Pointer). New costs
// O(P log P) for P = the total number of virtual nodes of active members and
// keeps 12 bytes per point. [Ring.PreferenceList] is a binary search plus a
// short walk and does not allocate when dst has enough capacity. The package
// does no I/O.
package ring
