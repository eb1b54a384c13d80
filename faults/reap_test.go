package faults

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tombstone reaping end to end (issue 15, D6/D7): real coordinators, real
// storage nodes, deletes through the client API, a tenant with a 1 s
// tombstone grace.

// sstBytes is the size of the Pebble tables in dir: what the data takes on
// disk once flushed (the write-ahead log is recycled, so it is left out).
func sstBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".sst") {
			return err
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // compacted away meanwhile
		}
		if err != nil {
			return err
		}
		total += info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return total
}

// dumpKeys returns node's keys of tenant: live ones and tombstones.
func dumpKeys(t *testing.T, admin *client.Admin, node, tenant string) (live, dead map[string]bool) {
	t.Helper()
	es, err := admin.DumpAll(context.Background(), node, tenant)
	if err != nil {
		t.Fatalf("dump %s: %v", node, err)
	}
	live, dead = map[string]bool{}, map[string]bool{}
	for _, e := range es {
		if e.Tombstone {
			dead[e.Key] = true
		} else {
			live[e.Key] = true
		}
	}
	return live, dead
}

// parallel runs f(i) for i in 0..n-1 on 8 goroutines and fails on the
// first error.
func parallel(t *testing.T, n int, f func(i int) error) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d calls failed, e.g. %v", len(errs), n, errs[0])
	}
}

// TestReapDeletedKeysEverywhere: keys deleted in a tenant with a 1 s grace
// lose their tombstones on every replica, their disk space comes back,
// and they stay deleted. Then, with one replica stopped through the
// grace and missing the deletes: nothing is reaped while it is down; it
// comes back stale (down longer than the grace) with the map unchanged,
// so it keeps its copy with the old values; no quorum read sees a deleted
// key, nothing is reaped while it holds them, anti-entropy brings it the
// tombstones, and then every replica reaps them: no deleted key comes
// back, before or after the reaping resumes.
func TestReapDeletedKeysEverywhere(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, nc := devcluster.StartForTest(t, devcluster.Config{ReapInterval: 300 * time.Millisecond, AntiEntropyInterval: time.Second, Metrics: reg})
	admin := client.NewAdmin(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rf, grace := 3, time.Second
	if _, err := admin.CreateTenant(ctx, "graced", client.TenantSpec{ReplicationFactor: &rf, TombstoneGrace: &grace}); err != nil {
		t.Fatal(err)
	}
	kv, err := client.New(nc, "graced")
	if err != nil {
		t.Fatal(err)
	}
	nodes := []string{"node-1", "node-2", "node-3"}
	const n = 5000 // 20 MB of values: more than a memtable, so tables hold them
	key := func(i int) string { return fmt.Sprintf("k-%05d", i) }
	parallel(t, n, func(i int) error {
		v := make([]byte, 4096) // incompressible
		_, _ = rand.Read(v)
		_, err := kv.Put(ctx, key(i), v, client.WithConsistency(subjects.All))
		return err
	})
	start := time.Now()
	before := map[string]int64{}
	for _, id := range nodes {
		before[id] = sstBytes(t, c.NodeDir(id))
		if before[id] < 8<<20 {
			t.Fatalf("%s holds %d bytes of tables after 20 MB of puts", id, before[id])
		}
	}
	parallel(t, n, func(i int) error {
		_, err := kv.Delete(ctx, key(i), client.WithConsistency(subjects.All))
		return err
	})
	t.Logf("deletes done after %v", time.Since(start))
	deadline := time.Now().Add(90 * time.Second)
	for _, id := range nodes {
		for {
			live, dead := dumpKeys(t, admin, id, "graced")
			size := sstBytes(t, c.NodeDir(id))
			if len(live) == 0 && len(dead) == 0 && size*4 < before[id] {
				t.Logf("%s: tables %d → %d bytes", id, before[id], size)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds %d live keys, %d tombstones, %d bytes of tables (%d before)", id, len(live), len(dead), size, before[id])
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("reaped everywhere after %v", time.Since(start))
	if got := reaped(t, reg); got < 3*n {
		t.Errorf("quorumkv_reaped_total = %v, want at least %d (every key on every replica)", got, 3*n)
	}
	for i := 0; i < n; i += 97 {
		if r, err := kv.Get(ctx, key(i), client.WithConsistency(subjects.All)); !errors.Is(err, client.ErrNotFound) || r.Found {
			t.Fatalf("reaped key %q read back: %+v %v", key(i), r, err)
		}
	}

	// node-3 down through the grace, missing the deletes.
	const m = 200
	parallel(t, m, func(i int) error {
		_, err := kv.Put(ctx, "b-"+key(i), []byte("old"), client.WithConsistency(subjects.All))
		return err
	})
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	parallel(t, m, func(i int) error {
		_, err := kv.Delete(ctx, "b-"+key(i), client.WithConsistency(subjects.Quorum))
		return err
	})
	time.Sleep(3 * grace) // many reap passes, all past the grace
	for _, id := range nodes[:2] {
		if _, dead := dumpKeys(t, admin, id, "graced"); len(dead) != m {
			t.Fatalf("%s holds %d of %d tombstones while node-3 is down: reaped without its confirmation", id, len(dead), m)
		}
	}
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	// A quorum read meets a quorum delete, whatever node-3 still holds.
	for i := range m {
		if r, err := kv.Get(ctx, "b-"+key(i), client.WithConsistency(subjects.Quorum)); !errors.Is(err, client.ErrNotFound) || r.Found {
			t.Fatalf("deleted key %q read at quorum after node-3 returned: %+v %v", "b-"+key(i), r, err)
		}
	}
	deadline = time.Now().Add(60 * time.Second)
	for _, id := range nodes {
		for {
			live, dead := dumpKeys(t, admin, id, "graced")
			if id != "node-3" && len(live) > 0 {
				t.Fatalf("%s holds %d live keys that were deleted (e.g. one of %v)", id, len(live), live)
			}
			if len(live) == 0 && len(dead) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still holds %d live keys and %d tombstones after node-3 returned", id, len(live), len(dead))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for i := range m {
		if r, err := kv.Get(ctx, "b-"+key(i), client.WithConsistency(subjects.All)); !errors.Is(err, client.ErrNotFound) || r.Found {
			t.Fatalf("deleted key %q after the reaping: %+v %v", "b-"+key(i), r, err)
		}
	}
}

// reaped sums quorumkv_reaped_total over every node.
func reaped(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "quorumkv_reaped_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// TestWholeClusterRestartAfterTheGrace: every storage node of a cluster
// stops for longer than the smallest tombstone grace (a tenant's 1 s;
// think of a power cut, or a staging cluster parked for longer than the
// default 7 days) and then starts again. Nobody could reap while every
// owner was down, and the map did not change, so every acknowledged
// write reads back at quorum, and no node rebuilds anything.
func TestWholeClusterRestartAfterTheGrace(t *testing.T) {
	c, nc := devcluster.StartForTest(t, devcluster.Config{ReapInterval: 200 * time.Millisecond})
	admin := client.NewAdmin(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rf, grace := 3, time.Second
	if _, err := admin.CreateTenant(ctx, "parked", client.TenantSpec{ReplicationFactor: &rf, TombstoneGrace: &grace}); err != nil {
		t.Fatal(err)
	}
	kv, err := client.New(nc, "parked")
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	key := func(i int) string { return fmt.Sprintf("k-%03d", i) }
	parallel(t, n, func(i int) error {
		_, err := kv.Put(ctx, key(i), []byte("v-"+key(i)), client.WithConsistency(subjects.Quorum))
		return err
	})
	nodes := []string{"node-1", "node-2", "node-3"}
	time.Sleep(time.Second) // reap passes: every node learns the 1 s grace
	for _, id := range nodes {
		if err := c.StopNode(id); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(3 * grace)
	for _, id := range nodes {
		if err := c.StartNode(id); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		r, err := kv.Get(ctx, key(i), client.WithConsistency(subjects.Quorum))
		if err != nil || string(r.Value) != "v-"+key(i) {
			t.Fatalf("acknowledged %q after the whole cluster restarted: %+v %v", key(i), r, err)
		}
	}
	for _, id := range nodes {
		if st := c.Node(id).TransferStatus(); st != nil && st.RebuildTotal > 0 {
			t.Fatalf("%s rebuilds %d partitions after a restart with the map unchanged", id, st.RebuildTotal)
		}
	}
}
