package coordinator_test

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/internal/wiring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// addCoordinator starts one more coordinator on the cluster's NATS with
// cfg (its own clock, say), sharing the cluster's stores.
func addCoordinator(t *testing.T, c *devcluster.Cluster, cfg coordinator.Config) *coordinator.Coordinator {
	t.Helper()
	nc := connect(t, c)
	idem, err := wiring.OpenIdempotency(ctxT(t), "nats", nc, wiring.StoreOptions{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Metadata, cfg.Idempotency, cfg.Repair, cfg.Logger = c.Metadata(), idem, c.RepairPublisher(), quietLogger()
	co, err := coordinator.New(ctxT(t), nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(co.Stop)
	return co
}

// nodeWrite merges v into tenant's key on node alone, as a repair would.
func nodeWrite(t *testing.T, nc *nats.Conn, node, tenant, key string, v vclock.Version) {
	t.Helper()
	b := subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: []subjects.NodeWrite{{ID: 1, Tenant: tenant, Key: key, LWW: &v}}}
	m, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpWrite), wire.MarshalNodeWriteBatch(nil, &b), 5*time.Second)
	if err != nil {
		t.Fatalf("write to %s: %v", node, err)
	}
	var r subjects.NodeWriteReply
	if err := wire.UnmarshalNodeWriteReply(m.Data, &r); err != nil || len(r.Results) != 1 || r.Results[0].Err != "" {
		t.Fatalf("write to %s: %v %+v", node, err, r)
	}
}

// stopFirstCoordinator stops coordinator 0 of c and waits until the
// server has its unsubscribe (which is asynchronous: until then requests
// still reach it and get 503 "coordinator is stopping"), so only the
// coordinator addCoordinator started answers.
func stopFirstCoordinator(t *testing.T, c *devcluster.Cluster) {
	t.Helper()
	c.StopCoordinator(0)
	put := subjects.DataPrefix + ".*." + subjects.OpPut
	n := -1
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		cz, err := c.Server.Connz(&server.ConnzOptions{Subscriptions: true})
		if err != nil {
			t.Fatal(err)
		}
		n = 0
		for _, conn := range cz.Conns {
			if slices.Contains(conn.Subs, put) {
				n++
			}
		}
		if n == 1 { // the coordinator addCoordinator started
			return
		}
	}
	t.Fatalf("%d connections still subscribe to %s", n, put)
}

// storedDot is the dot node holds for tenant's key, from its own dump.
func storedDot(t *testing.T, nc *nats.Conn, node, tenant, key string) vclock.Dot {
	t.Helper()
	es, err := client.NewAdmin(nc).DumpAll(ctxT(t), node, tenant)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Key == key {
			return vclock.Dot{Counter: e.Counter, Actor: e.Actor}
		}
	}
	t.Fatalf("%s holds no %s/%s", node, tenant, key)
	return vclock.Dot{}
}

// Issue 12, item 2: coordinator X's clock runs 10 s ahead of Y's. A write
// through X is acknowledged; a write through Y that starts afterwards is
// stamped by Y's clock below X's dot, and every replica keeps X's version.
// The replicas say so, and Y re-stamps past it: a quorum read returns Y's
// value.
func TestLaterWriteWinsOverCoordinatorWithClockAhead(t *testing.T) {
	reg := prometheus.NewRegistry()
	ahead := func() time.Time { return time.Now().Add(10 * time.Second) }
	c := startClusterWith(t, devcluster.Config{Metrics: reg, Coordinator: coordinator.Config{Now: ahead}})
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	for _, level := range []string{subjects.Quorum, subjects.All} {
		key := "skewed-" + level
		if _, err := kv.Put(ctx, key, []byte("through X"), client.WithConsistency(level)); err != nil {
			t.Fatal(err)
		}
	}
	// Only Y answers from here on: the first writes finished before the
	// second ones start.
	addCoordinator(t, c, coordinator.Config{})
	stopFirstCoordinator(t, c)
	for _, level := range []string{subjects.Quorum, subjects.All} {
		key := "skewed-" + level
		res, err := kv.Put(ctx, key, []byte("through Y"), client.WithConsistency(level))
		if err != nil {
			t.Fatalf("put through Y at %s: %v", level, err)
		}
		if want := coordinator.Required(level, 3); res.ReplicaCount < want {
			t.Fatalf("put through Y at %s: %d acknowledged", level, res.ReplicaCount)
		}
		got, err := kv.Get(ctx, key, client.WithConsistency(subjects.Quorum))
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Value) != "through Y" {
			t.Fatalf("%s: quorum read returns %q after the later write through Y was acknowledged at %s", key, got.Value, level)
		}
	}
	// X's clock is well within the allowed skew: nothing was refused.
	if text := scrape(t, reg); strings.Contains(text, "quorumkv_clock_skew_rejected_total{") {
		t.Fatalf("skew rejected:\n%s", grepLines(text, "clock_skew"))
	}
}

// Issue 12, item 1: one poisoned far-future version read by a coordinator
// pushed its clock a year ahead, and every later write with a context got
// 400 (the context it had issued was "beyond the allowed skew"). Versions
// read from replicas are observed only within the skew; the rest are
// counted.
func TestFarFutureReplicaVersionIsNotObserved(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := startClusterWith(t, devcluster.Config{Metrics: reg})
	nc := connect(t, c)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	poison := vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now().AddDate(1, 0, 0)), Actor: "rogue"}, Value: []byte("from next year")}
	for i := 1; i <= 3; i++ {
		nodeWrite(t, nc, devcluster.NodeID(i), "default", "poisoned", poison)
	}
	readModifyWrite := func(step string) {
		t.Helper()
		res, err := kv.Put(ctx, "k", []byte("1"))
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if _, err := kv.Put(ctx, "k", []byte("2"), client.WithContext(res.Context)); err != nil {
			t.Fatalf("%s: a write with the context the coordinator just issued: %v", step, err)
		}
	}
	for range 3 {
		got, err := kv.Get(ctx, "poisoned", client.WithConsistency(subjects.All))
		if err != nil || string(got.Value) != "from next year" {
			t.Fatalf("get poisoned: %v %q", err, got.Value)
		}
	}
	readModifyWrite("after reading the poisoned key")

	// A write to the poisoned key cannot be ordered after that version
	// without dragging the clock there: 503, not a silent loss.
	_, err := kv.Put(ctx, "poisoned", []byte("now"))
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != int(subjects.CodeUnavailable) || !strings.Contains(ce.Message, "clock skew") {
		t.Fatalf("put to the poisoned key: %v, want 503 naming the clock skew", err)
	}
	readModifyWrite("after writing the poisoned key")

	text := scrape(t, reg)
	for _, source := range []string{"read", "write"} {
		if n := metricValue(text, `quorumkv_clock_skew_rejected_total{coordinator="0",source="`+source+`"}`); n < 1 {
			t.Errorf("source %s: %v rejected, want at least 1:\n%s", source, n, grepLines(text, "clock_skew"))
		}
	}
}

// Issue 12, item 1: a context of tenant ta dated minutes ahead (issued by
// a coordinator whose clock runs ahead) drags only ta's clock; tenant tb's
// writes through the same coordinator stay at wall time.
func TestContextDoesNotDragOtherTenantsClock(t *testing.T) {
	ahead := func() time.Time { return time.Now().Add(4*time.Minute + 30*time.Second) }
	c := startClusterWith(t, devcluster.Config{Coordinator: coordinator.Config{Now: ahead}})
	nc := connect(t, c)
	ctx := ctxT(t)
	admin := client.NewAdmin(nc)
	for _, id := range []string{"ta", "tb"} {
		if _, err := admin.CreateTenant(ctx, id, client.TenantSpec{}); err != nil {
			t.Fatal(err)
		}
	}
	ta, tb := kvClient(t, c, "ta"), kvClient(t, c, "tb")
	res, err := ta.Put(ctx, "k", []byte("a1"))
	if err != nil {
		t.Fatal(err)
	}
	addCoordinator(t, c, coordinator.Config{})
	stopFirstCoordinator(t, c)
	// At all, so node-1 (whose dump is read below) holds both writes when
	// they are acknowledged.
	if _, err := ta.Put(ctx, "k", []byte("a2"), client.WithContext(res.Context), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if _, err := tb.Put(ctx, "k", []byte("b1"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	limit := time.Now().Add(time.Minute)
	if d := storedDot(t, nc, "node-1", "ta", "k"); vclock.Physical(d.Counter).Before(limit) {
		t.Fatalf("ta's write is dated %s: it was not stamped past its context", vclock.Physical(d.Counter))
	}
	if d := storedDot(t, nc, "node-1", "tb", "k"); !vclock.Physical(d.Counter).Before(limit) {
		t.Fatalf("tb's write is dated %s: ta's context dragged the clock tb's writes use", vclock.Physical(d.Counter))
	}
}

// metricValue returns the value of the sample line that starts with
// series, or -1.
func metricValue(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(rest, 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

func grepLines(text, what string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, what) {
			out = append(out, line)
		}
	}
	return fmt.Sprint(strings.Join(out, "\n"))
}
