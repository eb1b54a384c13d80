package storage

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/hashtree"
	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Tests of tombstone reaping (reap.go, issue 15 D6) with real in-process
// NATS and real nodes; fakeCoord serves the map and the tenant list.

// serveGraces makes the fake coordinators answer kv.v1.admin.tenant.list
// with these tenants.
func (f *fakeCoord) serveGraces(tb testing.TB, ts ...subjects.Tenant) {
	tb.Helper()
	data, err := msgpack.Marshal(&subjects.TenantList{Tenants: ts})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := f.nc.Subscribe(subjects.AdminTenantList, func(m *nats.Msg) { _ = m.Respond(data) }); err != nil {
		tb.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		tb.Fatal(err)
	}
}

// reapCluster starts nodes a, b, c owning every partition, a tenant "t"
// of RF 3 with a 1 s grace, and returns a config maker for restarts.
// fresh (startFresh) keeps a new or wiped directory's rebuild mark.
func reapCluster(t *testing.T, interval time.Duration) (f *fakeCoord, cfg func(id, dir string) Config, start, fresh func(c Config) *Node) {
	t.Helper()
	s := natstest.RunServer(t)
	f = newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	f.serveGraces(t, subjects.Tenant{ID: "t", ReplicationFactor: 3, TombstoneGraceMS: 1000})
	cfg = func(id, dir string) Config {
		return Config{NodeID: id, DataDir: dir, Heartbeat: time.Second, MapPoll: 200 * time.Millisecond, ReapInterval: interval}
	}
	start = func(c Config) *Node { return startXfer(t, s, c, nil) }
	fresh = func(c Config) *Node { return startFresh(t, s, c) }
	return f, cfg, start, fresh
}

// tombstone is an lww tombstone written now (its counter carries the
// wall clock the grace counts from).
func tombstone(actor string) *vclock.Version {
	return &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now()), Actor: actor}, Tombstone: true}
}

// writeAll applies ws to each node's store.
func writeAll(t *testing.T, ws []subjects.NodeWrite, nodes ...*Node) {
	t.Helper()
	for _, n := range nodes {
		apply(t, n.eng, ws)
	}
}

// TestReapTombstonesEverywhere: keys written then deleted on all three
// owners are reaped from every one once the grace passed, live keys and
// fresh tombstones stay, and the partition's disk usage falls.
func TestReapTombstonesEverywhere(t *testing.T) {
	_, cfg, start, _ := reapCluster(t, 200*time.Millisecond)
	a, b, c := start(cfg("a", t.TempDir())), start(cfg("b", t.TempDir())), start(cfg("c", t.TempDir()))
	nodes := []*Node{a, b, c}
	keys := keysIn("t", xferPart, xferQ, 1000)
	var puts, dels []subjects.NodeWrite
	for i, k := range keys {
		big := make([]byte, 4096) // incompressible
		_, _ = rand.Read(big)
		puts = append(puts, subjects.NodeWrite{Tenant: "t", Key: k, LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now().Add(-time.Hour)) + uint64(i), Actor: "c1"}, Value: big}})
	}
	for _, k := range keys[:990] { // 10 stay live
		dels = append(dels, subjects.NodeWrite{Tenant: "t", Key: k, LWW: tombstone("c1")})
	}
	writeAll(t, puts, nodes...)
	before := map[string]uint64{} // the values on disk
	for _, n := range nodes {
		if err := n.eng.db.Flush(); err != nil {
			t.Fatal(err)
		}
		_, disk, err := n.eng.partitionStats(xferPart)
		if err != nil {
			t.Fatal(err)
		}
		before[n.ID()] = disk
	}
	writeAll(t, dels, nodes...)
	waitFor(t, 20*time.Second, "the tombstones to be reaped on every owner", func() bool {
		for _, n := range nodes {
			if recs, _, err := n.eng.partitionStats(xferPart); err != nil || recs != 10 {
				return false
			}
		}
		return true
	})
	// A tombstone written now is younger than the grace: it stays.
	fresh := keysIn("t", xferPart+1, xferQ, 1)[0]
	writeAll(t, []subjects.NodeWrite{{Tenant: "t", Key: fresh, LWW: tombstone("c1")}}, nodes...)
	if k, err := a.reapPartition(context.Background(), xferPart+1); err != nil || k != 0 {
		t.Fatalf("reaping a partition whose tombstone is younger than the grace: %d reaped, %v", k, err)
	}
	for _, n := range nodes {
		for _, k := range keys[990:] {
			if rec, err := n.eng.read("t", k); err != nil || rec.LWW == nil || rec.LWW.Tombstone {
				t.Fatalf("%s lost live key %q: %+v %v", n.ID(), k, rec, err)
			}
		}
		var after uint64
		waitFor(t, 10*time.Second, n.ID()+"'s partition to be compacted", func() bool {
			_, d, err := n.eng.partitionStats(xferPart)
			after = d
			return err == nil && d*4 < before[n.ID()]
		})
		t.Logf("%s: disk %d → %d bytes", n.ID(), before[n.ID()], after)
	}
}

// TestReapWaitsForDownReplica: owner c missed the deletes and holds the
// old live values: a, b and c reap nothing (c's version differs). With c
// down, past the grace, a and b still reap nothing (no confirmation). c
// comes back stale (down longer than the 1 s grace) with the map
// unchanged: nothing was reaped without it, so it keeps its copy (and
// rebuilds nothing), and a and b still reap nothing while it holds the old
// values. Once the tombstones reach c (anti-entropy's work, written here),
// every owner reaps.
func TestReapWaitsForDownReplica(t *testing.T) {
	_, cfg, start, fresh := reapCluster(t, time.Hour) // passes driven by the test
	cc := cfg("c", t.TempDir())
	a, b, c := start(cfg("a", t.TempDir())), start(cfg("b", t.TempDir())), start(cc)
	keys := keysIn("t", xferPart, xferQ, 50)
	var puts, dels []subjects.NodeWrite
	for _, k := range keys {
		puts = append(puts, subjects.NodeWrite{Tenant: "t", Key: k, LWW: version(vclock.CounterAt(time.Now().Add(-time.Hour)), "c1", "old")})
		dels = append(dels, subjects.NodeWrite{Tenant: "t", Key: k, LWW: tombstone("c1")})
	}
	writeAll(t, puts, a, b, c)
	writeAll(t, dels, a, b)          // c misses the delete
	c.reapPass(context.Background()) // learns the tenant list, and so the 1 s grace
	waitFor(t, 5*time.Second, "c to learn the 1 s grace", func() bool {
		v, ok, err := c.eng.readMetaInt(metaGraceFloor)
		return err == nil && ok && v == 1000
	})
	time.Sleep(1100 * time.Millisecond) // past the grace
	ctx := context.Background()
	for _, n := range []*Node{a, b, c} {
		if k := n.reapPass(ctx); k != 0 {
			t.Fatalf("%s reaped %d keys while c holds another version", n.ID(), k)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	for _, n := range []*Node{a, b} {
		if k := n.reapPass(ctx); k != 0 {
			t.Fatalf("%s reaped %d keys while owner c was down", n.ID(), k)
		}
		for _, k := range keys {
			if rec, err := n.eng.read("t", k); err != nil || rec.LWW == nil || !rec.LWW.Tombstone {
				t.Fatalf("%s no longer holds the tombstone of %q: %+v %v", n.ID(), k, rec, err)
			}
		}
	}
	c = fresh(cc) // back, stale, its partitions unchanged: kept
	waitFor(t, 5*time.Second, "c to load the map", func() bool { return c.Map() != nil })
	if total, _ := c.rebuildStatus(); total != 0 {
		t.Fatalf("c rebuilds %d partitions although the map did not change while it was down", total)
	}
	for _, n := range []*Node{a, b, c} {
		if k := n.reapPass(ctx); k != 0 {
			t.Fatalf("%s reaped %d keys while c holds the old values", n.ID(), k)
		}
	}
	writeAll(t, dels, c)
	if k := a.reapPass(ctx); k != len(keys) {
		t.Fatalf("a reaped %d keys once every owner held the tombstones, want %d", k, len(keys))
	}
	for _, n := range []*Node{a, b, c} {
		for _, k := range keys {
			if rec, err := n.eng.read("t", k); err != nil || rec.LWW != nil {
				t.Fatalf("%s still holds %q after the reap: %+v %v", n.ID(), k, rec, err)
			}
		}
	}
}

// TestReapConditional: a reap request deletes a key only while it holds
// the confirmed version; a confirmation answers the hash held, zero for
// nothing; a request naming a newer map is answered map_behind.
func TestReapConditional(t *testing.T) {
	f, cfg, start, _ := reapCluster(t, time.Hour)
	a := start(cfg("a", t.TempDir()))
	waitFor(t, 5*time.Second, "the map", func() bool { return a.Map() != nil })
	k := keysIn("t", xferPart, xferQ, 2)
	ts := tombstone("c1")
	writeAll(t, []subjects.NodeWrite{{Tenant: "t", Key: k[0], LWW: ts}}, a)
	stored, err := encodeRecord(nil, &record{LWW: ts})
	if err != nil {
		t.Fatal(err)
	}
	h := hashtree.VersionHash(stored)
	ask := func(mv uint64, commit bool, items ...subjects.ReapItem) (subjects.ReapReply, *subjects.Error) {
		data, _ := msgpack.Marshal(&subjects.ReapRequest{Proto: subjects.NodeProtocolVersion, Partitions: xferQ, Partition: xferPart, MapVersion: mv, Items: items, Commit: commit})
		msg, err := f.nc.Request(subjects.StorageNode("a", subjects.NodeOpReap), data, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
			return subjects.ReapReply{}, e
		}
		var rep subjects.ReapReply
		if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
			t.Fatal(err)
		}
		return rep, nil
	}
	mv := f.current().Version()
	rep, e := ask(mv, false, subjects.ReapItem{Tenant: "t", Key: k[0], Hash: h}, subjects.ReapItem{Tenant: "t", Key: k[1], Hash: h})
	if e != nil || len(rep.Results) != 2 || rep.Results[0].Held != h || rep.Results[1].Held != ([2]uint64{}) || rep.Results[0].Reaped {
		t.Fatalf("confirmation: %+v %v", rep, e)
	}
	if _, e := ask(mv+1, false, subjects.ReapItem{Tenant: "t", Key: k[0], Hash: h}); e == nil || e.Kind != subjects.KindMapBehind {
		t.Fatalf("newer map version: %v, want map_behind", e)
	}
	wrong := h
	wrong[0]++
	if rep, e := ask(mv, true, subjects.ReapItem{Tenant: "t", Key: k[0], Hash: wrong}); e != nil || rep.Results[0].Reaped || rep.Results[0].Held != h {
		t.Fatalf("reap with another hash: %+v %v", rep, e)
	}
	if rec, _ := a.eng.read("t", k[0]); rec.LWW == nil {
		t.Fatal("a reap with another hash deleted the key")
	}
	if rep, e := ask(mv, true, subjects.ReapItem{Tenant: "t", Key: k[0], Hash: h}); e != nil || !rep.Results[0].Reaped {
		t.Fatalf("reap with the held hash: %+v %v", rep, e)
	}
	if rec, _ := a.eng.read("t", k[0]); rec.LWW != nil {
		t.Fatal("the key survived its reap")
	}
	// An item of another partition is refused.
	other := keysIn("t", xferPart+1, xferQ, 1)[0]
	if _, e := ask(mv, false, subjects.ReapItem{Tenant: "t", Key: other}); e == nil || e.Kind != subjects.KindInvalid {
		t.Fatalf("item of another partition: %v, want invalid", e)
	}
}

// TestDeadSince: only lww tombstones are dead, since their counter's wall
// clock; siblings records wait for D5.
func TestDeadSince(t *testing.T) {
	at := time.UnixMilli(1_700_000_000_000)
	now := at.UnixMilli() + 1000
	later := now + 60_000
	tomb := func(exp int64) vclock.Value { return vclock.Value{Tombstone: true, Expires: exp} }
	val := func(exp int64) vclock.Value { return vclock.Value{Data: []byte("v"), Expires: exp} }
	dvv := func(vs ...vclock.Value) *vclock.DVVSet {
		return &vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "n1.1", Counter: uint64(len(vs)), Values: vs}}}
	}
	for i, tc := range []struct {
		rec  record
		ms   int64
		kind string
		dead bool
	}{
		// lww: a tombstone from before Expires dies at its dot's wall time,
		// one with Expires at it; a value with a TTL once it passed.
		{record{LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(at) | 7, Actor: "x"}, Tombstone: true}}, at.UnixMilli(), metrics.ReapTombstone, true},
		{record{LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(at), Actor: "x"}, Tombstone: true, Expires: at.UnixMilli() + 5}}, at.UnixMilli() + 5, metrics.ReapTombstone, true},
		{record{LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(at), Actor: "x"}, Value: []byte("v")}}, 0, "", false},
		{record{LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(at), Actor: "x"}, Value: []byte("v"), Expires: now - 10}}, now - 10, metrics.ReapExpired, true},
		{record{LWW: &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(at), Actor: "x"}, Value: []byte("v"), Expires: later}}, 0, "", false},
		// siblings: dead when every sibling is, since the latest death.
		{record{DVV: &vclock.DVVSet{}}, 0, "", false},
		{record{DVV: dvv(tomb(now - 50))}, now - 50, metrics.ReapTombstone, true},
		{record{DVV: dvv(tomb(now-50), val(now-20))}, now - 20, metrics.ReapExpired, true},
		{record{DVV: dvv(tomb(now-50), val(later))}, 0, "", false},
		{record{DVV: dvv(tomb(now-50), val(0))}, 0, "", false},
		// a siblings tombstone without a time: its age is unknown, kept.
		{record{DVV: dvv(tomb(0))}, 0, "", false},
		{record{DVV: dvv(tomb(0), tomb(now-50))}, 0, "", false},
		{record{}, 0, "", false},
	} {
		ms, kind, dead := deadSince(&tc.rec, now)
		if ms != tc.ms || dead != tc.dead || kind != tc.kind {
			t.Errorf("case %d: deadSince = %d, %q, %v; want %d, %q, %v", i, ms, kind, dead, tc.ms, tc.kind, tc.dead)
		}
	}
}

// TestReapExpiredAndTimedSiblings: lww values whose TTL passed longer than
// the grace ago, and siblings records whose every sibling is a timed
// tombstone or an expired value, are reaped on every owner like lww
// tombstones; values still live (under both policies) and a siblings
// tombstone without a time (written before node protocol 3) stay. The
// nodes reap as deployed: after each anti-entropy pass.
func TestReapExpiredAndTimedSiblings(t *testing.T) {
	// Reaping as deployed: no interval of its own, after every
	// anti-entropy pass.
	_, cfg, start, _ := reapCluster(t, 0)
	aeCfg := func(id string) Config {
		c := cfg(id, t.TempDir())
		c.AntiEntropyInterval, c.AntiEntropyRate = 200*time.Millisecond, Unlimited
		return c
	}
	a, b, c := start(aeCfg("a")), start(aeCfg("b")), start(aeCfg("c"))
	nodes := []*Node{a, b, c}
	keys := keysIn("t", xferPart, xferQ, 7)
	now := time.Now()
	old := vclock.CounterAt(now.Add(-time.Hour))
	past := now.Add(-10 * time.Second).UnixMilli() // longer ago than the 1 s grace
	dvv := func(vs ...vclock.Value) *vclock.DVVSet {
		return &vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "n1.1", Counter: uint64(len(vs)), Values: vs}}}
	}
	ws := []subjects.NodeWrite{
		{Tenant: "t", Key: keys[0], LWW: &vclock.Version{Dot: vclock.Dot{Counter: old, Actor: "c1"}, Value: []byte("gone"), Expires: past}},
		{Tenant: "t", Key: keys[1], DVV: dvv(vclock.Value{Tombstone: true, Expires: past}, vclock.Value{Data: []byte("x"), Expires: past})},
		{Tenant: "t", Key: keys[2], DVV: dvv(vclock.Value{Tombstone: true, Expires: past})},
		// These stay.
		{Tenant: "t", Key: keys[3], LWW: &vclock.Version{Dot: vclock.Dot{Counter: old, Actor: "c1"}, Value: []byte("live"), Expires: now.Add(time.Hour).UnixMilli()}},
		{Tenant: "t", Key: keys[4], LWW: &vclock.Version{Dot: vclock.Dot{Counter: old, Actor: "c1"}, Value: []byte("no ttl")}},
		{Tenant: "t", Key: keys[5], DVV: dvv(vclock.Value{Tombstone: true})},
		{Tenant: "t", Key: keys[6], DVV: dvv(vclock.Value{Tombstone: true, Expires: past}, vclock.Value{Data: []byte("y")})},
	}
	writeAll(t, ws, nodes...)
	waitFor(t, 20*time.Second, "the dead records to be reaped on every owner", func() bool {
		for _, n := range nodes {
			if recs, _, err := n.eng.partitionStats(xferPart); err != nil || recs != 4 {
				return false
			}
		}
		return true
	})
	for _, n := range nodes {
		for i, k := range keys {
			rec, err := n.eng.read("t", k)
			if err != nil {
				t.Fatal(err)
			}
			if held := rec.LWW != nil || rec.DVV != nil; held != (i >= 3) {
				t.Errorf("%s: key %d held=%v, want %v", n.ID(), i, held, i >= 3)
			}
		}
	}
}

// TestReapSkipsUnchangedPartitions: a reaping pass scans only the
// partitions written since their last scan, or holding a record that
// has come of age since (a tombstone or an expired value past the grace);
// the others are skipped, so an idle node's passes scan nothing. What is
// due is still reaped on time.
func TestReapSkipsUnchangedPartitions(t *testing.T) {
	_, cfg, start, _ := reapCluster(t, time.Hour) // passes driven by the test
	a, b, c := start(cfg("a", t.TempDir())), start(cfg("b", t.TempDir())), start(cfg("c", t.TempDir()))
	ctx := context.Background()
	live, dead, ttl := uint32(xferPart), uint32(xferPart+1), uint32(xferPart+2)
	var ws []subjects.NodeWrite
	for _, k := range keysIn("t", live, xferQ, 20) {
		ws = append(ws, subjects.NodeWrite{Tenant: "t", Key: k, LWW: version(vclock.CounterAt(time.Now()), "c1", "v")})
	}
	deleted := keysIn("t", dead, xferQ, 20)
	for _, k := range deleted {
		ws = append(ws, subjects.NodeWrite{Tenant: "t", Key: k, LWW: tombstone("c1")})
	}
	expiring := keysIn("t", ttl, xferQ, 1)[0]
	exp := &vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now()), Actor: "c1"}, Value: []byte("brief"), Expires: time.Now().Add(300 * time.Millisecond).UnixMilli()}
	ws = append(ws, subjects.NodeWrite{Tenant: "t", Key: expiring, LWW: exp})
	writeAll(t, ws, a, b, c)
	waitFor(t, 5*time.Second, "a to learn the tenant list", func() bool {
		a.reapPass(ctx)
		return a.reapMemo.scans.Load() > 0
	})

	scans := func(f func()) int64 {
		before := a.reapMemo.scans.Load()
		f()
		return a.reapMemo.scans.Load() - before
	}
	if n := scans(func() { a.reapPass(ctx) }); n != 0 {
		t.Fatalf("a pass right after a full one scanned %d partitions; nothing changed and nothing is due", n)
	}
	one := []subjects.NodeWrite{{Tenant: "t", Key: keysIn("t", live, xferQ, 21)[20], LWW: version(vclock.CounterAt(time.Now()), "c1", "new")}}
	apply(t, a.eng, one)
	if n := scans(func() { a.reapPass(ctx) }); n != 1 {
		t.Fatalf("after one write the pass scanned %d partitions, want 1 (the one written)", n)
	}
	time.Sleep(1400 * time.Millisecond) // past the grace of the tombstones and of the expired value
	var reaped int
	if n := scans(func() { reaped = a.reapPass(ctx) }); n != 2 {
		t.Fatalf("once the grace passed the pass scanned %d partitions, want 2 (the tombstones' and the expired value's)", n)
	}
	if reaped != len(deleted)+1 {
		t.Fatalf("reaped %d keys, want %d", reaped, len(deleted)+1)
	}
	for _, k := range append(deleted, expiring) {
		if rec, err := a.eng.read("t", k); err != nil || rec.LWW != nil {
			t.Fatalf("a still holds %q: %+v %v", k, rec, err)
		}
	}
	if n := scans(func() { a.reapPass(ctx) }); n != 2 {
		// The reaps changed both partitions: one more look, then quiet.
		t.Fatalf("the pass after the reaps scanned %d partitions, want 2", n)
	}
	if n := scans(func() { a.reapPass(ctx) }); n != 0 {
		t.Fatalf("an idle pass scanned %d partitions", n)
	}
}

func TestTenantsPrint(t *testing.T) {
	base := tenantsPrint(map[string]int{"a": 3, "b": 1}, map[string]int64{"a": 1000, "b": 5})
	for _, tc := range []struct {
		rf    map[string]int
		grace map[string]int64
	}{
		{map[string]int{"a": 3, "b": 1}, map[string]int64{"a": 999, "b": 5}},
		{map[string]int{"a": 2, "b": 1}, map[string]int64{"a": 1000, "b": 5}},
		{map[string]int{"a": 3}, map[string]int64{"a": 1000}},
		{map[string]int{"a": 3, "b": 1, "c": 3}, map[string]int64{"a": 1000, "b": 5, "c": 1}},
	} {
		if tenantsPrint(tc.rf, tc.grace) == base {
			t.Errorf("%v %v prints as the base", tc.rf, tc.grace)
		}
	}
	if tenantsPrint(map[string]int{"b": 1, "a": 3}, map[string]int64{"b": 5, "a": 1000}) != base {
		t.Error("the print depends on map order")
	}
}
