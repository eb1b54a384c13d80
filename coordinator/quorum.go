package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// The quorum logic: how many replicas a level needs (Required), counting
// their outcomes (tally), and waiting for them (await), with the spare
// reads of a quorum read. The replicas' messages themselves go through
// storage/replica.

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

	// counted, when set, are the nodes whose outcomes count (a write
	// set's current owners, current[:rf]); the others' outcomes are passed
	// on but change neither acks nor fails, and uncounted counts them.
	counted   []string
	uncounted int
	// target, when set, is the target row target[:rf] of a partition that
	// moves: a write is then acknowledged only with required acks among
	// counted (the current row) AND required among target (joint quorum,
	// as Raft's joint consensus); a node in both rows counts in both.
	// tacks, tfails and tlosses are acks, fails and losses among target.
	// Nil when the partition does not move: nothing else changes then.
	target  []string
	tacks   int
	tfails  int
	tlosses int
	// notOwner counts the nodes that refused an item as not_owner: the
	// request's map is stale (see retryNotOwner).
	notOwner int
}

// counts reports whether node's outcome counts toward the level.
func (t *tally) counts(node string) bool {
	return t.counted == nil || slices.Contains(t.counted, node) ||
		(t.target != nil && slices.Contains(t.target, node))
}

// rows reports in which rows node's outcome counts: the current one
// (every node when counted is nil) and the target one.
func (t *tally) rows(node string) (cur, tgt bool) {
	cur = t.counted == nil || slices.Contains(t.counted, node)
	tgt = t.target != nil && slices.Contains(t.target, node)
	return cur, tgt
}

// ack records a success and reports whether the level is now met.
func (t *tally) ack() bool { t.acks++; return t.met() }

// fail records a failure and reports whether the level can no longer be met.
func (t *tally) fail() bool { t.fails++; return t.impossible() }

// ackFrom records node's success in each row it counts in and reports
// whether the level is now met.
func (t *tally) ackFrom(node string) bool {
	cur, tgt := t.rows(node)
	if cur {
		t.acks++
	}
	if tgt {
		t.tacks++
	}
	return t.met()
}

// failFrom records node's failure in each row it counts in and reports
// whether the level can no longer be met.
func (t *tally) failFrom(node string) bool {
	cur, tgt := t.rows(node)
	if cur {
		t.fails++
	}
	if tgt {
		t.tfails++
	}
	return t.impossible()
}

// lossFrom records that node reported an lww write lost (not an ack) in
// each row it counts in, and reports whether the caller should re-stamp
// now: every row has as many answers (acks and losses) as the level
// needs, so the greatest dot reported is past every write acknowledged
// before this one started (those are on a quorum of each row).
func (t *tally) lossFrom(node string) bool {
	cur, tgt := t.rows(node)
	if cur {
		t.losses++
	}
	if tgt {
		t.tlosses++
	}
	return t.lost()
}

// lost reports whether a counted replica reported the lww write lost and
// every row has since answered (acks and losses) as many as the level
// needs: the write must be re-stamped rather than waited on. Checked after
// every outcome, so an ack or a failure after the loss decides it too.
func (t *tally) lost() bool {
	return (t.losses > 0 || t.tlosses > 0) && !t.met() &&
		t.acks+t.losses >= t.required && (t.target == nil || t.tacks+t.tlosses >= t.required)
}

func (t *tally) met() bool {
	return t.acks >= t.required && (t.target == nil || t.tacks >= t.required)
}

func (t *tally) impossible() bool {
	return t.total-t.fails < t.required || (t.target != nil && len(t.target)-t.tfails < t.required)
}

func (t *tally) answered() int { return t.acks + t.fails }

// joint reports whether t counts a moving partition's two rows.
func (t *tally) joint() bool { return t.target != nil }

// rowsStatus describes, for a joint tally, what each row acknowledged:
// the 503 message names both rows when the joint level is not met.
func (t *tally) rowsStatus(level string) string {
	return fmt.Sprintf("%s needs %d of each row of a moving partition: current %v %d acknowledged, %d failed; target %v %d acknowledged, %d failed",
		level, t.required, t.counted, t.acks, t.fails, t.target, t.tacks, t.tfails)
}

// spares are the primaries a read has not asked yet.
type spares struct {
	asked []string          // the primaries asked so far
	rest  []string          // not asked yet
	send  func(node string) // asks one
	delay time.Duration     // after which the rest are asked
	heard []string          // asked primaries that answered
}

// askNext asks the next spare and reports whether there was one.
func (sp *spares) askNext() bool {
	if sp == nil || len(sp.rest) == 0 {
		return false
	}
	node := sp.rest[0]
	sp.rest = sp.rest[1:]
	sp.asked = append(sp.asked, node)
	sp.send(node)
	return true
}

// await feeds the call's outcomes to t until the level is met (nil) or can
// no longer be met, or ctx ends (unavailable, naming what failed), or a
// replica reports that an lww write lost its merge (*lostWrite). With
// spares, a failure asks the next spare, and the level not being met after
// the spares' delay asks all of them (speculative retry); the primaries
// that failed or had not answered by then are suspected for a while.
func (c *Coordinator) await(ctx context.Context, cl *replica.Call, t *tally, level string, sp *spares, each func(replica.Outcome)) error {
	var failures []string
	// Messages name every primary, asked or kept in reserve.
	of := func() int {
		if sp == nil {
			return t.total
		}
		return t.total + len(sp.rest)
	}
	var speculate <-chan time.Time
	if sp != nil && len(sp.rest) > 0 {
		timer := time.NewTimer(sp.delay)
		defer timer.Stop()
		speculate = timer.C
	}
	for !t.met() {
		select {
		case o := <-cl.Outcomes():
			each(o)
			if sp != nil {
				sp.heard = append(sp.heard, o.Node)
			}
			if isNotOwner(&o) {
				// The node knows a newer map: have ours reloaded even if
				// this request meets its level without it.
				t.notOwner++
				c.metrics.NotOwner(notOwnerOp(&o))
				c.routing.refreshNow()
			}
			if !t.counts(o.Node) {
				t.uncounted++
				continue
			}
			if o.Err == nil {
				if by, lost := o.LostTo(); lost && !t.lossIsAck {
					// A lost lww write is no acknowledgement. Once as many
					// replicas answered as the level needs, the caller
					// re-stamps it past the greatest dot they reported.
					if by.Compare(t.lostTo) > 0 {
						t.lostTo, t.lostNode = by, o.Node
					}
					if t.lossFrom(o.Node) {
						return &lostWrite{node: t.lostNode, by: t.lostTo}
					}
					continue
				}
				if !t.ackFrom(o.Node) && t.lost() {
					return &lostWrite{node: t.lostNode, by: t.lostTo}
				}
				continue
			}
			failures = append(failures, o.Node+": "+o.Err.Error())
			c.metrics.ReplicaFailure(failureReason(o.Err))
			if !isNotOwner(&o) { // a refusal says nothing of the node's health
				c.rep.Suspect(o.Node)
			}
			if sp.askNext() {
				c.metrics.SpareRead("failed")
				if t.joint() {
					// A joint read's tally counts whole rows; which row
					// the failed node left short is the tally's to know,
					// so every spare is asked (failures are rare).
					for sp.askNext() {
						c.metrics.SpareRead("failed")
					}
				} else {
					t.total++
				}
			}
			impossible := t.failFrom(o.Node)
			if t.lost() {
				return &lostWrite{node: t.lostNode, by: t.lostTo}
			}
			if impossible {
				if t.joint() {
					return subjects.Errorf(subjects.KindUnavailable, "%s (%s)", t.rowsStatus(level), strings.Join(failures, "; "))
				}
				return subjects.Errorf(subjects.KindUnavailable, "%s needs %d of %d replicas; %d acknowledged, %d failed (%s)",
					level, t.required, of(), t.acks, t.fails, strings.Join(failures, "; "))
			}
		case <-speculate:
			speculate = nil
			for _, node := range sp.asked {
				if !slices.Contains(sp.heard, node) {
					c.rep.Suspect(node)
				}
			}
			for sp.askNext() {
				c.metrics.SpareRead("slow")
				if !t.joint() {
					t.total++ // a joint tally's total is its current row already
				}
			}
		case <-ctx.Done():
			pendingN := t.total - t.answered()
			for i := 0; i < pendingN; i++ {
				c.metrics.ReplicaFailure("timeout")
			}
			msg := fmt.Sprintf("%s needs %d of %d replicas; %d acknowledged, %d did not answer in time", level, t.required, of(), t.acks, pendingN)
			if t.joint() {
				msg = fmt.Sprintf("%s; the others did not answer in time", t.rowsStatus(level))
			}
			if len(failures) > 0 {
				msg += ", failed: " + strings.Join(failures, "; ")
			}
			return subjects.Errorf(subjects.KindUnavailable, "%s", msg)
		}
	}
	return nil
}

// failureReason classifies a replica failure for metrics.
func failureReason(err error) string {
	switch {
	case errors.Is(err, replica.ErrNodeDown):
		return "unreachable"
	case errors.Is(err, replica.ErrQueueFull):
		return "overloaded"
	}
	return "error"
}
