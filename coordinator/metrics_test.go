package coordinator_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
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
	c := startClusterWith(t, devcluster.Config{Metrics: reg})
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
