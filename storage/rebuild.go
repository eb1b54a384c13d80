package storage

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Stale and rebuilt replicas (issue 15, D7; docs/ARCHITECTURE.md "A stale
// or rebuilt replica").
//
// Reaping (reap.go) deletes a tombstone once every current owner
// confirmed it. A replica that was down for longer than a tombstone grace
// and meanwhile stopped being a current owner of a partition (its rows
// changed) missed that confirmation and may still hold the live value the
// tombstone deleted: back in service it would hand it out, and repairs
// would copy it back everywhere. So a node records when it was last alive
// (metaLastAlive, every aliveEvery, NoSync, and at Stop), the smallest
// grace it knows (metaGraceFloor, from the tenant list; 7 days until it
// knows one) and the last map version it installed (metaMapVersion). At
// Open, when now - lastAlive > graceFloor, the directory is stale: the
// node logs why, mints a new epoch, and at its first map drops the
// partitions whose rows changed since that version or that it does not
// own, and rebuilds those it owns (settleStale). The others are kept:
// nothing of them was reaped without this node.
//
// Rebuild: a node whose directory is new (disk replaced) marks it
// (metaRebuild). At the first placement map it installs, every partition
// it is a current owner of is to be rebuilt (none: the mark is cleared, it
// is a new node that will receive partitions through transfers); a stale
// directory rebuilds the partitions settleStale dropped and owns. Until a
// partition is rebuilt the node answers reads of it with the item error
// kind `rebuilding` (coordinators count it as no answer), refuses reap
// confirmations, and accepts writes. The rebuild loop pulls each
// partition, for each tenant whose RF makes the node an owner, from
// rf-quorum+1 other current owners within that RF (coverage) with
// PullPartition (the receive machinery), and the mark is cleared once
// every partition is rebuilt. A restart during the rebuild starts it
// again. A tenant of RF 1 has no other owner: its data is gone with the
// disk, and the partition does not wait for it. Progress is in
// TransferStatus (RebuildTotal, RebuildDone).

// errRebuilding is the Err of a read item of a partition being rebuilt.
const errRebuilding = subjects.KindRebuilding + ": this replica is rebuilding the key's partition from the other owners; count it as not answering"

// aliveEvery bounds how old metaLastAlive may be while the node runs.
const aliveEvery = 5 * time.Second

// readMetaInt reads an 8-byte big-endian meta value; ok false when absent.
func (e *engine) readMetaInt(k []byte) (v int64, ok bool, err error) {
	b, err := e.getMeta(k)
	if err != nil || b == nil {
		return 0, false, err
	}
	if len(b) != 8 {
		return 0, false, fmt.Errorf("meta %q holds %d bytes, not 8", k[1:], len(b))
	}
	return int64(binary.BigEndian.Uint64(b)), true, nil
}

// setMetaInt writes an 8-byte big-endian meta value.
func (e *engine) setMetaInt(k []byte, v int64, opts *pebble.WriteOptions) error {
	if err := e.db.Set(k, binary.BigEndian.AppendUint64(nil, uint64(v)), opts); err != nil {
		return fmt.Errorf("write meta %q: %w", k[1:], err)
	}
	return nil
}

// checkStale marks the directory stale when it was last alive longer than
// its grace floor before now, or after now (the clock was set back: its
// downtime is unknown), and marks a new directory for rebuild. It runs at
// Open, before anything reads the store; nodeID is the directory's owner
// (kept).
func (e *engine) checkStale(nodeID string, now time.Time, log *slog.Logger) error {
	alive, known, err := e.readMetaInt(metaLastAlive)
	if err != nil {
		return err
	}
	floor, ok, err := e.readMetaInt(metaGraceFloor)
	if err != nil {
		return err
	}
	if !ok {
		floor = subjects.DefaultTombstoneGraceMS
	}
	fresh := e.minted // a new directory; a stale one mints below, and is not fresh
	if v, pending, err := e.readMetaInt(metaStale); err != nil {
		return err
	} else if pending {
		// Found stale by an earlier open that stopped before its first
		// map settled it: still to settle, against the same version.
		u := uint64(v)
		e.stale = &u
		log.Warn("data directory is stale and not settled yet: its partitions are settled at the first placement map", "last_map_version", v)
	} else if known && (now.UnixMilli()-alive > floor || now.UnixMilli() < alive) {
		last, _, err := e.readMetaInt(metaMapVersion) // 0 when unknown: every partition counts as changed
		if err != nil {
			return err
		}
		if now.UnixMilli() < alive {
			// The clock was set back since (a wrong clock at boot, a
			// step): how long the node was down is unknown, so it may
			// have been longer than the grace. Dropping what changed
			// is the safe side; nothing that did not change is lost.
			log.Warn("data directory counts as stale: the clock reads earlier than when the node was last alive, so how long it was down is unknown; the partitions whose owners changed meanwhile are dropped at the first placement map and rebuilt from the other owners, the others kept",
				"last_alive", time.UnixMilli(alive).UTC(), "now", now.UTC(), "grace_floor", time.Duration(floor)*time.Millisecond, "last_map_version", last)
		} else {
			log.Warn("data directory is stale: the node was down for longer than the smallest tombstone grace; the partitions whose owners changed meanwhile (others may have reaped keys it still holds) are dropped at the first placement map and rebuilt from the other owners, the others kept",
				"last_alive", time.UnixMilli(alive).UTC(), "down_for", now.Sub(time.UnixMilli(alive)).Round(time.Second), "grace_floor", time.Duration(floor)*time.Millisecond, "last_map_version", last)
		}
		if err := e.markStale(last); err != nil {
			return fmt.Errorf("mark the stale directory: %w", err)
		}
		e.epoch = 0
		if err := e.initMeta(nodeID); err != nil { // a new epoch: partitions may be dropped
			return err
		}
		e.actor = vclock.ReplicaActor(nodeID, e.epoch)
		u := uint64(last)
		e.stale = &u
	}
	if fresh {
		if err := e.db.Set(metaRebuild, []byte{1}, pebble.Sync); err != nil {
			return fmt.Errorf("mark the directory for rebuild: %w", err)
		}
	}
	// Alive from now on: a crash right after this open is not stale.
	return e.setMetaInt(metaLastAlive, now.UnixMilli(), pebble.Sync)
}

// markStale records, with fsync, that the directory is stale with last
// its last installed map version (metaStale, until settleStale), deletes
// the transfer cursors and generations, and the epoch (so initMeta mints a
// new one).
func (e *engine) markStale(last int64) error {
	b := e.db.NewBatch()
	defer b.Close()
	for _, r := range [][2][]byte{
		{{nsMeta, 'x', 'f', 'e', 'r'}, {nsMeta, 'x', 'f', 'e', 's'}},
		{{nsMeta, 'x', 'g', 'e', 'n'}, {nsMeta, 'x', 'g', 'e', 'o'}},
	} {
		if err := b.DeleteRange(r[0], r[1], nil); err != nil {
			return err
		}
	}
	if err := b.Delete(metaEpoch, nil); err != nil {
		return err
	}
	if err := b.Set(metaStale, binary.BigEndian.AppendUint64(nil, uint64(last)), nil); err != nil {
		return err
	}
	return b.Commit(pebble.Sync)
}

// settleStale decides, at the first map m a stale directory installs
// (before m is visible), which of its partitions it keeps. Reaping a key
// needs every current owner of its partition to confirm (reap.go), so
// while the node stayed a current owner of p no key of p was reaped
// without it, however long it was down: a whole cluster stopped for
// longer than the grace keeps its data. Only a partition whose rows
// changed after the node's last map (m.Since(p) > the stale version: the
// node may have left its current row meanwhile, and the others reaped
// without it), or of which it is not a current owner (a leftover of a
// handoff or a transfer that its own map had already moved on from), may
// hold a live value whose tombstone is gone elsewhere: those are dropped,
// and those it owns are rebuilt from the other owners. Then metaStale goes.
func (n *Node) settleStale(m *ring.Map) error {
	e := n.eng
	since := *e.stale
	var drop, rebuild []uint32
	var row []string
	for p := range uint32(e.q) {
		row = m.Owners(p, row)
		owner := slices.Contains(row, n.cfg.NodeID)
		if owner && m.Since(p) <= since {
			continue
		}
		drop = append(drop, p)
		if owner {
			rebuild = append(rebuild, p)
		}
	}
	b := e.db.NewBatch()
	defer b.Close()
	for _, p := range drop {
		lo, hi := partitionBounds(p)
		if err := b.DeleteRange(lo, hi, nil); err != nil {
			return fmt.Errorf("drop stale partition %d: %w", p, err)
		}
	}
	rb := &n.rebuild
	rb.mu.Lock()
	defer rb.mu.Unlock()
	full := rb.marked && !rb.decided // an earlier rebuild unfinished: it rebuilds every owned partition
	if len(rebuild) > 0 && !rb.marked {
		if err := b.Set(metaRebuild, []byte{1}, nil); err != nil {
			return err
		}
	}
	if err := b.Delete(metaStale, nil); err != nil {
		return err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("settle the stale directory: %w", err)
	}
	for _, p := range drop {
		e.bumpGen(p)
	}
	e.stale = nil
	if len(rebuild) > 0 && !full {
		rb.marked, rb.decided, rb.pending = true, true, map[uint32]bool{}
		for _, p := range rebuild {
			rb.pending[p] = true
		}
		rb.total, rb.done = len(rb.pending), 0
		rb.on.Store(true)
	}
	n.log.Warn("stale directory settled: partitions whose owners changed while the node was down are dropped", "map_version", m.Version(),
		"last_map_version", since, "kept", e.q-len(drop), "dropped", len(drop), "rebuilding", len(rebuild))
	return nil
}

// rebuildState is what the node knows of its rebuild.
type rebuildState struct {
	// on mirrors marked for the read path, which checks it per item
	// without the lock.
	on      atomic.Bool
	mu      sync.Mutex
	marked  bool            // the directory carries metaRebuild
	pending map[uint32]bool // partitions still to rebuild; nil until the first map decides
	decided bool
	total   int
	done    int
	kick    chan struct{}
}

// rebuildingPartition reports whether this node is still rebuilding p: it
// must not answer reads of p, nor confirm reaps. Before the first map
// decided what to rebuild no partition counts: without a map the node
// refuses every fenced read anyway (placement.go), and its first map is
// installed before it answers one.
func (n *Node) rebuildingPartition(p uint32) bool {
	rb := &n.rebuild
	if !rb.on.Load() {
		return false
	}
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.marked && rb.decided && rb.pending[p]
}

// decideRebuild runs on install: the first map a marked node installs
// names the partitions it rebuilds; later maps drop those it no longer
// owns.
func (n *Node) decideRebuild(owns func(p uint32) bool) {
	rb := &n.rebuild
	rb.mu.Lock()
	if !rb.marked {
		rb.mu.Unlock()
		return
	}
	if !rb.decided {
		rb.decided, rb.pending = true, map[uint32]bool{}
		for p := range uint32(n.eng.q) {
			if owns(p) {
				rb.pending[p] = true
			}
		}
		rb.total = len(rb.pending)
		n.log.Info("rebuilding the partitions this node owns from their other owners; reads of them answer rebuilding until then", "partitions", rb.total)
	} else {
		for p := range rb.pending {
			if !owns(p) {
				delete(rb.pending, p)
				rb.done++
			}
		}
	}
	rb.mu.Unlock()
	select {
	case rb.kick <- struct{}{}:
	default:
	}
}

// rebuildStatus returns the rebuild's figures (0, 0 when none).
func (n *Node) rebuildStatus() (total, done int) {
	rb := &n.rebuild
	rb.mu.Lock()
	defer rb.mu.Unlock()
	return rb.total, rb.done
}

// aliveLoop records lastAlive every aliveEvery until ctx ends (Stop
// records it once more).
func (n *Node) aliveLoop(ctx context.Context) {
	every(ctx, aliveEvery, n.markAlive)
}

func (n *Node) markAlive() {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return
	}
	if err := n.eng.setMetaInt(metaLastAlive, time.Now().UnixMilli(), pebble.NoSync); err != nil {
		n.log.Warn("record last alive", "err", err)
	}
}

// noteGraces records the smallest tombstone grace of the tenant list as
// the directory's grace floor (the default when there is no tenant).
func (n *Node) noteGraces(grace map[string]int64) {
	floor := subjects.DefaultTombstoneGraceMS
	for _, g := range grace {
		floor = min(floor, g)
	}
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return
	}
	if cur, ok, err := n.eng.readMetaInt(metaGraceFloor); err == nil && ok && cur == floor {
		return
	}
	if err := n.eng.setMetaInt(metaGraceFloor, floor, pebble.Sync); err != nil {
		n.log.Warn("record the tombstone grace floor", "err", err)
	}
}

// rebuildLoop rebuilds the pending partitions until none is left (then
// clears the directory's mark) or ctx ends; a round that leaves some is
// retried after a back-off, or at once when the map changes.
func (n *Node) rebuildLoop(ctx context.Context) {
	rb := &n.rebuild
	backoff := 500 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return
		case <-rb.kick:
		case <-time.After(backoff):
		}
		rb.mu.Lock()
		if !rb.marked {
			rb.mu.Unlock()
			return
		}
		if !rb.decided {
			rb.mu.Unlock()
			continue
		}
		var ps []uint32
		for p := range rb.pending {
			ps = append(ps, p)
		}
		rb.mu.Unlock()
		slices.Sort(ps)
		// The tenant list decides which tenants each partition is pulled
		// for: ask for it afresh every round rather than trust a cache
		// that a lost tenant event would leave without a tenant (whose
		// keys this node would then answer not found once done).
		n.refreshTenants(ctx)
		for _, p := range ps {
			if ctx.Err() != nil {
				return
			}
			if !n.rebuildPartition(ctx, p) {
				continue
			}
			rb.mu.Lock()
			if rb.pending[p] {
				delete(rb.pending, p)
				rb.done++
			}
			rb.mu.Unlock()
		}
		rb.mu.Lock()
		left := len(rb.pending)
		rb.mu.Unlock()
		if left > 0 {
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		if err := n.clearRebuildMark(); err != nil {
			n.log.Warn("clear the rebuild mark; retrying", "err", err)
			continue
		}
		rb.mu.Lock()
		rb.marked = false
		rb.on.Store(false)
		rb.mu.Unlock()
		n.log.Info("rebuild finished: every partition this node owns was pulled from its other owners")
		return
	}
}

func (n *Node) clearRebuildMark() error {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return errStopping
	}
	return n.eng.db.Delete(metaRebuild, pebble.Sync)
}

// rebuildPartition pulls p, for each tenant the node owns there, from
// coverage(RF) of the tenant's other current owners (whole from the
// first that answers, reconciled with the others: pullOrReconcile), and
// reports whether that succeeded. It waits (false) while the tenant list
// is unknown; a partition that moves is pulled from its current owners
// all the same.
func (n *Node) rebuildPartition(ctx context.Context, p uint32) bool {
	m := n.pmap.Load()
	if m == nil {
		return false
	}
	owners := m.Owners(p, nil)
	pos := slices.Index(owners, n.cfg.NodeID)
	if pos < 0 {
		return true // no longer owned: nothing to serve
	}
	rf, _ := n.tenantGraces(ctx)
	if rf == nil {
		return false
	}
	perSource := map[string][]string{}
	need := map[string]int{}
	for t, r := range rf {
		members := owners[:min(r, len(owners))]
		if pos >= len(members) {
			continue
		}
		others := 0
		for _, o := range members {
			if o != n.cfg.NodeID {
				perSource[o] = append(perSource[o], t)
				others++
			}
		}
		need[t] = min(coverage(r, r), others)
	}
	got := map[string]int{}
	pulled := map[string]map[string]bool{} // source → tenants it gave
	for _, src := range owners {
		ts := perSource[src]
		if len(ts) == 0 {
			continue
		}
		slices.Sort(ts)
		if err := n.pullOrReconcile(ctx, src, p, m.Version(), ts, pulled, true); err != nil {
			if ctx.Err() == nil {
				n.log.Info("rebuild: a source failed; trying the others", "partition", p, "from", src, "err", err)
			}
			continue
		}
		pulled[src] = map[string]bool{}
		for _, t := range ts {
			got[t]++
			pulled[src][t] = true
		}
	}
	for t, k := range need {
		if got[t] < k {
			n.log.Info("rebuild: tenant lacks sources; retrying", "partition", p, "tenant", t, "pulled", got[t], "need", k)
			return false
		}
	}
	return true
}
