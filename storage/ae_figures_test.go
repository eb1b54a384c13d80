package storage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestAEFigures prints the anti-entropy figures docs/PERFORMANCE.md
// quotes (issue 15, "Measured") and checks what they rest on: three nodes
// in one process (real NATS, Pebble, Q 1024) hold the same keys; 1 % of
// them get a newer version on one replica only, each on a different
// replica in turn; one anti-entropy pass on every node must converge them
// and count exactly two keys repaired per divergent key (the two replicas
// that lacked it). Then an idle pass: what it costs in CPU, and so what an
// idle cluster costs at the default interval.
//
// QUORUMKV_AE_FIGURE_KEYS sets the keys (default 20,000, quick; the
// figures in docs/PERFORMANCE.md use 1,000,000):
//
//	QUORUMKV_AE_FIGURE_KEYS=1000000 go test -run TestAEFigures -v -timeout 30m ./storage/
func TestAEFigures(t *testing.T) {
	keys := 20_000
	if v := os.Getenv("QUORUMKV_AE_FIGURE_KEYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 {
			t.Fatalf("QUORUMKV_AE_FIGURE_KEYS=%q: want a number ≥ 100", v)
		}
		keys = n
	}
	const (
		tenant    = "figures"
		valueSize = 100
	)
	s := natstest.RunServer(t)
	ids := []string{"a", "b", "c"}
	var ns []ring.Node
	for _, id := range ids {
		ns = append(ns, ring.Node{ID: id})
	}
	m, err := ring.Claim(nil, ns, ring.DefaultPartitions)
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeCoord(t, s, m, false)
	f.serveTenants(t, map[string]int{tenant: 3})
	root := t.TempDir()
	nodes := map[string]*Node{}
	for _, id := range ids {
		// No pass on its own: the test runs them and times them.
		nodes[id] = startXfer(t, s, Config{NodeID: id, DataDir: filepath.Join(root, id), Heartbeat: time.Hour,
			Partitions: ring.DefaultPartitions, AntiEntropyInterval: time.Hour, AntiEntropyRate: Unlimited}, nil)
	}
	nc := natstest.Connect(t, s)
	value := make([]byte, valueSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range value {
		value[i] = byte('a' + rng.IntN(26))
	}
	load := time.Now()
	const batch = 1000
	ws := make([]subjects.NodeWrite, 0, batch)
	for lo := 0; lo < keys; lo += batch {
		ws = ws[:0]
		for i := lo; i < min(lo+batch, keys); i++ {
			ws = append(ws, subjects.NodeWrite{ID: uint64(i), Tenant: tenant, Key: fmt.Sprintf("key-%08d", i), LWW: version(uint64(1000+i), "c1", string(value))})
		}
		for _, id := range ids {
			sendBatch(t, nc, id, ws)
		}
	}
	t.Logf("loaded %d keys of %d bytes on each of 3 nodes in %s", keys, valueSize, time.Since(load).Round(time.Millisecond))

	// Prime: the first pass builds every tree (all partitions are new to
	// the cache) and finds nothing to repair.
	pass := func() (time.Duration, time.Duration) {
		cpu0 := cpuTime(t)
		start := time.Now()
		for _, id := range ids {
			nodes[id].aePass(context.Background())
		}
		return time.Since(start), cpuTime(t) - cpu0
	}
	waitFor(t, 20*time.Second, "every node to know the map and the tenants", func() bool {
		for _, n := range nodes {
			if n.pmap.Load() == nil || n.aeTenantRFs(context.Background()) == nil {
				return false
			}
		}
		return true
	})
	wall, cpu := pass()
	repaired0, _, builds0 := repairedTotal(nodes)
	if builds0 == 0 {
		t.Fatal("the first pass built no tree")
	}
	bytes0 := aeBytes(nodes)
	if repaired0 != 0 {
		t.Fatalf("identical replicas: %d keys repaired", repaired0)
	}
	t.Logf("first pass, every tree built (%d trees): %s wall, %s CPU, %d bytes scanned", builds0, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), bytes0)

	// 1 % divergent: a newer version on one replica only, in turn.
	divergent := max(keys/100, 1)
	perm := rng.Perm(keys)[:divergent]
	for j, i := range perm {
		w := []subjects.NodeWrite{{Tenant: tenant, Key: fmt.Sprintf("key-%08d", i), LWW: version(uint64(10_000_000+i), "c1", "new-"+strconv.Itoa(i))}}
		sendBatch(t, nc, ids[j%len(ids)], w)
	}
	wall, cpu = pass()
	repaired, _, builds := repairedTotal(nodes)
	bytes := aeBytes(nodes) - bytes0
	if want := int64(2 * divergent); repaired != want {
		t.Fatalf("one pass after %d divergent keys repaired %d, want %d", divergent, repaired, want)
	}
	for _, i := range perm {
		k := fmt.Sprintf("key-%08d", i)
		for id, n := range nodes {
			rec, err := n.eng.read(tenant, k)
			if err != nil || rec.LWW == nil || string(rec.LWW.Value) != "new-"+strconv.Itoa(i) {
				t.Fatalf("%s: %s not repaired after one pass (%v)", id, k, err)
			}
		}
	}
	t.Logf("repair of %d divergent keys among %d (1%%): %s wall, %s CPU, %d bytes scanned, fetched and sent by anti-entropy (what --anti-entropy-rate paces; %.0f per divergent key), %d trees rebuilt, %d keys repaired",
		divergent, keys, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), bytes, float64(bytes)/float64(divergent), builds-builds0, repaired)

	// The repairs changed partitions, whose trees the next pass rebuilds
	// (finding them equal); after it the cluster is idle: no tree is
	// built and nothing is scanned.
	wall, cpu = pass()
	if r, _, _ := repairedTotal(nodes); r != repaired {
		t.Fatalf("the pass after the repairs repaired %d more keys", r-repaired)
	}
	_, _, builds = repairedTotal(nodes)
	t.Logf("next pass (trees of the repaired partitions rebuilt, equal): %s wall, %s CPU", wall.Round(time.Millisecond), cpu.Round(time.Millisecond))
	bytes1 := aeBytes(nodes)
	wall, cpu = pass()
	_, _, builds2 := repairedTotal(nodes)
	if builds2 != builds {
		t.Fatalf("an idle pass built %d trees", builds2-builds)
	}
	share := cpu.Seconds() / DefaultAntiEntropyInterval.Seconds()
	t.Logf("idle pass over %d partitions × 3 nodes: %s wall, %s CPU, %d bytes; at the default interval (%s) an idle cluster spends %.4f%% of one core on anti-entropy",
		ring.DefaultPartitions, wall.Round(time.Millisecond), cpu.Round(time.Millisecond), aeBytes(nodes)-bytes1, DefaultAntiEntropyInterval, 100*share)
}

// aeBytes is the anti-entropy bytes counted by every node.
func aeBytes(nodes map[string]*Node) int64 {
	var b int64
	for _, n := range nodes {
		b += n.AntiEntropy().Bytes
	}
	return b
}

// cpuTime is the CPU (user and system) this process used so far.
func cpuTime(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
