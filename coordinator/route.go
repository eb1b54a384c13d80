package coordinator

import (
	"context"
	"errors"
	"fmt"

	"slices"
	"time"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// The request path during transitions (spec §6): where one attempt of a
// request goes under one placement map, and what a request does when a
// storage node refuses it as not_owner because the partition changed in a
// map newer than the one the request was routed with.

// route is where one attempt of a data request goes: the placement it was
// computed under (whose version and protocol every node request carries)
// and the key's nodes in it: the partition's current owners
// nodes[:counted], then, while it moves, its receivers (target owners that
// are not current ones). A write goes to all of them.
//
// While the key's partition moves, target is its target row target[:rf]
// and a write needs need acks among nodes[:counted] AND need among target
// (joint quorum): every write acknowledged during a move is then on a
// quorum of the target row, so a quorum read after the flip meets it even
// when a receiver missed it after its scan had passed the key. A read of
// a moving partition needs need answers in both rows too (joint read): a
// coordinator that has not learned of the flip yet then still meets every
// write acknowledged after it by a quorum of the new current row, even
// when the nodes it asks have not installed the flip either (they would
// refuse it as not_owner once they have). target is nil when the
// partition does not move; a read then asks the current owners only.
type route struct {
	pl      *placement
	nodes   []string
	counted int
	need    int // acknowledgements the level needs, among nodes[:counted] (and among target)
	target  []string
}

// route computes r's route under the current placement, or unavailable
// when the map cannot supply the level's count of current owners.
func (c *Coordinator) route(r *dataRequest, write bool) (route, error) {
	rf := r.tenant.ReplicationFactor
	pl := c.routing.placement()
	// The negotiated node protocol (2: items carry the map version) is the
	// replica client's; batches already encoded keep theirs.
	if p := c.nodeProtocolNow(); p != c.rep.Protocol() {
		if err := c.rep.SetProtocol(p); err != nil {
			return route{}, fmt.Errorf("node protocol: %w", err)
		}
	}
	var rt route
	rt.pl = pl
	if write {
		rt.nodes, rt.counted, rt.target = keyWriteSet(pl, r, rf)
	} else if h := ring.KeyHash(r.tenant.ID, r.Key); pl.m.Moving(ring.PartitionOf(h, pl.m.Partitions())) {
		rt.nodes, rt.counted, rt.target = keyWriteSet(pl, r, rf)
		if slices.Equal(rt.target, rt.nodes[:rt.counted]) {
			// Only owners past this tenant's RF move: its rows are the same.
			rt.nodes, rt.target = rt.nodes[:rt.counted], nil
		}
	} else {
		rt.nodes = pl.m.PreferenceListHash(h, rf, make([]string, 0, rf))
		rt.counted = len(rt.nodes)
	}
	rt.need = Required(r.level, rf)
	if rt.counted < rt.need {
		return route{}, subjects.Errorf(subjects.KindUnavailable,
			"%s needs %d replicas of %d, but only %d active storage nodes are in the ring", r.level, rt.need, rf, rt.counted)
	}
	if rt.target != nil && len(rt.target) < rt.need {
		return route{}, subjects.Errorf(subjects.KindUnavailable,
			"%s needs %d replicas of %d in the current row %v and in the target row %v of a moving partition; the target row has %d",
			r.level, rt.need, rf, rt.nodes[:rt.counted], rt.target, len(rt.target))
	}
	return rt, nil
}

// nodeProtocolNow returns the node protocol requests are sent in: the one
// routing negotiated (2 when every node of the map registered protocol 2,
// else 1; see negotiate).
func (c *Coordinator) nodeProtocolNow() int { return c.routing.nodeProtocol() }

// keyWriteSet returns the write set of r's key under pl: current[:rf]
// followed by the members of target[:rf] that are not current, and how
// many of it are current (see ring.Map.WriteSet), and, only while the
// key's partition moves, its target row target[:rf] (nil otherwise). The
// slice is sized for a map without moving partitions (the usual case: one
// allocation, as the preference list took before write sets); WriteSet
// grows it while a map moves partitions.
func keyWriteSet(pl *placement, r *dataRequest, rf int) (set []string, counted int, target []string) {
	p := ring.PartitionOf(ring.KeyHash(r.tenant.ID, r.Key), pl.m.Partitions())
	set, counted = pl.m.WriteSet(p, rf, make([]string, 0, rf))
	if pl.m.Moving(p) {
		tgt := pl.m.Target(p, make([]string, 0, rf))
		target = tgt[:min(rf, len(tgt))]
	}
	return set, counted, target
}

// counts reports whether node's outcome counts toward rt's level (in
// the current row or, while the partition moves, the target row).
func (rt *route) counts(node string) bool {
	return slices.Contains(rt.nodes[:rt.counted], node) || slices.Contains(rt.target, node)
}

// writeTally returns the tally of a write routed by rt: need acks among
// the current row and, while the partition moves, among the target row.
func (rt *route) writeTally() tally {
	return tally{required: rt.need, total: rt.counted, counted: rt.nodes[:rt.counted], target: rt.target}
}

// newCall returns a Call for n items of rt's attempt: they carry the
// map version rt was routed with, so a node whose map changed the key's
// partition after it refuses them (not_owner).
func (rt *route) newCall(n int) *replica.Call {
	return replica.NewCallAt(n, rt.pl.version)
}

// isNotOwner reports whether o is a node refusing its item because the
// request's map version is older than the partition's last change.
func isNotOwner(o *replica.Outcome) bool {
	return o.Err != nil && errors.Is(o.Err, replica.ErrNotOwner)
}

// notOwnerOp names o's operation for the not_owner metric.
func notOwnerOp(o *replica.Outcome) string {
	if o.Read != nil {
		return subjects.NodeOpRead
	}
	return subjects.NodeOpWrite
}

// notOwnerError is an attempt's failure when some node refused it as
// not_owner: the route is stale, and the request may be retried under a
// reloaded map (see retryNotOwner).
type notOwnerError struct {
	version uint64 // the map version the attempt was routed with
	err     error  // what the attempt would have answered
}

func (e *notOwnerError) Error() string { return e.err.Error() }
func (e *notOwnerError) Unwrap() error { return e.err }

// maxNotOwnerRetries bounds how often one request is retried under a
// reloaded map after a not_owner refusal; past it the request answers 503.
const maxNotOwnerRetries = 3

// retryNotOwner decides what a request does after attempt number try
// (0-based) ended with err: retry reports that err was a not_owner
// refusal and the current map has been reloaded, so the caller routes the
// request again; otherwise err is what to answer (err itself, or
// unavailable once the retries ran out or the map cannot be loaded). The
// reload is shared with every request refused at once (routing.reload).
func (c *Coordinator) retryNotOwner(ctx context.Context, err error, try int) (retry bool, _ error) {
	if err == nil {
		return false, nil
	}
	var no *notOwnerError
	if !errors.As(err, &no) {
		return false, err
	}
	if ctx.Err() != nil {
		return false, no.err // no time left to retry
	}
	if try >= maxNotOwnerRetries {
		return false, subjects.Errorf(subjects.KindUnavailable,
			"the placement map kept changing under the request: refused as not_owner %d times, last under map version %d (%v); retry",
			try+1, no.version, no.err)
	}
	if lerr := c.routing.reload(ctx, no.version); lerr != nil {
		return false, subjects.Errorf(subjects.KindUnavailable,
			"a storage node has a newer placement map than version %d, and loading it failed: %v", no.version, lerr)
	}
	if c.routing.placement().version <= no.version {
		// The store has no newer map than ours yet (a node learned of it
		// first, or a store replica lags): give it a moment.
		t := time.NewTimer(time.Duration(try+1) * 20 * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false, subjects.Errorf(subjects.KindUnavailable, "refused as not_owner under map version %d and no newer map in time: %v", no.version, no.err)
		}
		if lerr := c.routing.reload(ctx, no.version); lerr != nil {
			return false, subjects.Errorf(subjects.KindUnavailable,
				"a storage node has a newer placement map than version %d, and loading it failed: %v", no.version, lerr)
		}
	}
	return true, nil
}

// notOwnerf wraps an attempt's failure as a not_owner one when the tally
// saw a refusal.
func notOwnerf(t *tally, version uint64, err error) error {
	if t.notOwner == 0 || err == nil {
		return err
	}
	if lost := (*lostWrite)(nil); errors.As(err, &lost) {
		return err // a lost lww write is re-stamped (and re-routed) first
	}
	return &notOwnerError{version: version, err: err}
}

// missingFrom returns the nodes of set not in acked.
func missingFrom(set, acked []string) []string {
	var out []string
	for _, n := range set {
		if !slices.Contains(acked, n) {
			out = append(out, n)
		}
	}
	return out
}
