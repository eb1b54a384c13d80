package coordinator_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// placementCluster starts nodes storage nodes and two coordinators whose
// periodic refresh is too slow to matter, so only the ring event can make
// them agree within a test's waits.
func placementCluster(t *testing.T, nodes int) (*devcluster.Cluster, *client.Admin) {
	t.Helper()
	cfg := coordinator.Config{RingRefresh: time.Hour}
	c := startClusterWith(t, devcluster.Config{Nodes: nodes, Coordinators: 2, Coordinator: cfg})
	if err := c.WaitForNodes(ctxT(t), nodes); err != nil {
		t.Fatal(err)
	}
	return c, client.NewAdmin(connect(t, c))
}

// agreed waits until every coordinator routes by the same map, naming
// exactly ids, and returns it.
func agreed(t *testing.T, c *devcluster.Cluster, ids ...string) *ring.Map {
	t.Helper()
	var m *ring.Map
	waitFor(t, 20*time.Second, func() error {
		cos := c.Coordinators()
		m = cos[0].Placement()
		for i, co := range cos {
			p := co.Placement()
			if p.Version() != m.Version() || !p.Equal(m) {
				return fmt.Errorf("coordinator %d has map version %d, coordinator 0 version %d", i, p.Version(), m.Version())
			}
		}
		if got := m.Nodes(); fmt.Sprint(got) != fmt.Sprint(ids) {
			return fmt.Errorf("map version %d names %v, want %v", m.Version(), got, ids)
		}
		return nil
	})
	return m
}

// checkBalanced fails unless every node of m is first owner of Q/N
// partitions and among the first three of 3Q/N, each give or take one
// (exactly, when N divides).
func checkBalanced(t *testing.T, m *ring.Map) {
	t.Helper()
	n := len(m.Nodes())
	for _, rf := range []int{1, min(3, m.Replicas())} {
		total := m.Partitions() * rf
		for id, got := range m.Load(rf) {
			if lo := total / n; got < lo || got > lo+1 || (total%n == 0 && got != lo) {
				t.Errorf("map version %d: node %s holds %d of the first %d owner slots, want %d..%d", m.Version(), id, got, rf, lo, lo+min(1, total%n))
			}
		}
	}
}

// TestPlacementFollowsMembership: the stored map is what every coordinator
// routes by; a joining node gets a new version in which it owns its 1/N
// share; a drain takes it out of every owner list; heartbeats change
// nothing; node.list and placement.get report the shares.
func TestPlacementFollowsMembership(t *testing.T) {
	c, admin := placementCluster(t, 3)
	// Transfers run between the steps: a deadline for the whole test.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	m1 := agreed(t, c, "node-1", "node-2", "node-3")
	if m1.Partitions() != ring.DefaultPartitions || m1.Replicas() != 3 {
		t.Fatalf("map: %d partitions, %d owners each; want %d and 3", m1.Partitions(), m1.Replicas(), ring.DefaultPartitions)
	}
	checkBalanced(t, m1)
	// With 3 nodes and RF 3 every node holds a replica of every partition:
	// 1024 × 3 / 3 replica slots each, exactly (the ring gave ±13%).
	for id, got := range m1.Load(3) {
		if got != ring.DefaultPartitions {
			t.Fatalf("node %s holds %d of the RF-3 replica slots, want %d", id, got, ring.DefaultPartitions)
		}
	}
	got, err := admin.Placement(ctx)
	if err != nil || got.Version() != m1.Version() || !got.Equal(m1) {
		t.Fatalf("placement.get = version %d, %v; want the coordinators' map version %d", got.Version(), err, m1.Version())
	}
	list, err := admin.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		if n.Share == nil || n.Share.Replicas != ring.DefaultPartitions || n.Share.Owned != ring.DefaultPartitions ||
			n.Share.Primaries < 341 || n.Share.Primaries > 342 || n.Share.Fraction < 0.333 || n.Share.Fraction > 0.334 {
			t.Fatalf("node.list share of %s = %+v", n.ID, n.Share)
		}
	}

	// A heartbeat of an active node reads the map, never claims one.
	nc := connect(t, c)
	for _, n := range list {
		if _, e := register(t, nc, subjects.NodeRequest{NodeID: n.ID, Epoch: n.Epoch, Protocol: subjects.NodeProtocolVersion}); e != nil {
			t.Fatal(e)
		}
	}
	if info, err := admin.PlacementInfo(ctx); err != nil || info.Version != m1.Version() {
		t.Fatalf("after heartbeats the map is version %d (%v), want %d", info.Version, err, m1.Version())
	}

	// A new node registers joining, streams its partitions and becomes
	// active: then it owns a quarter.
	if err := c.StartNode("node-4"); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, admin, "node-4", "active")
	m2 := agreed(t, c, "node-1", "node-2", "node-3", "node-4")
	if m2.Version() <= m1.Version() {
		t.Fatalf("map version %d after a join, was %d", m2.Version(), m1.Version())
	}
	checkBalanced(t, m2)
	if p := m2.Load(1)["node-4"]; p != ring.DefaultPartitions/4 {
		t.Fatalf("node-4 is primary of %d partitions, want %d", p, ring.DefaultPartitions/4)
	}
	// Claim moved little: about the new node's share of the first three
	// owners (it takes 768 of the 3072 RF-3 slots), not a reshuffle.
	moved := 0
	var a, b []string
	for p := range uint32(m2.Partitions()) {
		a, b = m1.Owners(p, a), m2.Owners(p, b)
		for j := range 3 {
			if a[j] != b[j] {
				moved++
			}
		}
	}
	if moved > 3*ring.DefaultPartitions/4*11/10 {
		t.Fatalf("adding a 4th node changed %d of the %d RF-3 owner slots; want about %d", moved, 3*ring.DefaultPartitions, 3*ring.DefaultPartitions/4)
	}

	// Drain: out of the target at once; out of every owner list once its
	// partitions streamed away (left), on every coordinator.
	if _, err := admin.DrainNode(ctx, "node-4"); err != nil {
		t.Fatal(err)
	}
	stored, err := admin.Placement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tn := stored.TargetNodes(); fmt.Sprint(tn) != "[node-1 node-2 node-3]" {
		t.Fatalf("stored target after the drain: %v", tn)
	}
	waitStatus(t, admin, "node-4", "left")
	m3 := agreed(t, c, "node-1", "node-2", "node-3")
	var owners []string
	for p := range uint32(m3.Partitions()) {
		for _, o := range m3.Owners(p, owners) {
			if o == "node-4" {
				t.Fatalf("the drained node-4 still owns partition %d", p)
			}
		}
	}
	checkBalanced(t, m3)
	list, _ = admin.ListNodes(ctx)
	for _, n := range list {
		if n.ID == "node-4" && (n.Status != "left" || n.Share == nil || n.Share.Owned != 0) {
			t.Fatalf("node.list entry of the drained node: %+v %+v", n, n.Share)
		}
	}
	kv := kvClient(t, c, "default")
	if res, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All)); err != nil || res.ReplicaCount != 3 {
		t.Fatalf("put at all after the drain: %v %+v", err, res)
	}
	// The drained node's heartbeat claims nothing either.
	n4, err := c.Metadata().GetNode(ctx, "node-4")
	if err != nil {
		t.Fatal(err)
	}
	if _, e := register(t, nc, subjects.NodeRequest{NodeID: "node-4", Epoch: n4.Epoch, Protocol: subjects.NodeProtocolVersion}); e != nil {
		t.Fatal(e)
	}
	if info, _ := admin.PlacementInfo(ctx); info.Version != m3.Version() {
		t.Fatalf("a left node's heartbeat moved the map to version %d", info.Version)
	}
}

// waitStatus waits until node list shows node id with status.
// The transfer of a new node's partitions (empty here, but paced) takes
// a while under the race detector on a loaded machine.
func waitStatus(t *testing.T, admin *client.Admin, id, status string) {
	t.Helper()
	waitFor(t, 90*time.Second, func() error {
		ns, err := admin.ListNodes(ctxT(t))
		if err != nil {
			return err
		}
		for _, n := range ns {
			if n.ID == id && n.Status == status {
				return nil
			}
		}
		return fmt.Errorf("node %s is not %s: %+v", id, status, ns)
	})
}

// TestPlacementConcurrentDrains: two drains at once, through two
// coordinators, serialise through the map's optimistic locking and end
// with one map, valid and balanced, without either node.
func TestPlacementConcurrentDrains(t *testing.T) {
	c, admin := placementCluster(t, 5)
	// Transfers run between the steps: a deadline for the whole test.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m0 := agreed(t, c, "node-1", "node-2", "node-3", "node-4", "node-5")
	// Admin requests are spread over the coordinators' queue group, so the
	// two drains are usually handled by different coordinators; either way
	// the claims race for the same version (routing_internal_test.go forces
	// that race deterministically).
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, id := range []string{"node-4", "node-5"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = admin.DrainNode(context.WithoutCancel(ctx), id)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	waitStatus(t, admin, "node-4", "left")
	waitStatus(t, admin, "node-5", "left")
	m := agreed(t, c, "node-1", "node-2", "node-3")
	if m.Version() <= m0.Version() {
		t.Fatalf("map version %d after two drains from version %d", m.Version(), m0.Version())
	}
	checkBalanced(t, m)
	// The stored map is the one the coordinators route by.
	stored, err := admin.Placement(ctxT(t)) // the transfers took a while: a fresh deadline
	if err != nil {
		t.Fatal(err)
	}
	if !stored.Equal(m) || stored.Version() != m.Version() {
		t.Fatalf("stored map version %d differs from the coordinators' version %d", stored.Version(), m.Version())
	}
}
