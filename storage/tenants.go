package storage

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tenant-scoped transfers. Every map row has R = min(7, N) owners, so in a
// cluster of 7 nodes or fewer a joining node is a receiver of every
// partition, at some position; but a tenant with RF r is kept only by the
// first r owners of a row. The transfer loop therefore learns the tenants'
// replication factors (kv.v1.admin.tenant.list at each plan start and again
// after kv.v1.events.tenant) and, for each partition it receives, pulls only
// the tenants whose first RF target owners name the node while their first
// RF current owners do not, each from the current owners among their first
// RF (the union of the tenant's live replicas holds every acknowledged
// write). A partition needing no tenant is reported done once each of its
// current owners answered a barrier scan (one record at the plan's map
// version, once per source and plan) and the tenant list asked after that
// still names no tenant it needs.
// Without a tenant list (no coordinator answers, or an old one) the node
// pulls whole partitions from every current owner, as before.

// tenantRFs is the node's cache of the tenants' replication factors.
type tenantRFs struct {
	mu        sync.Mutex
	rf        map[string]int   // nil: unknown (never loaded, or the last load failed)
	grace     map[string]int64 // tombstone grace (ms) per tenant, with rf (reap.go)
	events    uint64           // kv.v1.events.tenant messages seen
	loadedAt  uint64           // events when the cached list was asked for
	hasLoaded bool
}

// planTenants is what a plan knows of the sources against the tenant list.
// A tenant created while a source still routes by an older map may get a
// write there from a coordinator that does not know the receiver; the
// source's scans at the plan's map version include it (the map is
// installed on the write loop), but only if the receiver asks for the
// tenant. A tenant list asked for after a source answered a scan at the
// plan's version names every such tenant: later writes to that source
// come from coordinators that also send them to the receiver. So once a
// source has answered (confirmed), the list is asked for again (verified)
// and the partitions pulled from it are checked against the new list.
type planTenants struct {
	mu        sync.Mutex
	confirmed map[string]bool // sources that answered a scan at the plan's map version
	verified  map[string]bool // sources confirmed before the cached list was asked for
}

// tenantListTimeout bounds one kv.v1.admin.tenant.list request.
const tenantListTimeout = 2 * time.Second

// loadTenantRFs asks the coordinators for every tenant's replication
// factor and tombstone grace (milliseconds; 0 from an older coordinator
// reads as subjects.DefaultTombstoneGraceMS).
func (n *Node) loadTenantRFs(ctx context.Context) (map[string]int, map[string]int64, error) {
	rctx, cancel := context.WithTimeout(ctx, tenantListTimeout)
	defer cancel()
	msg, err := n.nc.RequestWithContext(rctx, subjects.AdminTenantList, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("storage: ask %s: %w", subjects.AdminTenantList, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, nil, fmt.Errorf("storage: %s: %w", subjects.AdminTenantList, e)
	}
	var l subjects.TenantList
	if err := msgpack.Unmarshal(msg.Data, &l); err != nil {
		return nil, nil, fmt.Errorf("storage: decode tenant list: %w", err)
	}
	rf := make(map[string]int, len(l.Tenants))
	grace := make(map[string]int64, len(l.Tenants))
	for _, t := range l.Tenants {
		if subjects.ValidateTenantID(t.ID) != nil || t.ReplicationFactor < 1 {
			return nil, nil, fmt.Errorf("storage: tenant list names tenant %q with replication factor %d", t.ID, t.ReplicationFactor)
		}
		if t.TombstoneGraceMS < 0 || t.TombstoneGraceMS > subjects.MaxTombstoneGraceMS {
			return nil, nil, fmt.Errorf("storage: tenant list names tenant %q with tombstone grace %d ms", t.ID, t.TombstoneGraceMS)
		}
		rf[t.ID] = t.ReplicationFactor
		grace[t.ID] = t.TombstoneGraceMS
		if grace[t.ID] == 0 {
			grace[t.ID] = subjects.DefaultTombstoneGraceMS
		}
	}
	return rf, grace, nil
}

// refreshTenants reloads the cache; a failed load leaves it unknown, so
// that the plan pulls every tenant rather than trust a list that may lack
// one.
func (n *Node) refreshTenants(ctx context.Context) {
	c := &n.tenants
	c.mu.Lock()
	at := c.events
	c.mu.Unlock()
	rf, grace, err := n.loadTenantRFs(ctx)
	if err != nil && ctx.Err() == nil {
		n.log.Info("tenant replication factors unknown: transfers pull every tenant, reaping waits", "err", err)
	}
	c.mu.Lock()
	c.rf, c.grace, c.loadedAt, c.hasLoaded = rf, grace, at, true
	c.mu.Unlock()
	if err == nil {
		n.noteGraces(grace)
	}
}

// tenantsChanged notes a kv.v1.events.tenant: the next partition the
// transfer loop looks at reloads the list.
func (n *Node) tenantsChanged() {
	n.tenants.mu.Lock()
	n.tenants.events++
	n.tenants.mu.Unlock()
}

// confirm notes that src answered a scan at pl's map version.
func (pl *plan) confirm(src string) {
	pl.tenants.mu.Lock()
	defer pl.tenants.mu.Unlock()
	if pl.tenants.confirmed == nil {
		pl.tenants.confirmed = map[string]bool{}
	}
	pl.tenants.confirmed[src] = true
}

func (pl *plan) isConfirmed(src string) bool {
	pl.tenants.mu.Lock()
	defer pl.tenants.mu.Unlock()
	return pl.tenants.confirmed[src]
}

// tenantRF returns the replication factors to plan a partition with
// current owners owners by (nil: unknown): the cached list, asked for
// again first when a tenant event arrived since, or when one of owners
// answered a scan at pl's version since the list was asked for. settled
// reports whether each of owners (but this node) is known down or
// answered a scan at pl's version before that list was asked for: a
// partition of these owners that needs no tenant of the list needs none.
func (n *Node) tenantRF(ctx context.Context, pl *plan, owners []string) (rf map[string]int, settled bool) {
	pt := &pl.tenants
	pt.mu.Lock() // held through the reload: workers share one
	defer pt.mu.Unlock()
	n.tenants.mu.Lock()
	refresh := !n.tenants.hasLoaded || n.tenants.events != n.tenants.loadedAt
	n.tenants.mu.Unlock()
	for _, o := range owners {
		refresh = refresh || (pt.confirmed[o] && !pt.verified[o])
	}
	if refresh {
		asked := maps.Clone(pt.confirmed)
		n.refreshTenants(ctx)
		if pt.verified == nil {
			pt.verified = map[string]bool{}
		}
		for o := range asked {
			pt.verified[o] = true
		}
	}
	settled = true
	for _, o := range owners {
		if _, down := pl.down.Load(o); o != n.cfg.NodeID && !down && !pt.verified[o] {
			settled = false
		}
	}
	n.tenants.mu.Lock()
	defer n.tenants.mu.Unlock()
	return n.tenants.rf, settled
}

// pullSource is one source of a partition and the tenants to pull from it
// (nil: all of them).
type pullSource struct {
	node    string
	tenants []string
}

// pullPlan returns what node self pulls of partition p in map m: for each
// current owner other than self that holds a needed tenant, the tenants to
// pull from it (sorted), in the order of the current row; and the needed
// tenants (sorted). A tenant t is needed when self is in target(p)[:RF_t]
// but not in current(p)[:RF_t]; it is pulled from every owner in
// current(p)[:RF_t]. With rf nil (unknown) every current owner is a source
// of every tenant and needed is nil.
func pullPlan(m *ring.Map, p uint32, self string, rf map[string]int) (sources []pullSource, needed []string) {
	cur := m.Owners(p, nil)
	if rf == nil {
		for _, o := range cur {
			if o != self {
				sources = append(sources, pullSource{node: o})
			}
		}
		return sources, nil
	}
	tgt := m.Target(p, nil)
	per := map[string][]string{}
	for t, r := range rf {
		c, g := cur[:min(r, len(cur))], tgt[:min(r, len(tgt))]
		if !slices.Contains(g, self) || slices.Contains(c, self) {
			continue
		}
		needed = append(needed, t)
		for _, o := range c {
			per[o] = append(per[o], t)
		}
	}
	slices.Sort(needed)
	for _, o := range cur {
		if ts := per[o]; len(ts) > 0 && o != self {
			slices.Sort(ts)
			sources = append(sources, pullSource{node: o, tenants: ts})
		}
	}
	return sources, needed
}

// leavers returns, for each tenant t of needed whose current and target
// owners within its RF are both full rows of RF_t owners, the current
// owners that are not target owners (current(p)[:RF_t] − target(p)[:RF_t],
// in row order): the owners the receivers take the place of. A tenant of
// a shorter row (a cluster smaller than its RF) has none; nil when no
// tenant has any.
//
// Pulling t to the end from each of them is enough, whatever the level
// the writes were acknowledged at (Cassandra streams a range from the
// replica it replaces for the same reason): let X be the leavers, Q the
// owners that acknowledged a write and N = current − X + receivers the
// owners after the flip. If Q meets X every receiver holds the write, and
// (Q − X) ∪ receivers, at least |Q| of N, holds it; so every read quorum
// of N meets it. If Q misses X, Q ⊆ N. Writes accepted after the pull
// reach the receivers through the fence, as for any pull.
func leavers(m *ring.Map, p uint32, rf map[string]int, needed []string) map[string][]string {
	if rf == nil || len(needed) == 0 {
		return nil
	}
	cur, tgt := m.Owners(p, nil), m.Target(p, nil)
	out := map[string][]string{}
	for _, t := range needed {
		r := rf[t]
		if r < 1 || len(cur) < r || len(tgt) < r {
			continue
		}
		var x []string
		for _, o := range cur[:r] {
			if !slices.Contains(tgt[:r], o) {
				x = append(x, o)
			}
		}
		if len(x) > 0 {
			out[t] = x
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// leaversFirst orders sources so that those that leave some tenant's row
// (lv) come first, the rest after, each group in its former order.
func leaversFirst(sources []pullSource, lv map[string][]string) []pullSource {
	leaves := func(o string) bool {
		for _, x := range lv {
			if slices.Contains(x, o) {
				return true
			}
		}
		return false
	}
	out := make([]pullSource, 0, len(sources))
	for _, s := range sources {
		if leaves(s.node) {
			out = append(out, s)
		}
	}
	for _, s := range sources {
		if !leaves(s.node) {
			out = append(out, s)
		}
	}
	return out
}

// fromLeavers reports whether tenant t came to the end from each of its
// leavers lv[t] (pulled: source → tenants, "" = all); false for a tenant
// without leavers.
func fromLeavers(t string, lv map[string][]string, pulled map[string]map[string]bool) bool {
	x := lv[t]
	if len(x) == 0 {
		return false
	}
	for _, o := range x {
		if got := pulled[o]; !got[""] && !got[t] {
			return false
		}
	}
	return true
}

// needyFirst returns pl's partitions with those that need some tenant
// (under the list the plan started with) first, each group ascending.
func (n *Node) needyFirst(pl *plan) []uint32 {
	n.tenants.mu.Lock()
	rf := n.tenants.rf
	n.tenants.mu.Unlock()
	var needy, rest []uint32
	for _, p := range pl.parts {
		if srcs, _ := pullPlan(pl.m, p, n.cfg.NodeID, rf); len(srcs) > 0 {
			needy = append(needy, p)
		} else {
			rest = append(rest, p)
		}
	}
	return append(needy, rest...)
}
