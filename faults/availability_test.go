package faults

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestAvailabilityMatrix is Cassandra's TestAvailability for quorumkv:
// replication factor ∈ {1, 3, 5} × level ∈ {one, quorum, all} × primaries
// down ∈ {0 … RF}. Each put and get succeeds exactly when enough primaries
// are alive, and otherwise answers 503 within its timeout. Every cell is
// asserted; stopping nodes outside the preference list changes nothing.
func TestAvailabilityMatrix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, nc := devcluster.StartForTest(t, devcluster.Config{Nodes: 6})
	admin := client.NewAdmin(nc)
	nodes, err := admin.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The placement map the coordinators route by.
	rg, err := admin.Placement(ctx)
	if err != nil {
		t.Fatal(err)
	}

	const timeout = 500 * time.Millisecond
	cells := 0
	for _, rf := range []int{1, 3, 5} {
		tenant := fmt.Sprintf("rf%d", rf)
		if _, err := admin.CreateTenant(ctx, tenant, client.TenantSpec{ReplicationFactor: &rf}); err != nil {
			t.Fatal(err)
		}
		kv, err := client.New(nc, tenant, client.WithDefaultTimeout(timeout))
		if err != nil {
			t.Fatal(err)
		}
		for down := 0; down <= rf; down++ {
			key := fmt.Sprintf("key-rf%d-down%d", rf, down)
			prefs := rg.PreferenceList(tenant, key, len(nodes), nil)
			primaries, others := prefs[:rf], prefs[rf:]
			stopped := primaries[:down]
			// Nodes outside the preference list are stopped too whenever
			// possible: they must not count, for or against.
			if len(others) > 0 && down < rf {
				stopped = append(append([]string(nil), stopped...), others[0])
			}
			for _, id := range stopped {
				if err := c.StopNode(id); err != nil {
					t.Fatal(err)
				}
			}
			alive := rf - down
			for _, level := range []string{subjects.One, subjects.Quorum, subjects.All} {
				want := alive >= coordinator.Required(level, rf)
				for _, op := range []string{"put", "get"} {
					cells++
					start := time.Now()
					var err error
					if op == "put" {
						_, err = kv.Put(ctx, key, []byte("v"), client.WithConsistency(level))
					} else {
						_, err = kv.Get(ctx, key, client.WithConsistency(level))
						if errors.Is(err, client.ErrNotFound) {
							err = nil // reachable, just never written successfully
						}
					}
					elapsed := time.Since(start)
					switch {
					case want && err != nil:
						t.Errorf("RF %d, %d primaries down, %s %s: %v, want success", rf, down, level, op, err)
					case !want && !errors.Is(err, client.ErrUnavailable):
						t.Errorf("RF %d, %d primaries down, %s %s: %v, want 503 unavailable", rf, down, level, op, err)
					case elapsed > timeout+time.Second:
						t.Errorf("RF %d, %d down, %s %s took %s, beyond its %s timeout", rf, down, level, op, elapsed, timeout)
					}
				}
			}
			for _, id := range stopped {
				if err := c.StartNode(id); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if cells != (2+4+6)*3*2 {
		t.Fatalf("asserted %d cells", cells)
	}
}
