package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// placement is one version of the cluster's placement map as the request
// path uses it: immutable once built, swapped atomically.
type placement struct {
	version uint64
	q       int       // the cluster's partition count; 0 until known
	m       *ring.Map // never nil; the zero Map (no owners) when no node is active
	nodes   int       // nodes m names (current or target rows)
	current int       // nodes in m's current rows: those reads and levels count on
	shares  map[string]subjects.NodeShare
}

// nodeCount returns how many storage nodes own partitions in the current
// rows (a joining node counts once its first partition flipped).
func (p *placement) nodeCount() int { return p.current }

func newPlacement(version uint64, q int, m *ring.Map) *placement {
	if m == nil {
		m = &ring.Map{}
	}
	p := &placement{version: version, q: q, m: m, nodes: len(m.Nodes()), current: len(m.CurrentNodes())}
	p.shares = make(map[string]subjects.NodeShare, p.nodes)
	if p.nodes == 0 {
		return p
	}
	r3 := min(3, m.Replicas())
	prim, rep, own := m.Load(1), m.Load(r3), m.Load(m.Replicas())
	for id := range own {
		p.shares[id] = subjects.NodeShare{
			Primaries: prim[id],
			Replicas:  rep[id],
			Owned:     own[id],
			Fraction:  float64(rep[id]) / float64(m.Partitions()*r3),
		}
	}
	return p
}

// routing holds the current placement map (DESIGN.md §3, issue 14). It
// loads it from the metadata store at start, every interval, and at once
// when refresh is signalled (a kv.v1.events.ring message), and it computes
// and stores the next map when the joining and active node set changed (reconcile).
type routing struct {
	store    metadata.Store
	log      *slog.Logger
	interval time.Duration
	// candidateQ is this coordinator's partition count for a new cluster;
	// the stored one wins (metadata.Store.Partitions).
	candidateQ int
	q          atomic.Int64 // the cluster's Q once read; 0 before
	current    atomic.Pointer[placement]
	kick       chan struct{}
	// claimMu keeps this process's reconciles one at a time; other
	// coordinators are kept apart by the store's optimistic locking.
	claimMu  sync.Mutex
	lastWarn string       // guarded by claimMu: warnOnce
	proto    atomic.Int32 // the negotiated node protocol (negotiate)
	// belowTTL lists the nodes of the map that registered a node protocol
	// below NodeProtocolTTL (negotiate), for the refusal of a put with a
	// TTL; nil when there are none.
	belowTTL atomic.Pointer[[]string]
	// flightMu guards flight, the reload that requests refused with
	// not_owner share (see reload).
	flightMu sync.Mutex
	flight   *reloadFlight
	failing  bool // owned by the loop goroutine: log an outage once
	// down reports whether a node is down (silent for a few heartbeats);
	// nil: none is. Set once before the loop starts.
	down func(metadata.Node) bool
}

func newRouting(store metadata.Store, log *slog.Logger, interval time.Duration, partitions int) *routing {
	r := &routing{store: store, log: log, interval: interval, candidateQ: partitions, kick: make(chan struct{}, 1)}
	r.current.Store(newPlacement(0, 0, nil))
	r.proto.Store(1)
	return r
}

// placement returns the current placement; never nil.
func (r *routing) placement() *placement { return r.current.Load() }

// refreshNow asks the loop to reload soon; it never blocks.
func (r *routing) refreshNow() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// partitions returns the cluster's Q, creating it from candidateQ if this
// is the first coordinator of a new cluster.
func (r *routing) partitions(ctx context.Context) (int, error) {
	if q := r.q.Load(); q > 0 {
		return int(q), nil
	}
	q, err := r.store.Partitions(ctx, r.candidateQ)
	if err != nil {
		return 0, err
	}
	if err := ring.ValidatePartitions(q); err != nil {
		return 0, fmt.Errorf("the metadata store's partition count: %w", err)
	}
	if q != r.candidateQ {
		r.log.Info("the cluster's partition count is fixed; ignoring this coordinator's setting", "partitions", q, "configured", r.candidateQ)
	}
	r.q.Store(int64(q))
	return q, nil
}

// install makes p current unless a newer version already is; versions
// only grow, so a slow load never brings back an older map.
func (r *routing) install(p *placement) {
	for {
		cur := r.current.Load()
		if cur.version >= p.version && cur.q != 0 {
			return
		}
		if r.current.CompareAndSwap(cur, p) {
			if cur.version != p.version {
				r.log.Info("placement map changed", "version", p.version, "nodes", p.nodes, "partitions", p.q)
			}
			return
		}
	}
}

// decodePlacement reads a stored record; cur is reused when it holds the
// same version.
func decodePlacement(rec metadata.Placement, q int, cur *placement) (*placement, error) {
	if cur != nil && cur.version == rec.Version && cur.q == q {
		return cur, nil
	}
	if len(rec.Map) == 0 {
		return newPlacement(rec.Version, q, nil), nil
	}
	m, err := ring.Decode(rec.Map)
	if err != nil {
		return nil, fmt.Errorf("placement map version %d: %w", rec.Version, err)
	}
	if m.Version() != rec.Version || m.Partitions() != q {
		return nil, fmt.Errorf("placement map version %d holds version %d with %d partitions; the cluster has %d",
			rec.Version, m.Version(), m.Partitions(), q)
	}
	return newPlacement(rec.Version, q, m), nil
}

// load reads the stored map and makes it current.
func (r *routing) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := r.partitions(ctx)
	if err != nil {
		return err
	}
	rec, err := r.store.GetPlacement(ctx)
	if errors.Is(err, metadata.ErrNotFound) {
		rec, err = metadata.Placement{}, nil
	}
	if err != nil {
		return err
	}
	prev := r.placement()
	p, err := decodePlacement(rec, q, prev)
	if err != nil {
		return err
	}
	if p != prev {
		// A new map may name nodes of another protocol: negotiate before
		// routing by it.
		nodes, err := r.store.ListNodes(ctx)
		if err != nil {
			return err
		}
		r.negotiate(p.m, nodes)
	}
	r.install(p)
	return nil
}

// reloadFlight is one map load that concurrent requests wait for.
type reloadFlight struct {
	done chan struct{} // closed when err is set
	err  error
}

// reload makes sure the current map is newer than version seen, the one a
// request was refused under (not_owner): it returns at once when it
// already is, and otherwise joins the load in flight or starts one, so a
// burst of refused requests costs one metadata read, not one each. The
// load runs on the calling request's goroutine, bounded by its ctx (and
// load's own 5s); a caller whose ctx ends stops waiting. A waiter whose
// leader's load failed (the leader's own time may have run out) tries
// once more itself. The result may still be seen (the store holds no
// newer map yet); the caller's retry bound covers that.
func (r *routing) reload(ctx context.Context, seen uint64) error {
	for attempt := 0; ; attempt++ {
		if r.placement().version > seen {
			return nil
		}
		r.flightMu.Lock()
		f := r.flight
		lead := f == nil
		if lead {
			f = &reloadFlight{done: make(chan struct{})}
			r.flight = f
		}
		r.flightMu.Unlock()
		if lead {
			f.err = r.load(ctx)
			r.flightMu.Lock()
			r.flight = nil
			r.flightMu.Unlock()
			close(f.done)
			return f.err
		}
		select {
		case <-f.done:
			if f.err == nil || attempt > 0 || ctx.Err() != nil {
				return f.err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// reconcileAttempts bounds how often a map change re-reads after losing a
// race to another coordinator's store of the same version.
const reconcileAttempts = 8

// mapChange computes the next map from the stored one (cur) and the node
// records read after it. It returns nil when nothing is to be stored; an
// error stops the change and is returned as is.
type mapChange func(cur *placement, nodes []metadata.Node) (*ring.Map, error)

// update is the one way a coordinator changes the stored placement map:
// it reads the map and then the node records, asks change for the next
// map, and stores it as the next version under optimistic locking,
// re-reading and asking again when another coordinator stored that
// version first. Either way the stored map becomes current here, and the
// node protocol is negotiated from the records read. It returns the map
// it left current, the node records, and whether this call stored it.
//
// The node records are read after the map: a change made before this call
// started is in them, so the map this call leaves behind accounts for it,
// whoever stores it.
func (r *routing) update(ctx context.Context, change mapChange) (*placement, []metadata.Node, bool, error) {
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := r.partitions(ctx)
	if err != nil {
		return nil, nil, false, err
	}
	for attempt := 0; ; attempt++ {
		rec, err := r.store.GetPlacement(ctx)
		if errors.Is(err, metadata.ErrNotFound) {
			rec, err = metadata.Placement{}, nil
		}
		if err != nil {
			return nil, nil, false, err
		}
		nodes, err := r.store.ListNodes(ctx)
		if err != nil {
			return nil, nil, false, err
		}
		cur, err := decodePlacement(rec, q, r.placement())
		if err != nil {
			return nil, nil, false, err
		}
		r.negotiate(cur.m, nodes)
		m, err := change(cur, nodes)
		if err != nil {
			r.install(cur)
			return cur, nodes, false, err
		}
		if m == nil {
			r.install(cur)
			return cur, nodes, false, nil
		}
		next := metadata.Placement{Version: rec.Version + 1}
		if m.Version() != next.Version {
			return nil, nil, false, fmt.Errorf("placement change made version %d; the next is %d", m.Version(), next.Version)
		}
		if next.Map, err = m.MarshalBinary(); err != nil {
			return nil, nil, false, err
		}
		if _, err := r.store.SetPlacement(ctx, next); err != nil {
			if errors.Is(err, metadata.ErrStale) && attempt+1 < reconcileAttempts {
				continue // another coordinator stored this version: build on it
			}
			return nil, nil, false, err
		}
		p := newPlacement(next.Version, q, m)
		r.install(p)
		r.negotiate(m, nodes)
		return p, nodes, true, nil
	}
}

// inTarget reports whether a node of this status belongs in the
// placement map's target (DESIGN.md §3: the joining and active nodes).
func inTarget(status string) bool {
	return status == metadata.NodeJoining || status == metadata.NodeActive
}

// desiredNodes returns the ids of the nodes that belong in the target,
// sorted (ListNodes sorts).
func desiredNodes(nodes []metadata.Node) []string {
	var ids []string
	for _, n := range nodes {
		if inTarget(n.Status) {
			ids = append(ids, n.ID)
		}
	}
	return ids
}

// retargetTo returns the next version of cur heading for a target claimed
// for ids (ring.Claim from cur's target map: balanced, moving the least).
// A new cluster (no owners yet) takes it at once, and so does a cluster
// without tenants (noData): no key can have been written, so there is
// nothing to stream (a cluster's nodes starting together all become active
// before its first tenant).
func retargetTo(cur *placement, ids []string, noData bool) (*ring.Map, error) {
	ns := make([]ring.Node, len(ids))
	for i, id := range ids {
		ns[i] = ring.Node{ID: id}
	}
	var prev *ring.Map
	if cur.nodes > 0 {
		prev = cur.m.TargetMap()
	}
	target, err := ring.Claim(prev, ns, cur.q)
	if err != nil {
		return nil, fmt.Errorf("claim placement: %w", err)
	}
	from := cur.m
	if noData {
		from = &ring.Map{}
	}
	next, err := from.Retarget(target, cur.version+1)
	if err != nil {
		return nil, fmt.Errorf("retarget placement: %w", err)
	}
	return next, nil
}

// fenceTenant is called after a tenant was created: it stores the next
// version of the map with the same rows (and since), so that a reconcile
// that read the tenant list before the tenant existed (and found none: the
// noData shortcut of retargetTo, which moves no data) cannot store its map
// after it: its compare-and-set loses to this one, and its retry reads the
// list again. It reports whether it stored a map.
func (r *routing) fenceTenant(ctx context.Context) (bool, error) {
	_, _, changed, err := r.update(ctx, func(cur *placement, _ []metadata.Node) (*ring.Map, error) {
		if cur.nodes == 0 {
			return nil, nil // no map: nothing a shortcut could skip
		}
		return cur.m.Retarget(cur.m.TargetMap(), cur.version+1)
	})
	return changed, err
}

// maxRF returns the largest replication factor of any tenant (0 without
// tenants).
func maxRF(ctx context.Context, store metadata.Store) (int, error) {
	ts, err := store.ListTenants(ctx)
	if err != nil {
		return 0, err
	}
	rf := 0
	for _, t := range ts {
		rf = max(rf, t.ReplicationFactor)
	}
	return rf, nil
}

// reconcile makes the stored map's target nodes exactly the joining and
// active storage nodes: when they differ it retargets the stored map
// (Claim from its target map, then Retarget: partitions whose owners
// change start moving) and stores it (update). Then it moves node
// statuses along (advance): joining → active once a node receives
// nothing, leaving → left once the map names it nowhere. It reports
// whether this call stored a new map.
//
// It never shrinks the target below the largest tenant replication
// factor (a drain that raced another drain past the check is refused by
// its handler and reverted), and it changes no membership of a cluster
// that has data while some node speaks only node protocol 1: without
// fencing a transfer could lose writes (see negotiate).
//
// It is idempotent and cheap when nothing changed (three reads), so every
// membership change, and the periodic refresh, may call it: whichever
// coordinator stores the next version, the map depends only on the
// previous map and the node set.
func (r *routing) reconcile(ctx context.Context) (changed bool, err error) {
	rf := -1
	pl, nodes, changed, err := r.update(ctx, func(cur *placement, nodes []metadata.Node) (*ring.Map, error) {
		ids := desiredNodes(nodes)
		if len(ids) == 0 {
			return nil, nil // nothing to claim for; the last map stays
		}
		if cur.nodes > 0 && slices.Equal(cur.m.TargetNodes(), ids) {
			return nil, nil
		}
		// Read on every attempt: a tenant created since the last one
		// stored a map version (fenceTenant), which is why this attempt
		// runs, and must end the noData shortcut.
		if rf, err = maxRF(ctx, r.store); err != nil {
			return nil, err
		}
		if cur.nodes > 0 && rf > 0 {
			if why := protocolBlock(cur.m, nodes); why != "" {
				r.warnOnce("placement change waits for a node protocol upgrade", "reason", why)
				return nil, nil
			}
			if len(ids) < len(cur.m.TargetNodes()) && len(ids) < rf {
				r.warnOnce("placement change refused: fewer target nodes than a tenant's replication factor",
					"nodes", len(ids), "replication_factor", rf)
				return nil, nil
			}
		}
		if dead, repl, ok := swapShape(cur, ids, nodes); ok && rf > 0 {
			// A replace (nodeReplace) changes two statuses and then
			// stores Substitute(dead, repl); a reconcile that runs between
			// (the new node's heartbeat, another coordinator's refresh)
			// sees the same node set and must build the same target, or
			// it would Claim one that moves rows of live nodes too.
			target, err := cur.m.Substitute(dead, repl)
			if err != nil {
				return nil, fmt.Errorf("substitute %s for %s: %w", repl, dead, err)
			}
			return cur.m.Retarget(target, cur.version+1)
		}
		return retargetTo(cur, ids, rf == 0)
	})
	if err != nil {
		return false, err
	}
	if changed {
		r.log.Info("placement map stored", "version", pl.version, "target_nodes", len(pl.m.TargetNodes()),
			"current_nodes", len(pl.m.CurrentNodes()))
	}
	if err := r.advance(ctx, pl.m, nodes); err != nil {
		return changed, err
	}
	return changed, nil
}

// swapShape reports whether the node set ids differs from cur's target
// by exactly one swap: one target node now leaving (dead) for one node
// the map names nowhere (repl), the shape a replace leaves behind. The
// next target is then Substitute(dead, repl), whoever stores it: exactly
// dead's rows move, and only to repl.
func swapShape(cur *placement, ids []string, nodes []metadata.Node) (dead, repl string, ok bool) {
	if cur.nodes == 0 {
		return "", "", false
	}
	tn := cur.m.TargetNodes()
	if len(tn) != len(ids) {
		return "", "", false
	}
	for _, id := range tn {
		if !slices.Contains(ids, id) {
			if dead != "" {
				return "", "", false
			}
			dead = id
		}
	}
	for _, id := range ids {
		if !slices.Contains(tn, id) {
			if repl != "" {
				return "", "", false
			}
			repl = id
		}
	}
	if dead == "" || repl == "" || cur.m.HasNode(repl) {
		return "", "", false
	}
	i := slices.IndexFunc(nodes, func(n metadata.Node) bool { return n.ID == dead })
	if i < 0 || nodes[i].Status != metadata.NodeLeaving {
		return "", "", false
	}
	return dead, repl, true
}

// warnOnce logs msg the first time in a row it is reported; any other
// message resets it. Called with claimMu held.
func (r *routing) warnOnce(msg string, args ...any) {
	if r.lastWarn == msg {
		return
	}
	r.lastWarn = msg
	r.log.Warn(msg, args...)
}

// receiving reports whether node is a receiver of some moving partition of
// m that has not flipped yet (done or not).
func receiving(m *ring.Map, node string, buf []string) bool {
	for p := range uint32(m.Partitions()) {
		if m.Moving(p) && slices.Contains(m.Receivers(p, buf[:0]), node) {
			return true
		}
	}
	return false
}

// advance moves node statuses along map m: a joining node in m's target
// that is a receiver of no unflipped partition becomes active; a leaving
// node m names in no row becomes left once its handoff finished
// (handoffFinished) or it is down (a dead node hands off nothing; replace
// and remove --force rely on the surviving owners). Each change is
// conditional on the status read (ChangeNodeStatus), so a concurrent drain
// or join wins over it; a lost race is not an error.
func (r *routing) advance(ctx context.Context, m *ring.Map, nodes []metadata.Node) error {
	if m.Partitions() == 0 {
		return nil
	}
	target, named := m.TargetNodes(), m.Nodes()
	buf := make([]string, 0, 2*ring.MaxReplicas)
	for _, n := range nodes {
		var to string
		switch n.Status {
		case metadata.NodeJoining:
			if slices.Contains(target, n.ID) && !receiving(m, n.ID, buf) {
				to = metadata.NodeActive
			}
		case metadata.NodeLeaving:
			if !slices.Contains(named, n.ID) && (handoffFinished(n, m) || (r.down != nil && r.down(n))) {
				to = metadata.NodeLeft
			}
		}
		if to == "" {
			continue
		}
		_, err := r.store.ChangeNodeStatus(ctx, n.ID, []string{n.Status}, to)
		switch {
		case err == nil:
			r.log.Info("storage node status changed", "node", n.ID, "from", n.Status, "to", to, "placement_version", m.Version())
		case errors.Is(err, metadata.ErrStale), errors.Is(err, metadata.ErrNotFound):
		default:
			return err
		}
	}
	return nil
}

// handoffFinished reports whether node n reported (in its heartbeat's
// transfer status) that its handoff finished under map m or a newer one:
// named in no row, every record pushed to the owners and every range
// dropped. A report under an older map does not count: the node may have
// been named again since (a join, then a drain).
func handoffFinished(n metadata.Node, m *ring.Map) bool {
	return n.Transfer != nil && n.Transfer.HandoffDone > 0 && n.Transfer.HandoffDone >= m.Version()
}

// protocolBlock returns why no membership change may start on m: the
// nodes m names or that want to join it that registered a node protocol
// below 2 (they neither fence nor stream; upgrade them first), or "".
func protocolBlock(m *ring.Map, nodes []metadata.Node) string {
	var old []string
	for _, n := range nodes {
		if n.Protocol >= 2 {
			continue
		}
		if inTarget(n.Status) || n.Status == metadata.NodeLeaving || m.HasNode(n.ID) {
			old = append(old, n.ID)
		}
	}
	if len(old) == 0 {
		return ""
	}
	return fmt.Sprintf("storage nodes %s speak node protocol 1: upgrade every storage node first", strings.Join(old, ", "))
}

// negotiate sets the node protocol this coordinator speaks: the lowest
// any node m names registered (0 counts as 1), at most
// NodeProtocolVersion. So 2 (fenced requests carrying the map version)
// once every node of m registered 2 or later, and 3 (versions may carry
// Expires: TTL) once every one registered 3. A node the records no longer
// hold (removed) does not count.
func (r *routing) negotiate(m *ring.Map, nodes []metadata.Node) {
	proto := int32(subjects.NodeProtocolVersion)
	var below []string
	for _, n := range nodes {
		if m.HasNode(n.ID) {
			p := max(n.Protocol, 1)
			proto = min(proto, int32(p))
			if p < subjects.NodeProtocolTTL {
				below = append(below, fmt.Sprintf("%s (protocol %d)", n.ID, p))
			}
		}
	}
	if below == nil {
		r.belowTTL.Store(nil)
	} else {
		r.belowTTL.Store(&below)
	}
	if old := r.proto.Swap(proto); old != proto {
		r.log.Info("node protocol negotiated", "protocol", proto)
	}
}

// NodeProtocol returns the node protocol version the coordinator speaks
// to storage nodes (2 once every node of its map registered protocol 2 or
// later; see docs/PROTOCOL.md, "Negotiation").
func (c *Coordinator) NodeProtocol() int { return c.routing.nodeProtocol() }

// nodeProtocol returns the node protocol version requests to storage
// nodes use (negotiate): 1 until the first map load.
func (r *routing) nodeProtocol() int { return int(r.proto.Load()) }

// run keeps the map current until ctx ends, reconciling it with the
// joining and active node set (and moves statuses along), so a change whose reconcile failed (a store outage) is
// caught up. It logs a store outage once, and its end once.
func (r *routing) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.reconcile(ctx); err != nil {
				r.loopFailed(ctx, err)
				continue
			}
		case <-r.kick:
			if err := r.load(ctx); err != nil {
				r.loopFailed(ctx, err)
				continue
			}
		}
		if r.failing {
			r.log.Info("placement refresh recovered")
			r.failing = false
		}
	}
}

func (r *routing) loopFailed(ctx context.Context, err error) {
	if ctx.Err() != nil || r.failing {
		return
	}
	r.log.Warn("placement refresh failed; keeping the last map", "err", err)
	r.failing = true
}
