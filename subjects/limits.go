package subjects

import "github.com/quorumkv/quorumkv/vclock"

// ReplyHeadroom is the part of the server's max payload that replies and
// batches leave for framing, headers, contexts and the other fields.
const ReplyHeadroom = 64 << 10

// MaxStateBytes is the default per-key state cap of a siblings tenant under
// a NATS max payload of maxPayload bytes: the largest [StateSize] a client
// write may leave. It is chosen so that a state at the cap fits one node
// reply and one client get reply in either encoding: a get answers every
// live value plus one of them again as "value" (at most MaxValueBytes, and
// no more than the state itself), and JSON carries binary values as base64
// (4/3 the bytes), all within maxPayload less ReplyHeadroom. With the
// shipped 4 MiB max payload it is 2,048,000 bytes.
func MaxStateBytes(maxPayload int64) int {
	room := max(int(maxPayload)-ReplyHeadroom, 0) * 3 / 4
	// A state of at least MaxValueBytes: room ≥ state + MaxValueBytes;
	// a smaller one: room ≥ 2 × state.
	return max(room-MaxValueBytes, min(room/2, MaxValueBytes))
}

// StateSize is the size of a siblings state as the per-key cap counts it:
// every value's bytes plus a few bytes of framing per value and per actor
// (see [VersionSize]).
func StateSize(s *vclock.DVVSet) int { return VersionSize(nil, s) }
