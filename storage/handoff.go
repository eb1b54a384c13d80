package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// Handoff and drop (issue 14, spec §5): a partition the node holds records
// of but that its map gives it in neither row (a former owner's) is, once
// HandoffGrace has passed since the node first saw that, pushed as merges
// (unfenced, map version 0: merges never overwrite) to its owners (current
// and target rows), then dropped with one DeleteRange, on the write loop
// and only if the map there still does not name the node and names no
// owner of the partition the push missed (else it is pushed again under
// the newer map: a new receiver's scan may have passed the records already
// pushed). By then the node refuses readers of older maps (not_owner), so
// none counts the empty range as "not found"; the grace lets reads
// already answered at the older version finish.

// handoffPage bounds the records pushed per round trip.
const handoffPage = 1000

// handoffAttempts bounds how often one handoff pushes again because the
// owners changed between its push and its drop; the loop tries again
// after the grace.
const handoffAttempts = 3

// errOwnersChanged: the map changed the partition's owners after the push.
var errOwnersChanged = errors.New("the partition's owners changed after the push")

// dropJob asks the write loop to drop partition p, whose records were
// pushed to pushed.
type dropJob struct {
	p      uint32
	pushed []string
	// set by the write loop: dropped false when the map names the node
	// again; moved when the map names an owner of p not in pushed.
	dropped, moved bool
	err            error
}

// handoffLoop checks the node's partitions against its map on every new
// map and every quarter of HandoffGrace, until ctx ends.
func (n *Node) handoffLoop(ctx context.Context) {
	grace := n.cfg.HandoffGrace
	tick := time.NewTicker(max(grace/4, 50*time.Millisecond))
	defer tick.Stop()
	unowned := map[uint32]time.Time{} // partition with records → when the node first saw it unowned
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-n.handoffKick:
		}
		m := n.pmap.Load()
		if m == nil {
			continue
		}
		now := time.Now()
		clean := true // no records seen outside unowned
		for p := range uint32(n.eng.q) {
			if m.Owns(p, n.cfg.NodeID) {
				delete(unowned, p)
				continue
			}
			since, seen := unowned[p]
			if !seen {
				has, err := n.eng.hasRecords(p)
				if err != nil {
					clean = false
				}
				if err != nil || !has {
					continue
				}
				unowned[p] = now
				continue
			}
			if now.Sub(since) < grace {
				continue
			}
			if err := n.handoff(ctx, m, p); err != nil {
				if ctx.Err() != nil {
					return
				}
				n.log.Warn("handoff failed; retrying after the grace", "partition", p, "err", err)
				unowned[p] = now // an owner down: do not spin on it
				continue
			}
			delete(unowned, p)
		}
		// A node the map names nowhere that holds nothing has finished its
		// handoff: its heartbeat says so, and a leaving node becomes left
		// (coordinator advance) only then.
		if clean && len(unowned) == 0 && !m.HasNode(n.cfg.NodeID) {
			n.handoffDone.Store(m.Version())
		} else {
			n.handoffDone.Store(0)
		}
	}
}

// handoff pushes every record of p to p's owners in m (handOnce), then
// has the write loop drop p. When the write loop's map names an owner the
// push missed, it pushes again under that map, handoffAttempts times at
// most.
func (n *Node) handoff(ctx context.Context, m *ring.Map, p uint32) error {
	for range handoffAttempts {
		err := n.handOnce(ctx, m, p)
		if !errors.Is(err, errOwnersChanged) {
			return err
		}
		next := n.pmap.Load()
		n.log.Info("handoff: the partition's owners changed after the push; pushing again", "partition", p,
			"pushed_map_version", m.Version(), "map_version", next.Version())
		m = next
		if m.Owns(p, n.cfg.NodeID) {
			return nil // the node owns it again: nothing to drop
		}
	}
	return fmt.Errorf("handoff of partition %d: %w %d times in a row", p, errOwnersChanged, handoffAttempts)
}

// handoffOwners returns p's owners in m that a handoff pushes to: its
// current row and, when it moves, its target row (a receiver's scan may
// already have passed the records).
func handoffOwners(m *ring.Map, p uint32) []string {
	set, _ := m.WriteSet(p, m.Replicas(), nil)
	return set
}

// handOnce pushes every record of p to handoffOwners(m, p), then has the
// write loop drop p; errOwnersChanged when the write loop's map names an
// owner of p not pushed to.
func (n *Node) handOnce(ctx context.Context, m *ring.Map, p uint32) error {
	owners := handoffOwners(m, p)
	if len(owners) == 0 {
		return fmt.Errorf("partition %d has no current owner in map version %d", p, m.Version())
	}
	rc, err := n.client()
	if err != nil {
		return err
	}
	var cursor []byte
	records := 0
	for {
		entries, next, err := scanPartition(n.eng, p, cursor, handoffPage, n.replyLimit/2, nil)
		if err != nil {
			return err
		}
		if len(entries) > 0 {
			if err := n.push(ctx, rc, owners, p, entries); err != nil {
				return err
			}
			records += len(entries)
			n.metrics.HandedOff(len(entries))
		}
		if next == nil {
			break
		}
		cursor = next
	}
	j := &localWrite{drop: &dropJob{p: p, pushed: owners}}
	if err := n.submit(ctx, j); err != nil {
		return err
	}
	if j.drop.err != nil {
		return j.drop.err
	}
	if j.drop.moved {
		return errOwnersChanged
	}
	if j.drop.dropped {
		n.log.Info("partition handed off and dropped", "partition", p, "records", records, "owners", owners, "map_version", m.Version())
	}
	return nil
}

// push merges entries into every owner and waits until each acknowledged
// each record.
func (n *Node) push(ctx context.Context, rc *replica.Client, owners []string, p uint32, entries []partEntry) error {
	ws := make([]subjects.NodeWrite, len(entries))
	for i, en := range entries {
		rec, err := decodeRecordCopy(en.Record, true)
		if err != nil || (rec.LWW == nil) == (rec.DVV == nil) {
			return fmt.Errorf("handoff of partition %d: bad record %s/%q: %v", p, en.Tenant, en.Key, err)
		}
		ws[i] = subjects.NodeWrite{Tenant: en.Tenant, Key: en.Key, LWW: rec.LWW, DVV: rec.DVV}
	}
	deadline := time.Now().Add(10 * time.Second)
	call := replica.NewCall(len(ws) * len(owners))
	for _, o := range owners {
		rc.Write(call, o, deadline, append([]subjects.NodeWrite(nil), ws...)...) // Write sets the IDs
	}
	t := time.NewTimer(time.Until(deadline) + time.Second)
	defer t.Stop()
	for range len(ws) * len(owners) {
		select {
		case o := <-call.Outcomes():
			if o.Err != nil {
				return fmt.Errorf("handoff of partition %d to %s: %w", p, o.Node, o.Err)
			}
		case <-t.C:
			return fmt.Errorf("handoff of partition %d: owners did not answer in time", p)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// applyDrop runs on the write loop: it drops j's partition and forgets its
// transfer cursors, unless the node's map names the node for it again or
// names an owner of it that j's push missed (j.moved).
func (n *Node) applyDrop(j *dropJob) {
	m := n.pmap.Load()
	if m == nil || m.Owns(j.p, n.cfg.NodeID) {
		return
	}
	for _, o := range handoffOwners(m, j.p) {
		if !slices.Contains(j.pushed, o) {
			j.moved = true
			return
		}
	}
	if err := n.eng.dropPartition(j.p); err != nil {
		j.err = err
		return
	}
	if err := n.eng.forgetCursors(func(p uint32) bool { return p == j.p }); err != nil {
		j.err = err
		return
	}
	j.dropped = true
	n.metrics.DroppedPartition()
}

// hasRecords reports whether partition p holds any record.
func (e *engine) hasRecords(p uint32) (bool, error) {
	lo, hi := partitionBounds(p)
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return false, fmt.Errorf("partition %d: %w", p, err)
	}
	has := it.First()
	return has, errors.Join(it.Error(), it.Close())
}
