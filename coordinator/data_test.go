package coordinator_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

var levels = []string{subjects.One, subjects.Quorum, subjects.All}

func TestPutGetRoundTripsEverySizeAtEveryLevel(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), subjects.MaxValueBytes/16)
	values := map[string][]byte{"empty": {}, "one-byte": {'x'}, "binary": binary, "1MiB": big}
	for _, level := range levels {
		for name, v := range values {
			key := level + "/" + name
			res, err := kv.Put(ctx, key, v, client.WithConsistency(level))
			if err != nil {
				t.Fatalf("put %s: %v", key, err)
			}
			want := map[string]int{"one": 1, "quorum": 2, "all": 3}[level]
			if res.ReplicaCount < want || res.Consistency != level {
				t.Fatalf("put %s: replica_count %d consistency %q", key, res.ReplicaCount, res.Consistency)
			}
			// Read at the level that overlaps the write's (R+W > N): a put at
			// one may not have reached a read-at-one's replica yet.
			readLevel := map[string]string{"one": "all", "quorum": "quorum", "all": "one"}[level]
			got, err := kv.Get(ctx, key, client.WithConsistency(readLevel))
			if err != nil {
				t.Fatalf("get %s: %v", key, err)
			}
			if !bytes.Equal(got.Value, v) {
				t.Fatalf("get %s: %d bytes, want %d", key, len(got.Value), len(v))
			}
			if got.Context != res.Context {
				t.Fatalf("get %s: context %q, want the put's %q", key, got.Context, res.Context)
			}
		}
	}
}

func TestBatchOfLargeValuesSplitsUnderMaxPayload(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := startClusterWith(t, devcluster.Config{Nodes: 3, Metrics: reg})
	kv := kvClient(t, c, "default")
	// Each round sends 24 MiB to the replicas and reads as much back; a CI
	// run under -race at load ~14 had a replica miss the 10 s a request had
	// (an idle run takes 1 s a round). The test is about batch sizes, not
	// latency: 30 s a request, and the context covers a few rounds.
	ctx := ctxFor(t, 120*time.Second)
	big := bytes.Repeat([]byte{7}, subjects.MaxValueBytes)
	// Eight 1 MiB writes at once exceed the 4 MiB max payload as one batch,
	// so the items queued for a node must leave in several batches, some
	// holding more than one write. Rounds repeat until the coordinator's
	// batch histogram shows a multi-write batch: concurrency makes one
	// likely in the first round, not certain.
	for round := 0; ; round++ {
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("big-%d-%d", round, i)
				if _, err := kv.Put(ctx, key, big, client.WithConsistency(subjects.All), client.WithTimeout(30*time.Second)); err != nil {
					errs <- fmt.Errorf("put %s: %w", key, err)
					return
				}
				got, err := kv.Get(ctx, key, client.WithConsistency(subjects.All), client.WithTimeout(30*time.Second))
				if err != nil || len(got.Value) != len(big) {
					errs <- fmt.Errorf("get %s: %v", key, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if t.Failed() {
			return
		}
		text := scrape(t, reg)
		single := mustMetric(t, text, `quorumkv_coordinator_batch_items_bucket{coordinator="0",op="write",le="1"}`)
		all := mustMetric(t, text, `quorumkv_coordinator_batch_items_count{coordinator="0",op="write"}`)
		if all > single {
			t.Logf("round %d: %v of %v write batches held more than one write", round, all-single, all)
			return
		}
		if round == 4 {
			t.Fatalf("after %d rounds of 8 concurrent 1 MiB puts, all %v write batches held one write", round+1, all)
		}
	}
}

// mustMetric is the value of the sample named exactly name (with its
// labels) in a Prometheus text exposition.
func mustMetric(t *testing.T, text, name string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return v
		}
	}
	t.Fatalf("no metric %s in:\n%s", name, text)
	return 0
}

func TestAvailabilityWithNodesDown(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "k", []byte("v1"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode("node-1"); err != nil {
		t.Fatal(err)
	}
	// One of three down: quorum works, all does not.
	if _, err := kv.Put(ctx, "k", []byte("v2"), client.WithConsistency(subjects.Quorum)); err != nil {
		t.Fatalf("quorum put with one node down: %v", err)
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.Quorum))
	if err != nil || string(got.Value) != "v2" {
		t.Fatalf("quorum get with one node down: %v %+v", err, got)
	}
	_, err = kv.Put(ctx, "k", []byte("v3"), client.WithConsistency(subjects.All))
	assertCode(t, err, 503, "all needs 3 of 3 replicas")
	_, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	assertCode(t, err, 503, "all needs 3 of 3 replicas")

	// Two of three down: quorum fails within the timeout, one works.
	if err := c.StopNode("node-2"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = kv.Put(ctx, "k", []byte("v4"), client.WithConsistency(subjects.Quorum), client.WithTimeout(time.Second))
	assertCode(t, err, 503, "quorum needs 2 of 3 replicas")
	_, err = kv.Get(ctx, "k", client.WithConsistency(subjects.Quorum), client.WithTimeout(time.Second))
	assertCode(t, err, 503, "quorum needs 2 of 3 replicas")
	// The 503s above come from the coordinator (their messages name the
	// level), so it did not hang; this bound only catches one that waited
	// far past the 1 s timeouts, with room for a loaded machine.
	if el := time.Since(start); el > 10*time.Second {
		t.Fatalf("503s took %s, want about the 1s timeouts", el)
	}
	if _, err := kv.Put(ctx, "k", []byte("v5"), client.WithConsistency(subjects.One)); err != nil {
		t.Fatalf("one with two nodes down: %v", err)
	}
}

// TestSilentReplicasTimeOut covers replicas that are subscribed but never
// answer (paused, partitioned): the level fails with 503 once the request's
// timeout passes, not later.
func TestSilentReplicasTimeOut(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if err := c.StopNode("node-2"); err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode("node-3"); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, c)
	for _, id := range []string{"node-2", "node-3"} {
		if _, err := nc.Subscribe(subjects.NodeAll(id), func(*nats.Msg) {}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.Quorum), client.WithTimeout(300*time.Millisecond))
	assertCode(t, err, 503, "did not answer in time")
	// At least the timeout: the coordinator waited for the silent nodes.
	// The upper bound only catches a coordinator that ignored the request's
	// timeout (its 503 names "did not answer in time", so it answered), with
	// room for a loaded machine.
	if el := time.Since(start); el < 300*time.Millisecond || el > 5*time.Second {
		t.Fatalf("timeout answered after %s, want about 300ms", el)
	}
	// The silent nodes do not block the live one.
	if _, err := kv.Put(ctx, "k2", []byte("v"), client.WithConsistency(subjects.One)); err != nil {
		t.Fatalf("one with a live replica: %v", err)
	}
}

func TestConcurrentWritersConvergeAndContextWins(t *testing.T) {
	c := startCluster(t, 3)
	if _, err := c.AddCoordinator(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForNodes(ctxT(t), 3); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		kv := kvClient(t, c, "default")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				if _, err := kv.Put(ctx, "contended", []byte(fmt.Sprintf("w%d-%d", w, i)), client.WithConsistency(subjects.One)); err != nil {
					t.Errorf("put: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	kv := kvClient(t, c, "default")
	admin := client.NewAdmin(connect(t, c))
	// Every replica holds the same winner once the writes have landed.
	waitFor(t, 5*time.Second, func() error {
		var first *subjects.DumpEntry
		for i := 1; i <= 3; i++ {
			d, err := admin.Dump(ctx, devcluster.NodeID(i), "default", "", 0)
			if err != nil {
				return err
			}
			if len(d.Entries) != 1 {
				return fmt.Errorf("%s holds %d keys", devcluster.NodeID(i), len(d.Entries))
			}
			e := d.Entries[0]
			if first == nil {
				first = &e
			} else if e.Context != first.Context || !bytes.Equal(e.Value, first.Value) {
				return fmt.Errorf("replicas differ: %+v vs %+v", e, *first)
			}
		}
		return nil
	})
	read, err := kv.Get(ctx, "contended", client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	// The replicas agree on one winner, minted by one of the coordinators.
	actors := map[string]bool{}
	for i := 1; i <= 3; i++ {
		entries, err := admin.DumpAll(ctx, devcluster.NodeID(i), "default")
		if err != nil || len(entries) != 1 {
			t.Fatalf("dump %s: %v (%d entries)", devcluster.NodeID(i), err, len(entries))
		}
		actors[entries[0].Actor] = true
	}
	minted := false
	for _, co := range c.Coordinators() {
		minted = minted || actors[co.Actor()]
	}
	if len(actors) != 1 || !minted {
		t.Fatalf("replicas hold versions of actors %v; want one, a coordinator's", actors)
	}
	// A write carrying the read's context beats the version read, whichever
	// coordinator takes it and however its clock compares.
	for i := 0; i < 10; i++ {
		res, err := kv.Put(ctx, "contended", []byte(fmt.Sprintf("resolved-%d", i)), client.WithContext(read.Context), client.WithConsistency(subjects.All))
		if err != nil {
			t.Fatal(err)
		}
		got, err := kv.Get(ctx, "contended", client.WithConsistency(subjects.All))
		if err != nil || string(got.Value) != fmt.Sprintf("resolved-%d", i) {
			t.Fatalf("after a write with context: %v %q", err, got.Value)
		}
		if got.Context != res.Context {
			t.Fatalf("read context %q, want the write's %q", got.Context, res.Context)
		}
		read = got
	}
}

func TestDeleteThenGetAndRevive(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	for _, level := range levels {
		key := "del-" + level
		if _, err := kv.Put(ctx, key, []byte("v"), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
		del, err := kv.Delete(ctx, key, client.WithConsistency(level))
		if err != nil {
			t.Fatalf("delete at %s: %v", level, err)
		}
		for _, rl := range levels {
			if (level == subjects.One && rl != subjects.All) || (level == subjects.Quorum && rl == subjects.One) {
				// The delete's and the read's replicas need not overlap
				// (2 + 1 of 3): the third may not have the delete yet.
				continue
			}
			got, err := kv.Get(ctx, key, client.WithConsistency(rl))
			if !errors.Is(err, client.ErrNotFound) {
				t.Fatalf("get at %s after delete at %s: %v %+v", rl, level, err, got)
			}
			if got.Found || got.Context == "" {
				t.Fatalf("not-found reply should carry the tombstone's context: %+v", got)
			}
		}
		got, _ := kv.Get(ctx, key, client.WithConsistency(subjects.All))
		if got.Context != del.Context {
			t.Fatalf("tombstone context %q, want the delete's %q", got.Context, del.Context)
		}
		if _, err := kv.Put(ctx, key, []byte("back"), client.WithContext(got.Context)); err != nil {
			t.Fatal(err)
		}
		back, err := kv.Get(ctx, key, client.WithConsistency(subjects.All))
		if err != nil || string(back.Value) != "back" {
			t.Fatalf("revived key: %v %+v", err, back)
		}
	}
	// Deleting a key that never existed succeeds and reads as not found.
	if _, err := kv.Delete(ctx, "never"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "never"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("get of deleted never-written key: %v", err)
	}
}

func TestRestartsLoseNothing(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	first, err := kv.Put(ctx, "durable", []byte("before"), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	// Storage node restart: the value is on its disk.
	if err := c.StopNode("node-2"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartNode("node-2"); err != nil {
		t.Fatal(err)
	}
	d, err := client.NewAdmin(connect(t, c)).Dump(ctx, "node-2", "default", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Entries) != 1 || string(d.Entries[0].Value) != "before" {
		t.Fatalf("node-2 after restart holds %+v", d.Entries)
	}
	// Coordinator restart: a new one serves the same data and its dots are
	// newer than the old one's.
	c.StopCoordinator(0)
	if _, err := c.AddCoordinator(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, "durable", client.WithConsistency(subjects.All))
	if err != nil || string(got.Value) != "before" {
		t.Fatalf("get through the new coordinator: %v %+v", err, got)
	}
	second, err := kv.Put(ctx, "durable", []byte("after"))
	if err != nil {
		t.Fatal(err)
	}
	d1, d2 := issuedDot(t, first.Context), issuedDot(t, second.Context)
	if d1.Actor == d2.Actor {
		t.Fatalf("restarted coordinator reuses actor %q", d1.Actor)
	}
	if d2.Compare(d1) <= 0 {
		t.Fatalf("new coordinator's dot %+v is dominated by the old %+v", d2, d1)
	}
	got, err = kv.Get(ctx, "durable", client.WithConsistency(subjects.All))
	if err != nil || string(got.Value) != "after" {
		t.Fatalf("after restart: %v %+v", err, got)
	}
}

func TestManyRequestsInFlight(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		kv := kvClient(t, c, "default")
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				key := fmt.Sprintf("w%d/k%d", w, i)
				if _, err := kv.Put(ctx, key, []byte(key)); err != nil {
					t.Errorf("put %s: %v", key, err)
					return
				}
				got, err := kv.Get(ctx, key)
				if err != nil || string(got.Value) != key {
					t.Errorf("get %s: %v", key, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func assertCode(t *testing.T, err error, code int, msgPart string) {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want a %d error", err, code)
	}
	if e.Code != code || !strings.Contains(e.Message, msgPart) {
		t.Fatalf("got %d %q, want %d containing %q", e.Code, e.Message, code, msgPart)
	}
}

func waitFor(t *testing.T, d time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = context.Background

// TestDevRestartKeepsData: a whole dev cluster stopped and started again on
// the same directory serves what it stored.
func TestDevRestartKeepsData(t *testing.T) {
	dir := t.TempDir()
	start := func() *devcluster.Cluster {
		c, err := devcluster.Start(ctxT(t), devcluster.Config{Listen: "127.0.0.1:0", DataDir: dir, Logger: quietLogger()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := start()
	kv := kvClient(t, c, "default")
	if _, err := kv.Put(ctxT(t), "kept", []byte("across restarts"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	c = start()
	defer c.Close()
	got, err := kvClient(t, c, "default").Get(ctxT(t), "kept")
	if err != nil || string(got.Value) != "across restarts" {
		t.Fatalf("after restart: %v %+v", err, got)
	}
}
