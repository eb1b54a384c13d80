package repair_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// testConfig retries fast so the tests stay short.
func testConfig() repair.Config {
	return repair.Config{
		AckWait:     2 * time.Second,
		MaxDeliver:  60,
		Backoff:     20 * time.Millisecond,
		MaxBackoff:  300 * time.Millisecond,
		FetchWait:   500 * time.Millisecond,
		NodeTimeout: time.Second,
		Batch:       100,
	}
}

// startCluster boots a 3-node dev cluster with cfg for its repair
// workers and, if given, coord for its coordinator.
func startCluster(tb testing.TB, cfg repair.Config, coord ...coordinator.Config) *devcluster.Cluster {
	tb.Helper()
	var cc coordinator.Config
	if len(coord) > 0 {
		cc = coord[0]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	level := slog.LevelError
	if os.Getenv("QUORUMKV_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	c, err := devcluster.Start(ctx, devcluster.Config{
		Listen:      "127.0.0.1:0",
		DataDir:     tb.TempDir(),
		Nodes:       3,
		Repair:      cfg,
		Coordinator: cc,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
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

func ctxT(tb testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	tb.Cleanup(cancel)
	return ctx
}

// entry is what a node's dump says about one key.
type entry struct {
	Counter   uint64
	Actor     string
	Tombstone bool
	Value     string
}

func dump(ctx context.Context, admin *client.Admin, node string) (map[string]entry, error) {
	es, err := admin.DumpAll(ctx, node, "default")
	if err != nil {
		return nil, err
	}
	out := make(map[string]entry, len(es))
	for _, e := range es {
		out[e.Key] = entry{e.Counter, e.Actor, e.Tombstone, string(e.Value)}
	}
	return out, nil
}

// eventually polls check until it returns nil or the deadline passes.
func eventually(tb testing.TB, within time.Duration, what string, check func() error) time.Duration {
	tb.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < within {
		if err = check(); err == nil {
			return time.Since(start)
		}
		time.Sleep(25 * time.Millisecond)
	}
	tb.Fatalf("%s: not within %s: %v", what, within, err)
	return 0
}

// sameOnAll reports the first key whose version differs between the nodes'
// dumps, or a key of want missing from them.
func sameOnAll(ctx context.Context, admin *client.Admin, keys []string, nodes ...string) error {
	var first map[string]entry
	for i, n := range nodes {
		d, err := dump(ctx, admin, n)
		if err != nil {
			return err
		}
		if i == 0 {
			first = d
			continue
		}
		for _, k := range keys {
			a, ok := first[k]
			b, ok2 := d[k]
			if !ok || !ok2 || a != b {
				return fmt.Errorf("key %q: %s has %+v (%v), %s has %+v (%v)", k, nodes[0], a, ok, n, b, ok2)
			}
		}
	}
	return nil
}

func putAll(tb testing.TB, ctx context.Context, kv *client.Client, keys []string, value func(string) string, level string) map[string]string {
	tb.Helper()
	var (
		mu   sync.Mutex
		ctxs = make(map[string]string, len(keys))
		wg   sync.WaitGroup
		next atomic.Int64
		errs = make(chan error, 8)
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(keys) {
					return
				}
				res, err := kv.Put(ctx, keys[i], []byte(value(keys[i])), client.WithConsistency(level))
				if err != nil {
					errs <- fmt.Errorf("put %s: %w", keys[i], err)
					return
				}
				mu.Lock()
				ctxs[keys[i]] = res.Context
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	return ctxs
}

func keysN(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return keys
}

// nodeWrite merges v into key on node alone, bypassing the coordinators.
func nodeWrite(tb testing.TB, nc *nats.Conn, node, key string, v vclock.Version) {
	tb.Helper()
	data, err := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion,
		Items: []subjects.NodeWrite{{ID: 1, Tenant: "default", Key: key, LWW: &v}}})
	if err != nil {
		tb.Fatal(err)
	}
	m, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpWrite), data, 5*time.Second)
	if err != nil {
		tb.Fatalf("write to %s: %v", node, err)
	}
	var r subjects.NodeWriteReply
	if err := msgpack.Unmarshal(m.Data, &r); err != nil || len(r.Results) != 1 || r.Results[0].Err != "" {
		tb.Fatalf("write to %s: %v %+v", node, err, r)
	}
}

func status(tb testing.TB, nc *nats.Conn) *repair.Status {
	tb.Helper()
	st, err := repair.ReadStatus(ctxT(tb, 10*time.Second), nc, 300*time.Millisecond)
	if err != nil {
		tb.Fatalf("status: %v", err)
	}
	return st
}

// A node that was down while 1,000 keys were written at quorum receives
// every one of them from the hints once it is back, as its own dump shows.
func TestHintedHandoffRepairsRestartedNode(t *testing.T) {
	c := startCluster(t, testConfig())
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 60*time.Second)
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	keys := keysN("hh", 1000)
	writeStart := time.Now()
	putAll(t, ctx, kv, keys, func(k string) string { return "value of " + k }, subjects.Quorum)
	t.Logf("1000 quorum writes with node-3 down: %s", time.Since(writeStart).Round(time.Millisecond))
	if st := status(t, nc); st.Backlog == 0 {
		t.Fatalf("no hints pending while node-3 is down: %+v", st)
	}

	restart := time.Now()
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "node-3 equals node-1 and node-2 on every key", func() error {
		return sameOnAll(ctx, admin, keys, "node-1", "node-2", "node-3")
	})
	t.Logf("node-3 repaired on all 1000 keys %s after its restart", time.Since(restart).Round(time.Millisecond))
	d3, err := dump(ctx, admin, "node-3")
	if err != nil {
		t.Fatal(err)
	}
	if d3[keys[42]].Value != "value of "+keys[42] {
		t.Fatalf("node-3 holds %+v", d3[keys[42]])
	}
	eventually(t, 10*time.Second, "backlog drains", func() error {
		if st := status(t, nc); st.Backlog != 0 || st.Applied < 1000 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if ps := c.RepairPublisher().Stats(); ps.Dropped != 0 || ps.Published < 1000 {
		t.Fatalf("publisher %+v", ps)
	}
}

// A read that sees replicas disagree has the stale ones repaired: one that
// holds an older version and ones that hold nothing.
func TestReadRepairFixesStaleReplicas(t *testing.T) {
	// Quorum reads ask every primary here, as ReadRepairChance's share do;
	// a short hint window makes the versions below old enough to repair.
	c := startCluster(t, testConfig(), coordinator.Config{ReadRepairChance: 1, HintWindow: 20 * time.Millisecond})
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	res, err := kv.Put(ctx, "older", []byte("v1"), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	dot, err := vclock.DecodeContext(inspect(res.Context))
	if err != nil {
		t.Fatal(err)
	}
	// node-1 alone learns a newer version; node-2 alone holds "lonely".
	newer := vclock.Version{Dot: vclock.Dot{Counter: dot.Counter + 1000, Actor: "test"}, Value: []byte("v2")}
	nodeWrite(t, nc, "node-1", "older", newer)
	lonely := vclock.Version{Dot: vclock.Dot{Counter: dot.Counter, Actor: "test"}, Value: []byte("only on node-2")}
	nodeWrite(t, nc, "node-2", "lonely", lonely)
	time.Sleep(50 * time.Millisecond) // past the hint window: no write is racing

	for _, key := range []string{"older", "lonely"} {
		// "lonely" reads as not found when the quorum did not include node-2.
		if _, err := kv.Get(ctx, key, client.WithConsistency(subjects.Quorum)); err != nil && !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("get %s: %v", key, err)
		}
	}
	eventually(t, 10*time.Second, "every replica holds the merge", func() error {
		return sameOnAll(ctx, admin, []string{"older", "lonely"}, "node-1", "node-2", "node-3")
	})
	d, err := dump(ctx, admin, "node-3")
	if err != nil {
		t.Fatal(err)
	}
	if d["older"].Value != "v2" || d["older"].Actor != "test" || d["lonely"].Value != "only on node-2" {
		t.Fatalf("node-3 holds %+v", d)
	}
	// Replicas that agree cause no repair.
	before := c.RepairPublisher().Stats().Queued
	if _, err := kv.Get(ctx, "older", client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	// Asserting that nothing happens: a wrong repair would be queued in
	// the read's tail, right after the reply; this checks the first 100ms.
	time.Sleep(100 * time.Millisecond)
	if after := c.RepairPublisher().Stats().Queued; after != before {
		t.Fatalf("a read of agreeing replicas queued %d repairs", after-before)
	}
}

// A read that finds a version younger than the hint window on one replica
// only leaves it to the write's hints (a repair would race the write on a
// hot key); the same divergence read after the window is repaired.
func TestReadRepairLeavesRacingWritesToHints(t *testing.T) {
	// Long enough that the first read and the quiet period after it always
	// fall inside the window, even on a loaded machine; the test fails
	// rather than skip its check when they do not.
	const window = 5 * time.Second
	c := startCluster(t, testConfig(), coordinator.Config{ReadRepairChance: 1, HintWindow: window})
	nc := connect(t, c)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	stamped := time.Now()
	fresh := vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(stamped), Actor: "test"}, Value: []byte("in flight")}
	nodeWrite(t, nc, "node-1", "hot", fresh)
	queued := func() uint64 { return c.RepairPublisher().Stats().Queued }
	before := queued()
	// Found or not, as two of the three primaries answer first.
	if _, err := kv.Get(ctx, "hot", client.WithConsistency(subjects.Quorum)); err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get hot: %v", err)
	}
	// Asserting that nothing happens: a repair would be queued within the
	// read's tail (HintWindow at most, here well after the reply); 200ms
	// after the reply is the window this checks, and it must end inside
	// the hint window for the check to mean anything.
	time.Sleep(200 * time.Millisecond)
	if age := time.Since(stamped); age >= window {
		t.Fatalf("the read and the quiet period took %s, past the %s window: nothing was checked", age.Round(time.Millisecond), window)
	}
	if queued() != before {
		t.Fatalf("a read racing a %s-old write queued %d repairs", time.Since(stamped).Round(time.Millisecond), queued()-before)
	}
	time.Sleep(time.Until(stamped.Add(window + 100*time.Millisecond)))
	if _, err := kv.Get(ctx, "hot", client.WithConsistency(subjects.Quorum)); err != nil && !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get hot after the window: %v", err)
	}
	eventually(t, 10*time.Second, "a repair is queued after the window", func() error {
		if queued() == before {
			return errors.New("no repair queued")
		}
		return nil
	})
}

// Hints carrying an older version race new writes of the same keys: every
// replica ends with the newer write, and the repairs are applied (merged,
// not refused) — on keys nobody rewrote they deliver the hinted version.
func TestWriteRacingRepairBothSurvive(t *testing.T) {
	c := startCluster(t, testConfig())
	c.StopRepairWorkers()
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 60*time.Second)
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	raced, quiet := keysN("race", 200), keysN("quiet", 100)
	putAll(t, ctx, kv, append(append([]string{}, raced...), quiet...), func(string) string { return "old" }, subjects.Quorum)
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	// The hints (old) and the new writes go at the same time.
	w, err := c.StartRepairWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newCtx := putAll(t, ctx, kv, raced, func(string) string { return "new" }, subjects.All)
	eventually(t, 20*time.Second, "all hints applied", func() error {
		if st := status(t, nc); st.Backlog != 0 {
			return fmt.Errorf("backlog %d", st.Backlog)
		}
		return nil
	})
	if s := w.Stats(); s.Applied < 300 {
		t.Fatalf("worker applied %d of 300 hints: %+v", s.Applied, s)
	}
	for _, n := range []string{"node-1", "node-2", "node-3"} {
		d, err := dump(ctx, admin, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range raced {
			dot, _ := vclock.DecodeContext(inspect(newCtx[k]))
			if e := d[k]; e.Value != "new" || e.Counter != dot.Counter || e.Actor != dot.Actor {
				t.Fatalf("%s %s: %+v, want the new write %+v", n, k, e, dot)
			}
		}
		for _, k := range quiet {
			if e := d[k]; e.Value != "old" {
				t.Fatalf("%s %s: %+v, want the hinted old value", n, k, e)
			}
		}
	}
}

// A worker that dies in the middle of a batch (its connection gone before
// it acknowledged the rest) loses nothing: another worker gets the
// unacknowledged messages after AckWait and completes them; the merges
// applied twice change nothing.
func TestKilledWorkerLosesNothing(t *testing.T) {
	cfg := testConfig()
	c := startCluster(t, cfg)
	c.StopRepairWorkers()
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 60*time.Second)
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	keys := keysN("kill", 300)
	putAll(t, ctx, kv, keys, func(k string) string { return k }, subjects.Quorum)
	if err := c.StartNode("node-3"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}

	victimNC, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(victimNC.Close)
	var acked atomic.Int64
	killed := make(chan struct{})
	vcfg := cfg
	vcfg.Name = "victim"
	victim, err := repair.NewWorkerWithHook(ctx, victimNC, vcfg, func(*subjects.RepairRequest) {
		if acked.Add(1) == 50 {
			victimNC.Close() // mid-batch: 50 acked, the rest of its batch never will be
			close(killed)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(victim.Stop)
	select {
	case <-killed:
	case <-ctx.Done():
		t.Fatal("the victim never processed 50 messages")
	}
	if st := status(t, nc); st.Backlog == 0 {
		t.Fatalf("nothing left after the victim died: %+v", st)
	}
	survivor, err := c.StartRepairWorker(ctx)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the survivor drains the backlog", func() error {
		if st := status(t, nc); st.Backlog != 0 {
			return fmt.Errorf("backlog %d", st.Backlog)
		}
		return nil
	})
	if err := sameOnAll(ctx, admin, keys, "node-1", "node-2", "node-3"); err != nil {
		t.Fatal(err)
	}
	if s := survivor.Stats(); s.Applied == 0 || s.Applied+uint64(victim.Stats().Applied) < 300 {
		t.Fatalf("victim %+v, survivor %+v: fewer than 300 applied", victim.Stats(), s)
	}
}

// A repair whose target stays down is retried with back-off, lands in the
// dead-letter stream after MaxDeliver deliveries, shows in the status, and
// can be replayed once the target is up.
func TestDeadLetterAfterMaxDeliverAndReplay(t *testing.T) {
	cfg := testConfig()
	cfg.MaxDeliver = 4
	cfg.Backoff = 50 * time.Millisecond
	c := startCluster(t, cfg)
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	ctx := ctxT(t, 30*time.Second)
	v := vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now()), Actor: "test"}, Value: []byte("for node-9")}
	if !c.RepairPublisher().Publish(subjects.RepairRequest{Tenant: "default", Key: "k9", LWW: &v, Targets: []string{"node-9"}, Reason: subjects.RepairReasonHint}) {
		t.Fatal("publish refused")
	}
	start := time.Now()
	var st *repair.Status
	eventually(t, 10*time.Second, "the request is dead-lettered", func() error {
		if st = status(t, nc); st.Dead != 1 || st.Backlog != 0 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	// 3 naks of 50, 100 and 200ms before the 4th delivery.
	if took := time.Since(start); took < 350*time.Millisecond {
		t.Fatalf("dead-lettered after %s: the back-off was not applied", took)
	}
	if st.Failed != 3 || st.DeadLettered != 1 || len(st.Workers) != 1 {
		t.Fatalf("status %+v", st)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := repair.ListDead(ctx, js, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].Deliveries != 4 || dead[0].Request == nil || dead[0].Request.Key != "k9" ||
		!strings.Contains(dead[0].Error, "node-9: node is down") || dead[0].Subject != "kv.repair.default" {
		t.Fatalf("dead letters %+v", dead)
	}

	if err := c.StartNode("node-9"); err != nil {
		t.Fatal(err)
	}
	if _, err := repair.ReplayDead(ctx, js, dead[0].Seq); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the replayed repair reaches node-9", func() error {
		d, err := dump(ctx, admin, "node-9")
		if err != nil {
			return err
		}
		if e := d["k9"]; e.Value != "for node-9" {
			return fmt.Errorf("node-9 holds %+v", e)
		}
		return nil
	})
	if st := status(t, nc); st.Dead != 0 {
		t.Fatalf("dead letter still there after replay: %+v", st)
	}
}

// A message whose last delivery no worker settles (the worker died) is
// moved to the dead letters by the max-deliveries advisory.
func TestExhaustedByCrashesIsDeadLettered(t *testing.T) {
	cfg := testConfig()
	cfg.MaxDeliver = 2
	cfg.AckWait = 300 * time.Millisecond
	c := startCluster(t, cfg)
	c.StopRepairWorkers()
	nc := connect(t, c)
	ctx := ctxT(t, 30*time.Second)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	v := vclock.Version{Dot: vclock.Dot{Counter: 1, Actor: "test"}, Value: []byte("x")}
	if !c.RepairPublisher().Publish(subjects.RepairRequest{Tenant: "default", Key: "crash", LWW: &v, Targets: []string{"node-1"}, Reason: subjects.RepairReasonRead}) {
		t.Fatal("publish refused")
	}
	cons, err := js.Consumer(ctx, repair.StreamName, repair.ConsumerName)
	if err != nil {
		t.Fatal(err)
	}
	// Two "workers" take the message and die without settling it.
	for i := 1; i <= 2; i++ {
		b, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for range b.Messages() {
			n++
		}
		if n != 1 {
			t.Fatalf("delivery %d: got %d messages (%v)", i, n, b.Error())
		}
	}
	if _, err := c.StartRepairWorker(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "moved to the dead letters", func() error {
		st := status(t, nc)
		work, err := js.Stream(ctx, repair.StreamName)
		if err != nil {
			return err
		}
		if st.Dead != 1 || work.CachedInfo().State.Msgs != 0 {
			return fmt.Errorf("dead %d, work stream %d", st.Dead, work.CachedInfo().State.Msgs)
		}
		return nil
	})
	dead, err := repair.ListDead(ctx, js, 0, 10)
	if err != nil || len(dead) != 1 || !strings.Contains(dead[0].Error, "without an ack") {
		t.Fatalf("dead letters %+v %v", dead, err)
	}
}

// Without JetStream's repair stream, reads and writes still answer; the
// lost hints are counted.
func TestWritesAnswerWhenRepairStreamIsGone(t *testing.T) {
	c := startCluster(t, testConfig())
	c.StopRepairWorkers() // a worker would recreate the stream
	nc := connect(t, c)
	kv, err := client.New(nc, "default")
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 30*time.Second)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteStream(ctx, repair.StreamName); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		key := fmt.Sprintf("k%d", i)
		if _, err := kv.Put(ctx, key, []byte("v"), client.WithConsistency(subjects.Quorum)); err != nil {
			t.Fatalf("put without the repair stream: %v", err)
		}
		got, err := kv.Get(ctx, key, client.WithConsistency(subjects.Quorum))
		if err != nil || !bytes.Equal(got.Value, []byte("v")) {
			t.Fatalf("get without the repair stream: %v %+v", err, got)
		}
	}
	eventually(t, 10*time.Second, "the lost hints are counted", func() error {
		if s := c.RepairPublisher().Stats(); s.Dropped < 5 || s.Pending != 0 {
			return fmt.Errorf("%+v", s)
		}
		return nil
	})
}

// inspect returns the plain context inside one the store issued (sealed),
// without verifying it; "" if it is not one.
func inspect(ctx string) string {
	plain, _ := vclock.InspectContext(ctx)
	return plain
}
