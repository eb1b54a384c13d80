package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/metadata"
)

// placementDown is the cluster's metadata store with SetPlacement failing
// while down is set, as in a metadata outage that begins right after a
// tenant was stored.
type placementDown struct {
	metadata.Store
	down *atomic.Bool
}

func (s placementDown) SetPlacement(ctx context.Context, p metadata.Placement) (metadata.Placement, error) {
	if s.down.Load() {
		return metadata.Placement{}, fmt.Errorf("%w: injected", metadata.ErrUnavailable)
	}
	return s.Store.SetPlacement(ctx, p)
}

// TestTenantCreateAnswersOnlyAfterItsFence: a tenant create stores the
// tenant, then a placement map version after it (the fence that keeps a
// joining node's no-data shortcut from skipping the tenant's first
// writes). When the second step fails the create answers 503, and a
// create retried then must not answer 409 "exists" (which a client
// takes as leave to use the tenant) until the fence is stored; it was
// answered 409 at once before.
func TestTenantCreateAnswersOnlyAfterItsFence(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	var down atomic.Bool
	co, err := coordinator.New(ctx, connect(t, c), coordinator.Config{
		Metadata: placementDown{Store: c.Metadata(), down: &down}, Idempotency: c.Idempotency(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(co.Stop)
	c.StopCoordinator(0) // only the coordinator with the failing store answers
	admin := client.NewAdmin(connect(t, c))
	before, err := c.Metadata().GetPlacement(ctx)
	if err != nil {
		t.Fatal(err)
	}

	down.Store(true)
	_, err = admin.CreateTenant(ctx, "fenced", client.TenantSpec{})
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("create while the map cannot be stored: %v, want 503 unavailable", err)
	}
	if _, err := c.Metadata().GetTenant(ctx, "fenced"); err != nil {
		t.Fatalf("the tenant was not stored: %v", err)
	}
	_, err = admin.CreateTenant(ctx, "fenced", client.TenantSpec{})
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("create retried while the map still cannot be stored: %v, want 503 unavailable, not exists", err)
	}

	down.Store(false)
	_, err = admin.CreateTenant(ctx, "fenced", client.TenantSpec{})
	if !errors.Is(err, client.ErrExists) {
		t.Fatalf("create retried once the map can be stored: %v, want 409 exists", err)
	}
	after, err := c.Metadata().GetPlacement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Version <= before.Version {
		t.Fatalf("placement version %d after the retried create, %d before: no fence stored", after.Version, before.Version)
	}
}
