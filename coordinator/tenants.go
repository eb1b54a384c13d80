package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
)

// tenantCache is the TenantService of the seed: tenants by id, cached for
// ttl and refreshed from the store on expiry. When the store cannot be
// reached, a cached tenant keeps being served however old it is, so a
// metadata outage does not stop traffic for known tenants. A missing
// tenant is remembered for negTTL so floods of unknown ids do not reach the
// store. Concurrent misses for one id share one load.
type tenantCache struct {
	store  metadata.Store
	log    *slog.Logger
	ttl    time.Duration
	negTTL time.Duration
	now    func() time.Time

	// firstSeen, if set, runs when a load finds a tenant this cache did
	// not hold (new, or known missing), before the tenant is served: the
	// coordinator reloads its placement map there, so it routes a new
	// tenant's writes by a map at least as new as the one its creation
	// stored (routing.fenceTenant), never by one older than a noData
	// shortcut. Set once before use.
	firstSeen func(context.Context)

	mu      sync.Mutex
	entries map[string]*tenantEntry
	failing bool // the last load failed with a store error; guarded by mu
}

type tenantEntry struct {
	tenant  metadata.Tenant
	missing bool          // ErrNotFound was cached
	fetched time.Time     // zero while the first load is in flight
	loading chan struct{} // non-nil while a load is in flight; closed when it ends
}

func newTenantCache(store metadata.Store, log *slog.Logger, ttl time.Duration, now func() time.Time) *tenantCache {
	return &tenantCache{store: store, log: log, ttl: ttl, negTTL: time.Second, now: now, entries: make(map[string]*tenantEntry)}
}

// noteLoad logs a store outage once when it starts and once when it ends,
// not per request. Callers hold c.mu.
func (c *tenantCache) noteLoad(err error) {
	storeErr := err != nil && !errors.Is(err, metadata.ErrNotFound) && !errors.Is(err, context.Canceled)
	switch {
	case storeErr && !c.failing:
		c.failing = true
		c.log.Warn("metadata store unreachable; serving cached tenants, answering 503 for the others", "err", err)
	case !storeErr && c.failing:
		c.failing = false
		c.log.Info("metadata store reachable again")
	}
}

// get returns the tenant id, from cache when fresh. Errors: metadata's
// ErrNotFound, or the store's error when nothing usable is cached.
func (c *tenantCache) get(ctx context.Context, id string) (metadata.Tenant, error) {
	for {
		c.mu.Lock()
		e := c.entries[id]
		if e != nil && e.loading != nil { // another request is loading it
			ch := e.loading
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return metadata.Tenant{}, ctx.Err()
			}
		}
		if e != nil && c.fresh(e) {
			c.mu.Unlock()
			return e.result()
		}
		load := &tenantEntry{loading: make(chan struct{})}
		c.entries[id] = load
		c.mu.Unlock()

		t, err := c.store.GetTenant(ctx, id)
		if err == nil && (e == nil || e.missing) && c.firstSeen != nil {
			c.firstSeen(ctx)
		}

		c.mu.Lock()
		c.noteLoad(err)
		now := c.now()
		var final *tenantEntry
		switch {
		case err == nil:
			final = &tenantEntry{tenant: t, fetched: now}
		case errors.Is(err, metadata.ErrNotFound):
			final = &tenantEntry{missing: true, fetched: now}
		case e != nil && !e.missing:
			// The store failed: keep serving what we had, and ask again
			// after negTTL rather than on every request.
			final = &tenantEntry{tenant: e.tenant, fetched: now.Add(c.negTTL - c.ttl)}
		}
		if final == nil {
			delete(c.entries, id)
		} else {
			c.entries[id] = final
		}
		close(load.loading)
		c.mu.Unlock()
		if final == nil {
			return metadata.Tenant{}, err
		}
		return final.result()
	}
}

func (c *tenantCache) fresh(e *tenantEntry) bool {
	ttl := c.ttl
	if e.missing {
		ttl = c.negTTL
	}
	return c.now().Sub(e.fetched) < ttl
}

func (e *tenantEntry) result() (metadata.Tenant, error) {
	if e.missing {
		return metadata.Tenant{}, metadata.ErrNotFound
	}
	return e.tenant, nil
}

// invalidate makes the next get of id reload it. A deleted tenant is
// forgotten; a changed one is kept, stale, as the fallback get serves
// while the store cannot be reached (a tenant event must not take away
// what an outage right after it would serve).
func (c *tenantCache) invalidate(id string, deleted bool) {
	c.mu.Lock()
	if e := c.entries[id]; e != nil && e.loading == nil {
		if deleted || e.missing {
			delete(c.entries, id)
		} else {
			c.entries[id] = &tenantEntry{tenant: e.tenant} // fetched zero: never fresh
		}
	}
	c.mu.Unlock()
}

// invalidateAll is invalidate for every cached tenant (their events may
// have been missed): each is reloaded on its next get, and served stale
// while the store cannot be reached.
func (c *tenantCache) invalidateAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, e := range c.entries {
		switch {
		case e.loading != nil:
		case e.missing:
			delete(c.entries, id)
		default:
			c.entries[id] = &tenantEntry{tenant: e.tenant}
		}
	}
}

// put stores t as freshly loaded (after this coordinator changed it).
func (c *tenantCache) put(t metadata.Tenant) {
	c.mu.Lock()
	if e := c.entries[t.ID]; e == nil || e.loading == nil {
		c.entries[t.ID] = &tenantEntry{tenant: t, fetched: c.now()}
	}
	c.mu.Unlock()
}
