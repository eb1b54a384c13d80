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
// siblings (implemented here, see Siblings below): dotted version vector
// sets after Almeida et al., "Scalable and Accurate Causality Tracking for
// Eventually Consistent Stores" (2014). Concurrent writes are kept as
// siblings until a client writes back with a context that covers them. Its
// types and context format are distinct from lww's; the two never mix on one
// key.
//
// # Expiry
//
// Both policies carry an expiry inside the version: [Version].Expires and
// [Value].Expires, Unix milliseconds, 0 = never. A value whose Expires has
// passed reads as a tombstone ([Version.LiveAt], [DVVSet.LastLiveAt],
// [DVVSet.DeletedAt]); a tombstone carries the time of its delete, so
// [Version.DeadSince] and [DVVSet.DeadSince] age every dead version by one
// rule. Expires takes part in [Compare] and [Sync] like any field, and is
// encoded only when it is not 0, so versions without it keep their bytes.
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
// Clients never see these plain contexts: a coordinator seals each one
// with [ContextKeys.Seal] (prefixes [SealedLWWPrefix], [SealedDVVPrefix]),
// an HMAC under the cluster's secret bound to the tenant, and opens what a
// client hands back with [ContextKeys.Open] before decoding it, so a
// forged, altered or another tenant's context is refused
// ([ErrUnauthenticContext]) before it can move a clock.
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
//
// # Siblings
//
// Under the siblings policy a replica keeps one [DVVSet] per key: for each
// actor (a storage node's data directory, [ReplicaActor]) the number of its
// writes seen and its live values, newest first; value i of an actor with
// counter n has the dot (actor, n-i). This is Riak KV 2.0's dvvset without
// anonymous values. A key's life, on the replicas of its preference list:
//
//   - Read: sync the replies ([SyncAll]); return [DVVSet.Siblings] (or not
//     found when [DVVSet.Deleted]) and [EncodeDVVContext] of [DVVSet.Join].
//   - Write (value or tombstone): the coordinating replica decodes the
//     client's context ([DecodeDVVContext]; empty without one) and stores
//     [Update](its state, context, its actor, value): the new value gets the
//     next dot of that actor, the siblings the context covers are dropped,
//     the others kept. It must store the result durably before returning it,
//     and it returns the complete new state, not the lone value.
//   - Replication, hints, read repair and anti-entropy ship complete states;
//     the receiver stores [Sync](its state, received state). Sync is
//     commutative, associative and idempotent, so any order and any number of
//     deliveries converge, and it drops exactly the siblings some write's
//     context covered.
//
// # Caller's duties under siblings
//
//   - Give every replica's data directory a distinct actor and a new epoch
//     whenever it is created or wiped, and never mint for a key from less
//     than the replica's complete durable state of it: [Update] mints
//     counter n+1 from what the state holds, so a replica that forgot its
//     state for a key (wiped, or lost unsynced writes in a crash) would mint
//     a dot that peers already hold for an older value, and [Sync] would then
//     drop the new write as obsolete.
//   - For the same reason, reaping a deleted key must not forget its clock
//     while any replica or in-flight message may still hold the key under the
//     same actors. Keeping only the clock, Discard(DVVSet{}, s.Join()) (no
//     siblings, a few bytes per actor), is safe.
//   - Make each read-modify-write of a key's state on a replica atomic with
//     respect to the others on that key (a per-key lock, or one writer per
//     key): two concurrent [Update] calls on one stored state mint the same
//     dot for two values, and a [Sync] whose result overwrites a concurrent
//     Update's loses that write. Only a replica holding the key's durable
//     state coordinates writes; a node holding a hint for another only
//     merges it.
//   - Ship whole states, never single siblings: a state that knows dot n of
//     an actor must hold that actor's live siblings below n.
//   - Decode DVVSets with msgpack, whose decoding ([DVVSet.DecodeMsgpack])
//     validates the state and allocates in proportion to its input, or call
//     [DVVSet.Validate] on a state decoded any other way (JSON). Functions
//     never panic on malformed states but only give meaningful results for
//     valid ones.
//   - Contexts are untrusted. A context that claims counters beyond what
//     exists makes [Update] record them as seen, so values the named actors
//     mint later with those dots are dropped as obsolete (a forged context
//     can delete future writes), and every actor it names adds an entry to
//     the key's state. Bound the length of client contexts, map
//     [ErrBadContext] to a client error, and authenticate contexts (for
//     example an HMAC appended by the server) if clients cannot be trusted
//     to hand back only what they read. A legitimate context may exceed the
//     coordinating replica's state (the client read a more up-to-date
//     replica), so that alone is no reason to reject it.
//   - Enforce the sibling cap on client writes with [DVVSet.Size] of the
//     result of [Update] (or of [Discard] before it); merges are exempt.
package vclock
