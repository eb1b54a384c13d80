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
// level's count of current owners holds the new state.
//
// During a transition the coordinating replica is a current owner, and
// the state goes to the whole write set (receivers too; they do not
// count). A not_owner refusal means this coordinator's map is stale: from
// the coordinating replica (nothing was minted) the whole write starts
// again under the reloaded map; in the merge leg the same complete state
// is sent again to the new write set's nodes that have not acknowledged
// it. A write is never coordinated twice for a stale map.
func (c *Coordinator) writeSiblings(ctx context.Context, r *dataRequest, del bool, expires int64) (*subjects.WriteReply, error) {
	val := vclock.Value{Data: r.Value, Tombstone: del, Expires: expires}
	switch {
	case del:
		val.Data = nil
	case val.Data == nil:
		val.Data = []byte{}
	}
	var (
		rt     route
		state  *vclock.DVVSet
		coordN int // current owners that failed to coordinate before one did
		err    error
	)
	for try := 0; ; try++ {
		if rt, err = c.route(r, true); err != nil {
			return nil, err
		}
		state, coordN, err = c.coordinateSiblings(ctx, r, &rt, val)
		if retry, err := c.retryNotOwner(ctx, err, try); retry {
			continue
		} else if err != nil {
			return nil, err
		}
		break
	}
	deadline, _ := ctx.Deadline()
	acked := []string{rt.nodes[coordN]}
	// Leg 2: the rest of the write set merges the complete state. The
	// owners that failed to coordinate are not asked again on the first
	// round; hints reach them.
	skip := rt.nodes[:coordN+1]
	var (
		cl          *replica.Call
		t           tally
		outstanding int
	)
	for try := 0; ; try++ {
		others := missingFrom(rt.nodes, skip)
		cl = rt.newCall(len(others))
		for _, node := range others {
			c.rep.Write(cl, node, deadline, subjects.NodeWrite{Tenant: r.tenant.ID, Key: r.Key, DVV: state})
		}
		// The merge leg's acks count per row: while the partition moves,
		// need among the current row and need among the target row (a
		// node in both counts in both).
		t = rt.writeTally()
		for _, node := range rt.nodes {
			switch {
			case slices.Contains(acked, node):
				t.ackFrom(node)
			case slices.Contains(skip, node):
				t.failFrom(node) // failed to coordinate; not asked
			}
		}
		err, heard := error(nil), 0
		if !t.met() {
			if t.impossible() {
				if t.joint() {
					err = subjects.Errorf(subjects.KindUnavailable, "%s", t.rowsStatus(r.level))
				} else {
					err = subjects.Errorf(subjects.KindUnavailable, "%s needs %d of %d replicas; %d acknowledged, %d failed", r.level, rt.need, rt.counted, t.acks, t.fails)
				}
			} else {
				err = c.await(ctx, cl, &t, r.level, nil, func(o replica.Outcome) {
					heard++
					if o.Err == nil {
						acked = append(acked, o.Node)
					}
				})
			}
		}
		outstanding = len(others) - heard
		retry, err := c.retryNotOwner(ctx, notOwnerf(&t, rt.pl.version, err), try)
		if err != nil {
			return nil, err
		}
		if !retry {
			break
		}
		// Same state, new write set: only the nodes that have not
		// acknowledged it are sent it again.
		if rt, err = c.route(r, true); err != nil {
			return nil, err
		}
		skip = acked
	}
	if c.repair != nil {
		nodes := rt.nodes
		r.after = func() { c.hintMissingDVV(ctx, cl, r, nodes, outstanding, acked, *state) }
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

// coordinateSiblings is leg 1 of a siblings write under rt: the first
// current owner that answers coordinates it (mints the dot and stores the
// new state). It returns that state and the owner's index in rt.nodes
// (the owners before it failed). A not_owner refusal ends it at once with
// a *notOwnerError: the map is stale, and nothing was minted.
func (c *Coordinator) coordinateSiblings(ctx context.Context, r *dataRequest, rt *route, val vclock.Value) (*vclock.DVVSet, int, error) {
	deadline, _ := ctx.Deadline()
	// The per-key state cap: a state at it fits one node reply and one
	// client reply (subjects.MaxStateBytes).
	maxBytes := int64(subjects.MaxStateBytes(c.nc.MaxPayload()))
	owners := rt.nodes[:rt.counted]
	t := tally{required: rt.need, total: len(owners)}
	var failures []string
	// The first owner that answers coordinates. Each attempt but the last
	// gets half the remaining time, so a silent owner leaves time for the
	// next. The replica refuses the write after the attempt's deadline,
	// and the coordinator moves on only a grace period later, so a replica
	// that was merely slow (paused, stalled disk) does not apply the write
	// a second time under its own dot once another has.
	for i, node := range owners {
		attempt, giveUp := deadline, deadline
		if i < len(owners)-1 {
			half := time.Until(deadline) / 2
			attempt = time.Now().Add(half - half/4)
			giveUp = time.Now().Add(half)
		}
		cl := rt.newCall(1)
		c.rep.Write(cl, node, attempt, subjects.NodeWrite{Tenant: r.tenant.ID, Key: r.Key, Coordinate: &subjects.Coordinate{Context: r.dvvCtx, Value: val, Deadline: attempt.UnixMilli(), MaxBytes: maxBytes}})
		o, err := waitOne(ctx, cl, giveUp)
		if err == nil && o.Err == nil && o.Write != nil && o.Write.DVV != nil {
			return o.Write.DVV, i, nil
		}
		if err == nil && isNotOwner(&o) {
			c.metrics.NotOwner(subjects.NodeOpWrite)
			c.routing.refreshNow()
			return nil, 0, &notOwnerError{version: rt.pl.version, err: subjects.Errorf(subjects.KindUnavailable,
				"%s refused to coordinate the write: %v", node, o.Err)}
		}
		if err == nil && o.Write != nil && (o.Write.Kind == subjects.KindTooManySiblings || o.Write.Kind == subjects.KindTooLarge) {
			// A limit of the key's state: any other owner would refuse it
			// too (or, not holding all of it yet, accept it wrongly).
			return nil, 0, subjects.Errorf(o.Write.Kind, "%s", o.Write.Err)
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
			break
		}
	}
	return nil, 0, subjects.Errorf(subjects.KindUnavailable, "%s needs %d of %d replicas; no primary could coordinate the write (%s)",
		r.level, rt.need, len(owners), strings.Join(failures, "; "))
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
	// for one value; the context covers both. Values whose TTL has passed
	// count as tombstones: the context covers them, so a write with it
	// drops them.
	now := c.cfg.Now().UnixMilli()
	var live [][]byte
	for _, v := range merged.Values() {
		if !v.DeadAt(now) && !slices.ContainsFunc(live, func(b []byte) bool { return bytes.Equal(b, v.Data) }) {
			live = append(live, v.Data)
		}
	}
	c.metrics.Siblings(len(live))
	if len(live) > siblingWarnAt {
		c.warnSiblings(r, len(live))
	}
	if last, ok := merged.LastLiveAt(now); ok {
		reply.Found = true
		reply.Value = last.Value.Data
		reply.ExpiresAtMs = last.Value.Expires
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
