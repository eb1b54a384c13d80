package coordinator_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/subjects"
)

func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	text, err := metrics.Text(reg)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

func TestCoordinatorMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	// node-1 is stopped a moment after it answered: without a restart
	// grace its "no responders" fails the put at once (unreachable) rather
	// than being sent again until the put's deadline.
	c := startClusterWith(t, devcluster.Config{Metrics: reg, Coordinator: coordinator.Config{NodeRestartGrace: time.Nanosecond}})
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "missing"); !errors.Is(err, client.ErrNotFound) {
		t.Fatal(err)
	}
	if err := c.StopNode("node-1"); err != nil {
		t.Fatal(err)
	}
	_, _ = kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All))
	text := scrape(t, reg)
	for _, want := range []string{
		`quorumkv_coordinator_requests_total{coordinator="0",level="quorum",op="put",outcome="ok"} 1`,
		`quorumkv_coordinator_requests_total{coordinator="0",level="all",op="get",outcome="ok"} 1`,
		`quorumkv_coordinator_requests_total{coordinator="0",level="quorum",op="get",outcome="not_found"} 1`,
		`quorumkv_coordinator_requests_total{coordinator="0",level="all",op="put",outcome="unavailable"} 1`,
		`quorumkv_coordinator_replica_failures_total{coordinator="0",reason="unreachable"} 1`,
		`quorumkv_coordinator_request_duration_seconds_count{coordinator="0",level="quorum",op="put"} 1`,
		`quorumkv_coordinator_inflight_requests{coordinator="0"}`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestRequestDurationEndsWithTheAnswer: a write's latency is recorded when
// its answer goes out, not after the tail that waits for the last replica
// (here a node that never answers, with a 3s hint window).
func TestRequestDurationEndsWithTheAnswer(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := startClusterWith(t, devcluster.Config{Metrics: reg, Coordinator: coordinator.Config{HintWindow: 3 * time.Second}})
	ctx := ctxT(t)
	silence(t, c, "node-1")
	kv := kvClient(t, c, "default")
	// RF 3 on three nodes: node-1 holds every key.
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	count := `quorumkv_coordinator_request_duration_seconds_count{coordinator="0",level="quorum",op="put"} 1`
	var text string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if text = scrape(t, reg); strings.Contains(text, count) {
			break
		}
	}
	if !strings.Contains(text, count) {
		t.Fatalf("no put duration recorded:\n%s", text)
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, `quorumkv_coordinator_request_duration_seconds_sum{coordinator="0",level="quorum",op="put"}`) {
			f := strings.Fields(line)
			sum, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatal(err)
			}
			if sum >= 2 {
				t.Fatalf("put recorded %.3fs: the 3s tail was counted", sum)
			}
			return
		}
	}
	t.Fatalf("no duration sum:\n%s", text)
}
