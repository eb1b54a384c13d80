package coordinator_test

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// siblingsTenant creates tenant id with the siblings policy, RF 3.
func siblingsTenant(t *testing.T, c *devcluster.Cluster, id string) *client.Client {
	t.Helper()
	policy := subjects.PolicySiblings
	if _, err := client.NewAdmin(connect(t, c)).CreateTenant(ctxT(t), id, client.TenantSpec{ConflictPolicy: &policy}); err != nil {
		t.Fatal(err)
	}
	return kvClient(t, c, id)
}

func values(g *client.GetResult) []string {
	var out []string
	if len(g.Siblings) == 0 {
		return []string{string(g.Value)}
	}
	for _, s := range g.Siblings {
		out = append(out, string(s))
	}
	sort.Strings(out)
	return out
}

// dumpKey returns what each node holds for key of tenant.
func dumpKey(t *testing.T, c *devcluster.Cluster, tenant, key string, nodes int) []subjects.DumpEntry {
	t.Helper()
	admin := client.NewAdmin(connect(t, c))
	var out []subjects.DumpEntry
	for i := 1; i <= nodes; i++ {
		es, err := admin.DumpAll(ctxT(t), devcluster.NodeID(i), tenant)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Key == key {
				out = append(out, e)
			}
		}
	}
	return out
}

func TestSiblingsKeepConcurrentWritesAndResolveWithContext(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "sib")
	ctx := ctxT(t)
	// Two writers with no context: both values are kept.
	if _, err := kv.Put(ctx, "k", []byte("a"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("b"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if v := values(got); !slices.Equal(v, []string{"a", "b"}) {
		t.Fatalf("siblings %q, want a and b", v)
	}
	if !strings.HasPrefix(got.Context, "d2.") {
		t.Fatalf("siblings context %q", got.Context)
	}
	// A write with the read's context replaces exactly those: one value on
	// every replica.
	if _, err := kv.Put(ctx, "k", []byte("ab"), client.WithContext(got.Context), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != 0 || string(got.Value) != "ab" {
		t.Fatalf("after resolving: %v %+v", err, got)
	}
	for _, e := range dumpKey(t, c, "sib", "k", 3) {
		if e.Siblings != 1 || string(e.Value) != "ab" {
			t.Fatalf("replica holds %d values (%q), want only the resolved one", e.Siblings, e.Value)
		}
	}
	// A write with a stale context keeps the value it did not see.
	if _, err := kv.Put(ctx, "k", []byte("c"), client.WithContext(got.Context)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("d"), client.WithContext(got.Context)); err != nil {
		t.Fatal(err)
	}
	got, _ = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if v := values(got); !slices.Equal(v, []string{"c", "d"}) {
		t.Fatalf("after two writes from one read: %q, want c and d", v)
	}
	// A delete with the context removes what it saw; the key reads as not
	// found with a context that a later write supersedes.
	del, err := kv.Delete(ctx, "k", client.WithContext(got.Context), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	gone, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if !errors.Is(err, client.ErrNotFound) || gone.Context == "" || gone.Context != del.Context {
		t.Fatalf("after delete: %v %+v (delete context %q)", err, gone, del.Context)
	}
	if _, err := kv.Put(ctx, "k", []byte("back"), client.WithContext(gone.Context), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != 0 || string(got.Value) != "back" {
		t.Fatalf("revived: %v %+v", err, got)
	}
	// An lww context is not a siblings context.
	_, err = kv.Put(ctx, "k", []byte("x"), client.WithContext("l1.AaIUYfr9AABkMjMxOWMxZQ"))
	assertCode(t, err, 400, "siblings tenant")
}

// TestSiblingsThroughOneCoordinator: concurrent writers through a single
// coordinator both survive — the case per-coordinator clocks get wrong.
func TestSiblingsThroughOneCoordinator(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "one")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "k", []byte("base"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	base, _ := kv.Get(ctx, "k")
	var wg sync.WaitGroup
	for _, v := range []string{"x", "y", "z"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := kv.Put(ctx, "k", []byte(v), client.WithContext(base.Context)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	if v := values(got); !slices.Equal(v, []string{"x", "y", "z"}) {
		t.Fatalf("concurrent writes from one read through one coordinator: %q, want x, y and z", v)
	}
}

// TestSiblingsSetWorkload is Jepsen's set workload without faults: clients
// add unique elements to a few keys (read with context, union, write with
// context) through several coordinators at once; every acknowledged
// element is in the final read.
func TestSiblingsSetWorkload(t *testing.T) {
	c := startCluster(t, 3)
	siblingsTenant(t, c, "set")
	for i := 0; i < 2; i++ {
		if _, err := c.AddCoordinator(ctxT(t)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.WaitForNodes(ctxT(t), 3); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	const keys, clients, adds = 2, 8, 15
	var (
		mu    sync.Mutex
		acked = map[string][]string{}
		wg    sync.WaitGroup
	)
	for w := 0; w < clients; w++ {
		kv := kvClient(t, c, "set")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < adds; i++ {
				key := fmt.Sprintf("set-%d", (w+i)%keys)
				elem := fmt.Sprintf("c%d-e%d", w, i)
				cur, err := kv.Get(ctx, key)
				if err != nil && !errors.Is(err, client.ErrNotFound) {
					t.Errorf("read: %v", err)
					return
				}
				set := union(cur)
				set[elem] = true
				if _, err := kv.Put(ctx, key, encodeSet(set), client.WithContext(cur.Context)); err != nil {
					t.Errorf("write: %v", err)
					return
				}
				mu.Lock()
				acked[key] = append(acked[key], elem)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	kv := kvClient(t, c, "set")
	total := 0
	for key, elems := range acked {
		got, err := kv.Get(ctx, key, client.WithConsistency(subjects.All))
		if err != nil {
			t.Fatal(err)
		}
		final := union(got)
		for _, e := range elems {
			if !final[e] {
				t.Errorf("%s: acknowledged element %s lost", key, e)
			}
		}
		total += len(elems)
	}
	if total != clients*adds {
		t.Fatalf("%d acknowledged adds, want %d", total, clients*adds)
	}
}

func union(g *client.GetResult) map[string]bool {
	set := map[string]bool{}
	if g == nil || !g.Found {
		return set
	}
	vals := g.Siblings
	if len(vals) == 0 {
		vals = [][]byte{g.Value}
	}
	for _, v := range vals {
		for _, e := range strings.Split(string(v), ",") {
			if e != "" {
				set[e] = true
			}
		}
	}
	return set
}

func encodeSet(set map[string]bool) []byte {
	var elems []string
	for e := range set {
		elems = append(elems, e)
	}
	sort.Strings(elems)
	return []byte(strings.Join(elems, ","))
}

// TestSiblingCap: the 101st concurrent client write is refused with 409;
// a repair merge past the cap is accepted.
func TestSiblingCap(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "cap")
	ctx := ctxT(t)
	for i := 0; i < subjects.MaxSiblings; i++ {
		if _, err := kv.Put(ctx, "k", []byte(fmt.Sprint(i)), client.WithConsistency(subjects.All)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	_, err := kv.Put(ctx, "k", []byte("one too many"), client.WithConsistency(subjects.All))
	assertCode(t, err, 409, "more than 100")
	if !errors.Is(err, client.ErrTooManySiblings) {
		t.Fatalf("%v does not match ErrTooManySiblings", err)
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != subjects.MaxSiblings {
		t.Fatalf("after the refused write: %v, %d siblings", err, len(got.Siblings))
	}
	// A merge (what repair sends) of a state with more values still lands.
	var st vclock.DVVSet
	for i := 0; i < 5; i++ {
		st, _, _ = vclock.Update(st, nil, "repair-test.1", vclock.Value{Data: []byte(fmt.Sprint("extra", i))})
	}
	b, _ := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion,
		Items: []subjects.NodeWrite{{ID: 1, Tenant: "cap", Key: "k", DVV: &st}}})
	nc := connect(t, c)
	for i := 1; i <= 3; i++ {
		msg, err := nc.Request(subjects.StorageNode(devcluster.NodeID(i), subjects.NodeOpWrite), b, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var r subjects.NodeWriteReply
		if err := msgpack.Unmarshal(msg.Data, &r); err != nil || len(r.Results) != 1 || r.Results[0].Err != "" {
			t.Fatalf("repair merge past the cap: %v %+v", err, r)
		}
	}
	got, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != subjects.MaxSiblings+5 {
		t.Fatalf("after the merge: %v, %d siblings", err, len(got.Siblings))
	}
	// Resolving with the read's context brings the key back to one value.
	if _, err := kv.Put(ctx, "k", []byte("resolved"), client.WithContext(got.Context), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	got, _ = kv.Get(ctx, "k")
	if len(got.Siblings) != 0 || string(got.Value) != "resolved" {
		t.Fatalf("after resolving: %+v", got)
	}
}

// TestSiblingsWipedNodeGetsNewEpoch: a node whose data directory is wiped
// comes back with a new epoch; the dots it mints are not dominated by its
// old ones, and nothing written before the wipe is lost.
func TestSiblingsWipedNodeGetsNewEpoch(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "wipe")
	ctx := ctxT(t)
	// The key's first primary coordinates its writes.
	if _, err := kv.Put(ctx, "k", []byte("before"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	entries := dumpKey(t, c, "wipe", "k", 3)
	coordActor := entries[0].Actor
	coordNode, _, _ := strings.Cut(coordActor, ".")
	oldEpoch := c.Node(coordNode).Epoch()
	if err := c.StopNode(coordNode); err != nil {
		t.Fatal(err)
	}
	if err := removeAll(c.NodeDir(coordNode)); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode(coordNode); err != nil {
		t.Fatal(err)
	}
	if c.Node(coordNode).Epoch() == oldEpoch {
		t.Fatal("a wiped node kept its epoch")
	}
	// It rebuilds the partitions it owns before it answers reads of them
	// (storage rebuild.go); writes are accepted meanwhile.
	deadline := time.Now().Add(30 * time.Second)
	for st := c.Node(coordNode).TransferStatus(); st == nil || st.RebuildTotal == 0 || st.RebuildDone < st.RebuildTotal; st = c.Node(coordNode).TransferStatus() {
		if time.Now().After(deadline) {
			t.Fatalf("the wiped node did not rebuild: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The rebuilt node coordinates a concurrent write: a new dot, kept next
	// to the old value rather than mistaken for something already seen.
	if _, err := kv.Put(ctx, "k", []byte("after"), client.WithConsistency(subjects.Quorum)); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	if v := values(got); !slices.Equal(v, []string{"after", "before"}) {
		t.Fatalf("after the wipe: %q, want both values", v)
	}
	after := dumpKey(t, c, "wipe", "k", 3)
	actors := map[string]bool{}
	for _, e := range after {
		if e.DVV != nil {
			for _, en := range e.DVV.Entries {
				actors[en.Actor] = true
			}
		}
	}
	if !actors[coordActor] || !actors[vclock.ReplicaActor(coordNode, c.Node(coordNode).Epoch())] {
		t.Fatalf("actors %v: want the old incarnation %s and the new one", actors, coordActor)
	}
}

// TestSiblingsRepairConverges: a primary that was down while siblings were
// written receives the complete states through hints, so every replica ends
// with identical version sets (checked on the nodes themselves).
func TestSiblingsRepairConverges(t *testing.T) {
	c := startClusterWith(t, devcluster.Config{Repair: repair.Config{Backoff: 20 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, FetchWait: 200 * time.Millisecond}})
	kv := siblingsTenant(t, c, "heal")
	ctx := ctxT(t)
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		key := fmt.Sprintf("k%d", i)
		for _, v := range []string{"a", "b"} { // two siblings per key
			if _, err := kv.Put(ctx, key, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	admin := client.NewAdmin(connect(t, c))
	waitFor(t, 30*time.Second, func() error {
		var ref map[string]vclock.DVVSet
		for i := 1; i <= 3; i++ {
			es, err := admin.DumpAll(ctx, devcluster.NodeID(i), "heal")
			if err != nil {
				return err
			}
			states := map[string]vclock.DVVSet{}
			for _, e := range es {
				if e.DVV != nil {
					states[e.Key] = *e.DVV
				}
			}
			if ref == nil {
				ref = states
				continue
			}
			if len(states) != len(ref) {
				return fmt.Errorf("%s holds %d keys, node-1 %d", devcluster.NodeID(i), len(states), len(ref))
			}
			for k, st := range ref {
				if !states[k].Equal(st) {
					return fmt.Errorf("%s differs on %s", devcluster.NodeID(i), k)
				}
			}
		}
		if len(ref) != 50 {
			return fmt.Errorf("node-1 holds %d keys", len(ref))
		}
		return nil
	})
}
