package storage

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Tests of stale and rebuilt replicas (rebuild.go, issue 15 D7).

// switchedTenants serves the tenant list while on is set, and answers
// 503 otherwise (the node then knows no tenant list).
func (f *fakeCoord) switchedTenants(tb testing.TB, on *atomic.Bool, ts ...subjects.Tenant) {
	tb.Helper()
	data, err := msgpack.Marshal(&subjects.TenantList{Tenants: ts})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.nc.Subscribe(subjects.AdminTenantList, func(m *nats.Msg) {
		if !on.Load() {
			e := subjects.Errorf(subjects.KindUnavailable, "tenant list switched off")
			_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: e.Headers()})
			return
		}
		_ = m.Respond(data)
	}); err != nil {
		tb.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// startFresh serves node cfg like startXfer but keeps the rebuild mark of
// a new directory: the node stands for a replaced disk.
func startFresh(tb testing.TB, s *server.Server, cfg Config) *Node {
	tb.Helper()
	cfg.Partitions, cfg.Logger = xferQ, quiet()
	n, err := Open(cfg)
	if err != nil {
		tb.Fatalf("open %s: %v", cfg.NodeID, err)
	}
	if err := n.start(natstest.Connect(tb, s)); err != nil {
		_ = n.Stop()
		tb.Fatalf("start %s: %v", cfg.NodeID, err)
	}
	tb.Cleanup(func() { _ = n.Stop() })
	return n
}

// rebuildKeys writes n lww keys of tenant "t" in every partition to each
// node, and returns them.
func rebuildKeys(t *testing.T, n int, nodes ...*Node) []string {
	t.Helper()
	keys, ws := rebuildWrites(n)
	writeAll(t, ws, nodes...)
	return keys
}

// rebuildWrites returns rebuildKeys's keys and writes without writing them.
func rebuildWrites(n int) ([]string, []subjects.NodeWrite) {
	var keys []string
	var ws []subjects.NodeWrite
	for p := range uint32(xferQ) {
		for _, k := range keysIn("t", p, xferQ, n) {
			keys = append(keys, k)
			ws = append(ws, subjects.NodeWrite{Tenant: "t", Key: k, LWW: version(vclock.CounterAt(time.Now()), "c1", "v-"+k)})
		}
	}
	return keys, ws
}

// tryRead is rawRead for a goroutine other than the test's: it returns
// the failure instead of failing the test.
func tryRead(nc *nats.Conn, node string, mv uint64, tenant, key string) (subjects.NodeReadResult, error) {
	data, err := msgpack.Marshal(&subjects.NodeReadBatch{Proto: subjects.NodeProtocolVersion, MapVersion: mv,
		Items: []subjects.NodeRead{{ID: 1, Tenant: tenant, Key: key}}})
	if err != nil {
		return subjects.NodeReadResult{}, err
	}
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpRead), data, 5*time.Second)
	if err != nil {
		return subjects.NodeReadResult{}, err
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return subjects.NodeReadResult{}, e
	}
	var rep subjects.NodeReadReply
	if err := wire.UnmarshalNodeReadReply(msg.Data, &rep); err != nil || len(rep.Results) != 1 {
		return subjects.NodeReadResult{}, fmt.Errorf("read reply %+v: %v", rep, err)
	}
	return rep.Results[0], nil
}

// readWatch reads keys from node at map version mv in a loop until stop
// closes, and records every answer that is neither `rebuilding` nor the
// key's value: a rebuilding replica must never answer what it lacks.
func readWatch(t *testing.T, nc *nats.Conn, node string, mv uint64, keys []string, stop chan struct{}) (wait func() (answered, refused int, wrong []string)) {
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		answer, refusal int
		bad             []string
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := keys[i%len(keys)]
			r, err := tryRead(nc, node, mv, "t", k)
			mu.Lock()
			if err != nil {
				bad = append(bad, k+": "+err.Error())
				mu.Unlock()
				continue
			}
			switch {
			case strings.HasPrefix(r.Err, subjects.KindRebuilding+": "):
				refusal++
			case r.Err == "" && r.LWW != nil && string(r.LWW.Value) == "v-"+k:
				answer++
			default:
				bad = append(bad, fmt.Sprintf("%s (partition %d, value %+v): %s", k, ring.Partition("t", k, xferQ), r.LWW, r.Err))
			}
			mu.Unlock()
		}
	}()
	return func() (int, int, []string) {
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		return answer, refusal, bad
	}
}

// TestRebuildFreshDirectory: node c comes back with a new, empty
// directory while the map still names it an owner of every partition. It
// answers reads `rebuilding` (and never "not found") until it pulled every
// partition from the other owners, then serves them; its status shows the
// progress, and a restart after the rebuild does not rebuild again.
func TestRebuildFreshDirectory(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	var on atomic.Bool
	f.switchedTenants(t, &on, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000})
	cfg := func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: time.Hour}
	}
	a, b := startXfer(t, s, cfg("a", t.TempDir()), nil), startXfer(t, s, cfg("b", t.TempDir()), nil)
	keys := rebuildKeys(t, 5, a, b)
	// A write b and c acknowledged before c lost its disk: only b has it.
	// Where a comes before b in the row, c pulls a whole and reconciles
	// b, so the reconcile must fetch it.
	var onlyB []subjects.NodeWrite
	bAfterA := 0
	for p := range uint32(xferQ) {
		onlyB = append(onlyB, subjects.NodeWrite{Tenant: "t", Key: keysIn("t", p, xferQ, 6)[5], LWW: version(vclock.CounterAt(time.Now()), "c1", "only b")})
		if row := f.current().Owners(p, nil); slices.Index(row, "a") < slices.Index(row, "b") {
			bAfterA++
		}
	}
	if bAfterA == 0 {
		t.Fatal("a comes before b in no row: the test needs some")
	}
	writeAll(t, onlyB, b)
	cc := cfg("c", t.TempDir())
	c := startFresh(t, s, cc)
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	mv := c.Map().Version()
	// No tenant list: the rebuild cannot start, every read is refused.
	for _, k := range keys[:20] {
		if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "t", k); !strings.HasPrefix(r.Err, subjects.KindRebuilding+": ") {
			t.Fatalf("c answered a read of %q before rebuilding: %+v", k, r)
		}
	}
	if st := c.TransferStatus(); st == nil || st.RebuildTotal != xferQ || st.RebuildDone != 0 {
		t.Fatalf("status before the rebuild: %+v", st)
	}
	stop := make(chan struct{})
	wait := readWatch(t, f.nc, "c", mv, keys, stop)
	on.Store(true)
	waitFor(t, 20*time.Second, "c to rebuild", func() bool {
		st := c.TransferStatus()
		return st != nil && st.RebuildDone == xferQ
	})
	time.Sleep(50 * time.Millisecond) // reads after the rebuild too
	close(stop)
	answered, refused, wrong := wait()
	if len(wrong) > 0 {
		t.Fatalf("c answered %d reads with neither the value nor rebuilding, e.g. %s", len(wrong), wrong[0])
	}
	t.Logf("during the rebuild: %d reads refused, %d answered", refused, answered)
	for _, k := range keys {
		if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "t", k); r.Err != "" || r.LWW == nil || string(r.LWW.Value) != "v-"+k {
			t.Fatalf("c after its rebuild, key %q: %+v", k, r)
		}
	}
	for _, w := range onlyB {
		if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "t", w.Key); r.Err != "" || r.LWW == nil || string(r.LWW.Value) != "only b" {
			t.Fatalf("c after its rebuild lacks %q, which only b held: %+v", w.Key, r)
		}
	}
	if got := c.xfer.reconciled.Load(); got < int64(bAfterA) {
		t.Errorf("c reconciled %d (partition, source) pairs, want at least %d (b after a)", got, bAfterA)
	}
	waitFor(t, 5*time.Second, "the rebuild mark to be cleared", func() bool {
		v, err := c.eng.getMeta(metaRebuild)
		return err == nil && v == nil
	})
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	on.Store(false)
	c = startFresh(t, s, cc)
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "t", keys[0]); r.Err != "" || r.LWW == nil {
		t.Fatalf("c restarted after its rebuild refuses or lacks %q: %+v", keys[0], r)
	}
}

// TestStaleDirectoryDropsWhatMovedWhileDown: node c is down for longer
// than the grace (1 s) while some partitions of a join flip to their new
// rows. A key only c's directory holds, in a partition that flipped
// meanwhile (the others may have reaped its tombstone while c was not a
// current owner), must not come back: that partition is dropped and
// rebuilt, answering reads `rebuilding` (never "not found") until then.
// A partition whose rows did not change keeps what c holds: no key of it
// was reaped without c's confirmation.
func TestStaleDirectoryDropsWhatMovedWhileDown(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	m2 := retarget(t, m1, "a", "b", "c", "d") // d joins: every partition moves
	f := newFakeCoord(t, s, m2, false)
	var on atomic.Bool
	on.Store(true)
	f.switchedTenants(t, &on, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 1000})
	cfg := func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: 100 * time.Millisecond}
	}
	cc := cfg("c", t.TempDir())
	a, b, c := startXfer(t, s, cfg("a", t.TempDir()), nil), startXfer(t, s, cfg("b", t.TempDir()), nil), startXfer(t, s, cc, nil)
	keys, ws := rebuildWrites(5)
	writeAll(t, ws, a, b, c)
	// The joining node, as if it had pulled everything (written before it
	// starts: its transfer loop writes too).
	startXfer(t, s, cfg("d", t.TempDir()), func(e *engine) { apply(t, e, ws) })
	// While c is down, d reports half the partitions done: they flip.
	var moved, still []uint32
	for p := range uint32(xferQ) {
		if p%2 == 0 {
			moved = append(moved, p)
		} else {
			still = append(still, p)
		}
	}
	m3, flipped, err := m2.MarkDone("d", moved, m2.Version()+1)
	if err != nil || len(flipped) != len(moved) {
		t.Fatalf("MarkDone: flipped %v, %v", flipped, err)
	}
	ghost := keysIn("t", moved[0], xferQ, 100)[99]
	kept := keysIn("t", still[0], xferQ, 100)[99]
	for _, k := range []string{ghost, kept} {
		writeAll(t, []subjects.NodeWrite{{Tenant: "t", Key: k, LWW: version(vclock.CounterAt(time.Now()), "c1", "only on c")}}, c)
	}
	// Reap passes, which note the tenants' graces, skip moving partitions.
	if err := c.eng.setMetaInt(metaGraceFloor, 1000, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "c to install the join's map", func() bool { return c.Map() != nil && c.Map().Version() == m2.Version() })
	epoch := c.Epoch()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	f.set(m3)
	time.Sleep(1500 * time.Millisecond)
	on.Store(false) // hold the rebuild back until reads were checked
	c = startFresh(t, s, cc)
	if c.Epoch() == epoch {
		t.Fatal("a stale directory kept its epoch")
	}
	if rec, err := c.eng.read("t", ghost); err != nil || rec.LWW != nil {
		t.Fatalf("the stale partition %d was not dropped: %+v %v", moved[0], rec, err)
	}
	if rec, err := c.eng.read("t", kept); err != nil || rec.LWW == nil {
		t.Fatalf("partition %d, whose rows did not change, lost what c held: %+v %v", still[0], rec, err)
	}
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	mv := c.Map().Version()
	// c holds (and is read for) only the keys of the partitions where it
	// is among the tenant's 3 first owners.
	var replicaKeys []string
	for _, k := range keys {
		if slices.Index(m3.Owners(ring.Partition("t", k, xferQ), nil), "c") < 3 {
			replicaKeys = append(replicaKeys, k)
		}
	}
	keys = replicaKeys
	stop := make(chan struct{})
	wait := readWatch(t, f.nc, "c", mv, keys, stop)
	time.Sleep(100 * time.Millisecond)
	on.Store(true)
	waitFor(t, 20*time.Second, "c to rebuild", func() bool {
		st := c.TransferStatus()
		return st != nil && st.RebuildTotal == len(moved) && st.RebuildDone == len(moved)
	})
	close(stop)
	answered, refused, wrong := wait()
	if len(wrong) > 0 {
		t.Fatalf("c answered %d reads with neither the value nor rebuilding, e.g. %s", len(wrong), wrong[0])
	}
	if refused == 0 {
		t.Fatal("c answered no read rebuilding before its tenant list came")
	}
	t.Logf("during the rebuild: %d reads refused, %d answered", refused, answered)
	for _, k := range keys {
		if rec, err := c.eng.read("t", k); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "v-"+k {
			t.Fatalf("c lacks %q after its rebuild: %+v %v", k, rec, err)
		}
	}
	if rec, err := c.eng.read("t", ghost); err != nil || rec.LWW != nil {
		t.Fatalf("a key only the stale directory held came back: %+v %v", rec, err)
	}
}

// TestWholeClusterDownLongerThanTheGraceKeepsItsData: every node of the
// cluster stops (a power cut, a cluster parked over a holiday) for longer
// than the smallest tombstone grace. Nobody could reap while they were
// down, and the map did not change: each keeps its data and serves it,
// with nothing to rebuild. (They used to wipe themselves, each then
// "rebuilding" from the others' empty copies: every acknowledged write
// was gone.)
func TestWholeClusterDownLongerThanTheGraceKeepsItsData(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	var on atomic.Bool
	on.Store(true)
	f.switchedTenants(t, &on, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 1000})
	cfgs := map[string]Config{}
	var nodes []*Node
	for _, id := range []string{"a", "b", "c"} {
		cfgs[id] = Config{NodeID: id, DataDir: t.TempDir(), Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: 100 * time.Millisecond}
		nodes = append(nodes, startXfer(t, s, cfgs[id], nil))
	}
	keys := rebuildKeys(t, 5, nodes...)
	for _, n := range nodes {
		waitFor(t, 5*time.Second, n.cfg.NodeID+" to learn the 1 s grace", func() bool {
			v, ok, err := n.eng.readMetaInt(metaGraceFloor)
			return err == nil && ok && v == 1000
		})
	}
	for _, n := range nodes {
		if err := n.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(1500 * time.Millisecond)
	for _, id := range []string{"a", "b", "c"} {
		n := startFresh(t, s, cfgs[id])
		waitFor(t, 5*time.Second, id+" to load the map", func() bool { return n.Map() != nil })
		if total, _ := n.rebuildStatus(); total != 0 {
			t.Fatalf("%s rebuilds %d partitions", id, total)
		}
		for _, k := range keys {
			if rec, err := n.eng.read("t", k); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "v-"+k {
				t.Fatalf("%s lost %q after the whole cluster was down: %+v %v", id, k, rec, err)
			}
		}
		if r, err := tryRead(f.nc, id, n.Map().Version(), "t", keys[0]); err != nil || r.Err != "" || r.LWW == nil {
			t.Fatalf("%s does not serve %q: %+v %v", id, keys[0], r, err)
		}
	}
}

// TestCleanStopRecordsAlive: a clean stop records lastAlive, so that a
// node restarted within the grace after running longer than aliveEvery
// is not stale.
func TestCleanStopRecordsAlive(t *testing.T) {
	dir := t.TempDir()
	n := open(t, "a", dir)
	if err := n.eng.setMetaInt(metaLastAlive, time.Now().Add(-time.Hour).UnixMilli(), nil); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	// Read it as stored (Open would record a new one).
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{quiet()}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	e := &engine{db: db}
	if v, ok, err := e.readMetaInt(metaLastAlive); err != nil || !ok || v < before.UnixMilli() {
		t.Fatalf("lastAlive after a clean stop: %v %v %v, want at least %v", time.UnixMilli(v), ok, err, before)
	}
}

// TestRebuildReadSnapshotAfterCheck: a read of a partition that is still
// rebuilding when the read opens its Pebble snapshot, and rebuilt before
// the read looks at the rebuild state, must not answer from that snapshot
// (it predates the pulled data: "not found"). The read is held right after
// its snapshot until c finished its rebuild: it must answer the value or
// `rebuilding`, never an empty result. (The intermittent empty answers of
// TestRebuildFreshDirectory and TestStaleDirectoryIsWiped.)
func TestRebuildReadSnapshotAfterCheck(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	var on atomic.Bool
	f.switchedTenants(t, &on, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000})
	cfg := func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: time.Hour,
			Partitions: xferQ, Logger: quiet()}
	}
	a, b := startXfer(t, s, cfg("a", t.TempDir()), nil), startXfer(t, s, cfg("b", t.TempDir()), nil)
	keys := rebuildKeys(t, 2, a, b)

	c, err := Open(cfg("c", t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	var hold atomic.Bool
	rebuilt := make(chan error, 1)
	c.afterReadSnapshot = func() {
		if !hold.CompareAndSwap(true, false) {
			return
		}
		// The snapshot is open; let the rebuild run to its end now.
		on.Store(true)
		deadline := time.Now().Add(20 * time.Second)
		for {
			if total, done := c.rebuildStatus(); total == xferQ && done == xferQ {
				rebuilt <- nil
				return
			}
			if time.Now().After(deadline) {
				rebuilt <- fmt.Errorf("rebuild did not finish within 20 s while a read was held")
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := c.start(natstest.Connect(t, s)); err != nil {
		_ = c.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop() })
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	mv := c.Map().Version()
	if total, done := c.rebuildStatus(); total != xferQ || done != 0 {
		t.Fatalf("rebuild status before the tenant list: %d/%d", done, total)
	}
	hold.Store(true)
	r, err := tryRead(f.nc, "c", mv, "t", keys[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := <-rebuilt; err != nil {
		t.Fatal(err)
	}
	rebuilding := strings.HasPrefix(r.Err, subjects.KindRebuilding+": ")
	if !rebuilding && (r.Err != "" || r.LWW == nil || string(r.LWW.Value) != "v-"+keys[0]) {
		t.Fatalf("a read held across the end of the rebuild answered %+v (LWW %+v), want the value or rebuilding", r, r.LWW)
	}
}

// TestRebuildingSourceRefusesTransferScans: a node rebuilding a partition
// holds an incomplete copy, so a transfer's scan of it answers rebuilding
// (the receiver then counts it as a failed source, never as coverage);
// a scan marked Rebuild (another owner rebuilding too) gets what it holds.
func TestRebuildingSourceRefusesTransferScans(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	var on atomic.Bool // the tenant list stays unknown: c's rebuild waits
	f.switchedTenants(t, &on, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000})
	cfg := func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: time.Hour,
			Partitions: xferQ, Logger: quiet()}
	}
	startXfer(t, s, cfg("a", t.TempDir()), nil)
	startXfer(t, s, cfg("b", t.TempDir()), nil)
	c := startFresh(t, s, cfg("c", t.TempDir()))
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	if total, done := c.rebuildStatus(); total != xferQ || done != 0 {
		t.Fatalf("c's rebuild: %d/%d, want 0/%d", done, total, xferQ)
	}
	scan := func(rebuild bool) *subjects.Error {
		t.Helper()
		data, err := wire.MarshalPartitionScan(nil, &subjects.PartitionScan{Proto: subjects.NodeProtocolVersion, Partitions: xferQ,
			Partition: xferPart, MapVersion: c.Map().Version(), Rebuild: rebuild})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := f.nc.Request(subjects.StorageNode("c", subjects.NodeOpScan), data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return subjects.ErrorFromHeaders(msg.Header.Get)
	}
	if e := scan(false); e == nil || e.Kind != subjects.KindRebuilding {
		t.Fatalf("a transfer's scan of a rebuilding partition answered %v, want %s", e, subjects.KindRebuilding)
	}
	// A transfer's reconcile (hash-tree exchange) of it is refused too.
	roots := func(transfer bool) *subjects.Error {
		t.Helper()
		data, err := msgpack.Marshal(&subjects.AERequest{Proto: subjects.NodeProtocolVersion, Op: subjects.AEOpRoots, Partitions: xferQ,
			MapVersion: c.Map().Version(), Tenants: []string{"t"}, Config: subjects.AEConfig{FanOut: 16, Depth: 2},
			Parts: []uint32{xferPart}, Transfer: transfer})
		if err != nil {
			t.Fatal(err)
		}
		_, e := aeRequest(t, f.nc, "c", data)
		return e
	}
	if e := roots(true); e == nil || e.Kind != subjects.KindRebuilding {
		t.Fatalf("a transfer's reconcile of a rebuilding partition answered %v, want %s", e, subjects.KindRebuilding)
	}
	if e := scan(true); e != nil {
		t.Fatalf("a rebuild's scan of a rebuilding partition answered %v, want what c holds", e)
	}
	// Rebuilt: every scan is answered.
	on.Store(true)
	waitFor(t, 20*time.Second, "c's rebuild", func() bool { total, done := c.rebuildStatus(); return done == total })
	if e := scan(false); e != nil {
		t.Fatalf("a scan after the rebuild answered %v", e)
	}
	if e := roots(true); e != nil {
		t.Fatalf("a transfer's reconcile after the rebuild answered %v", e)
	}
}

// TestRebuildAsksTheTenantListEveryRound: a rebuild round pulls each
// partition for the tenants of the list it asked for at its start. The
// list changes between rounds without an event reaching the node (tenant
// u appears; events are plain NATS publishes and can be lost): the next
// round must ask again rather than reuse the cached list, or the rebuilt
// node would lack u's keys and answer them not found. Round 1 cannot
// finish (b, a source every partition needs, is down).
func TestRebuildAsksTheTenantListEveryRound(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	lists := [2][]byte{}
	for i, ts := range [][]subjects.Tenant{
		{{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000}},
		{{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000}, {ID: "u", ReplicationFactor: 3, TombstoneGraceMS: 3_600_000}},
	} {
		var err error
		if lists[i], err = msgpack.Marshal(&subjects.TenantList{Tenants: ts}); err != nil {
			t.Fatal(err)
		}
	}
	var asked atomic.Int64 // list requests; the first is answered without u
	if _, err := f.nc.Subscribe(subjects.AdminTenantList, func(m *nats.Msg) {
		if asked.Add(1) == 1 {
			_ = m.Respond(lists[0])
			return
		}
		_ = m.Respond(lists[1])
	}); err != nil {
		t.Fatal(err)
	}
	cfg := func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, ReapInterval: time.Hour}
	}
	bc := cfg("b", t.TempDir())
	a, b := startXfer(t, s, cfg("a", t.TempDir()), nil), startXfer(t, s, bc, nil)
	keys := rebuildKeys(t, 2, a, b)
	var us []subjects.NodeWrite
	for p := range uint32(xferQ) {
		for _, k := range keysIn("u", p, xferQ, 2) {
			us = append(us, subjects.NodeWrite{Tenant: "u", Key: k, LWW: version(vclock.CounterAt(time.Now()), "c1", "u-"+k)})
		}
	}
	writeAll(t, us, a, b)
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	c := startFresh(t, s, cfg("c", t.TempDir()))
	waitFor(t, 30*time.Second, "c's second round to ask for the list", func() bool { return asked.Load() >= 2 })
	startXfer(t, s, bc, nil)
	waitFor(t, 60*time.Second, "c to rebuild", func() bool {
		st := c.TransferStatus()
		return st != nil && st.RebuildDone == xferQ
	})
	mv := c.Map().Version()
	for _, k := range keys {
		if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "t", k); r.Err != "" || r.LWW == nil {
			t.Fatalf("c after its rebuild lacks t/%q: %+v", k, r)
		}
	}
	for _, w := range us {
		if r := rawRead(t, f.nc, "c", subjects.NodeProtocolVersion, mv, "u", w.Key); r.Err != "" || r.LWW == nil || string(r.LWW.Value) != "u-"+w.Key {
			t.Fatalf("c after its rebuild lacks u/%q, a tenant of the list its later rounds were answered: %+v", w.Key, r)
		}
	}
}

// TestStaleWhenTheClockWentBack: a directory whose lastAlive is later than
// the clock at the next start (the clock was set back: a wrong clock at
// boot, a step) cannot tell how long the node was down, so it counts as
// stale (a new epoch, the partitions changed since its last map version
// dropped at the first map), however small the step. Down for less than
// the grace with a sane clock it is not; down for longer it is.
func TestStaleWhenTheClockWentBack(t *testing.T) {
	const floor = 60_000 // ms
	now := time.Now()
	for _, tc := range []struct {
		name     string
		aliveAgo time.Duration // now - lastAlive
		stale    bool
	}{
		{"down a second", time.Second, false},
		{"down past the grace", 2 * time.Minute, true},
		{"clock set back an hour", -time.Hour, true},
		{"clock set back a second", -time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := openEngine(t.TempDir(), "n", xferQ, false, quiet())
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = e.db.Close() }()
			for k, v := range map[string]int64{string(metaLastAlive): now.Add(-tc.aliveAgo).UnixMilli(), string(metaGraceFloor): floor, string(metaMapVersion): 7} {
				if err := e.setMetaInt([]byte(k), v, pebble.Sync); err != nil {
					t.Fatal(err)
				}
			}
			e.minted = false // as a directory opened again
			epoch := e.epoch
			if err := e.checkStale("n", now, quiet()); err != nil {
				t.Fatal(err)
			}
			if got := e.stale != nil; got != tc.stale {
				t.Fatalf("stale %v, want %v", got, tc.stale)
			}
			if tc.stale && (*e.stale != 7 || e.epoch == epoch) {
				t.Errorf("stale against version %d with epoch %x (was %x), want version 7 and a new epoch", *e.stale, e.epoch, epoch)
			}
			if !tc.stale && e.epoch != epoch {
				t.Errorf("a directory that is not stale minted a new epoch")
			}
		})
	}
}
