package coordinator_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

func ptr[T any](v T) *T { return &v }

// assertKind fails unless err is a client.Error of code and kind, and
// still matches client.ErrConflict when the code is 409 (so callers that
// test for the class keep working).
func assertKind(t *testing.T, err error, code int, kind string) {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a %d %s error", err, code, kind)
	}
	if e.Code != code || e.Kind != kind {
		t.Fatalf("got %d %s (%q), want %d %s", e.Code, e.Kind, e.Message, code, kind)
	}
	if code == 409 && !errors.Is(err, client.ErrConflict) {
		t.Fatalf("%v does not match client.ErrConflict", err)
	}
}

func TestTenantLifecycle(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	admin := client.NewAdmin(connect(t, c))
	created, err := admin.CreateTenant(ctx, "acme", client.TenantSpec{ReplicationFactor: ptr(2), DefaultConsistency: ptr("all")})
	if err != nil {
		t.Fatal(err)
	}
	if created.ID != "acme" || created.ReplicationFactor != 2 || created.DefaultConsistency != "all" || created.ConflictPolicy != "lww" || created.Version != 1 || created.CreatedAt.IsZero() {
		t.Fatalf("created %+v", created)
	}
	got, err := admin.GetTenant(ctx, "acme")
	if err != nil || *got != *created {
		t.Fatalf("get %+v %v, want %+v", got, err, created)
	}
	list, err := admin.ListTenants(ctx)
	if err != nil || len(list) != 2 || list[0].ID != "acme" || list[1].ID != "default" {
		t.Fatalf("list %+v %v", list, err)
	}
	kv := kvClient(t, c, "acme")
	res, err := kv.Put(ctx, "k", []byte("v"))
	if err != nil || res.Consistency != "all" || res.ReplicaCount != 2 {
		t.Fatalf("put with the tenant's defaults: %v %+v", err, res)
	}
	// Policy switches are refused with a reason.
	_, err = admin.UpdateTenant(ctx, "acme", 1, client.TenantSpec{ConflictPolicy: ptr("siblings")})
	assertCode(t, err, 400, "conflict_policy cannot change")
	// Deleting a tenant that holds data needs force.
	err = admin.DeleteTenant(ctx, "acme", false)
	assertCode(t, err, 409, "still holds data")
	assertKind(t, err, 409, subjects.KindTenantNotEmpty)
	if err := admin.DeleteTenant(ctx, "acme", true); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.GetTenant(ctx, "acme"); !errors.Is(err, client.ErrNoSuchTenant) {
		t.Fatalf("get after delete: %v", err)
	}
	// The delete reaches the coordinators by event; the cache TTL (30 s) is
	// the fallback, so 10 s still proves the event worked on a loaded machine.
	waitFor(t, 10*time.Second, func() error {
		_, err := kv.Get(ctx, "k")
		if errors.Is(err, client.ErrNoSuchTenant) {
			return nil
		}
		return fmt.Errorf("get on a deleted tenant: %v", err)
	})
	// An empty tenant deletes without force; so does one whose keys are all
	// deleted, but not one with a live key behind a tombstone.
	if _, err := admin.CreateTenant(ctx, "empty", client.TenantSpec{}); err != nil {
		t.Fatal(err)
	}
	ekv := kvClient(t, c, "empty")
	for _, k := range []string{"a", "b"} {
		if _, err := ekv.Put(ctx, k, []byte("v"), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ekv.Delete(ctx, "a", client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	assertCode(t, admin.DeleteTenant(ctx, "empty", false), 409, "still holds data")
	if _, err := ekv.Delete(ctx, "b", client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteTenant(ctx, "empty", false); err != nil {
		t.Fatal(err)
	}
}

// TestTenantUpdateReachesEveryCoordinator: an update is used by every
// coordinator within one second (the event, not the cache TTL, carries it).
func TestTenantUpdateReachesEveryCoordinator(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	for i := 0; i < 2; i++ {
		if _, err := c.AddCoordinator(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	kv := kvClient(t, c, "default")
	// Warm every coordinator's cache (queue groups spread the requests).
	for i := 0; i < 30; i++ {
		if res, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All)); err != nil || res.ReplicaCount != 3 {
			t.Fatalf("put: %v %+v", err, res)
		}
	}
	admin := client.NewAdmin(connect(t, c))
	cur, _ := admin.GetTenant(ctx, "default")
	if _, err := admin.UpdateTenant(ctx, "default", cur.Version, client.TenantSpec{ReplicationFactor: ptr(2)}); err != nil {
		t.Fatal(err)
	}
	// A second update from the same read is stale.
	_, err := admin.UpdateTenant(ctx, "default", cur.Version, client.TenantSpec{ReplicationFactor: ptr(1)})
	assertCode(t, err, 409, "stale version")
	// The update reaches every coordinator by event; without it they would
	// wait for the cache TTL (30 s), so 10 s proves the event on a loaded
	// machine as well as 1 s did on an idle one.
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := true
		for i := 0; i < 30; i++ {
			res, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All))
			if err != nil {
				t.Fatal(err)
			}
			ok = ok && res.ReplicaCount == 2
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("some coordinator still uses RF 3 ten seconds after the update, well short of the 30 s cache TTL")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestNodeDrainAndRemove(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxFor(t, drainWait+30*time.Second)
	admin := client.NewAdmin(connect(t, c))
	// Draining would leave 2 active nodes for an RF 3 tenant: refused.
	_, err := admin.DrainNode(ctx, "node-3")
	assertCode(t, err, 409, "replication_factor 3")
	assertKind(t, err, 409, subjects.KindTooFewNodes)
	// Removing an active node is refused: drain it first.
	assertKind(t, admin.RemoveNode(ctx, "node-3"), 409, subjects.KindNodeActive)
	cur, _ := admin.GetTenant(ctx, "default")
	if _, err := admin.UpdateTenant(ctx, "default", cur.Version, client.TenantSpec{ReplicationFactor: ptr(2)}); err != nil {
		t.Fatal(err)
	}
	n, err := admin.DrainNode(ctx, "node-3")
	if err != nil || n.Status != "leaving" {
		t.Fatalf("drain: %v %+v", err, n)
	}
	// The drain reaches the coordinators by a ring event; 10 s is far
	// below any fallback reload, so it still proves the event.
	waitFor(t, 10*time.Second, func() error {
		if a := len(c.Coordinators()[0].Placement().TargetNodes()); a != 2 {
			return fmt.Errorf("%d nodes in the placement target", a)
		}
		return nil
	})
	// Re-registration (the heartbeat) keeps a leaving node leaving, until
	// its partitions streamed away: then it is left.
	waitFor(t, drainWait, func() error {
		nodes, _ := admin.ListNodes(ctx)
		if len(nodes) != 3 || nodes[2].ID != "node-3" || nodes[2].Status != "left" {
			return fmt.Errorf("nodes %+v", nodes)
		}
		return nil
	})
	kv := kvClient(t, c, "default")
	res, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All))
	if err != nil || res.ReplicaCount != 2 {
		t.Fatalf("put after drain: %v %+v", err, res)
	}
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveNode(ctx, "node-3"); err != nil {
		t.Fatal(err)
	}
	nodes, _ := admin.ListNodes(ctx)
	if len(nodes) != 2 {
		t.Fatalf("nodes after remove: %+v", nodes)
	}
	if err := admin.RemoveNode(ctx, "node-3"); !errors.Is(err, client.ErrNoSuchNode) {
		t.Fatalf("second remove: %v", err)
	}
}

// register sends a node.register as a storage node's heartbeat does and
// returns the wire error, if any.
func register(t *testing.T, nc *nats.Conn, req subjects.NodeRequest) (*subjects.Node, *subjects.Error) {
	t.Helper()
	data, err := msgpack.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subjects.AdminNodeRegister, data, 10*time.Second)
	if err != nil {
		t.Fatalf("register %s: %v", req.NodeID, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, e
	}
	var n subjects.Node
	if err := msgpack.Unmarshal(msg.Data, &n); err != nil {
		t.Fatal(err)
	}
	return &n, nil
}

// TestNodeRegisterWithoutEpoch: a registration of an existing node that
// leaves out its epoch is refused, and the stored epoch stays.
func TestNodeRegisterWithoutEpoch(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	before, err := c.Metadata().GetNode(ctx, "node-1")
	if err != nil || before.Epoch == 0 {
		t.Fatalf("node-1: %+v %v", before, err)
	}
	if _, e := register(t, nc, subjects.NodeRequest{NodeID: "node-1"}); e == nil || e.Code != 400 || e.Kind != subjects.KindInvalid {
		t.Fatalf("register node-1 without epoch: %v, want 400 invalid", e)
	}
	after, err := c.Metadata().GetNode(ctx, "node-1")
	if err != nil || after.Epoch != before.Epoch {
		t.Fatalf("node-1 epoch %d after the refused register, want %d (%v)", after.Epoch, before.Epoch, err)
	}
	// A new id may still register without one (its epoch is then 0).
	if n, e := register(t, nc, subjects.NodeRequest{NodeID: "fresh"}); e != nil || n.Status != "joining" {
		t.Fatalf("register a new node without epoch: %+v %v", n, e)
	}
	nodes, err := admin.ListNodes(ctx)
	if err != nil || len(nodes) != 4 {
		t.Fatalf("nodes %+v %v", nodes, err)
	}
}

// TestNodeRemoveRefusals: a node whose process still runs cannot be
// removed, and a removed node's heartbeat never brings it back until an
// operator re-admits it with node join.
func TestNodeRemoveRefusals(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxFor(t, 2*drainWait+30*time.Second) // a drain, and a join that streams back
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	cur, _ := admin.GetTenant(ctx, "default")
	if _, err := admin.UpdateTenant(ctx, "default", cur.Version, client.TenantSpec{ReplicationFactor: ptr(2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.DrainNode(ctx, "node-3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, drainWait, func() error {
		if n, err := c.Metadata().GetNode(ctx, "node-3"); err != nil || n.Status != "left" {
			return fmt.Errorf("node-3: %+v %v", n, err)
		}
		return nil
	})
	// Left but still running: its heartbeat would undo the removal.
	assertKind(t, admin.RemoveNode(ctx, "node-3"), 409, subjects.KindNodeLive)
	if n, err := c.Metadata().GetNode(ctx, "node-3"); err != nil || n.Status != "left" {
		t.Fatalf("node-3 after the refused remove: %+v %v", n, err)
	}
	epoch := c.Node("node-3").Epoch()
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveNode(ctx, "node-3"); err != nil {
		t.Fatal(err)
	}
	// Its heartbeat (the same request the node sends) is refused, and the
	// node stays gone.
	if _, e := register(t, nc, subjects.NodeRequest{NodeID: "node-3", Epoch: epoch}); e == nil || e.Code != 409 || e.Kind != subjects.KindNodeRemoved {
		t.Fatalf("heartbeat of a removed node: %v, want 409 node_removed", e)
	}
	nodes, err := admin.ListNodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes after a removed node's heartbeat: %+v %v", nodes, err)
	}
	// A join of an active node changes nothing; of an unknown id is 404;
	// of a removed id re-admits it once.
	if n, err := admin.Join(ctx, "node-1"); err != nil || n == nil || n.Status != "active" {
		t.Fatalf("join an active node: %+v %v, want it answered as is", n, err)
	}
	if err := admin.JoinNode(ctx, "ghost"); !errors.Is(err, client.ErrNoSuchNode) {
		t.Fatalf("join an unknown id: %v, want no such node", err)
	}
	if err := admin.JoinNode(ctx, "node-3"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	waitFor(t, drainWait, func() error {
		if n, err := c.Metadata().GetNode(ctx, "node-3"); err != nil || n.Status != "active" {
			return fmt.Errorf("node-3 after join: %+v %v", n, err)
		}
		return nil
	})
}
