package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/quorumkv/quorumkv/hashtree"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// The initiating side of anti-entropy (see ae.go).

// DefaultAntiEntropyInterval and DefaultAntiEntropyRate are the
// anti-entropy pace unless Config says otherwise.
const (
	DefaultAntiEntropyInterval = 5 * time.Minute
	DefaultAntiEntropyRate     = 16 << 20
)

// aeLoop runs a pass every Config.AntiEntropyInterval until ctx ends.
func (n *Node) aeLoop(ctx context.Context) {
	every(ctx, n.cfg.AntiEntropyInterval, func() {
		n.aePass(ctx)
		if n.cfg.ReapInterval == 0 && ctx.Err() == nil {
			// Reaping follows the pass that just compared every owned
			// partition with its other owners (reap.go confirms with
			// each owner again before it deletes anything).
			n.reapPass(ctx)
		}
	})
}

// every calls f each d (the first after d, not at once) until ctx ends;
// after a call longer than d the next follows at once (the ticker keeps
// one tick), never more than one.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		f()
	}
}

// aeTask is one partition this node compares with one peer.
type aeTask struct {
	p       uint32
	peer    string
	tenants []string
	cfg     hashtree.Config
	local   *aeTree
	// xfer: a transfer's reconcile (receive.go), not anti-entropy: only
	// fetch (never push), pace and count the records fetched as transfer.
	xfer bool
}

// aeTenantRFs returns the tenants' replication factors, asked for again
// when a tenant event arrived since the cached list; nil when unknown.
func (n *Node) aeTenantRFs(ctx context.Context) map[string]int {
	n.tenants.mu.Lock()
	refresh := !n.tenants.hasLoaded || n.tenants.events != n.tenants.loadedAt || n.tenants.rf == nil
	n.tenants.mu.Unlock()
	if refresh {
		n.refreshTenants(ctx)
	}
	n.tenants.mu.Lock()
	defer n.tenants.mu.Unlock()
	return n.tenants.rf
}

// aePairs returns the exchanges this node initiates for partition p of
// map m (D2): none when p moves or the node is not a current owner; else
// one per current owner j after the node's position i, over the tenants
// whose RF exceeds j (so both hold them), sorted.
func aePairs(m *ring.Map, p uint32, self string, rf map[string]int) []aeTask {
	if m.Moving(p) {
		return nil
	}
	owners := m.Owners(p, nil)
	i := slices.Index(owners, self)
	if i < 0 {
		return nil
	}
	var out []aeTask
	for j := i + 1; j < len(owners); j++ {
		var ts []string
		for t, r := range rf {
			if r > j {
				ts = append(ts, t)
			}
		}
		if len(ts) == 0 {
			continue
		}
		slices.Sort(ts)
		out = append(out, aeTask{p: p, peer: owners[j], tenants: ts})
	}
	return out
}

// aeChunk is how many partitions a pass takes at a time: their trees are
// built, their roots asked of each peer in one request, their exchanges
// run, then the reaper's hook is called for them. It bounds how stale a
// tree gets before it is compared and how long a roots request takes a
// responder that must build the trees first (paced by its rate).
const aeChunk = 64

// aePass compares every partition the node initiates exchanges for with
// its peers, aeChunk partitions at a time, calling afterExchange for each
// partition it owns (and that is not moving) once the partition's
// exchanges are over.
func (n *Node) aePass(ctx context.Context) {
	m := n.pmap.Load()
	if m == nil {
		return
	}
	rf := n.aeTenantRFs(ctx)
	if rf == nil {
		return // unknown tenants: skip the pass (D2)
	}
	q := uint32(m.Partitions())
	if len(n.ae.partPass) != int(q) {
		return // a map of another Q is never installed
	}
	for lo := uint32(0); lo < q; lo += aeChunk {
		hi := min(lo+aeChunk, q)
		failed := n.aeChunk(ctx, m, rf, lo, hi)
		if ctx.Err() != nil {
			return
		}
		now := time.Now().UnixMilli()
		for p := lo; p < hi; p++ {
			if !slices.Contains(m.Owners(p, nil), n.cfg.NodeID) || m.Moving(p) {
				continue
			}
			if !failed[p] {
				n.ae.partPass[p].Store(now)
			}
			if n.afterExchange != nil {
				n.afterExchange(ctx, p)
			}
		}
	}
	now := time.Now()
	n.ae.lastPass.Store(now.UnixMilli())
	n.metrics.AELastPass(now)
}

// aeChunk runs the exchanges of partitions lo..hi-1 and returns those of
// which one failed.
func (n *Node) aeChunk(ctx context.Context, m *ring.Map, rf map[string]int, lo, hi uint32) map[uint32]bool {
	failed := map[uint32]bool{}
	groups := map[string][]*aeTask{} // by peer, tenants and config
	var order []string
	for p := lo; p < hi; p++ {
		for _, t := range aePairs(m, p, n.cfg.NodeID, rf) {
			if ctx.Err() != nil {
				return failed
			}
			// The shape follows this side's key count (D1); a
			// depth-2 tree tells whether a depth-3 one is needed.
			cfg := aeConfig(0)
			at, err := n.tree(ctx, p, t.tenants, cfg)
			if err == nil && at.t.Len() >= aeDeepKeys {
				cfg = aeConfig(at.t.Len())
				at, err = n.tree(ctx, p, t.tenants, cfg)
			}
			if err != nil {
				n.aeFailed(ctx, "build tree", p, t.peer, err)
				failed[p] = true
				continue
			}
			t.cfg, t.local = cfg, at
			g := fmt.Sprintf("%s\x01%s\x01%d/%d", t.peer, strings.Join(t.tenants, "\x00"), cfg.FanOut, cfg.Depth)
			if _, ok := groups[g]; !ok {
				order = append(order, g)
			}
			groups[g] = append(groups[g], &t)
		}
	}
	for _, g := range order {
		if ctx.Err() != nil {
			break
		}
		for _, p := range n.aeExchangeGroup(ctx, m, groups[g]) {
			failed[p] = true
		}
	}
	return failed
}

// aeFailed counts and logs a failed exchange: at Info at most once every
// aeLogEvery (a peer down fails every exchange with it each pass), else
// at Debug.
func (n *Node) aeFailed(ctx context.Context, what string, p uint32, peer string, err error) {
	if ctx.Err() != nil {
		return
	}
	n.ae.failures.Add(1)
	now := time.Now().UnixNano()
	if last := n.ae.lastLog.Load(); now-last >= int64(aeLogEvery) && n.ae.lastLog.CompareAndSwap(last, now) {
		n.log.Info("anti-entropy exchange failed; retried next pass (errors counted in the node's status)", "step", what, "partition", p, "peer", peer, "err", err)
		return
	}
	n.log.Debug("anti-entropy exchange failed", "step", what, "partition", p, "peer", peer, "err", err)
}

const aeLogEvery = 10 * time.Second

// aeExchangeGroup compares tasks (one peer, tenant set and config) by
// one roots request, then exchanges each partition whose roots differ.
// It returns the partitions whose exchange failed.
func (n *Node) aeExchangeGroup(ctx context.Context, m *ring.Map, tasks []*aeTask) []uint32 {
	t0 := tasks[0]
	base := subjects.AERequest{
		Partitions: n.eng.q, MapVersion: m.Version(), Tenants: t0.tenants,
		Config: subjects.AEConfig{FanOut: t0.cfg.FanOut, Depth: t0.cfg.Depth},
	}
	roots := base
	roots.Op = subjects.AEOpRoots
	for _, t := range tasks {
		roots.Parts = append(roots.Parts, t.p)
	}
	var failed []uint32
	failAll := func(err error) []uint32 {
		for _, t := range tasks {
			n.aeFailed(ctx, "roots", t.p, t.peer, err)
			failed = append(failed, t.p)
		}
		return failed
	}
	rep, err := n.aeCall(ctx, t0.peer, &roots)
	if err != nil {
		return failAll(err)
	}
	if len(rep.Hashes) != len(tasks) {
		return failAll(fmt.Errorf("%d roots for %d partitions", len(rep.Hashes), len(tasks)))
	}
	for i, t := range tasks {
		n.ae.exchanges.Add(1)
		n.metrics.AEExchange()
		remote := hashtree.Hash(rep.Hashes[i])
		if remote == t.local.root() {
			continue
		}
		req := base
		req.Partition = t.p
		repaired, err := n.aeExchange(ctx, t, req, remote)
		n.ae.repaired.Add(int64(repaired))
		n.metrics.AERepaired(repaired)
		if err != nil {
			n.aeFailed(ctx, "exchange", t.p, t.peer, err)
			failed = append(failed, t.p)
		}
	}
	return failed
}

// aeRemote is a peer's tree as one side of hashtree.Diff.
type aeRemote struct {
	n    *Node
	ctx  context.Context
	peer string
	req  subjects.AERequest
	root hashtree.Hash
}

func (r *aeRemote) Config() hashtree.Config {
	return hashtree.Config{FanOut: r.req.Config.FanOut, Depth: r.req.Config.Depth}
}

func (r *aeRemote) Root() (hashtree.Hash, error) { return r.root, nil }

func (r *aeRemote) Children(dst []hashtree.Hash, l int, parents []uint32) ([]hashtree.Hash, error) {
	req := r.req
	req.Op, req.Level, req.Indices, req.Root = subjects.AEOpChildren, l, parents, r.root
	rep, err := r.n.aeCall(r.ctx, r.peer, &req)
	if err != nil {
		return dst, err
	}
	for _, h := range rep.Hashes {
		dst = append(dst, hashtree.Hash(h))
	}
	return dst, nil
}

// aeExchange repairs partition t.p with t.peer, whose root differs from
// the local one: it finds the differing buckets, lists their keys on both
// sides, fetches and merges the records the peer holds differently or
// alone, and pushes the local records the peer lacks or holds
// differently. It returns the (key, replica) pairs changed. With t.xfer
// it fetches only (the receiver of a transfer reconciling with a source:
// the source needs nothing of it), pacing by the node's transfer rate
// and counting the records fetched as received.
func (n *Node) aeExchange(ctx context.Context, t *aeTask, req subjects.AERequest, remoteRoot hashtree.Hash) (int, error) {
	buckets, _, err := hashtree.Diff(aeLocal{t.local}, &aeRemote{n: n, ctx: ctx, peer: t.peer, req: req, root: remoteRoot})
	if err != nil {
		return 0, fmt.Errorf("diff: %w", err)
	}
	if len(buckets) == 0 {
		return 0, nil
	}
	// The peer's keys of those buckets.
	leaves := uint32(t.cfg.Leaves())
	asked := make(map[uint32]bool, len(buckets))
	for _, b := range buckets {
		asked[b] = true
	}
	remote := map[string]hashtree.Hash{}
	for rest := buckets; len(rest) > 0; {
		kr := req
		kr.Op, kr.Indices = subjects.AEOpKeys, rest[:min(len(rest), aeMaxBuckets)]
		rep, err := n.aeCall(ctx, t.peer, &kr)
		if err != nil {
			return 0, err
		}
		if rep.Done <= 0 || rep.Done > len(kr.Indices) {
			return 0, fmt.Errorf("keys reply covers %d of %d buckets", rep.Done, len(kr.Indices))
		}
		for _, e := range rep.Entries {
			if err := n.aeKeyOK(t.p, t.tenants, e.Tenant, e.Key); err != nil {
				return 0, fmt.Errorf("keys reply: %w", err)
			}
			if b := uint32(hashtree.BucketOf(ring.KeyHash(e.Tenant, e.Key), int(leaves))); !asked[b] {
				return 0, fmt.Errorf("keys reply: %s/%q of bucket %d, not asked for", e.Tenant, e.Key, b)
			}
			remote[e.Tenant+"\x00"+e.Key] = e.Version
		}
		rest = rest[rep.Done:]
	}
	local, err := n.bucketEntries(ctx, t.p, t.tenants, t.cfg, buckets, t.xfer)
	if err != nil {
		return 0, err
	}
	var fetch, push []subjects.AEKey
	seen := map[string]bool{}
	for _, es := range local {
		for _, e := range es {
			k := e.Tenant + "\x00" + e.Key
			seen[k] = true
			if rv, ok := remote[k]; !ok || rv != e.Version {
				push = append(push, subjects.AEKey{Tenant: e.Tenant, Key: e.Key})
				if ok {
					fetch = append(fetch, subjects.AEKey{Tenant: e.Tenant, Key: e.Key})
				}
			}
		}
	}
	for k := range remote {
		if !seen[k] {
			tenant, key, _ := strings.Cut(k, "\x00")
			fetch = append(fetch, subjects.AEKey{Tenant: tenant, Key: key})
		}
	}
	repaired := 0
	// Fetch and merge what the peer holds differently or alone.
	for rest := fetch; len(rest) > 0; {
		rr := req
		rr.Op, rr.Keys = subjects.AEOpRecords, rest[:min(len(rest), aeMaxKeys)]
		rep, err := n.aeCall(ctx, t.peer, &rr)
		if err != nil {
			return repaired, err
		}
		if rep.Done <= 0 || rep.Done > len(rr.Keys) {
			return repaired, fmt.Errorf("records reply covers %d of %d keys", rep.Done, len(rr.Keys))
		}
		rest = rest[rep.Done:]
		if len(rep.Records) == 0 {
			continue
		}
		items, err := n.aeWrites(t.p, t.tenants, rep.Records)
		if err != nil {
			return repaired, fmt.Errorf("records reply: %w", err)
		}
		size := 0
		for _, r := range rep.Records {
			size += len(r.Tenant) + len(r.Key) + len(r.State) + scanRecordOverhead
		}
		lim := n.ae.limit
		if t.xfer {
			lim = n.xferLimit
		} else {
			n.ae.bytes.Add(int64(size))
			n.metrics.AEBytes(size)
		}
		if _, err := lim.wait(ctx, size); err != nil {
			return repaired, err
		}
		changed, err := n.mergeLocal(ctx, items)
		repaired += changed
		if err != nil {
			return repaired, err
		}
		if t.xfer {
			n.addProgress(int64(size), int64(len(items)))
		}
	}
	if t.xfer {
		return repaired, nil
	}
	// Push what the peer lacks or holds differently, as merged here.
	changed, err := n.aePush(ctx, t, req, push)
	return repaired + changed, err
}

// aePush sends the local records of keys to t.peer as merges, in
// requests below the reply limit, and returns how many it changed.
func (n *Node) aePush(ctx context.Context, t *aeTask, req subjects.AERequest, keys []subjects.AEKey) (int, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	r, err := n.eng.newReader()
	if err != nil {
		return 0, err
	}
	var recs []subjects.PartitionRecord
	for _, k := range keys {
		r.kbuf = appendDataKey(r.kbuf[:0], t.p, k.Tenant, k.Key)
		if !r.it.SeekPrefixGE(r.kbuf) || !bytes.Equal(r.it.Key(), r.kbuf) {
			continue // gone since the listing (a drop): nothing to push
		}
		v, err := r.it.ValueAndErr()
		if err != nil {
			r.close()
			return 0, fmt.Errorf("read: %w", err)
		}
		recs = append(recs, subjects.PartitionRecord{Tenant: k.Tenant, Key: k.Key, State: bytes.Clone(v)})
	}
	err = r.it.Error()
	r.close()
	if err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	changed, start, size := 0, 0, 0
	send := func(part []subjects.PartitionRecord) error {
		pr := req
		pr.Op, pr.Records = subjects.AEOpPush, part
		rep, err := n.aeCall(ctx, t.peer, &pr)
		if err != nil {
			return err
		}
		if rep.Changed < 0 || rep.Changed > len(part) {
			return fmt.Errorf("push reply counts %d changed of %d records", rep.Changed, len(part))
		}
		changed += rep.Changed
		return nil
	}
	for i, rec := range recs {
		s := len(rec.Tenant) + len(rec.Key) + len(rec.State) + scanRecordOverhead
		if i > start && (size+s > n.replyLimit || i-start >= aeMaxKeys) {
			if err := send(recs[start:i]); err != nil {
				return changed, err
			}
			start, size = i, 0
		}
		size += s
		n.ae.bytes.Add(int64(s))
		n.metrics.AEBytes(s)
		if _, err := n.ae.limit.wait(ctx, s); err != nil {
			return changed, err
		}
	}
	if start < len(recs) {
		if err := send(recs[start:]); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// aeCall sends req to peer's AE subject (storage/replica) and decodes
// the answer.
func (n *Node) aeCall(ctx context.Context, peer string, req *subjects.AERequest) (*subjects.AEReply, error) {
	rc, err := n.client()
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, aeTimeout)
	defer cancel()
	rep, _, err := rc.AntiEntropy(rctx, peer, req)
	if e := (*subjects.Error)(nil); errors.As(err, &e) && (e.Kind == subjects.KindMapBehind || e.Kind == subjects.KindNotOwner) {
		n.kickMap() // one of the two maps is behind: the next pass may agree
	}
	if err != nil {
		return nil, fmt.Errorf("anti-entropy %s on %s: %w", req.Op, peer, err)
	}
	return rep, nil
}
