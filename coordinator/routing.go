package coordinator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
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
	nodes   int       // nodes in m
	shares  map[string]subjects.NodeShare
}

// nodeCount returns how many storage nodes own partitions: the active ones
// when the map was claimed.
func (p *placement) nodeCount() int { return p.nodes }

func newPlacement(version uint64, q int, m *ring.Map) *placement {
	if m == nil {
		m = &ring.Map{}
	}
	p := &placement{version: version, q: q, m: m, nodes: len(m.Nodes())}
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
// and stores the next map when the active node set changed (reconcile).
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
	claimMu sync.Mutex
	// flightMu guards flight, the reload that requests refused with
	// not_owner share (see reload).
	flightMu sync.Mutex
	flight   *reloadFlight
	failing  bool // owned by the loop goroutine: log an outage once
}

func newRouting(store metadata.Store, log *slog.Logger, interval time.Duration, partitions int) *routing {
	r := &routing{store: store, log: log, interval: interval, candidateQ: partitions, kick: make(chan struct{}, 1)}
	r.current.Store(newPlacement(0, 0, nil))
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
	p, err := decodePlacement(rec, q, r.placement())
	if err != nil {
		return err
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

// reconcileAttempts bounds how often reconcile re-reads after losing a race
// to another coordinator's store of the same version.
const reconcileAttempts = 8

// reconcile makes the stored map's owners exactly the active storage nodes:
// when they differ it claims the next map from the stored one
// (ring.Claim: balanced, moving the least) and stores it under optimistic
// locking, re-reading and recomputing when another coordinator stored a
// version first. Either way the stored map becomes current here. It
// reports whether this call stored a new map.
//
// It is idempotent and cheap when nothing changed (two reads), so every
// membership change, and the periodic refresh, may call it: whichever
// coordinator stores the next version, the map depends only on the
// previous map and the node set.
func (r *routing) reconcile(ctx context.Context) (changed bool, err error) {
	r.claimMu.Lock()
	defer r.claimMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q, err := r.partitions(ctx)
	if err != nil {
		return false, err
	}
	for attempt := 0; ; attempt++ {
		rec, err := r.store.GetPlacement(ctx)
		if errors.Is(err, metadata.ErrNotFound) {
			rec, err = metadata.Placement{}, nil
		}
		if err != nil {
			return false, err
		}
		// The node list is read after the map: a change made before this
		// reconcile started is in it, so the map this call leaves behind
		// includes it, whoever stores it.
		nodes, err := r.store.ListNodes(ctx)
		if err != nil {
			return false, err
		}
		cur, err := decodePlacement(rec, q, r.placement())
		if err != nil {
			return false, err
		}
		var active []ring.Node
		for _, n := range nodes {
			if n.Status == metadata.NodeActive {
				active = append(active, ring.Node{ID: n.ID})
			}
		}
		ids := make([]string, len(active))
		for i, n := range active {
			ids[i] = n.ID
		}
		if slices.Equal(cur.m.Nodes(), ids) && (rec.Version > 0 || len(ids) == 0) {
			r.install(cur)
			return false, nil
		}
		next := metadata.Placement{Version: rec.Version + 1}
		var m *ring.Map
		if len(active) > 0 {
			var prev *ring.Map
			if cur.nodes > 0 {
				prev = cur.m
			}
			if m, err = ring.Claim(prev, active, q); err != nil {
				return false, fmt.Errorf("claim placement: %w", err)
			}
			m = m.WithVersion(next.Version)
			if next.Map, err = m.MarshalBinary(); err != nil {
				return false, err
			}
		}
		if _, err := r.store.SetPlacement(ctx, next); err != nil {
			if errors.Is(err, metadata.ErrStale) && attempt+1 < reconcileAttempts {
				continue // another coordinator stored this version: build on it
			}
			return false, err
		}
		r.install(newPlacement(next.Version, q, m))
		r.log.Info("placement map stored", "version", next.Version, "active_nodes", len(active))
		return true, nil
	}
}

// run keeps the map current until ctx ends, reconciling it with the
// active node set, so a change whose reconcile failed (a store outage) is
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
