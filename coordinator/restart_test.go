package coordinator_test

import (
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestWriteAtAllAcrossANodeRestart: a node that answered a moment ago and
// now has no subscribers is restarting, not gone (replica.Config's
// RestartGrace). A put at all and a get at all made while it is down are
// sent to it again until it is back, within their timeout, and succeed,
// where they failed at once with "no subscribers" before; the restarted
// node holds the write. The resends are counted
// (quorumkv_coordinator_replica_resends_total, reason restarting).
func TestWriteAtAllAcrossANodeRestart(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := startClusterWith(t, devcluster.Config{Metrics: reg})
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	all := client.WithConsistency(subjects.All)
	if _, err := kv.Put(ctx, "k", []byte("v1"), all); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode("node-1"); err != nil {
		t.Fatal(err)
	}
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		restarted <- c.StartNode("node-1")
	}()
	res, err := kv.Put(ctx, "k", []byte("v2"), all, client.WithTimeout(10*time.Second))
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("put at all while a node restarts: %v", err)
	}
	if res.ReplicaCount != 3 {
		t.Fatalf("put at all acknowledged by %d replicas", res.ReplicaCount)
	}
	got, err := kv.Get(ctx, "k", all)
	if err != nil || string(got.Value) != "v2" {
		t.Fatalf("get at all after the restart: %v %+v", err, got)
	}
	text := scrape(t, reg)
	m := regexp.MustCompile(`quorumkv_coordinator_replica_resends_total\{coordinator="0",reason="restarting"\} (\d+)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("no resends counted for the restarting node")
	}
	if n, _ := strconv.Atoi(m[1]); n < 1 {
		t.Fatalf("%d resends counted", n)
	}
}
