// Package ring implements the consistent-hash ring that decides which
// storage nodes hold a key.
//
// # Model
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
