package storage

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/subjects"
)

func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	text, err := metrics.Text(reg)
	if err != nil {
		t.Fatal(err)
	}
	return text
}

// TestNodeMetrics: a node counts what it applies and reports Pebble's
// figures; a node restarted in the same process registers again.
func TestNodeMetrics(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	reg := prometheus.NewRegistry()
	dir := filepath.Join(t.TempDir(), "n")
	for round := 0; round < 2; round++ {
		n, err := Open(Config{NodeID: "m1", DataDir: dir, Logger: quiet(), Metrics: reg})
		if err != nil {
			t.Fatal(err)
		}
		if err := n.start(nc); err != nil {
			t.Fatal(err)
		}
		b, _ := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion,
			Items: []subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k", LWW: version(uint64(round+1), "x", "v")}, {ID: 2, Tenant: "t", Key: "bad"}}})
		if _, err := nc.Request(subjects.StorageNode("m1", subjects.NodeOpWrite), b, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		text := gather(t, reg)
		for _, want := range []string{
			`quorumkv_storage_items_total{op="write",outcome="ok"} 1`,
			`quorumkv_storage_items_total{op="write",outcome="error"} 1`,
			`quorumkv_storage_batch_messages_count{op="write"} 1`,
			`quorumkv_pebble_disk_bytes`,
			`quorumkv_storage_queued_writes 0`,
		} {
			if !strings.Contains(text, want) {
				t.Errorf("round %d: metrics lack %s", round, want)
			}
		}
		if err := n.Stop(); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(gather(t, reg), "quorumkv_pebble_disk_bytes") {
			t.Fatal("a closed node's metrics are still registered")
		}
	}
}
