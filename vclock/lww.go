package vclock

import (
	"bytes"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Version is one stored value (or tombstone) of a key under the lww policy.
// A replica keeps exactly one Version per key: the greatest by [Compare] of
// every Version it has received for that key.
//
// The zero Version stands for "absent": it is not [Version.Live] and sorts
// before every Version minted by an [HLC].
//
// Expires (node protocol 3) is when the value expires, in Unix
// milliseconds; 0 = never. It is part of the version: every replica holds
// the same Expires for the same write, so expiry happens at the same time
// on each. A value whose Expires has passed reads as not found, exactly as
// a tombstone. A tombstone carries the wall time of its delete here ("a
// tombstone is a value that expired when it was deleted"; 0 in tombstones
// written before protocol 3), so every dead version ages alike (see
// [Version.DeadSince]).
//
// Version encodes with msgpack as the array [Dot, Value, Tombstone] when
// Expires is 0 (the form from before Expires existed, so old data, old
// readers and version hashes are unchanged) and [Dot, Value, Tombstone,
// Expires] otherwise; the zero Version round-trips. The decoder reads both.
type Version struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Dot       Dot
	Value     []byte
	Tombstone bool
	Expires   int64 `json:",omitempty"`
}

// ExpiredAt reports whether v is a value (not a tombstone) whose Expires
// has passed at nowMs (Unix milliseconds): Expires != 0 and nowMs ≥ Expires.
func (v Version) ExpiredAt(nowMs int64) bool {
	return !v.Tombstone && v.Expires != 0 && nowMs >= v.Expires
}

// LiveAt reports whether a read at nowMs (Unix milliseconds) should return
// v: it is [Version.Live] and not [Version.ExpiredAt] nowMs.
func (v Version) LiveAt(nowMs int64) bool { return v.Live() && !v.ExpiredAt(nowMs) }

// DeadSince reports whether v is dead or will die on its own, and since
// when (Unix milliseconds): for a tombstone, its Expires (the wall time of
// the delete), or for a tombstone written before Expires existed
// (Expires 0) the wall time of its dot (Dot.Counter >> 16, the HLC's
// physical part); for a value with an Expires, that Expires, which may
// still be in the future: compare ms with a clock before treating the
// value as dead. A value without Expires, and the zero Version, are never
// dead (0, false). Reaping ages every dead version by ms.
func (v Version) DeadSince() (ms int64, dead bool) {
	switch {
	case v.Dot.IsZero() && !v.Tombstone:
		return 0, false
	case v.Expires != 0:
		return v.Expires, true
	case v.Tombstone:
		return int64(v.Dot.Counter >> logicalBits), true
	}
	return 0, false
}

// EncodeMsgpack implements msgpack.CustomEncoder: [Dot, Value, Tombstone],
// with Expires appended only when it is not 0.
func (v Version) EncodeMsgpack(enc *msgpack.Encoder) error {
	n := 3
	if v.Expires != 0 {
		n = 4
	}
	if err := enc.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := enc.Encode(&v.Dot); err != nil {
		return err
	}
	if err := enc.EncodeBytes(v.Value); err != nil {
		return err
	}
	if err := enc.EncodeBool(v.Tombstone); err != nil {
		return err
	}
	if n == 4 {
		return enc.EncodeInt(v.Expires)
	}
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder: it reads the 3- and the
// 4-element form (and nil or an empty array as the zero Version, as the
// tag-driven decoder did).
func (v *Version) DecodeMsgpack(dec *msgpack.Decoder) error {
	*v = Version{}
	n, err := dec.DecodeArrayLen()
	switch {
	case err != nil:
		return err
	case n <= 0:
		return nil
	case n != 3 && n != 4:
		return fmt.Errorf("vclock: version is an array of %d elements, want 3 or 4", n)
	}
	var out Version
	if err := dec.Decode(&out.Dot); err != nil {
		return err
	}
	if out.Value, err = dec.DecodeBytes(); err != nil {
		return err
	}
	if out.Tombstone, err = dec.DecodeBool(); err != nil {
		return err
	}
	if n == 4 {
		if out.Expires, err = dec.DecodeInt64(); err != nil {
			return err
		}
	}
	*v = out
	return nil
}

// Live reports whether v holds a value a read should return: it is not a
// tombstone and it carries a Dot.
func (v Version) Live() bool { return !v.Tombstone && !v.Dot.IsZero() }

// Compare returns -1, 0 or +1 as a sorts before, equal to or after b.
//
// The order is total: by Dot first, then by Tombstone (a tombstone is greater
// than a value with the same Dot), then by Expires, then by [bytes.Compare]
// of Value. Two
// well-formed Versions with the same Dot are the same write, so only the Dot
// matters in practice; the tie-breaks make [Merge] commutative, associative
// and idempotent even for malformed inputs (for example two nodes that were
// misconfigured with the same actor id).
//
// A nil and an empty Value compare equal. Compare does not allocate.
func Compare(a, b Version) int {
	if c := a.Dot.Compare(b.Dot); c != 0 {
		return c
	}
	if a.Tombstone != b.Tombstone {
		if a.Tombstone {
			return 1
		}
		return -1
	}
	if a.Expires != b.Expires {
		if a.Expires > b.Expires {
			return 1
		}
		return -1
	}
	return bytes.Compare(a.Value, b.Value)
}

// Merge returns the greater of a and b by [Compare] (a when they compare
// equal). Merge is commutative, associative and idempotent up to [Compare]
// equality, so replicas that merge the same Versions in any order, any
// number of times, converge.
//
// The result shares its Value with the argument it came from; Merge never
// copies or allocates.
func Merge(a, b Version) Version {
	if Compare(a, b) >= 0 {
		return a
	}
	return b
}

// MergeAll returns the greatest Version in vs by [Compare] (the first of
// equals), and false when vs is empty. It does not allocate and does not
// modify vs.
func MergeAll(vs []Version) (Version, bool) {
	if len(vs) == 0 {
		return Version{}, false
	}
	best := 0
	for i := 1; i < len(vs); i++ {
		if Compare(vs[i], vs[best]) > 0 {
			best = i
		}
	}
	return vs[best], true
}
