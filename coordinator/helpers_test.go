package coordinator_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// startCluster boots an in-process cluster (embedded nats-server, real
// Pebble storage nodes, a coordinator) in the test's temp dir.
func startCluster(tb testing.TB, nodes int) *devcluster.Cluster {
	tb.Helper()
	return startClusterWith(tb, devcluster.Config{Nodes: nodes})
}

// startClusterWith boots a cluster from cfg; Listen, DataDir and Logger are
// the test's.
func startClusterWith(tb testing.TB, cfg devcluster.Config) *devcluster.Cluster {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	level := slog.LevelWarn
	if os.Getenv("QUORUMKV_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = tb.TempDir()
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	c, err := devcluster.Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("start cluster: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

func connect(tb testing.TB, c *devcluster.Cluster) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(c.URL)
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

func kvClient(tb testing.TB, c *devcluster.Cluster, tenant string) *client.Client {
	tb.Helper()
	kv, err := client.New(connect(tb, c), tenant)
	if err != nil {
		tb.Fatal(err)
	}
	return kv
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// ctxFor is ctxT with a budget of d, for a test that waits on partitions
// streaming between real storage nodes (a drain): one such wait alone may
// take most of 30 s on a loaded CI machine, and the test's later requests
// must not inherit an expired context.
func ctxFor(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// drainWait bounds a drain's streaming until the node is left. On an idle
// machine it takes a few seconds; a CI run of the whole suite under -race
// at load ~14 took 25 s (TestNodeDrainAndRemove), so the bound is 60 s.
const drainWait = 60 * time.Second

// coordinatorConfigFastTTL makes cached tenants expire quickly, so tests
// see the store being asked again.
func coordinatorConfigFastTTL() coordinator.Config {
	return coordinator.Config{TenantTTL: 100 * time.Millisecond, RingRefresh: 200 * time.Millisecond}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func removeAll(dir string) error { return os.RemoveAll(dir) }

// silence stops storage node id and puts a black hole in its place: a
// subscriber to its subjects that never answers, as a paused or
// partitioned node looks to a coordinator.
func silence(t *testing.T, c *devcluster.Cluster, id string) {
	t.Helper()
	if err := c.StopNode(id); err != nil {
		t.Fatal(err)
	}
	hole := connect(t, c)
	if _, err := hole.Subscribe(subjects.StorageNode(id, ">"), func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := hole.Flush(); err != nil {
		t.Fatal(err)
	}
}
