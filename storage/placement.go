package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Map knowledge and fencing (issue 14; docs/ARCHITECTURE.md, "Moving
// partitions: fencing instead of barriers"). A node knows the placement map
// the coordinators route by: it asks kv.v1.admin.placement.get at start,
// again on every kv.v1.events.ring, every MapPoll, and at once when a
// request names a newer version than its own. A map is installed on the
// write loop, so every write that passed the fence of the old map is in
// Pebble before any scan that names the new map is answered.
//
// With the map a node refuses, item by item (not_owner, nothing applied),
// a write or read for partition p whose sender's map version is below
// Since(p): that sender routes by owners that changed since. A scan naming
// a version the node has not installed yet is answered map_behind. Version
// 0 is unfenced (repair, hints, handoff). A node with no map yet refuses
// every fenced item (not_owner, "node has no placement map yet"): it may
// be a former owner that already dropped the partition and restarted, and
// a stale coordinator must not count its empty answer as "not found"; the
// coordinator reloads its map and retries (elsewhere, or here once this
// node loaded the map).

// Map returns the placement map the node fences by, nil until it loaded
// one.
func (n *Node) Map() *ring.Map { return n.pmap.Load() }

// mapVersion is the version of the node's map, 0 while it has none.
func (n *Node) mapVersion() uint64 {
	if m := n.pmap.Load(); m != nil {
		return m.Version()
	}
	return 0
}

// kickMap asks the map loop to reload now (coalesced).
func (n *Node) kickMap() {
	select {
	case n.mapKick <- struct{}{}:
	default:
	}
}

// sawVersion notes that a request named map version v: a newer one than
// the node's makes it reload at once.
func (n *Node) sawVersion(v uint64) {
	if v > n.mapVersion() {
		n.kickMap()
	}
}

// fenced reports why an item of partition p from a sender at map version
// v must be refused ("" when it is accepted). m nil: the node has no map
// yet, and refuses every fenced item.
func fenced(m *ring.Map, p uint32, v uint64) string {
	if v == 0 {
		return ""
	}
	if m == nil {
		return errNoMapYet
	}
	if since := m.Since(p); v < since {
		return subjects.NotOwnerError(p, since, v)
	}
	return ""
}

// errNoMapYet is the Err of an item refused because the node has no map.
const errNoMapYet = subjects.KindNotOwner + ": node has no placement map yet"

// errNoMap is loadMap's answer when the coordinators have no map yet.
var errNoMap = errors.New("storage: the coordinators have no placement map yet")

// loadMap asks the coordinators for the placement map.
func (n *Node) loadMap(ctx context.Context, timeout time.Duration) (*ring.Map, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	msg, err := n.nc.RequestWithContext(rctx, subjects.AdminPlacementGet, nil)
	if err != nil {
		return nil, fmt.Errorf("storage: ask %s: %w", subjects.AdminPlacementGet, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, fmt.Errorf("storage: %s: %w", subjects.AdminPlacementGet, e)
	}
	var rep subjects.PlacementReply
	if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
		return nil, fmt.Errorf("storage: decode placement reply: %w", err)
	}
	return decodePlacement(&rep)
}

// decodePlacement reads the map of a PlacementReply.
func decodePlacement(rep *subjects.PlacementReply) (*ring.Map, error) {
	if len(rep.Map) == 0 {
		return nil, errNoMap
	}
	m, err := ring.Decode(rep.Map)
	if err != nil {
		return nil, fmt.Errorf("storage: decode placement map version %d: %w", rep.Version, err)
	}
	return m, nil
}

// offerMap installs m through the write loop when it is newer than the
// node's map, and waits until it is installed (or the node stops).
func (n *Node) offerMap(ctx context.Context, m *ring.Map) error {
	if m == nil || m.Version() <= n.mapVersion() {
		return nil
	}
	return n.submit(ctx, &localWrite{install: m})
}

// install runs on the write loop (or before it starts): it makes m the
// node's map unless it is older or laid out in other partitions, forgets
// the transfer cursors of partitions m does not give the node (a later
// transfer of one must start over: the node missed its writes meanwhile),
// and wakes the loops that act on the map.
func (n *Node) install(m *ring.Map) {
	cur := n.pmap.Load()
	if cur != nil && m.Version() <= cur.Version() {
		return
	}
	if m.Partitions() != n.eng.q {
		n.log.Error("placement map ignored: its partition count differs from the data directory's", "map_version", m.Version(), "map_partitions", m.Partitions(), "partitions", n.eng.q)
		return
	}
	// Before the map is visible: a stale directory drops what it must not
	// serve, and a read fenced by the map must already see which
	// partitions this node rebuilds (rebuild.go).
	if n.eng.stale != nil {
		if err := n.settleStale(m); err != nil {
			n.log.Error("placement map not installed: the stale directory could not be settled; retrying with the next map", "map_version", m.Version(), "err", err)
			return
		}
	}
	n.decideRebuild(func(p uint32) bool { return slices.Contains(m.Owners(p, nil), n.cfg.NodeID) })
	n.pmap.Store(m)
	// What a later stale check compares the map it finds with (NoSync:
	// an older version lost in a crash only makes it drop more).
	if err := n.eng.setMetaInt(metaMapVersion, int64(m.Version()), pebble.NoSync); err != nil {
		n.log.Warn("record the installed map version", "err", err)
	}
	owned := func(p uint32) bool { return m.Owns(p, n.cfg.NodeID) }
	n.stg.forgetStagedMeta(func(k []byte) bool { p := cursorPartition(k); return p >= 0 && !owned(uint32(p)) })
	if err := n.eng.forgetCursors(func(p uint32) bool { return !owned(p) }); err != nil {
		n.log.Warn("forget transfer cursors", "err", err)
	}
	n.xfer.forgetDone(owned)
	n.log.Info("placement map installed", "map_version", m.Version())
	for _, ch := range []chan struct{}{n.xferKick, n.handoffKick} {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// initialMap loads the map before the node serves writes, waiting at most
// MapWait; without an answer the node starts without one (refusing fenced
// items, accepting unfenced ones) and the map loop keeps asking.
func (n *Node) initialMap(ctx context.Context) {
	m, err := n.loadMap(ctx, n.cfg.MapWait)
	switch {
	case errors.Is(err, errNoMap):
	case errors.Is(err, nats.ErrNoResponders):
		n.log.Info("no coordinator answers yet: refusing fenced requests until the placement map loads")
	case err != nil:
		n.log.Warn("no placement map at start: refusing fenced requests until one loads", "err", err)
	default:
		n.install(m)
	}
}

// mapLoop reloads the map on kv.v1.events.ring, on a request naming a newer
// version, every MapPoll, and as soon as the NATS connection is back after
// a disconnection, until ctx ends. Events are plain publishes: those sent
// while the node was disconnected are lost, so a reconnected node would
// otherwise fence by a map that may have moved on (and keep a tenant list
// that may have changed) until the next poll.
func (n *Node) mapLoop(ctx context.Context) {
	poll := time.NewTicker(n.cfg.MapPoll)
	defer poll.Stop()
	back := n.nc.StatusChanged(nats.CONNECTED)
	defer n.nc.RemoveStatusListener(back)
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		case <-n.mapKick:
		case <-back:
			n.log.Info("NATS connection back: reloading the placement map and the tenant list, whose events may have been missed")
			n.tenantsChanged()
		}
		m, err := n.loadMap(ctx, 2*time.Second)
		if err != nil {
			if !errors.Is(err, errNoMap) && ctx.Err() == nil && !errors.Is(err, nats.ErrNoResponders) {
				n.log.Debug("placement map reload failed", "err", err)
			}
			continue
		}
		if err := n.offerMap(ctx, m); err != nil && ctx.Err() == nil {
			n.log.Warn("install placement map", "err", err)
		}
	}
}
