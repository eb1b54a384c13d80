package vclock

import (
	"cmp"
	"strings"
)

// Dot names one event: the Counter-th write minted by Actor. Under the lww
// policy Actor is the coordinating node's id and Counter is a value of that
// node's [HLC], so dots minted by different nodes interleave by (hybrid) wall
// time.
//
// The zero Dot (Counter 0, Actor "") means "no event" and sorts before every
// other Dot. An [HLC] never mints a Dot with Counter 0.
//
// Dot encodes with msgpack as the two-element array [Counter, Actor].
type Dot struct {
	_msgpack struct{} `msgpack:",as_array"`
	Counter  uint64
	Actor    string
}

// Compare returns -1, 0 or +1 as d sorts before, equal to or after o: by
// Counter, then by Actor compared bytewise. It is a total order on Dots and
// does not allocate.
func (d Dot) Compare(o Dot) int {
	if c := cmp.Compare(d.Counter, o.Counter); c != 0 {
		return c
	}
	return strings.Compare(d.Actor, o.Actor)
}

// IsZero reports whether d is the zero Dot, meaning "no event".
func (d Dot) IsZero() bool { return d.Counter == 0 && d.Actor == "" }
