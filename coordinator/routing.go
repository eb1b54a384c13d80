package coordinator

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
)

// routing is the RoutingService of the seed: it holds the current ring,
// rebuilt from the metadata store's node list at start, every interval, and
// at once when refresh is signalled (a kv.v1.events.ring message).
type routing struct {
	store    metadata.Store
	log      *slog.Logger
	interval time.Duration
	current  atomic.Pointer[ring.Ring]
	kick     chan struct{}
	failing  bool // owned by the loop goroutine: log an outage once
}

func newRouting(store metadata.Store, log *slog.Logger, interval time.Duration) *routing {
	r := &routing{store: store, log: log, interval: interval, kick: make(chan struct{}, 1)}
	r.current.Store(ring.New(nil))
	return r
}

// ring returns the current ring; never nil.
func (r *routing) ring() *ring.Ring { return r.current.Load() }

// refreshNow asks the loop to reload soon; it never blocks.
func (r *routing) refreshNow() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// load rebuilds the ring from the store.
func (r *routing) load(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	nodes, err := r.store.ListNodes(ctx)
	if err != nil {
		return err
	}
	members := make([]ring.Member, len(nodes))
	for i, n := range nodes {
		members[i] = ring.Member{ID: n.ID, VirtualNodes: n.VirtualNodes, Active: n.Status == metadata.NodeActive}
	}
	next := ring.New(members)
	prev := r.current.Swap(next)
	if prev.Len() != next.Len() || prev.ActiveCount() != next.ActiveCount() {
		r.log.Info("ring changed", "nodes", next.Len(), "active", next.ActiveCount())
	}
	return nil
}

// run reloads the ring until ctx ends. It logs a store outage once, and its
// end once.
func (r *routing) run(ctx context.Context) {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
		if err := r.load(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			if !r.failing {
				r.log.Warn("ring refresh failed; keeping the last ring", "err", err)
				r.failing = true
			}
			continue
		}
		if r.failing {
			r.log.Info("ring refresh recovered")
			r.failing = false
		}
	}
}
