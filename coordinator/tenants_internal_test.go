package coordinator

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
)

// flakyTenants is a pure-unit-test stand-in for the metadata store: only
// GetTenant, which fails while down.
type flakyTenants struct {
	metadata.Store
	mu   sync.Mutex
	down bool
}

func (f *flakyTenants) GetTenant(ctx context.Context, id string) (metadata.Tenant, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return metadata.Tenant{}, errors.New("store unavailable")
	}
	return metadata.Tenant{ID: id, ReplicationFactor: 3}, nil
}

// TestTenantEventKeepsOutageFallback: a tenant event (a change elsewhere)
// makes the next get reload, but when the store is down then, the cached
// tenant is still served, as it would have been without the event; a
// deletion is forgotten at once.
func TestTenantEventKeepsOutageFallback(t *testing.T) {
	store := &flakyTenants{}
	c := newTenantCache(store, slog.New(slog.DiscardHandler), time.Hour, time.Now)
	ctx := context.Background()
	if _, err := c.get(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	c.invalidate("acme", false)
	store.mu.Lock()
	store.down = true
	store.mu.Unlock()
	if got, err := c.get(ctx, "acme"); err != nil || got.ID != "acme" {
		t.Fatalf("after a tenant event, with the store down: %+v %v; want the cached tenant", got, err)
	}
	c.invalidate("acme", true)
	if _, err := c.get(ctx, "acme"); err == nil {
		t.Fatal("a deleted tenant was served from the cache")
	}
}

// TestTenantFirstSeenReloadsPlacement: a tenant the cache did not hold
// (never loaded, or cached missing) runs firstSeen (the coordinator's map
// reload) before it is served, once; a reload of a tenant it holds (TTL,
// an event) does not.
func TestTenantFirstSeenReloadsPlacement(t *testing.T) {
	store := &flakyTenants{}
	now := time.Now()
	c := newTenantCache(store, slog.New(slog.DiscardHandler), time.Minute, func() time.Time { return now })
	seen := 0
	c.firstSeen = func(context.Context) { seen++ }
	ctx := context.Background()
	for range 3 {
		if _, err := c.get(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
	}
	if seen != 1 {
		t.Fatalf("firstSeen ran %d times for one new tenant, want 1", seen)
	}
	c.invalidate("acme", false)
	now = now.Add(time.Hour)
	if _, err := c.get(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if seen != 1 {
		t.Fatalf("firstSeen ran on a reload of a held tenant (%d)", seen)
	}
	if _, err := c.get(ctx, "other"); err != nil || seen != 2 {
		t.Fatalf("another new tenant: firstSeen ran %d times in all, %v", seen, err)
	}
}
