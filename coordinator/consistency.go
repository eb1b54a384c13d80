package coordinator

import (
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Required is how many primary replicas must answer for level under
// replication factor rf: one = 1, quorum = ⌊rf/2⌋+1, all = rf. It returns
// 0 for an unknown level or rf < 1.
func Required(level string, rf int) int {
	if rf < 1 {
		return 0
	}
	switch level {
	case subjects.One:
		return 1
	case subjects.Quorum:
		return rf/2 + 1
	case subjects.All:
		return rf
	}
	return 0
}

// ValidLevel reports whether level names a consistency level.
func ValidLevel(level string) bool {
	return level == subjects.One || level == subjects.Quorum || level == subjects.All
}

// ValidPolicy reports whether p names a conflict policy.
func ValidPolicy(p string) bool {
	return p == subjects.PolicyLWW || p == subjects.PolicySiblings
}

// tally counts replica outcomes against a level. It is pure: the caller
// feeds it outcomes and asks whether the request is decided.
type tally struct {
	required int // acks needed
	total    int // replicas asked
	acks     int
	fails    int

	// lww writes only (see Coordinator.write): losses counts the replicas
	// that answered that the write lost its merge, and lostTo the greatest
	// dot they reported. Once the write has been re-stamped past what a
	// quorum of answers held, a loss can only be to a concurrent write and
	// counts as an ack (lossIsAck).
	losses    int
	lostTo    vclock.Dot
	lostNode  string
	lossIsAck bool
}

// ack records a success and reports whether the level is now met.
func (t *tally) ack() bool { t.acks++; return t.met() }

// fail records a failure and reports whether the level can no longer be met.
func (t *tally) fail() bool { t.fails++; return t.impossible() }

func (t *tally) met() bool        { return t.acks >= t.required }
func (t *tally) impossible() bool { return t.total-t.fails < t.required }
func (t *tally) answered() int    { return t.acks + t.fails }
