package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/hashtree"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tombstone reaping (issue 15, D6; docs/ARCHITECTURE.md "Reaping
// tombstones"). A delete leaves a tombstone on every replica so that an
// older live version arriving later (a repair, a hint, a replica that was
// down) loses its merge instead of bringing the key back. Kept forever,
// tombstones fill the disk; reaped too early, a replica that missed the
// delete resurrects the key. A tombstone is reaped once it is dead for
// longer than its tenant's tombstone grace (Tenant.TombstoneGraceMS, by
// this node's clock) and every owner of the key holds the very same record
// (or nothing):
//
//  1. reapPartition scans partition p (a node that is a current owner of p,
//     p not moving) for dead records (deadSince) older than their tenant's
//     grace;
//  2. it asks every other current owner within the tenant's RF for the
//     VersionHash of what it holds (ReapRequest, Commit false);
//  3. only for keys where every one answered the same hash or nothing, it
//     sends each a conditional reap (Commit true: delete only if the stored
//     record's hash is still that hash, on the write loop), and reaps
//     locally the same way.
//
// An owner that is down, unreachable, behind on the map, or that holds
// anything else makes the key wait for a later pass. After many keys the
// partition's range is compacted so the disk space comes back.
//
// What the grace must cover: a write older than the tombstone that reaches
// a replica after the reap (a hint or repair queued for longer than the
// grace, a replica down for longer and moved off the partition meanwhile:
// D7 drops its copy) would bring the key back.

// reapCompactAt is how many keys reaped from one partition in one pass make
// the reaper compact the partition's range (Pebble drops deleted keys'
// space only when compaction reaches them).
const reapCompactAt = 256

// reapBatch is how many keys one ReapRequest carries at most.
const reapBatch = 512

// reapTimeout bounds one ReapRequest round trip.
const reapTimeout = 5 * time.Second

// diesAt reports when rec dies without a write (Unix ms, by the clock
// that wrote it), with the kind the metrics count it under, and whether it
// does at all (a record dead at ms is nothing a read returns, and nothing
// that will come back on its own):
//
//   - an lww tombstone died at its Expires (the wall time of its delete),
//     or, written before Expires existed, at the wall-clock part of its
//     hybrid-clock counter (vclock.Version.DeadSince);
//   - an lww value with an Expires dies at it;
//   - a siblings record dies when every sibling is a tombstone or an
//     expired value, at the latest of their Expires. One holding a value
//     without expiry never does, nor one holding a tombstone without a
//     time (written before node protocol 3): its age is unknown, and
//     reaping it early would let a late write its history covered come
//     back.
func diesAt(rec *record) (ms int64, kind string, dies bool) {
	switch {
	case rec.LWW != nil:
		ms, dies := rec.LWW.DeadSince()
		if !dies {
			return 0, "", false
		}
		if rec.LWW.Tombstone {
			return ms, metrics.ReapTombstone, true
		}
		return ms, metrics.ReapExpired, true
	case rec.DVV != nil:
		kind, values := metrics.ReapTombstone, 0
		for _, e := range rec.DVV.Entries {
			for _, v := range e.Values {
				if v.Expires == 0 {
					return 0, "", false
				}
				values++
				ms = max(ms, v.Expires)
				if !v.Tombstone {
					kind = metrics.ReapExpired
				}
			}
		}
		if values == 0 {
			return 0, "", false
		}
		return ms, kind, true
	}
	return 0, "", false
}

// deadSince reports whether rec is dead at nowMs, and since when (diesAt).
func deadSince(rec *record, nowMs int64) (ms int64, kind string, dead bool) {
	ms, kind, dies := diesAt(rec)
	if !dies || ms > nowMs {
		return 0, "", false
	}
	return ms, kind, true
}

// reapMemo is what a reaping scan of a partition learned: the partition's
// generation before the scan, the map version and the tenants' RFs and
// graces it ran under, and next, the earliest moment (Unix ms) a record
// it saw becomes reapable without a write (or a key it could not reap is
// tried again: the scan's own time; math.MaxInt64: none). While the
// generation, the map and the tenants are unchanged, no write reached the
// partition, so nothing in it can be reaped before next: a reaping pass
// skips it. An idle node's passes scan nothing; a busy one scans the
// partitions written since.
type reapMemo struct {
	gen, mapVersion uint64
	tenants         uint64 // tenantsPrint of the RFs and graces
	next            int64
}

// reapMemos holds a reapMemo per partition (absent: scan it), and counts
// the reaping scans made (for tests and the log).
type reapMemos struct {
	mu    sync.Mutex
	memo  map[uint32]reapMemo
	scans atomic.Int64
}

// skip reports whether partition p, now as cur describes it, need not be
// scanned at nowMs.
func (r *reapMemos) skip(p uint32, cur reapMemo, nowMs int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.memo[p]
	return ok && old.gen == cur.gen && old.mapVersion == cur.mapVersion && old.tenants == cur.tenants && nowMs < old.next
}

// set records the scan of p that m describes.
func (r *reapMemos) set(p uint32, m reapMemo) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.memo == nil {
		r.memo = map[uint32]reapMemo{}
	}
	r.memo[p] = m
}

// tenantsPrint is a fingerprint of the tenants' RFs and graces: a reap
// memo holds only while it is unchanged (a grace lowered makes records
// reapable sooner; an RF changes who reaps).
func tenantsPrint(rf map[string]int, grace map[string]int64) uint64 {
	ids := slices.Sorted(maps.Keys(rf))
	d := xxhash.New()
	var b [16]byte
	for _, id := range ids {
		_, _ = d.WriteString(id)
		_, _ = d.Write([]byte{0}) // ids hold no 0x00
		binary.BigEndian.PutUint64(b[:8], uint64(rf[id]))
		binary.BigEndian.PutUint64(b[8:], uint64(grace[id]))
		_, _ = d.Write(b[:])
	}
	return d.Sum64()
}

// reapCandidate is a dead record past its grace, and the owners other than
// this node that must confirm it.
type reapCandidate struct {
	item  subjects.ReapItem
	kind  string // metrics.ReapTombstone or ReapExpired
	peers []string
}

// tenantGraces returns the cached tenants' RFs and graces (nil when
// unknown), asking the coordinators again first when a tenant changed
// since the last load.
func (n *Node) tenantGraces(ctx context.Context) (map[string]int, map[string]int64) {
	n.tenants.mu.Lock()
	refresh := !n.tenants.hasLoaded || n.tenants.events != n.tenants.loadedAt || n.tenants.rf == nil
	n.tenants.mu.Unlock()
	if refresh {
		n.refreshTenants(ctx)
	}
	n.tenants.mu.Lock()
	defer n.tenants.mu.Unlock()
	return n.tenants.rf, n.tenants.grace
}

// reapPartition reaps the dead records of partition p past their tenant's
// grace that every other owner confirms (see the top of this file) and
// returns how many keys this node deleted. It does nothing for a partition
// that moves, that this node does not currently own, or is rebuilding, or
// while the tenant list is unknown. Safe to run beside the write loop:
// every delete is conditional and goes through it.
func (n *Node) reapPartition(ctx context.Context, p uint32) (reaped int, err error) {
	m := n.pmap.Load()
	if m == nil || int(p) >= n.eng.q || m.Moving(p) || n.rebuildingPartition(p) {
		return 0, nil
	}
	owners := m.Owners(p, nil)
	pos := slices.Index(owners, n.cfg.NodeID)
	if pos < 0 {
		return 0, nil
	}
	rf, grace := n.tenantGraces(ctx)
	if rf == nil {
		return 0, nil
	}
	// A partition whose scan found nothing to reap yet, and that nothing
	// changed since, is skipped until its first record comes of age.
	memo := reapMemo{gen: n.eng.gen(p), mapVersion: m.Version(), tenants: tenantsPrint(rf, grace), next: math.MaxInt64}
	if n.reapMemo.skip(p, memo, time.Now().UnixMilli()) {
		return 0, nil
	}
	n.reapMemo.scans.Add(1)
	var (
		cursor []byte
		kinds  reapedKinds
	)
	defer func() { n.countReaped(p, kinds) }()
	for {
		if err := ctx.Err(); err != nil {
			return reaped, err
		}
		entries, next, err := n.scanForReap(p, cursor)
		if err != nil {
			return reaped, err
		}
		now := time.Now().UnixMilli()
		var cands []reapCandidate
		for _, en := range entries {
			r, ok := rf[en.Tenant]
			if !ok {
				memo.next = now // unknown tenant (created since, or deleted): the next pass looks again
				continue
			}
			if pos >= r {
				continue
			}
			rec, err := decodeRecordCopy(en.Record, false)
			if err != nil {
				n.log.Warn("reap: undecodable record skipped", "partition", p, "tenant", en.Tenant, "err", err)
				continue
			}
			ms, kind, dies := diesAt(&rec)
			if !dies {
				continue
			}
			if at := ms + grace[en.Tenant] + 1; now < at { // reapable once dead for longer than the grace
				memo.next = min(memo.next, at)
				continue
			}
			var peers []string
			for _, o := range owners[:min(r, len(owners))] {
				if o != n.cfg.NodeID {
					peers = append(peers, o)
				}
			}
			cands = append(cands, reapCandidate{
				item:  subjects.ReapItem{Tenant: en.Tenant, Key: en.Key, Hash: hashtree.VersionHash(en.Record)},
				kind:  kind,
				peers: peers,
			})
		}
		for len(cands) > 0 {
			k := min(len(cands), reapBatch)
			got, err := n.reapConfirmed(ctx, m, p, cands[:k])
			reaped += got.tombstones + got.expired
			kinds.tombstones += got.tombstones
			kinds.expired += got.expired
			if err != nil {
				return reaped, err
			}
			if got.tombstones+got.expired < k {
				memo.next = now // an owner did not confirm some: the next pass tries again
			}
			cands = cands[k:]
		}
		if next == nil {
			break
		}
		cursor = next
	}
	n.reapMemo.set(p, memo)
	// Keys reaped here at other owners' requests count too: each owner
	// compacts in its own pass.
	if n.reapCounts.take(p, reapCompactAt) {
		if err := n.compactPartition(ctx, p); err != nil {
			return reaped, err
		}
	}
	return reaped, nil
}

// reapCounts counts, per partition, the keys reaped since its range was
// last compacted (by this node's reaper or at another owner's request).
type reapCounts struct {
	mu sync.Mutex
	n  map[uint32]int
}

func (c *reapCounts) add(p uint32, k int) {
	if k == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[uint32]int{}
	}
	c.n[p] += k
}

// take reports whether at least min keys of p were reaped since the last
// take that said so, and starts counting again when they were.
func (c *reapCounts) take(p uint32, min int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[p] < min {
		return false
	}
	delete(c.n, p)
	return true
}

// takeAll returns the lowest and highest partition with keys reaped since
// their last compaction when there are at least min of them in all, and
// starts counting again; ok false otherwise.
func (c *reapCounts) takeAll(min int) (lo, hi uint32, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	first := true
	for p, k := range c.n {
		total += k
		if first || p < lo {
			lo = p
		}
		if first || p > hi {
			hi = p
		}
		first = false
	}
	if total < min {
		return 0, 0, false
	}
	c.n = nil
	return lo, hi, true
}

// scanForReap reads one page of p under the read lock (Pebble must not
// close under it).
func (n *Node) scanForReap(p uint32, cursor []byte) ([]partEntry, []byte, error) {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return nil, nil, errStopping
	}
	return scanPartition(n.eng, p, cursor, scanDefaultRecords, 0, nil)
}

// compactPartition compacts p's key range so that the space of the keys
// just deleted is given back.
func (n *Node) compactPartition(ctx context.Context, p uint32) error {
	return n.compactPartitions(ctx, p, p)
}

// compactPartitions compacts the key range of partitions first..last.
func (n *Node) compactPartitions(ctx context.Context, first, last uint32) error {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return errStopping
	}
	lo, _ := partitionBounds(first)
	_, hi := partitionBounds(last)
	if err := n.eng.db.Compact(ctx, lo, hi, true); err != nil {
		return fmt.Errorf("storage: compact partitions %d..%d after reaping: %w", first, last, err)
	}
	n.log.Info("compacted after reaping", "partitions", fmt.Sprintf("%d..%d", first, last))
	return nil
}

// reapConfirmed runs the confirmation and the conditional reaps of cands
// (all of partition p, routed by map m) and returns how many keys this
// node deleted. A peer that fails to answer drops every candidate it was
// to confirm; that is no error of the pass.
func (n *Node) reapConfirmed(ctx context.Context, m *ring.Map, p uint32, cands []reapCandidate) (reapedKinds, error) {
	ok := make([]bool, len(cands))
	for i := range ok {
		ok[i] = true
	}
	peers := map[string][]int{} // peer → indexes of cands it owns
	var order []string
	for i, c := range cands {
		for _, o := range c.peers {
			if _, seen := peers[o]; !seen {
				order = append(order, o)
			}
			peers[o] = append(peers[o], i)
		}
	}
	// round asks each peer about its candidates still ok (commit: to reap
	// them) and clears ok for those it fails or whose answer keep refuses.
	round := func(commit bool, failed string, keep func(r subjects.ReapResult, c *reapCandidate) bool) error {
		for _, o := range order {
			var idx []int
			for _, i := range peers[o] {
				if ok[i] {
					idx = append(idx, i)
				}
			}
			if len(idx) == 0 {
				continue
			}
			res, err := n.askReap(ctx, o, m, p, cands, idx, commit)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				n.log.Debug(failed, "partition", p, "owner", o, "err", err)
				for _, i := range idx {
					ok[i] = false
				}
				continue
			}
			for k, i := range idx {
				if !keep(res[k], &cands[i]) {
					ok[i] = false
				}
			}
		}
		return nil
	}
	// 1. Confirm: every peer holds the same record, or nothing.
	err := round(false, "reap: an owner did not confirm; its keys wait", func(r subjects.ReapResult, c *reapCandidate) bool {
		return r.Held == ([2]uint64{}) || r.Held == c.item.Hash
	})
	if err != nil {
		return reapedKinds{}, err
	}
	// 2. Reap on the peers, then here, only what every peer confirmed.
	err = round(true, "reap: an owner did not reap; keeping ours for a later pass", func(r subjects.ReapResult, _ *reapCandidate) bool {
		return r.Reaped || r.Held == ([2]uint64{}) // else changed since it confirmed: a newer write got there
	})
	if err != nil {
		return reapedKinds{}, err
	}
	var (
		items []subjects.ReapItem
		kinds []string
	)
	for i, c := range cands {
		if ok[i] {
			items, kinds = append(items, c.item), append(kinds, c.kind)
		}
	}
	var reaped reapedKinds
	if len(items) == 0 {
		return reaped, nil
	}
	j := &localWrite{reap: &reapJob{items: items}}
	if err := n.submit(ctx, j); err != nil {
		return reaped, err
	}
	if j.reap.err != nil {
		return reaped, j.reap.err
	}
	for i, r := range j.reap.results {
		if r.Reaped && i < len(kinds) {
			if kinds[i] == metrics.ReapExpired {
				reaped.expired++
			} else {
				reaped.tombstones++
			}
		}
	}
	return reaped, nil
}

// countReaped adds what a pass over partition p reaped to the metrics and
// the log.
func (n *Node) countReaped(p uint32, k reapedKinds) {
	if k.tombstones > 0 {
		n.metrics.Reaped(metrics.ReapTombstone, k.tombstones)
	}
	if k.expired > 0 {
		n.metrics.Reaped(metrics.ReapExpired, k.expired)
	}
	if k.tombstones+k.expired > 0 {
		n.log.Info("reaped", "partition", p, "tombstones", k.tombstones, "expired", k.expired)
	}
}

// reapedKinds counts the keys a node reaped, by what they were.
type reapedKinds struct{ tombstones, expired int }

// askReap sends peer a ReapRequest for the candidates idx of cands and
// returns its results, one per item in order.
func (n *Node) askReap(ctx context.Context, peer string, m *ring.Map, p uint32, cands []reapCandidate, idx []int, commit bool) ([]subjects.ReapResult, error) {
	req := subjects.ReapRequest{Proto: subjects.NodeProtocolVersion, Partitions: n.eng.q, Partition: p, MapVersion: m.Version(), Commit: commit}
	for _, i := range idx {
		req.Items = append(req.Items, cands[i].item)
	}
	data, err := msgpack.Marshal(&req)
	if err != nil {
		return nil, fmt.Errorf("storage: encode reap request: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, reapTimeout)
	defer cancel()
	msg, err := n.nc.RequestWithContext(rctx, subjects.StorageNode(peer, subjects.NodeOpReap), data)
	if err != nil {
		return nil, fmt.Errorf("storage: reap request to %s: %w", peer, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, fmt.Errorf("storage: reap request to %s: %w", peer, e)
	}
	var rep subjects.ReapReply
	if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
		return nil, fmt.Errorf("storage: decode reap reply of %s: %w", peer, err)
	}
	if len(rep.Results) != len(req.Items) {
		return nil, fmt.Errorf("storage: reap reply of %s has %d results for %d items", peer, len(rep.Results), len(req.Items))
	}
	return rep.Results, nil
}

// reapJob asks the write loop to delete each item's key if the hash of
// what it stores equals the item's Hash.
type reapJob struct {
	items   []subjects.ReapItem
	results []subjects.ReapResult
	err     error
}

// reapIf runs on the write loop: for each item, the hash of what its key
// stores, and the key deleted when that equals the item's hash; one batch.
func (e *engine) reapIf(items []subjects.ReapItem) ([]subjects.ReapResult, error) {
	res := make([]subjects.ReapResult, len(items))
	r, err := e.newReader()
	if err != nil {
		return nil, err
	}
	defer r.close()
	b := e.db.NewBatch()
	defer b.Close()
	var kbuf []byte
	for i, it := range items {
		kbuf = e.dataKey(kbuf[:0], it.Tenant, it.Key)
		v, found, err := r.raw(kbuf)
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		res[i].Held = hashtree.VersionHash(v)
		if res[i].Held != it.Hash {
			continue
		}
		if err := b.Delete(kbuf, nil); err != nil {
			return nil, fmt.Errorf("reap: batch: %w", err)
		}
		res[i].Reaped = true
	}
	if b.Empty() {
		return res, nil
	}
	opts := e.writeOpts()
	if err := b.Commit(opts); err != nil {
		return nil, fmt.Errorf("reap: commit: %w", err)
	}
	for i, r := range res { // the partitions' hash trees are stale (ae.go)
		if r.Reaped {
			e.bumpGen(ring.Partition(items[i].Tenant, items[i].Key, e.q))
		}
	}
	return res, nil
}

// raw returns the stored bytes at k (aliasing the iterator until its next
// use) and whether k holds anything.
func (r *reader) raw(k []byte) ([]byte, bool, error) {
	if !r.it.SeekPrefixGE(k) || !bytes.Equal(r.it.Key(), k) {
		if err := r.it.Error(); err != nil {
			return nil, false, fmt.Errorf("read: %w", err)
		}
		return nil, false, nil
	}
	v, err := r.it.ValueAndErr()
	if err != nil {
		return nil, false, fmt.Errorf("read: %w", err)
	}
	return v, true, nil
}

// heldHashes answers a confirmation: the hash of what each item's key
// stores (zero: nothing).
func (e *engine) heldHashes(items []subjects.ReapItem) ([]subjects.ReapResult, error) {
	res := make([]subjects.ReapResult, len(items))
	r, err := e.newReader()
	if err != nil {
		return nil, err
	}
	defer r.close()
	var kbuf []byte
	for i, it := range items {
		kbuf = e.dataKey(kbuf[:0], it.Tenant, it.Key)
		v, found, err := r.raw(kbuf)
		if err != nil {
			return nil, err
		}
		if found {
			res[i].Held = hashtree.VersionHash(v)
		}
	}
	return res, nil
}

// handleReap answers a ReapRequest (subjects.NodeOpReap).
func (n *Node) handleReap(m *nats.Msg) {
	var req subjects.ReapRequest
	derr := wire.CheckMsgpack(m.Data) // the library allocates declared lengths up front
	if derr == nil {
		derr = msgpack.Unmarshal(m.Data, &req)
	}
	if derr != nil || !subjects.NodeProtocolSupported(req.Proto) {
		n.respondError(m, fmt.Sprintf("bad reap request (proto %d, accepted %d..%d): %v", req.Proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion, derr))
		return
	}
	if req.Partitions != n.eng.q {
		n.respondError(m, fmt.Sprintf("reap asks with %d partitions; node %s is laid out in %d", req.Partitions, n.cfg.NodeID, n.eng.q))
		return
	}
	if err := n.eng.checkPartition(req.Partition); err != nil {
		n.respondError(m, err.Error())
		return
	}
	for _, it := range req.Items {
		if err := subjects.ValidateTenantID(it.Tenant); err != nil {
			n.respondError(m, fmt.Sprintf("reap item: %v", err))
			return
		}
		if len(it.Key) == 0 || len(it.Key) > subjects.MaxKeyBytes {
			n.respondError(m, fmt.Sprintf("reap item: key of %d bytes", len(it.Key)))
			return
		}
		if got := ring.Partition(it.Tenant, it.Key, n.eng.q); got != req.Partition {
			n.respondError(m, fmt.Sprintf("reap item %s/%q is in partition %d, not %d", it.Tenant, it.Key, got, req.Partition))
			return
		}
	}
	pm := n.pmap.Load()
	if have := n.mapVersion(); req.MapVersion > have {
		n.kickMap()
		n.respondKind(m, subjects.KindMapBehind, fmt.Sprintf("reap names map version %d; node %s has %d: retry shortly", req.MapVersion, n.cfg.NodeID, have))
		return
	}
	if pm == nil || !slices.Contains(pm.Owners(req.Partition, nil), n.cfg.NodeID) || pm.Moving(req.Partition) {
		n.respondKind(m, subjects.KindNotOwner, fmt.Sprintf("node %s is not a current owner of partition %d, or it moves", n.cfg.NodeID, req.Partition))
		return
	}
	if n.rebuildingPartition(req.Partition) {
		// It may not hold yet what it will pull: it cannot confirm.
		n.respondKind(m, subjects.KindRebuilding, fmt.Sprintf("node %s is rebuilding partition %d", n.cfg.NodeID, req.Partition))
		return
	}
	var (
		res []subjects.ReapResult
		err error
	)
	if req.Commit {
		j := &localWrite{reap: &reapJob{items: req.Items}}
		ctx, cancel := context.WithTimeout(context.Background(), reapTimeout)
		err = n.submit(ctx, j)
		cancel()
		if err == nil {
			res, err = j.reap.results, j.reap.err
		}
		reaped := 0
		for _, r := range res {
			if r.Reaped {
				reaped++
			}
		}
		n.metrics.Reaped(metrics.ReapTombstone, reaped)
	} else {
		n.readMu.RLock()
		if n.readsClosed {
			err = errStopping
		} else {
			res, err = n.eng.heldHashes(req.Items)
		}
		n.readMu.RUnlock()
	}
	if err != nil {
		if errors.Is(err, errStopping) {
			return // the reaper counts no answer as no confirmation
		}
		n.respondKind(m, subjects.KindInternal, err.Error())
		return
	}
	data, err := msgpack.Marshal(&subjects.ReapReply{Results: res})
	if err != nil {
		n.respondKind(m, subjects.KindInternal, fmt.Sprintf("encode reap reply: %v", err))
		return
	}
	if err := m.Respond(data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		n.log.Warn("reap reply failed", "err", err)
	}
}

// reapLoop runs a reaping pass over every partition this node currently
// owns every Config.ReapInterval, until ctx ends. Each pass asks for the
// tenant list again when a tenant changed since (tenantGraces), which also
// keeps the directory's grace floor current (rebuild.go): a grace lowered
// is recorded by the pass that first reaps by it.
func (n *Node) reapLoop(ctx context.Context) {
	every(ctx, n.cfg.ReapInterval, func() { n.reapPass(ctx) })
}

// reapPass reaps every partition this node is a current owner of, and
// returns the keys reaped.
func (n *Node) reapPass(ctx context.Context) int {
	m := n.pmap.Load()
	if m == nil {
		return 0
	}
	total := 0
	for p := range uint32(n.eng.q) {
		if ctx.Err() != nil {
			return total
		}
		if m.Moving(p) || !slices.Contains(m.Owners(p, nil), n.cfg.NodeID) {
			continue
		}
		k, err := n.reapPartition(ctx, p)
		total += k
		if err != nil && ctx.Err() == nil {
			n.log.Warn("reap: partition pass failed", "partition", p, "err", err)
		}
	}
	// Keys reaped a few per partition add up: compact the span of the
	// partitions they were in, once per pass.
	if lo, hi, ok := n.reapCounts.takeAll(reapCompactAt); ok {
		if err := n.compactPartitions(ctx, lo, hi); err != nil && ctx.Err() == nil {
			n.log.Warn("reap: compaction failed", "err", err)
		}
	}
	return total
}
