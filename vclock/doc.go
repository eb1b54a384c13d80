// Package vclock implements the version clocks of quorumkv's conflict
// policies. It is pure computation: no I/O, no goroutines, no mutable global state.
//
// # Policies
//
// quorumkv resolves concurrent writes to a key with one of two policies.
//
// lww (last writer wins), implemented here: every write is stamped with a
// [Dot] — Actor is the coordinating node's id, Counter a value of that
// node's hybrid logical clock ([HLC]: wall-clock milliseconds << 16 |
// logical). A replica keeps one [Version] per key, the greatest by
// [Compare], and merging is taking the maximum ([Merge], [MergeAll]), which
// is commutative, associative and idempotent, so replicas converge whatever
// order or how many times they receive writes, hints and repairs. Concurrent
// writes are not kept: the one with the later hybrid timestamp wins and the
// other is silently discarded. Deletes are tombstones: Versions with
// Tombstone set, which win and lose exactly like values.
//
// siblings (to come in this package): dotted version vector sets after
// Almeida et al., "Scalable and Accurate Causality Tracking for Eventually
// Consistent Stores" (2014). Concurrent writes are kept as siblings until a
// client writes back with a context that covers them. Its types and context
// format are distinct from lww's; the two never mix on one key.
//
// # Contexts
//
// A read returns, besides the value, an opaque context string
// ([EncodeContext] of the Dot of the Version read); a write may carry it
// back. Under lww the coordinator stamps such a write with [HLC.Stamp],
// which first advances its clock past the context, so the write always
// beats the Version its client read even when the coordinator's wall clock
// is behind the node that minted that Version. A context starts with a
// policy and format prefix ([LWWContextPrefix] for lww), so a context from
// one policy is rejected, not misread, by another. [DecodeContext] returns
// an error wrapping [ErrBadContext] for anything [EncodeContext] could not
// have produced.
//
// # Caller's duties
//
//   - Give every coordinator a distinct, stable actor id and one [HLC]
//     shared by all the writes it coordinates. Two nodes with the same id
//     still converge, but may mint the same Dot for different writes, and
//     then the winner is decided by Tombstone and Value bytes, not time.
//   - On start, before minting, [HLC.Observe] the greatest counter this node
//     minted or stored before it stopped (for example the greatest Dot in
//     its store, or a persisted high-water mark). Otherwise a restarted node
//     relies on wall time having moved past its last counter, which fails if
//     the clock was stepped back or the counters had run ahead of wall time.
//   - Observe the Counter of every Version received from peers (replication,
//     hinted handoff, read repair), so that the node's later writes beat
//     them even when its wall clock lags.
//   - Bound untrusted counters before observing them. [HLC.Observe] honours
//     any counter, so a client context from the far future would push this
//     node's clock, and every counter it mints afterwards, into that future
//     (and a context with Counter math.MaxUint64 exhausts the clock). Reject
//     a decoded context whose Counter exceeds
//     CounterAt(time.Now().Add(maxSkew)), or at least use [HLC.TryStamp],
//     which reports [ErrClockExhausted] instead of panicking.
//   - Treat a Version's Value as immutable: [Merge] and [MergeAll] return
//     one of their arguments without copying it.
//   - Keep tombstones until no older version of the key can still reach any
//     replica (every replica has the tombstone and no hint or repair carrying
//     an older version is in flight); dropping one early lets an older value
//     resurrect on merge.
//   - Map [ErrBadContext] to a client error; contexts are untrusted input.
package vclock
