package coordinator

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// The siblings policy (DESIGN.md §3). Coordinators hold no per-key state,
// so they cannot mint dots that summarise what a client saw. Instead a
// write goes to a coordinating replica (the first live primary), which
// mints the dot from its own state of the key, drops the siblings the
// client's context covers, stores the result and answers the key's
// complete state; the coordinator then ships that state to the other
// primaries, which merge it. Shipping whole states, never a lone version,
// keeps every replica's per-actor ranges sound.

// siblingWarnAt is the sibling count past which reads log a warning: a key
// that accumulates siblings has writers that do not send contexts back.
const siblingWarnAt = 25

// writeSiblings runs both legs of a siblings write and answers once the
// level's count of primaries holds the new state.
func (c *Coordinator) writeSiblings(ctx context.Context, r *dataRequest, pref []string, need int, del bool) (*subjects.WriteReply, error) {
	val := vclock.Value{Data: r.Value, Tombstone: del}
	switch {
	case del:
		val.Data = nil
	case val.Data == nil:
		val.Data = []byte{}
	}
	deadline, _ := ctx.Deadline()
	// The per-key state cap: a state at it fits one node reply and one
	// client reply (subjects.MaxStateBytes).
	maxBytes := int64(subjects.MaxStateBytes(c.nc.MaxPayload()))
	t := tally{required: need, total: len(pref)}
	var (
		failures []string
		state    *vclock.DVVSet
		coordIdx = -1
	)
	// Leg 1: the first primary that answers coordinates. Each attempt but
	// the last gets half the remaining time, so a silent primary leaves
	// time for the next. The replica refuses the write after the attempt's
	// deadline, and the coordinator moves on only a grace period later, so
	// a replica that was merely slow (paused, stalled disk) does not apply
	// the write a second time under its own dot once another has.
	for i, node := range pref {
		attempt, giveUp := deadline, deadline
		if i < len(pref)-1 {
			half := time.Until(deadline) / 2
			attempt = time.Now().Add(half - half/4)
			giveUp = time.Now().Add(half)
		}
		cl := replica.NewCall(1)
		c.rep.Write(cl, node, attempt, subjects.NodeWrite{Tenant: r.tenant.ID, Key: r.Key, Coordinate: &subjects.Coordinate{Context: r.dvvCtx, Value: val, Deadline: attempt.UnixMilli(), MaxBytes: maxBytes}})
		o, err := waitOne(ctx, cl, giveUp)
		if err == nil && o.Err == nil && o.Write != nil && o.Write.DVV != nil {
			state, coordIdx = o.Write.DVV, i
			t.ack()
			break
		}
		if err == nil && o.Write != nil && (o.Write.Kind == subjects.KindTooManySiblings || o.Write.Kind == subjects.KindTooLarge) {
			// A limit of the key's state: any other primary would refuse
			// it too (or, not holding all of it yet, accept it wrongly).
			return nil, subjects.Errorf(o.Write.Kind, "%s", o.Write.Err)
		}
		reason := "did not answer in time"
		switch {
		case err == nil && o.Err != nil:
			reason = o.Err.Error()
			c.metrics.ReplicaFailure(failureReason(o.Err))
		case err == nil:
			reason = "answered without the key's state"
		default:
			c.metrics.ReplicaFailure("timeout")
		}
		failures = append(failures, node+": "+reason)
		if t.fail() || ctx.Err() != nil {
			return nil, subjects.Errorf(subjects.KindUnavailable, "%s needs %d of %d replicas; no primary could coordinate the write (%s)",
				r.level, need, len(pref), strings.Join(failures, "; "))
		}
	}
	if state == nil {
		return nil, subjects.Errorf(subjects.KindUnavailable, "no primary could coordinate the write (%s)", strings.Join(failures, "; "))
	}
	// Leg 2: the other primaries merge the complete state. The ones that
	// failed to coordinate are not asked again; hints reach them.
	others := pref[coordIdx+1:]
	cl := replica.NewCall(len(others))
	for _, node := range others {
		c.rep.Write(cl, node, deadline, subjects.NodeWrite{Tenant: r.tenant.ID, Key: r.Key, DVV: state})
	}
	acked := []string{pref[coordIdx]}
	if !t.met() {
		err := c.await(ctx, cl, &t, r.level, nil, func(o replica.Outcome) {
			if o.Err == nil {
				acked = append(acked, o.Node)
			}
		})
		if err != nil {
			return nil, err
		}
	}
	if c.repair != nil {
		r.after = func() { c.hintMissingDVV(ctx, cl, r, pref, t.total-t.answered(), acked, *state) }
	}
	return &subjects.WriteReply{
		Success:        true,
		Key:            r.Key,
		Context:        vclock.EncodeDVVContext(state.Join()),
		IdempotencyKey: r.IdempotencyKey,
		ReplicaCount:   t.acks,
		Consistency:    r.level,
	}, nil
}

// waitOne waits for cl's single outcome until deadline or ctx ends.
func waitOne(ctx context.Context, cl *replica.Call, deadline time.Time) (replica.Outcome, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case o := <-cl.Outcomes():
		return o, nil
	case <-timer.C:
		return replica.Outcome{}, context.DeadlineExceeded
	case <-ctx.Done():
		return replica.Outcome{}, ctx.Err()
	}
}

// siblingsReply fills a read's reply from the replicas' states: every live
// value, a deterministic pick among them as Value, and the merged context
// (set even when the key is deleted, so a write with it supersedes the
// tombstones).
func (c *Coordinator) siblingsReply(r *dataRequest, reply *subjects.GetReply, replies []ReplicaVersion) {
	states := make([]vclock.DVVSet, 0, len(replies))
	for _, rv := range replies {
		if rv.DVV != nil {
			states = append(states, *rv.DVV)
		}
	}
	merged := vclock.SyncAll(states...)
	if len(merged.Entries) > 0 {
		reply.Context = vclock.EncodeDVVContext(merged.Join())
	}
	// Identical values are listed once: a write applied twice (by a
	// coordinating replica slower than its deadline's grace) holds two dots
	// for one value; the context covers both.
	var live [][]byte
	for _, v := range merged.Values() {
		if !v.Tombstone && !slices.ContainsFunc(live, func(b []byte) bool { return bytes.Equal(b, v.Data) }) {
			live = append(live, v.Data)
		}
	}
	c.metrics.Siblings(len(live))
	if len(live) > siblingWarnAt {
		c.warnSiblings(r, len(live))
	}
	if last, ok := merged.LastLive(); ok {
		reply.Found = true
		reply.Value = last.Value.Data
		if reply.Value == nil {
			reply.Value = []byte{}
		}
	}
	if len(live) > 1 {
		reply.Siblings = live
	}
}

var lastSiblingWarn atomic.Int64 // unix nanos; rate-limits the warning process-wide

// warnSiblings logs a key with many siblings, at most once a second.
func (c *Coordinator) warnSiblings(r *dataRequest, n int) {
	now := time.Now().UnixNano()
	last := lastSiblingWarn.Load()
	if now-last < int64(time.Second) || !lastSiblingWarn.CompareAndSwap(last, now) {
		return
	}
	c.log.Warn("key has many siblings; its writers should send the context of their read back", "tenant", r.tenant.ID, "key", r.Key, "siblings", n, "limit", subjects.MaxSiblings)
}

// DetectConflictsDVV is DetectConflicts for the siblings policy: the
// merge (DVVSet sync) of the replicas' states and the replicas whose state
// differs from it. ok is false when no replica holds anything.
func DetectConflictsDVV(replies []ReplicaVersion) (merged vclock.DVVSet, stale []string, ok bool) {
	var states []vclock.DVVSet
	for _, r := range replies {
		if r.DVV != nil {
			states = append(states, *r.DVV)
		}
	}
	if len(states) == 0 {
		return vclock.DVVSet{}, nil, false
	}
	merged = vclock.SyncAll(states...)
	for _, r := range replies {
		if (r.DVV == nil || !r.DVV.Equal(merged)) && !slices.Contains(stale, r.Node) {
			stale = append(stale, r.Node)
		}
	}
	return merged, stale, true
}
