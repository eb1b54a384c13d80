package coordinator_test

import (
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// readSpy counts the read items storage nodes are sent, per node, by
// listening on their read subjects beside them.
type readSpy struct{ items map[string]*atomic.Int64 }

func spyReads(t *testing.T, c *devcluster.Cluster, nodes ...string) *readSpy {
	t.Helper()
	nc := connect(t, c)
	s := &readSpy{items: map[string]*atomic.Int64{}}
	for _, node := range nodes {
		n := new(atomic.Int64)
		s.items[node] = n
		if _, err := nc.Subscribe(subjects.StorageNode(node, subjects.NodeOpRead), func(m *nats.Msg) {
			var b subjects.NodeReadBatch
			if err := wire.UnmarshalNodeReadBatch(m.Data, &b); err == nil {
				n.Add(int64(len(b.Items)))
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

// putKeys writes "v" to keys k0..k<n-1> on every primary.
func putKeys(t *testing.T, kv *client.Client, n int) {
	t.Helper()
	for i := range n {
		if _, err := kv.Put(ctxT(t), "k"+strconv.Itoa(i), []byte("v"), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
	}
}

func (s *readSpy) total() int64 {
	var n int64
	for _, c := range s.items {
		n += c.Load()
	}
	return n
}

// waitTotal waits until the spy has seen want items (it hears them a
// little after the nodes do) and returns what it saw.
func (s *readSpy) waitTotal(want int64) int64 {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline) && s.total() < want; {
		time.Sleep(5 * time.Millisecond)
	}
	// Asserting that no more arrive: an extra item would be sent with the
	// others, at once; this checks the 50ms after the expected ones.
	time.Sleep(50 * time.Millisecond)
	return s.total()
}

// TestReadAsksWhatTheLevelNeeds: with read repair by chance off and no
// speculation, a quorum read asks exactly the 2 primaries of RF 3 it
// needs; with ReadRepairChance 1 it asks all 3, as reads at all and at one
// (which answers with the first reply) always do.
func TestReadAsksWhatTheLevelNeeds(t *testing.T) {
	for _, tc := range []struct {
		chance float64
		level  string
		want   int64 // read items per get
	}{
		{-1, subjects.One, 3},
		{-1, subjects.Quorum, 2},
		{-1, subjects.All, 3},
		{1, subjects.Quorum, 3},
	} {
		t.Run(tc.level+"/chance="+strconv.FormatFloat(tc.chance, 'g', -1, 64), func(t *testing.T) {
			c := startClusterWith(t, devcluster.Config{Coordinator: coordinator.Config{ReadRepairChance: tc.chance, SpeculativeRetry: time.Minute}})
			kv := kvClient(t, c, "default")
			ctx := ctxT(t)
			const keys = 20
			putKeys(t, kv, keys)
			spy := spyReads(t, c, "node-1", "node-2", "node-3")
			for i := range keys {
				got, err := kv.Get(ctx, "k"+strconv.Itoa(i), client.WithConsistency(tc.level))
				if err != nil {
					t.Fatalf("get k%d: %v", i, err)
				}
				if string(got.Value) != "v" {
					t.Fatalf("get k%d: %q", i, got.Value)
				}
			}
			if n := spy.waitTotal(keys * tc.want); n != keys*tc.want {
				t.Fatalf("%d gets sent %d read items, want %d", keys, n, keys*tc.want)
			}
		})
	}
}

// TestReadAsksSpareWhenPrimaryIsSilent: a primary that takes read
// messages and never answers (paused, partitioned) costs a quorum read
// only the speculative delay: the read asks the third primary and
// succeeds well inside its timeout. The silent primary is then suspected
// and asked last, so later reads do not wait on it.
func TestReadAsksSpareWhenPrimaryIsSilent(t *testing.T) {
	reg := prometheus.NewRegistry()
	// A fixed delay far above a healthy node's answer, so that only the
	// silent node makes reads ask a spare, however busy the machine.
	c := startClusterWith(t, devcluster.Config{Metrics: reg, Coordinator: coordinator.Config{ReadRepairChance: -1, SpeculativeRetry: 500 * time.Millisecond}})
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	const keys = 20
	putKeys(t, kv, keys)
	silence(t, c, "node-1")
	for i := range keys {
		got, err := kv.Get(ctx, "k"+strconv.Itoa(i), client.WithConsistency(subjects.Quorum), client.WithTimeout(1500*time.Millisecond))
		if err != nil {
			t.Fatalf("get k%d with node-1 silent: %v", i, err)
		}
		if string(got.Value) != "v" {
			t.Fatalf("get k%d with node-1 silent: %q", i, got.Value)
		}
	}
	// node-1 is among the first two primaries of 10 of these 20 keys (the
	// ring is deterministic). Without suspicion each of those reads would
	// wait for it and ask the spare late; suspected after the first, it is
	// asked last.
	text := scrape(t, reg)
	slow := 0
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, `quorumkv_coordinator_spare_reads_total{coordinator="0",reason="slow"} `) {
			slow, _ = strconv.Atoi(strings.Fields(line)[1])
		}
	}
	// At least the first read that needed node-1 waited for it. Without
	// suspicion all 10 would; a healthy read slower than the 500ms delay
	// (a loaded machine) counts too, so the bound is below 10, not near 1.
	if slow < 1 || slow >= 10 {
		t.Fatalf("%d of %d reads waited for the silent node, want at least 1 and fewer than the 10 that would without suspicion", slow, keys)
	}
}

// TestReadTimeoutNamesEveryPrimary: a quorum read that times out before its
// speculative retry asked only two primaries, yet its answer counts all
// three, as a write's does.
func TestReadTimeoutNamesEveryPrimary(t *testing.T) {
	c := startClusterWith(t, devcluster.Config{Coordinator: coordinator.Config{ReadRepairChance: -1, SpeculativeRetry: time.Minute}})
	kv := kvClient(t, c, "default")
	putKeys(t, kv, 1)
	silence(t, c, "node-1")
	silence(t, c, "node-2")
	_, err := kv.Get(ctxT(t), "k0", client.WithConsistency(subjects.Quorum), client.WithTimeout(300*time.Millisecond))
	assertCode(t, err, 503, "quorum needs 2 of 3 replicas")
	assertCode(t, err, 503, "did not answer in time")
}
