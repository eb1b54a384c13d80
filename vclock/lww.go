package vclock

import "bytes"

// Version is one stored value (or tombstone) of a key under the lww policy.
// A replica keeps exactly one Version per key: the greatest by [Compare] of
// every Version it has received for that key.
//
// The zero Version stands for "absent": it is not [Version.Live] and sorts
// before every Version minted by an [HLC].
//
// Version encodes with msgpack as the array [Dot, Value, Tombstone]; the
// zero Version round-trips.
type Version struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Dot       Dot
	Value     []byte
	Tombstone bool
}

// Live reports whether v holds a value a read should return: it is not a
// tombstone and it carries a Dot.
func (v Version) Live() bool { return !v.Tombstone && !v.Dot.IsZero() }

// Compare returns -1, 0 or +1 as a sorts before, equal to or after b.
//
// The order is total: by Dot first, then by Tombstone (a tombstone is greater
// than a value with the same Dot), then by [bytes.Compare] of Value. Two
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
