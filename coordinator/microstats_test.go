package coordinator_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// microStats asks the one coordinator for its micro stats over raw NATS,
// as `nats micro stats quorumkv` does, and returns them by endpoint name.
func microStats(t *testing.T, nc *nats.Conn) map[string]*micro.EndpointStats {
	t.Helper()
	msg, err := nc.Request("$SRV.STATS."+subjects.ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatalf("$SRV.STATS: %v", err)
	}
	var st micro.Stats
	if err := json.Unmarshal(msg.Data, &st); err != nil {
		t.Fatalf("decode stats %q: %v", msg.Data, err)
	}
	if st.Type != micro.StatsResponseType || st.Name != subjects.ServiceName {
		t.Fatalf("stats %+v", st)
	}
	out := map[string]*micro.EndpointStats{}
	for _, ep := range st.Endpoints {
		out[ep.Name] = ep
	}
	return out
}

// TestMicroStatsAreTrue: micro's stats count every error answer and the
// time up to the answer, though the coordinator answers from another
// goroutine than micro's handler call.
func TestMicroStatsAreTrue(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	nc := connect(t, c)
	kv := kvClient(t, c, "default")
	const n = 25
	for i := 0; i < n; i++ { // 400: an empty key
		if _, err := kv.Get(ctx, ""); err == nil {
			t.Fatal("get of an empty key succeeded")
		}
	}
	for i := 0; i < 5; i++ {
		if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	nope, err := client.New(nc, "nope")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ { // 404: no such tenant
		if _, err := nope.Delete(ctx, "k"); err == nil {
			t.Fatal("delete on a missing tenant succeeded")
		}
	}
	st := microStats(t, nc)
	if g := st["get"]; g == nil || g.NumRequests != n || g.NumErrors != n || g.LastError == "" {
		t.Fatalf("get stats %+v, want %d requests, %d errors", g, n, n)
	}
	if d := st["delete"]; d == nil || d.NumRequests != n || d.NumErrors != n {
		t.Fatalf("delete stats %+v, want %d requests, %d errors", d, n, n)
	}
	if p := st["put"]; p == nil || p.NumRequests != 5 || p.NumErrors != 0 {
		t.Fatalf("put stats %+v, want 5 requests, no error", p)
	}

	// A put that cannot reach "all" answers only when its own 400ms timeout
	// runs out: the processing time must include that wait, not just the
	// dispatch to the request's goroutine.
	silence(t, c, "node-1")
	const timeout = 400 * time.Millisecond
	before := st["put"].ProcessingTime
	if _, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All), client.WithTimeout(timeout)); err == nil {
		t.Fatal("put at all with a silent replica succeeded")
	}
	st = microStats(t, nc)
	p := st["put"]
	if p.NumRequests != 6 || p.NumErrors != 1 {
		t.Fatalf("put stats %+v, want 6 requests, 1 error", p)
	}
	if took := p.ProcessingTime - before; took < timeout {
		t.Fatalf("processing time of a put answered after its %s timeout: %s", timeout, took)
	}
}
