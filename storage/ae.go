package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/hashtree"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Anti-entropy (issue 15; docs/ARCHITECTURE.md, "Anti-entropy"). Every
// Config.AntiEntropyInterval the node compares each partition it owns
// (and that is not moving) with the other current owners after it in the
// partition's row, over the tenants whose RF includes both (D2), and
// merges what differs both ways.
//
// Trees are not kept on the write path. The write loop only bumps the
// partition's generation (engine.gens) after a commit that changed it; a
// tree for (partition, tenant set, config) is built from one Pebble
// iterator scan with hashtree.Build and cached with the generation read
// before the scan began. It is reused while the generation is unchanged,
// so an idle cluster scans nothing (D1).
//
// An exchange is request-reply on kv.node.<peer>.ae (subjects.AERequest):
// the roots of many partitions in one request, then hashtree.Diff with the
// peer as a Source (children), the keys and version hashes of the
// differing buckets (keys), the records this node lacks or holds
// differently (records), merged through its write loop, and its own
// records the peer lacks or holds differently pushed as merges (push),
// which the peer answers with how many it changed. Records are merged,
// never stored as sent: LWW max, DVV sync.

// Tree shapes (D1): 16-way, 2 levels (256 leaves) for a partition of
// fewer than aeDeepKeys keys in the tenant set, else 3 (4096 leaves).
const (
	aeFanOut   = 16
	aeDeepKeys = 16384
)

// aeTimeout bounds one AE request-reply. A responder builds the trees a
// roots request names (at most aeChunk) before it answers, paced by its
// own rate: 2 minutes are ~2 GiB at the default rate.
const aeTimeout = 2 * time.Minute

// aeMaxTrees bounds the cached (partition, tenant set, config) keys; past
// it, arbitrary ones are dropped (a dropped tree costs one scan when it
// is asked for again). Each keeps its last aeKeepTrees trees, so that an
// exchange that began on the older one can descend it while a newer one
// is served to the next.
const (
	aeMaxTrees  = 4096
	aeKeepTrees = 2
)

// Per-request bounds a responder enforces.
const (
	// aeMaxLeaves is the largest tree shape a request may ask for (the
	// initiator's largest, 16-way × 3 levels); aeMaxRootLeaves bounds the
	// leaves of all the trees one roots request makes the responder build
	// (256 partitions at the largest shape, 4096 at 16 × 2; a pass asks
	// aeChunk at a time).
	aeMaxLeaves     = 4096
	aeMaxRootLeaves = 1 << 20
	aeMaxKeys       = 10_000 // records: keys per request
	aeMaxBuckets    = 1024   // keys: buckets per request the sender asks
)

// aeState is the node's anti-entropy state.
type aeState struct {
	limit *limiter // paces scans and records sent (Config.AntiEntropyRate)

	mu    sync.Mutex
	trees map[treeKey][]*aeTree // newest first, at most aeKeepTrees

	builds                               atomic.Int64 // trees built from a scan
	exchanges, repaired, bytes, failures atomic.Int64
	lastPass                             atomic.Int64   // unix ms
	lastLog                              atomic.Int64   // unix nanos of the last failure logged at Info
	partPass                             []atomic.Int64 // per partition: unix ms of its last clean pass
}

type treeKey struct {
	p       uint32
	tenants string // joined by 0x00
	cfg     hashtree.Config
}

// aeTree is a cached tree and the generation of its partition when its
// scan began. Its mutex serialises readers: even a clean Tree writes
// on a read (it flushes dirty nodes first).
type aeTree struct {
	mu  sync.Mutex
	gen uint64
	t   *hashtree.Tree
}

func (a *aeTree) root() hashtree.Hash {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.t.Root()
}

// aeLocal is a cached tree as one side of hashtree.Diff.
type aeLocal struct{ t *aeTree }

func (s aeLocal) Config() hashtree.Config { return s.t.t.Config() }

func (s aeLocal) Root() (hashtree.Hash, error) { return s.t.root(), nil }

func (s aeLocal) Children(dst []hashtree.Hash, l int, parents []uint32) ([]hashtree.Hash, error) {
	s.t.mu.Lock()
	defer s.t.mu.Unlock()
	return s.t.t.Children(dst, l, parents)
}

// TreeBuilds is how many hash trees the node built from a scan for
// anti-entropy since it started (an idle node builds none); trees built
// for a transfer's reconcile are not counted.
func (n *Node) TreeBuilds() int64 { return n.ae.builds.Load() }

// AntiEntropy returns the node's anti-entropy figures; nil when
// anti-entropy is off (Config.AntiEntropyInterval 0).
func (n *Node) AntiEntropy() *subjects.AEStatus {
	if n.cfg.AntiEntropyInterval <= 0 {
		return nil
	}
	st := &subjects.AEStatus{
		Exchanges:    n.ae.exchanges.Load(),
		KeysRepaired: n.ae.repaired.Load(),
		Bytes:        n.ae.bytes.Load(),
		Errors:       n.ae.failures.Load(),
	}
	if ms := n.ae.lastPass.Load(); ms > 0 {
		st.LastPass = time.UnixMilli(ms).UTC()
	}
	if m := n.pmap.Load(); m != nil && len(n.ae.partPass) == m.Partitions() {
		oldest, owned := int64(0), false
		for p := range uint32(m.Partitions()) {
			if !slices.Contains(m.Owners(p, nil), n.cfg.NodeID) {
				continue
			}
			ms := n.ae.partPass[p].Load()
			if ms == 0 {
				return st // one never passed: no oldest yet
			}
			if !owned || ms < oldest {
				oldest, owned = ms, true
			}
		}
		if owned {
			st.OldestPartitionPass = time.UnixMilli(oldest).UTC()
		}
	}
	return st
}

// aeConfig is the tree shape for a partition of keys keys (D1).
func aeConfig(keys int) hashtree.Config {
	if keys < aeDeepKeys {
		return hashtree.Config{FanOut: aeFanOut, Depth: 2}
	}
	return hashtree.Config{FanOut: aeFanOut, Depth: 3}
}

// tree returns the tree of partition p over tenants (sorted) of shape
// cfg at p's current generation: the cached one when it is of that
// generation, else one built now from a scan.
func (n *Node) tree(ctx context.Context, p uint32, tenants []string, cfg hashtree.Config) (*aeTree, error) {
	return n.treeFor(ctx, p, tenants, cfg, false)
}

// treeFor is tree; xfer builds it for a transfer's reconcile (a source
// answering subjects.AERequest.Transfer), unpaced by the anti-entropy
// rate and not counted in its figures (scanTenants).
func (n *Node) treeFor(ctx context.Context, p uint32, tenants []string, cfg hashtree.Config, xfer bool) (*aeTree, error) {
	k := treeKey{p: p, tenants: strings.Join(tenants, "\x00"), cfg: cfg}
	n.ae.mu.Lock()
	ts := n.ae.trees[k]
	n.ae.mu.Unlock()
	if len(ts) > 0 && ts[0].gen == n.eng.gen(p) {
		return ts[0], nil
	}
	g := n.eng.gen(p) // before the scan: a write the scan may miss bumps it
	t, err := n.buildTree(ctx, p, tenants, cfg, xfer)
	if err != nil {
		return nil, err
	}
	at := &aeTree{gen: g, t: t}
	n.ae.mu.Lock()
	defer n.ae.mu.Unlock()
	if n.ae.trees == nil {
		n.ae.trees = map[treeKey][]*aeTree{}
	}
	for old := range n.ae.trees {
		if len(n.ae.trees) < aeMaxTrees {
			break
		}
		delete(n.ae.trees, old)
	}
	ts = n.ae.trees[k]
	if len(ts) > 0 && ts[0].gen > g {
		return at, nil // a newer one was built meanwhile: keep it first
	}
	n.ae.trees[k] = append([]*aeTree{at}, ts[:min(len(ts), aeKeepTrees-1)]...)
	return at, nil
}

// treeWithRoot returns the cached tree of (p, tenants, cfg) whose root is
// root, nil when none is kept.
func (n *Node) treeWithRoot(p uint32, tenants []string, cfg hashtree.Config, root hashtree.Hash) *aeTree {
	k := treeKey{p: p, tenants: strings.Join(tenants, "\x00"), cfg: cfg}
	n.ae.mu.Lock()
	ts := slices.Clone(n.ae.trees[k])
	n.ae.mu.Unlock()
	for _, at := range ts {
		if at.root() == root {
			return at
		}
	}
	return nil
}

// scanTenants calls f with every (tenant, key, stored record) of
// partition p of the given tenants (sorted), from one iterator, pacing
// by the anti-entropy rate and counting the bytes in its figures, unless
// xfer: a transfer's reconcile scans unpaced, as a partition scan for a
// transfer is (the receiver paces what it fetches). key and value alias
// the iterator: copy them to keep them.
func (n *Node) scanTenants(ctx context.Context, p uint32, tenants []string, xfer bool, f func(tenant string, key, value []byte) bool) error {
	lo, hi := partitionBounds(p)
	it, err := n.eng.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("scan partition %d: %w", p, err)
	}
	defer it.Close()
	pending := 0
	flush := func() error {
		if pending == 0 || xfer {
			pending = 0
			return nil
		}
		n.ae.bytes.Add(int64(pending))
		n.metrics.AEBytes(pending)
		_, err := n.ae.limit.wait(ctx, pending)
		pending = 0
		return err
	}
	for _, t := range tenants {
		tlo := append(append(appendPartitionPrefix(nil, p), t...), 0)
		thi := append(append(appendPartitionPrefix(nil, p), t...), 1)
		for ok := it.SeekGE(tlo); ok && bytes.Compare(it.Key(), thi) < 0; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return fmt.Errorf("scan partition %d: %w", p, err)
			}
			if pending += len(it.Key()) + len(v); pending >= 64<<10 {
				if err := flush(); err != nil {
					return err
				}
			}
			if !f(t, it.Key()[len(tlo):], v) {
				return flush()
			}
		}
		if err := it.Error(); err != nil {
			return fmt.Errorf("scan partition %d: %w", p, err)
		}
	}
	return flush()
}

// buildTree builds the tree of partition p over tenants from a scan,
// streamed into hashtree.Build.
func (n *Node) buildTree(ctx context.Context, p uint32, tenants []string, cfg hashtree.Config, xfer bool) (*hashtree.Tree, error) {
	var scanErr error
	t, err := hashtree.Build(cfg, func(yield func(hashtree.Entry) bool) {
		scanErr = n.scanTenants(ctx, p, tenants, xfer, func(t string, key, value []byte) bool {
			return yield(hashtree.Entry{Tenant: t, Key: string(key), Version: hashtree.VersionHash(value)})
		})
	})
	if err == nil {
		err = scanErr
	}
	if err != nil {
		return nil, fmt.Errorf("build tree of partition %d: %w", p, err)
	}
	if !xfer {
		n.ae.builds.Add(1)
	}
	return t, nil
}

// bucketEntries returns the keys of partition p over tenants whose leaf
// bucket (of cfg) is in buckets, with their version hashes, by bucket;
// xfer as scanTenants.
func (n *Node) bucketEntries(ctx context.Context, p uint32, tenants []string, cfg hashtree.Config, buckets []uint32, xfer bool) (map[uint32][]subjects.AEEntry, error) {
	want := make(map[uint32]bool, len(buckets))
	for _, b := range buckets {
		want[b] = true
	}
	leaves := cfg.Leaves()
	out := map[uint32][]subjects.AEEntry{}
	err := n.scanTenants(ctx, p, tenants, xfer, func(t string, key, value []byte) bool {
		k := string(key)
		b := uint32(hashtree.BucketOf(ring.KeyHash(t, k), leaves))
		if want[b] {
			out[b] = append(out[b], subjects.AEEntry{Tenant: t, Key: k, Version: hashtree.VersionHash(value)})
		}
		return true
	})
	return out, err
}

// aeEntrySize estimates an entry's bytes in a keys reply.
func aeEntrySize(e *subjects.AEEntry) int { return 24 + len(e.Tenant) + len(e.Key) }

// handleAE answers one anti-entropy request (subjects.AERequest).
func (n *Node) handleAE(m *nats.Msg) {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return
	}
	rep, kind, err := n.serveAE(m.Data)
	if err != nil {
		if kind == subjects.KindInvalid {
			n.respondError(m, err.Error())
		} else {
			n.respondKind(m, kind, err.Error())
		}
		return
	}
	data, err := msgpack.Marshal(rep)
	if err != nil {
		n.respondKind(m, subjects.KindInternal, fmt.Sprintf("encode anti-entropy reply: %v", err))
		return
	}
	if err := m.Respond(data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		n.log.Warn("anti-entropy reply failed", "err", err)
	}
}

// serveAE decodes, checks and answers an AE request; on error it says
// which error kind to answer.
func (n *Node) serveAE(data []byte) (*subjects.AEReply, string, error) {
	var req subjects.AERequest
	// The library allocates a container's declared length up front: a
	// few bytes could ask for hundreds of gigabytes (FuzzServeAE).
	if err := wire.CheckMsgpack(data); err != nil {
		return nil, subjects.KindInvalid, fmt.Errorf("bad anti-entropy request: %w", err)
	}
	if err := msgpack.Unmarshal(data, &req); err != nil {
		return nil, subjects.KindInvalid, fmt.Errorf("bad anti-entropy request: %w", err)
	}
	if !subjects.NodeProtocolSupported(req.Proto) {
		return nil, subjects.KindInvalid, fmt.Errorf("bad anti-entropy request: proto %d, accepted %d..%d", req.Proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion)
	}
	if req.Partitions != n.eng.q {
		return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy request with %d partitions; node %s is laid out in %d", req.Partitions, n.cfg.NodeID, n.eng.q)
	}
	if len(req.Tenants) == 0 {
		return nil, subjects.KindInvalid, errors.New("anti-entropy request names no tenant")
	}
	if err := checkTenantFilter(req.Tenants); err != nil {
		return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy request: %w", err)
	}
	cfg := hashtree.Config{FanOut: req.Config.FanOut, Depth: req.Config.Depth}
	if err := cfg.Validate(); err != nil {
		return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy request: %w", err)
	}
	if cfg.Leaves() > aeMaxLeaves {
		// Trees are built and cached per request: a shape this large
		// (up to 21 MB a tree) times the partitions asked would exhaust
		// the node's memory (found by FuzzServeAE).
		return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy request: trees of %d leaves (at most %d)", cfg.Leaves(), aeMaxLeaves)
	}
	if req.MapVersion == 0 {
		return nil, subjects.KindInvalid, errors.New("anti-entropy request names no map version")
	}
	if have := n.mapVersion(); req.MapVersion > have {
		n.kickMap()
		return nil, subjects.KindMapBehind, fmt.Errorf("anti-entropy request names map version %d; node %s has %d: retry shortly", req.MapVersion, n.cfg.NodeID, have)
	}
	pm := n.pmap.Load()
	if pm == nil { // unreachable: MapVersion > 0 = the version of no map
		return nil, subjects.KindNotOwner, fmt.Errorf("%s: node %s has no placement map yet", subjects.KindNotOwner, n.cfg.NodeID)
	}
	owner := func(p uint32) (string, error) {
		if err := n.eng.checkPartition(p); err != nil {
			return subjects.KindInvalid, fmt.Errorf("anti-entropy request: %w", err)
		}
		if !slices.Contains(pm.Owners(p, nil), n.cfg.NodeID) {
			return subjects.KindNotOwner, fmt.Errorf("%s: node %s is not a current owner of partition %d at map version %d", subjects.KindNotOwner, n.cfg.NodeID, p, pm.Version())
		}
		if req.Transfer && n.rebuildingPartition(p) {
			// As for a transfer's scan (handleScan): an incomplete copy
			// must not count toward a receiver's coverage. A rebuild's
			// reconcile falls back to its pull, which is answered.
			return subjects.KindRebuilding, fmt.Errorf("node %s is rebuilding partition %d: ask its other owners", n.cfg.NodeID, p)
		}
		return "", nil
	}
	ctx := n.runCtx
	var rep subjects.AEReply
	switch req.Op {
	case subjects.AEOpRoots:
		if len(req.Parts) == 0 || len(req.Parts) > subjects.AEMaxParts {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy roots of %d partitions (1..%d)", len(req.Parts), subjects.AEMaxParts)
		}
		if len(req.Parts)*cfg.Leaves() > aeMaxRootLeaves {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy roots of %d partitions of %d leaves each: at most %d leaves in all", len(req.Parts), cfg.Leaves(), aeMaxRootLeaves)
		}
		for _, p := range req.Parts {
			if kind, err := owner(p); err != nil {
				return nil, kind, err
			}
		}
		rep.Hashes = make([][2]uint64, len(req.Parts))
		for i, p := range req.Parts {
			at, err := n.treeFor(ctx, p, req.Tenants, cfg, req.Transfer)
			if err != nil {
				return nil, subjects.KindInternal, err
			}
			rep.Hashes[i] = at.root()
		}
	case subjects.AEOpChildren:
		if kind, err := owner(req.Partition); err != nil {
			return nil, kind, err
		}
		at := n.treeWithRoot(req.Partition, req.Tenants, cfg, req.Root)
		if at == nil {
			// Not kept (evicted, a restart): the current tree may still be it.
			cur, err := n.treeFor(ctx, req.Partition, req.Tenants, cfg, req.Transfer)
			if err != nil {
				return nil, subjects.KindInternal, err
			}
			if cur.root() == req.Root {
				at = cur
			}
		}
		if at == nil {
			return nil, subjects.KindConflict, fmt.Errorf("anti-entropy children: node %s no longer holds the tree of partition %d with that root (it changed since): retry the exchange", n.cfg.NodeID, req.Partition)
		}
		at.mu.Lock()
		hs, err := at.t.Children(nil, req.Level, req.Indices)
		at.mu.Unlock()
		if err != nil {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy children: %w", err)
		}
		rep.Hashes = make([][2]uint64, len(hs))
		for i, h := range hs {
			rep.Hashes[i] = h
		}
	case subjects.AEOpKeys:
		if kind, err := owner(req.Partition); err != nil {
			return nil, kind, err
		}
		if len(req.Indices) == 0 || len(req.Indices) > cfg.Leaves() {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy keys of %d buckets (1..%d)", len(req.Indices), cfg.Leaves())
		}
		for _, b := range req.Indices {
			if b >= uint32(cfg.Leaves()) {
				return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy keys: bucket %d out of %d", b, cfg.Leaves())
			}
		}
		byBucket, err := n.bucketEntries(ctx, req.Partition, req.Tenants, cfg, req.Indices, req.Transfer)
		if err != nil {
			return nil, subjects.KindInternal, err
		}
		size := 0
		for _, b := range req.Indices {
			es := byBucket[b]
			s := 0
			for i := range es {
				s += aeEntrySize(&es[i])
			}
			if size+s > n.replyLimit && rep.Done > 0 {
				break
			}
			if s > n.replyLimit {
				return nil, subjects.KindTooLarge, fmt.Errorf("bucket %d of partition %d lists %d bytes of keys, more than one message carries (%d)", b, req.Partition, s, n.replyLimit)
			}
			size += s
			rep.Entries = append(rep.Entries, es...)
			delete(byBucket, b) // a bucket asked twice is listed once
			rep.Done++
		}
	case subjects.AEOpRecords:
		if kind, err := owner(req.Partition); err != nil {
			return nil, kind, err
		}
		if len(req.Keys) == 0 || len(req.Keys) > aeMaxKeys {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy records of %d keys (1..%d)", len(req.Keys), aeMaxKeys)
		}
		for _, k := range req.Keys {
			if err := n.aeKeyOK(req.Partition, req.Tenants, k.Tenant, k.Key); err != nil {
				return nil, subjects.KindInvalid, err
			}
		}
		r, err := n.eng.newReader()
		if err != nil {
			return nil, subjects.KindInternal, err
		}
		defer r.close()
		size := 0
		for _, k := range req.Keys {
			r.kbuf = appendDataKey(r.kbuf[:0], req.Partition, k.Tenant, k.Key)
			found := r.it.SeekPrefixGE(r.kbuf) && bytes.Equal(r.it.Key(), r.kbuf)
			if err := r.it.Error(); err != nil {
				return nil, subjects.KindInternal, fmt.Errorf("read: %w", err)
			}
			if found {
				v, err := r.it.ValueAndErr()
				if err != nil {
					return nil, subjects.KindInternal, fmt.Errorf("read: %w", err)
				}
				s := len(k.Tenant) + len(k.Key) + len(v) + scanRecordOverhead
				if size+s > n.replyLimit && rep.Done > 0 {
					break
				}
				if s > n.replyLimit {
					return nil, subjects.KindTooLarge, fmt.Errorf("record %s/%q of partition %d is %d bytes, more than one message carries (%d): delete it without a context", k.Tenant, k.Key, req.Partition, len(v), n.replyLimit)
				}
				size += s
				rep.Records = append(rep.Records, subjects.PartitionRecord{Tenant: k.Tenant, Key: k.Key, State: bytes.Clone(v)})
			}
			rep.Done++
		}
		if !req.Transfer { // a transfer's receiver paces and counts these
			n.ae.bytes.Add(int64(size))
			n.metrics.AEBytes(size)
			if _, err := n.ae.limit.wait(ctx, size); err != nil {
				return nil, subjects.KindUnavailable, err
			}
		}
	case subjects.AEOpPush:
		if kind, err := owner(req.Partition); err != nil {
			return nil, kind, err
		}
		if len(req.Records) == 0 || len(req.Records) > aeMaxKeys {
			return nil, subjects.KindInvalid, fmt.Errorf("anti-entropy push of %d records (1..%d)", len(req.Records), aeMaxKeys)
		}
		items, err := n.aeWrites(req.Partition, req.Tenants, req.Records)
		if err != nil {
			return nil, subjects.KindInvalid, err
		}
		changed, err := n.mergeLocal(ctx, items)
		if err != nil {
			return nil, subjects.KindUnavailable, err
		}
		rep.Changed = changed
	default:
		return nil, subjects.KindInvalid, fmt.Errorf("unknown anti-entropy op %q", req.Op)
	}
	return &rep, "", nil
}

// aeKeyOK reports why (tenant, key) cannot be named in an exchange of
// partition p over tenants.
func (n *Node) aeKeyOK(p uint32, tenants []string, tenant, key string) error {
	if _, ok := slices.BinarySearch(tenants, tenant); !ok {
		return fmt.Errorf("anti-entropy: key %s/%q of a tenant outside the exchange", tenant, key)
	}
	if key == "" || len(key) > subjects.MaxKeyBytes || ring.Partition(tenant, key, n.eng.q) != p {
		return fmt.Errorf("anti-entropy: %s/%q is not a key of partition %d", tenant, key, p)
	}
	return nil
}

// aeWrites turns records of an exchange of partition p into merges,
// refusing records outside it or whose state does not decode.
func (n *Node) aeWrites(p uint32, tenants []string, recs []subjects.PartitionRecord) ([]subjects.NodeWrite, error) {
	items := make([]subjects.NodeWrite, len(recs))
	for i, r := range recs {
		if err := n.aeKeyOK(p, tenants, r.Tenant, r.Key); err != nil {
			return nil, err
		}
		rec, err := decodeRecordCopy(r.State, false)
		if err != nil || (rec.LWW == nil) == (rec.DVV == nil) {
			return nil, fmt.Errorf("anti-entropy: bad state of %s/%q: %v", r.Tenant, r.Key, err)
		}
		items[i] = subjects.NodeWrite{ID: uint64(i), Tenant: r.Tenant, Key: r.Key, LWW: rec.LWW, DVV: rec.DVV}
	}
	return items, nil
}

// mergeLocal merges items through the write loop and returns how many
// changed what the node stored. A key holding the other policy's
// versions is skipped (logged); any other item error fails the call,
// which still returns the count of the items that changed (the batch
// committed them).
func (n *Node) mergeLocal(ctx context.Context, items []subjects.NodeWrite) (int, error) {
	j := &localWrite{items: items, changed: make([]bool, len(items))}
	if err := n.submit(ctx, j); err != nil {
		return 0, err
	}
	// The batch committed whatever merged: a failed item does not take
	// the others' changes out of the count.
	changed := 0
	var failed error
	for i := range j.results {
		switch r := &j.results[i]; r.Err {
		case "":
		case errPolicy:
			n.log.Warn("anti-entropy: record not merged", "tenant", items[i].Tenant, "key", items[i].Key, "err", r.Err)
		default:
			if failed == nil {
				failed = fmt.Errorf("anti-entropy: merge %s/%q: %s", items[i].Tenant, items[i].Key, r.Err)
			}
		}
		if j.changed[i] {
			changed++
		}
	}
	return changed, failed
}
