package metrics

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsAreServed(t *testing.T) {
	reg := NewRegistry()
	co := NewCoordinator(reg, func() float64 { return 3 })
	co.Request("get", "all", "ok", time.Millisecond)
	co.Request("put", "quorum", "unavailable", time.Millisecond)
	co.ReplicaFailure("timeout")
	co.Batch("write", 12)
	// Two storage nodes in one process, told apart by a label.
	for _, id := range []string{"n1", "n2"} {
		st := NewStorage(prometheus.WrapRegistererWith(prometheus.Labels{"node": id}, reg),
			func() PebbleStats { return PebbleStats{DiskBytes: 123} }, func(op string) int { return len(op) })
		st.Applied("write", 2, 5, 1, time.Millisecond)
	}
	var nilCo *Coordinator
	nilCo.Request("get", "one", "ok", time.Second) // nil records nothing, no panic
	var nilSt *Storage
	nilSt.Applied("write", 1, 1, 0, time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	addr, wait, err := Serve(ctx, "127.0.0.1:0", reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); wait() }()
	if _, _, err := Serve(ctx, "256.0.0.1:1", reg, slog.New(slog.DiscardHandler)); err == nil {
		t.Fatal("a bad address must fail at once")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, want := range []string{
		`quorumkv_coordinator_requests_total{level="all",op="get",outcome="ok"} 1`,
		`quorumkv_coordinator_requests_total{level="quorum",op="put",outcome="unavailable"} 1`,
		`quorumkv_coordinator_replica_failures_total{reason="timeout"} 1`,
		`quorumkv_coordinator_inflight_requests 3`,
		`quorumkv_pebble_disk_bytes{node="n1"} 123`,
		`quorumkv_pebble_disk_bytes{node="n2"} 123`,
		`quorumkv_storage_items_total{node="n1",op="write",outcome="ok"} 4`,
		`quorumkv_storage_items_total{node="n1",op="write",outcome="error"} 1`,
		`quorumkv_storage_queued_writes{node="n2"} 5`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
}
