package faults

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestSetCheckerCatchesTheUnionSabotage is the cheapest of the sabotage
// runs of docs/RELIABILITY.md, made a test so that CI proves the checker
// still bites: the set workload runs against a real cluster (in one
// process, no faults), once as written and once with the union sabotage
// (clients write only their own element, with the read's context, so each
// write supersedes the elements acknowledged before it). The same checker
// must find no lost element in the first run and lost elements in the
// second.
func TestSetCheckerCatchesTheUnionSabotage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, nc := devcluster.StartForTest(t, devcluster.Config{Nodes: 3})
	// Each run has a tenant of its own, so neither sees the other's keys.
	const honestTenant, sabotagedTenant = "honest", "sabotaged"
	r, policy := rf, subjects.PolicySiblings
	for _, id := range []string{honestTenant, sabotagedTenant} {
		if _, err := client.NewAdmin(nc).CreateTenant(ctx, id, client.TenantSpec{ReplicationFactor: &r, ConflictPolicy: &policy}); err != nil {
			t.Fatal(err)
		}
	}

	run := func(tenant string, sabotage bool) setResult {
		t.Helper()
		w := newWorkload(newTimeline(func(string, ...any) {}))
		w.dropUnion = sabotage
		w.generation = time.Hour // one generation: every write lands on the same keys
		for i := range 2 {
			kv, err := client.New(nc, tenant)
			if err != nil {
				t.Fatal(err)
			}
			w.run(func() { w.setClient(ctx, kv, i, 1) })
		}
		// Run until enough elements were acknowledged for the sabotage to
		// have superseded some; the bound only keeps a broken cluster from
		// hanging the test.
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			w.mu.Lock()
			acked := 0
			for _, elems := range w.set {
				for _, ok := range elems {
					if ok {
						acked++
					}
				}
			}
			w.mu.Unlock()
			if acked >= 10 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		w.halt()
		kv, _ := client.New(nc, tenant)
		final := map[string]map[string]bool{}
		for key := range w.set {
			g, err := kv.Get(ctx, key, client.WithConsistency(subjects.All))
			if err != nil && !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("final read of %s: %v", key, err)
			}
			final[key] = unionOf(g)
		}
		return checkSet(w.set, final)
	}

	honest := run(honestTenant, false)
	if honest.Acknowledged < 10 || honest.Lost != 0 || honest.Phantoms != 0 {
		t.Fatalf("honest run: want at least 10 acknowledged and none lost or phantom: %+v", honest)
	}
	sabotaged := run(sabotagedTenant, true)
	if sabotaged.Acknowledged < 10 || sabotaged.Lost == 0 {
		t.Fatalf("union sabotage: the checker found no lost element: %+v", sabotaged)
	}
	t.Logf("honest: %d acknowledged, %d lost; sabotaged: %d acknowledged, %d lost", honest.Acknowledged, honest.Lost, sabotaged.Acknowledged, sabotaged.Lost)
}
