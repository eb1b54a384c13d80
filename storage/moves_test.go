package storage

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tests of the storage side of moving partitions (issue 14, spec §5), with
// real in-process NATS and real nodes. fakeCoord stands in for the
// coordinators' admin API: it serves a ring.Map the test builds and, when
// told, applies transfer reports with MarkDone, as reconcile would.

type fakeCoord struct {
	nc       *nats.Conn
	markDone bool

	mu      sync.Mutex
	m       *ring.Map // nil: no map yet
	reports []subjects.TransferReport
	regs    []subjects.NodeRequest
	gets    atomic.Int64
}

func newFakeCoord(tb testing.TB, s *server.Server, m *ring.Map, markDone bool) *fakeCoord {
	tb.Helper()
	f := &fakeCoord{nc: natstest.Connect(tb, s), m: m, markDone: markDone}
	sub := func(subj string, h func(m *nats.Msg) any) {
		if _, err := f.nc.Subscribe(subj, func(m *nats.Msg) {
			data, err := msgpack.Marshal(h(m))
			if err != nil {
				panic(err)
			}
			_ = m.Respond(data)
		}); err != nil {
			tb.Fatal(err)
		}
	}
	sub(subjects.AdminPlacementGet, func(*nats.Msg) any {
		f.gets.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()
		return placementReply(tb, f.m)
	})
	sub(subjects.AdminNodeTransfer, func(msg *nats.Msg) any {
		var r subjects.TransferReport
		if err := msgpack.Unmarshal(msg.Data, &r); err != nil {
			tb.Errorf("transfer report: %v", err)
		}
		f.mu.Lock()
		f.reports = append(f.reports, r)
		if f.markDone && f.m != nil {
			next, _, err := f.m.MarkDone(r.NodeID, r.Done, f.m.Version()+1)
			if err != nil {
				tb.Errorf("MarkDone: %v", err)
			} else {
				f.m = next
				_ = f.nc.Publish(subjects.EventsRing, nil)
			}
		}
		defer f.mu.Unlock()
		return placementReply(tb, f.m)
	})
	sub(subjects.AdminNodeRegister, func(msg *nats.Msg) any {
		var r subjects.NodeRequest
		if err := msgpack.Unmarshal(msg.Data, &r); err != nil {
			tb.Errorf("register: %v", err)
		}
		f.mu.Lock()
		f.regs = append(f.regs, r)
		f.mu.Unlock()
		return subjects.Node{ID: r.NodeID}
	})
	if err := f.nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	return f
}

func placementReply(tb testing.TB, m *ring.Map) subjects.PlacementReply {
	if m == nil {
		return subjects.PlacementReply{}
	}
	b, err := m.MarshalBinary()
	if err != nil {
		tb.Errorf("marshal map: %v", err)
	}
	return subjects.PlacementReply{Version: m.Version(), Partitions: m.Partitions(), Replicas: m.Replicas(), Map: b}
}

// set serves m from now on and announces it.
func (f *fakeCoord) set(m *ring.Map) {
	f.mu.Lock()
	f.m = m
	f.mu.Unlock()
	_ = f.nc.Publish(subjects.EventsRing, nil)
	_ = f.nc.Flush()
}

func (f *fakeCoord) current() *ring.Map {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m
}

// claim is ring.Claim over ids with xferQ partitions.
func claim(tb testing.TB, prev *ring.Map, ids ...string) *ring.Map {
	tb.Helper()
	var ns []ring.Node
	for _, id := range ids {
		ns = append(ns, ring.Node{ID: id})
	}
	m, err := ring.Claim(prev, ns, xferQ)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// retarget returns m heading for the nodes ids, at version m.Version()+1.
func retarget(tb testing.TB, m *ring.Map, ids ...string) *ring.Map {
	tb.Helper()
	next, err := m.Retarget(claim(tb, m.TargetMap(), ids...), m.Version()+1)
	if err != nil {
		tb.Fatal(err)
	}
	return next
}

func moving(m *ring.Map) int {
	k := 0
	for p := range uint32(m.Partitions()) {
		if m.Moving(p) {
			k++
		}
	}
	return k
}

// waitFor polls cond until it holds or d passes.
func waitFor(tb testing.TB, d time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// proto1Write is a node write batch as protocol 1 sends it: no map version.
type proto1Write struct {
	_msgpack struct{} `msgpack:",as_array"`
	Proto    int
	Items    []subjects.NodeWrite
}

type proto1Read struct {
	_msgpack struct{} `msgpack:",as_array"`
	Proto    int
	Items    []subjects.NodeRead
}

// rawWrite sends one write item to node at map version mv (proto 1: the
// old two-element array) and returns its result.
func rawWrite(tb testing.TB, nc *nats.Conn, node string, proto int, mv uint64, w subjects.NodeWrite) subjects.NodeWriteResult {
	tb.Helper()
	var body any = &subjects.NodeWriteBatch{Proto: proto, Items: []subjects.NodeWrite{w}, MapVersion: mv}
	if proto == 1 {
		body = &proto1Write{Proto: 1, Items: []subjects.NodeWrite{w}}
	}
	data, err := msgpack.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpWrite), data, 5*time.Second)
	if err != nil {
		tb.Fatalf("write to %s: %v", node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		tb.Fatalf("write to %s: %v", node, e)
	}
	var rep subjects.NodeWriteReply
	if err := wire.UnmarshalNodeWriteReply(msg.Data, &rep); err != nil || len(rep.Results) != 1 {
		tb.Fatalf("write reply from %s: %+v %v", node, rep, err)
	}
	return rep.Results[0]
}

func rawRead(tb testing.TB, nc *nats.Conn, node string, proto int, mv uint64, tenant, key string) subjects.NodeReadResult {
	tb.Helper()
	r := subjects.NodeRead{ID: 1, Tenant: tenant, Key: key}
	var body any = &subjects.NodeReadBatch{Proto: proto, Items: []subjects.NodeRead{r}, MapVersion: mv}
	if proto == 1 {
		body = &proto1Read{Proto: 1, Items: []subjects.NodeRead{r}}
	}
	data, err := msgpack.Marshal(body)
	if err != nil {
		tb.Fatal(err)
	}
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpRead), data, 5*time.Second)
	if err != nil {
		tb.Fatalf("read from %s: %v", node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		tb.Fatalf("read from %s: %v", node, e)
	}
	var rep subjects.NodeReadReply
	if err := wire.UnmarshalNodeReadReply(msg.Data, &rep); err != nil || len(rep.Results) != 1 {
		tb.Fatalf("read reply from %s: %+v %v", node, rep, err)
	}
	return rep.Results[0]
}

// moveTo returns a map in which the partitions p of m for which flip says
// so have flipped (their receivers all marked done), at versions above m.
func flipSome(tb testing.TB, m *ring.Map, flip func(p uint32) bool) *ring.Map {
	tb.Helper()
	for p := range uint32(m.Partitions()) {
		if !m.Moving(p) || !flip(p) {
			continue
		}
		for _, r := range m.Receivers(p, nil) {
			next, _, err := m.MarkDone(r, []uint32{p}, m.Version()+1)
			if err != nil {
				tb.Fatal(err)
			}
			m = next
		}
	}
	return m
}

// TestFencingRefusesStaleSenders: a node that knows the map refuses writes
// and reads of a partition from a sender whose map is older than the
// partition's since (not_owner, nothing applied), and accepts version 0,
// protocol 1, the current version and a newer one (which makes it reload).
func TestFencingRefusesStaleSenders(t *testing.T) {
	s := natstest.RunServer(t)
	m2 := retarget(t, claim(t, nil, "a", "b"), "a", "b", "c") // every partition moves (R 2 → 3): since 2
	var flipped uint32 = xferPart
	m := flipSome(t, m2, func(p uint32) bool { return p == flipped })
	if m.Since(flipped) <= 2 || m.Since(flipped+1) != 2 {
		t.Fatalf("since: flipped %d, other %d", m.Since(flipped), m.Since(flipped+1))
	}
	f := newFakeCoord(t, s, m, false)
	reg := prometheus.NewRegistry()
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), Metrics: reg}, nil)
	if got := a.Map(); got == nil || got.Version() != m.Version() {
		t.Fatalf("node map at start: %v, want version %d", got, m.Version())
	}
	nc := natstest.Connect(t, s)
	kf := keysIn("lww", flipped, xferQ, 8)
	ko := keysIn("lww", flipped+1, xferQ, 8)
	w := func(key string) subjects.NodeWrite {
		return subjects.NodeWrite{Tenant: "lww", Key: key, LWW: version(7, "c1", "v-"+key)}
	}
	for i, tc := range []struct {
		proto   int
		mv      uint64
		key     string
		refused bool
	}{
		{2, 2, kf[0], true},                // older than the flip
		{2, 1, ko[0], true},                // older than the move
		{2, 2, ko[1], false},               // at the move
		{2, m.Version(), kf[1], false},     // current
		{2, 0, kf[2], false},               // unfenced (repair, hints, handoff)
		{1, 0, kf[3], false},               // protocol 1: unfenced
		{2, m.Version() + 5, kf[4], false}, // newer: accepted, and the node reloads
	} {
		res := rawWrite(t, nc, "a", tc.proto, tc.mv, w(tc.key))
		refused := res.Kind == subjects.KindNotOwner && strings.HasPrefix(res.Err, subjects.KindNotOwner+": partition")
		if refused != tc.refused || (!tc.refused && res.Err != "") {
			t.Errorf("case %d: write proto %d version %d: %+v, want refused %v", i, tc.proto, tc.mv, res, tc.refused)
		}
		rec, err := a.eng.read("lww", tc.key)
		if err != nil {
			t.Fatal(err)
		}
		if stored := rec.LWW != nil; stored == tc.refused {
			t.Errorf("case %d: stored %v after refused %v", i, stored, tc.refused)
		}
		rd := rawRead(t, nc, "a", tc.proto, tc.mv, "lww", tc.key)
		if got := strings.HasPrefix(rd.Err, subjects.KindNotOwner+":"); got != tc.refused || (!tc.refused && (rd.Err != "" || rd.LWW == nil)) {
			t.Errorf("case %d: read proto %d version %d: %+v, want refused %v", i, tc.proto, tc.mv, rd, tc.refused)
		}
	}
	// The newer version made the node ask for the map at once.
	before := f.gets.Load()
	rawWrite(t, nc, "a", 2, m.Version()+9, w(kf[5]))
	waitFor(t, 5*time.Second, "a reload after a request named a newer map", func() bool { return f.gets.Load() > before })

	// A newer map installed: the old current version is now refused too.
	m3 := flipSome(t, m, func(p uint32) bool { return p == flipped+1 })
	f.set(m3)
	waitFor(t, 5*time.Second, "the node to install the announced map", func() bool { return a.Map().Version() == m3.Version() })
	if res := rawWrite(t, nc, "a", 2, m.Version(), w(ko[2])); res.Kind != subjects.KindNotOwner {
		t.Fatalf("write at the replaced version: %+v, want not_owner", res)
	}
	text := gather(t, reg)
	for _, want := range []string{`quorumkv_storage_not_owner_total{op="write"} 3`, `quorumkv_storage_not_owner_total{op="read"} 2`} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// scanAll pulls partition p from node at map version mv, retrying
// map_behind, and returns its records by tenant 0x00 key.
func scanAll(tb testing.TB, rc *replica.Client, node string, p uint32, mv uint64) (map[string][]byte, int) {
	tb.Helper()
	out := map[string][]byte{}
	behind := 0
	var cursor []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		rep, _, err := rc.ScanPartition(ctx, node, subjects.PartitionScan{Partitions: xferQ, Partition: p, Cursor: cursor, MapVersion: mv})
		cancel()
		if errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) && time.Now().Before(deadline) {
			behind++
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			tb.Fatalf("scan %d of %s: %v", p, node, err)
		}
		for _, r := range rep.Records {
			out[r.Tenant+"\x00"+r.Key] = r.State
		}
		if rep.Cursor == nil {
			return out, behind
		}
		cursor = rep.Cursor
	}
}

// TestScanMapBehind: a scan naming a map version the source has not
// loaded is answered map_behind until it has; version 0 is always served.
// The node (held, as storage --join=false) registers with hold.
func TestScanMapBehind(t *testing.T) {
	s := natstest.RunServer(t)
	f := newFakeCoord(t, s, nil, false) // no map yet
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), MapPoll: time.Hour, Hold: true}, func(e *engine) {
		apply(t, e, []subjects.NodeWrite{{Tenant: "lww", Key: keysIn("lww", xferPart, xferQ, 1)[0], LWW: version(3, "c1", "x")}})
	})
	// storage --join=false: the registration asks to be held standby.
	waitFor(t, 5*time.Second, "a registration with hold", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.regs) > 0 && f.regs[0].Hold && f.regs[0].Protocol == subjects.NodeProtocolVersion
	})
	rc, err := replica.New(natstest.Connect(t, s), replica.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	scan := func(mv uint64) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _, err := rc.ScanPartition(ctx, "a", subjects.PartitionScan{Partitions: xferQ, Partition: xferPart, MapVersion: mv})
		return err
	}
	if err := scan(1); !errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) {
		t.Fatalf("scan at version 1 of a node without a map: %v, want map_behind", err)
	}
	if err := scan(0); err != nil {
		t.Fatalf("unfenced scan: %v", err)
	}
	m := claim(t, nil, "a", "b")
	f.mu.Lock()
	f.m = m // served, but not announced: the map_behind answer makes the node load it
	f.mu.Unlock()
	recs, behind := scanAll(t, rc, "a", xferPart, m.Version())
	if len(recs) != 1 || a.Map() == nil || a.Map().Version() != m.Version() {
		t.Fatalf("after the node loaded the map: %d records (behind %d times), map %v", len(recs), behind, a.Map())
	}
	if err := scan(m.Version() + 1); !errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) {
		t.Fatalf("scan at a version above the node's: %v, want map_behind", err)
	}
}

// TestWriteRacingInstallIsRefusedOrScanned: writes from a coordinator at
// the old map keep arriving while the source installs the map that makes
// another node a receiver, and a receiver scans at the new version. Every
// write the source accepted is in the scan: the install runs on the write
// loop, after every write that passed the old fence.
func TestWriteRacingInstallIsRefusedOrScanned(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, false)
	startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), MapPoll: time.Hour}, nil)
	m2 := retarget(t, m1, "a", "b", "c")
	if m2.Since(xferPart) != m2.Version() {
		t.Fatalf("partition %d does not move in %d", xferPart, m2.Version())
	}
	keys := keysIn("lww", xferPart, xferQ, 4000)

	var (
		mu       sync.Mutex
		accepted []string
		refused  atomic.Int64
		next     atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nc := natstest.Connect(t, s)
			for {
				select {
				case <-stop:
					return
				default:
				}
				i := int(next.Add(1))
				if i >= len(keys) {
					return
				}
				res := rawWrite(t, nc, "a", 2, m1.Version(), subjects.NodeWrite{Tenant: "lww", Key: keys[i], LWW: version(9, "c1", "v")})
				switch {
				case res.Err == "":
					mu.Lock()
					accepted = append(accepted, keys[i])
					mu.Unlock()
				case res.Kind == subjects.KindNotOwner:
					refused.Add(1)
				default:
					t.Errorf("write %s: %+v", keys[i], res)
				}
			}
		}()
	}
	waitFor(t, 5*time.Second, "writes before the install", func() bool { return next.Load() > 200 })
	f.set(m2)
	rc, err := replica.New(natstest.Connect(t, s), replica.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	recs, _ := scanAll(t, rc, "a", xferPart, m2.Version())
	waitFor(t, 10*time.Second, "writes refused after the install", func() bool { return refused.Load() > 50 || next.Load() >= int64(len(keys)) })
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if refused.Load() == 0 {
		t.Fatal("no write at the old version was refused after the install")
	}
	for _, k := range accepted {
		if _, ok := recs["lww\x00"+k]; !ok {
			t.Fatalf("write of %q was accepted at version %d but is not in the scan at %d (%d accepted, %d refused)", k, m1.Version(), m2.Version(), len(accepted), refused.Load())
		}
	}
	t.Logf("%d writes accepted (all in the scan), %d refused", len(accepted), refused.Load())
}

// TestInstallWaitsForFencedWrites: a write that passed the old map's fence
// but is not yet applied when the new map arrives holds the install back,
// so a scan at the new version (answered map_behind until the install)
// contains it. Installing off the write loop would answer the scan first.
func TestInstallWaitsForFencedWrites(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, false)
	held, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	n, err := Open(Config{NodeID: "a", DataDir: t.TempDir(), Partitions: xferQ, Logger: quiet(), MapPoll: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	notRebuilding(t, n) // a stands for a node that has been in the map all along
	n.beforeApply = func() {
		if armed.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	if err := n.start(natstest.Connect(t, s)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	key := keysIn("lww", xferPart, xferQ, 1)[0]
	armed.Store(true)
	wrote := make(chan subjects.NodeWriteResult, 1)
	go func() {
		wrote <- rawWrite(t, natstest.Connect(t, s), "a", 2, m1.Version(), subjects.NodeWrite{Tenant: "lww", Key: key, LWW: version(9, "c1", "v")})
	}()
	<-held // the write passed the fence of version 1
	m2 := retarget(t, m1, "a", "b", "c")
	f.set(m2)
	rc, err := replica.New(natstest.Connect(t, s), replica.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	scanned := make(chan map[string][]byte, 1)
	go func() { recs, _ := scanAll(t, rc, "a", xferPart, m2.Version()); scanned <- recs }()
	var recs map[string][]byte
	select {
	case recs = <-scanned: // answered while the write waits: it cannot be in it
	case <-time.After(500 * time.Millisecond):
	}
	close(release)
	if res := <-wrote; res.Err != "" {
		t.Fatalf("the write that passed the fence: %+v", res)
	}
	if recs == nil {
		recs = <-scanned
	}
	if _, ok := recs["lww\x00"+key]; !ok {
		t.Fatal("a write accepted at the old map is missing from a scan at the new one")
	}
}

// TestTransferLoopPullsFromAllOwners: a node that joins receives every
// partition from every current owner (keys only one of them holds come
// in), reports them, and the map flips; the heartbeat carries protocol and
// transfer status.
func TestTransferLoopPullsFromAllOwners(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, true)
	onlyA, onlyB := keysIn("lww", xferPart, xferQ, 2)[0], keysIn("lww", xferPart, xferQ, 2)[1]
	fast := Config{DataDir: "", Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	startXfer(t, s, cfg("a"), func(e *engine) {
		fillMixed(t, e, 3000, 500, 10)
		apply(t, e, []subjects.NodeWrite{{Tenant: "lww", Key: onlyA, LWW: version(5, "c1", "a")}})
	})
	startXfer(t, s, cfg("b"), func(e *engine) {
		fillMixed(t, e, 3000, 500, 10)
		apply(t, e, []subjects.NodeWrite{{Tenant: "lww", Key: onlyB, LWW: version(5, "c1", "b")}})
	})
	m2 := retarget(t, m1, "a", "b", "c")
	want := m2.Receiving("c", nil)
	if len(want) != xferQ {
		t.Fatalf("c receives %d partitions, want all %d", len(want), xferQ)
	}
	f.set(m2)
	c := startXfer(t, s, cfg("c"), nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	for _, k := range []string{onlyA, onlyB} {
		if rec, err := c.eng.read("lww", k); err != nil || rec.LWW == nil {
			t.Fatalf("c lacks %q after the transfer: %v", k, err)
		}
	}
	srcRecs := partRecords(t, c.eng, xferPart)
	if len(srcRecs) < 2 {
		t.Fatalf("c holds %d records of partition %d", len(srcRecs), xferPart)
	}
	f.mu.Lock()
	got := map[uint32]bool{}
	for _, r := range f.reports {
		if r.NodeID == "c" {
			for _, p := range r.Done {
				got[p] = true
			}
			if r.Status == nil || r.MapVersion == 0 {
				t.Errorf("report without status or version: %+v", r)
			}
		}
	}
	f.mu.Unlock()
	if len(got) != xferQ {
		t.Fatalf("c reported %d partitions done, want %d", len(got), xferQ)
	}
	st := c.TransferStatus()
	if st == nil || st.Keys == 0 || st.Bytes == 0 {
		t.Fatalf("transfer status %+v", st)
	}
	waitFor(t, 5*time.Second, "a heartbeat with protocol and transfer status", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, r := range f.regs {
			if r.NodeID == "c" && r.Protocol == subjects.NodeProtocolVersion && r.Transfer != nil && r.Transfer.PartitionsDone == r.Transfer.PartitionsTotal && r.Transfer.PartitionsTotal == xferQ && !r.Hold {
				return true
			}
		}
		return false
	})
}

// TestTransferSkipsDownSource: with one current owner down, a receiver
// pulls from the other and finishes the partitions where the live one is
// first (with no tenant list, the down one may be the only holder of an
// RF-1 tenant where it is first: those wait); with every source down it
// reports nothing.
func TestTransferSkipsDownSource(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b") // b never serves: down
	f := newFakeCoord(t, s, m1, true)
	m2 := retarget(t, m1, "a", "b", "c")
	part, bFirst := -1, 0
	for p := range uint32(xferQ) {
		if !slices.Contains(m2.Receiving("c", nil), p) {
			continue
		}
		if m1.Owners(p, nil)[0] == "a" && part < 0 {
			part = int(p)
		} else if m1.Owners(p, nil)[0] == "b" {
			bFirst++
		}
	}
	if part < 0 || bFirst == 0 {
		t.Fatalf("want partitions c receives with a first and with b first (a first: %d, b first: %d)", part, bFirst)
	}
	var src map[string]record
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir()}, func(e *engine) { fillMixed(t, e, 2000, 200, 10) })
	src = partRecords(t, a.eng, uint32(part))
	f.set(m2)
	c := startXfer(t, s, Config{NodeID: "c", DataDir: t.TempDir(), MapPoll: 200 * time.Millisecond}, nil)
	waitFor(t, 30*time.Second, "every partition c receives with a first to be done", func() bool {
		for _, p := range f.current().Receiving("c", nil) {
			if m1.Owners(p, nil)[0] == "a" {
				return false
			}
		}
		return true
	})
	if n := len(f.current().Receiving("c", nil)); n != bFirst {
		t.Fatalf("c still receives %d partitions; want the %d with the down b first", n, bFirst)
	}
	got := partRecords(t, c.eng, uint32(part))
	for k, want := range src {
		if !sameRecord(got[k], want) {
			t.Fatalf("%q on c is %+v, want %+v", k, got[k], want)
		}
	}

	// Every source down: nothing is reported.
	m := claim(t, nil, "x", "y")
	s2 := natstest.RunServer(t)
	f3 := newFakeCoord(t, s2, retarget(t, m, "x", "y", "d"), true)
	d := startXfer(t, s2, Config{NodeID: "d", DataDir: t.TempDir()}, nil)
	time.Sleep(2500 * time.Millisecond) // a round over every partition, and a report tick
	f3.mu.Lock()
	reports := len(f3.reports)
	f3.mu.Unlock()
	if reports != 0 || d.TransferStatus() == nil || d.TransferStatus().PartitionsDone != 0 {
		t.Fatalf("with every source down: %d reports, status %+v", reports, d.TransferStatus())
	}
}

// TestTransferForgetsCursorsOfAnotherGeneration: a cursor persisted under
// other rows of the partition (the node may have missed writes since) is
// not resumed: the partition is pulled from its start.
func TestTransferForgetsCursorsOfAnotherGeneration(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a")
	f := newFakeCoord(t, s, m1, true)
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir()}, func(e *engine) { fillMixed(t, e, 4000, 0, 10) })
	src := partRecords(t, a.eng, xferPart)
	m2 := retarget(t, m1, "a", "c")
	// c holds a cursor half way through the partition, made under an
	// older since.
	es, mid, err := a.eng.scanPartition(xferPart, nil, len(src)/2)
	if err != nil || mid == nil || len(es) == 0 {
		t.Fatalf("scan: %v", err)
	}
	f.set(m2)
	c := startXfer(t, s, Config{NodeID: "c", DataDir: t.TempDir()}, func(e *engine) {
		if err := e.db.Set(transferKey(xferPart, "a"), mid, nil); err != nil {
			t.Fatal(err)
		}
		if err := e.db.Set(generationKey(xferPart), binary.BigEndian.AppendUint64(nil, m2.Since(xferPart)-1), nil); err != nil {
			t.Fatal(err)
		}
	})
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	got := partRecords(t, c.eng, xferPart)
	for k, want := range src {
		if !sameRecord(got[k], want) {
			t.Fatalf("%q on c is %+v, want %+v (a stale cursor was resumed)", k, got[k], want)
		}
	}
}

// TestHandoffThenDrop: a node leaving the map pushes the records of the
// partitions it no longer owns to their current owners, after the grace,
// then drops them.
func TestHandoffThenDrop(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	const grace = 1500 * time.Millisecond
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond, HandoffGrace: grace}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	f := newFakeCoord(t, s, m1, true)
	// c alone holds one key in every partition.
	only := map[uint32]string{}
	a := startXfer(t, s, cfg("a"), nil)
	b := startXfer(t, s, cfg("b"), nil)
	reg := prometheus.NewRegistry()
	ccfg := cfg("c")
	ccfg.Metrics = reg
	c := startXfer(t, s, ccfg, func(e *engine) {
		var ws []subjects.NodeWrite
		for p := range uint32(xferQ) {
			only[p] = keysIn("lww", p, xferQ, 1)[0]
			ws = append(ws, subjects.NodeWrite{Tenant: "lww", Key: only[p], LWW: version(4, "c1", "on c")})
		}
		apply(t, e, ws)
	})
	m2 := retarget(t, m1, "a", "b")
	handoffOnly := -1 // a partition that flips at once (c was last): only the handoff moves its key
	for p := range uint32(xferQ) {
		if !m2.Owns(p, "c") && len(m2.Receivers(p, nil)) == 0 {
			handoffOnly = int(p)
			break
		}
	}
	if handoffOnly < 0 {
		t.Fatal("no partition flips at once")
	}
	f.set(m2)
	waitFor(t, 5*time.Second, "c to install the map", func() bool { return c.Map().Version() >= m2.Version() })
	if has, _ := c.eng.hasRecords(uint32(handoffOnly)); !has {
		t.Fatal("c dropped a partition before the grace")
	}
	if st := c.TransferStatus(); st != nil && st.HandoffDone != 0 {
		t.Fatalf("c reports its handoff done (map %d) while it holds records", st.HandoffDone)
	}
	waitFor(t, 30*time.Second, "c to hand off and drop everything", func() bool {
		for p := range uint32(xferQ) {
			if has, _ := c.eng.hasRecords(p); has {
				return false
			}
		}
		return true
	})
	waitFor(t, 5*time.Second, "c to report its handoff done", func() bool {
		st := c.TransferStatus()
		return st != nil && st.HandoffDone >= m2.Version()
	})
	for p, k := range only {
		for _, n := range []*Node{a, b} {
			if rec, err := n.eng.read("lww", k); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "on c" {
				t.Fatalf("%s lacks %q of partition %d after c's handoff: %+v %v", n.ID(), k, p, rec, err)
			}
		}
	}
	text := gather(t, reg)
	for _, want := range []string{fmt.Sprintf("quorumkv_storage_dropped_partitions_total %d", xferQ), "quorumkv_storage_handoff_records_total"} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A late write, unfenced, re-creates a record: handed off and dropped
	// again.
	nc := natstest.Connect(t, s)
	late := keysIn("lww", uint32(handoffOnly), xferQ, 2)[1]
	if res := rawWrite(t, nc, "c", 2, 0, subjects.NodeWrite{Tenant: "lww", Key: late, LWW: version(6, "c1", "late")}); res.Err != "" {
		t.Fatal(res.Err)
	}
	waitFor(t, 30*time.Second, "the late record handed off", func() bool {
		rec, err := a.eng.read("lww", late)
		has, _ := c.eng.hasRecords(uint32(handoffOnly))
		return err == nil && rec.LWW != nil && !has
	})
}

// persistedCursors counts the transfer cursors from src that node n has
// persisted.
func persistedCursors(t *testing.T, n *Node, src string) int {
	t.Helper()
	k := 0
	for p := range uint32(n.eng.q) {
		cur, err := n.TransferCursor(p, src)
		if err != nil {
			t.Fatal(err)
		}
		if cur != nil {
			k++
		}
	}
	return k
}

// TestTransferResumesAfterRestart: a receiver stopped during its transfer
// has persisted cursors and, started again, finishes the transfer (pulling
// its partitions again from their start: TestTransferRestartPullsAgain).
func TestTransferResumesAfterRestart(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a")
	f := newFakeCoord(t, s, m1, true)
	var src map[string]record
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir()}, func(e *engine) { fillMixed(t, e, 24000, 0, 20) }) // ~1500 a partition: pages of 1000
	src = partRecords(t, a.eng, xferPart)
	m2 := retarget(t, m1, "a", "c")
	f.set(m2)
	cdir := t.TempDir()
	slow := Config{NodeID: "c", DataDir: cdir, TransferRate: 64 << 10, MapPoll: 200 * time.Millisecond}
	c := startXfer(t, s, slow, nil)
	waitFor(t, 20*time.Second, "part of the transfer", func() bool {
		return persistedCursors(t, c, "a") > 0 // a first page merged (stage.go: at the next flush)
	})
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if moving(f.current()) == 0 {
		t.Fatal("the transfer finished before the restart; slow it down")
	}
	cursors := 0
	fastCfg := slow
	fastCfg.TransferRate = Unlimited
	c = startXfer(t, s, fastCfg, func(e *engine) {
		for p := range uint32(xferQ) {
			if cur, err := e.getMeta(transferKey(p, "a")); err == nil && cur != nil {
				cursors++
			}
		}
	})
	if cursors == 0 {
		t.Fatal("no transfer cursor persisted at the stop")
	}
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	got := partRecords(t, c.eng, xferPart)
	for k, want := range src {
		if !sameRecord(got[k], want) {
			t.Fatalf("%q on c is %+v, want %+v", k, got[k], want)
		}
	}
	if st := c.TransferStatus(); st == nil || st.PartitionsDone != st.PartitionsTotal {
		t.Fatalf("status after the restart: %+v", st)
	}
}

// TestNoMapRefusesFencedItems: a node that has no placement map yet (no
// coordinator answered within MapWait) refuses fenced writes and reads
// (not_owner: it may be a former owner that already dropped the partition,
// and a stale coordinator must not count its "not found") and accepts
// unfenced ones (version 0: repair, hints, handoff); once a map loads it
// fences by it.
func TestNoMapRefusesFencedItems(t *testing.T) {
	s := natstest.RunServer(t)
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), MapWait: 50 * time.Millisecond, MapPoll: 100 * time.Millisecond}, nil)
	if a.Map() != nil {
		t.Fatal("a has a map with no coordinator")
	}
	nc := natstest.Connect(t, s)
	k := keysIn("lww", xferPart, xferQ, 3)
	w := func(key string) subjects.NodeWrite {
		return subjects.NodeWrite{Tenant: "lww", Key: key, LWW: version(7, "c1", "v-"+key)}
	}
	const noMap = subjects.KindNotOwner + ": node has no placement map yet"
	if res := rawWrite(t, nc, "a", 2, 3, w(k[0])); res.Kind != subjects.KindNotOwner || res.Err != noMap {
		t.Fatalf("fenced write without a map: %+v, want %q", res, noMap)
	}
	if rec, err := a.eng.read("lww", k[0]); err != nil || rec.LWW != nil {
		t.Fatalf("a refused write was applied: %+v %v", rec, err)
	}
	if rd := rawRead(t, nc, "a", 2, 3, "lww", k[0]); rd.Err != noMap {
		t.Fatalf("fenced read without a map: %+v, want %q", rd, noMap)
	}
	for _, proto := range []int{1, 2} {
		key := k[proto]
		if res := rawWrite(t, nc, "a", proto, 0, w(key)); res.Err != "" {
			t.Fatalf("unfenced write (proto %d) without a map: %+v", proto, res)
		}
		if rd := rawRead(t, nc, "a", proto, 0, "lww", key); rd.Err != "" || rd.LWW == nil {
			t.Fatalf("unfenced read (proto %d) without a map: %+v", proto, rd)
		}
	}
	// A map loads: fenced items at its version are served.
	m := claim(t, nil, "a")
	newFakeCoord(t, s, m, false).set(m)
	waitFor(t, 5*time.Second, "a to load the map", func() bool { return a.Map() != nil })
	if res := rawWrite(t, nc, "a", 2, m.Version(), w(k[0])); res.Err != "" {
		t.Fatalf("fenced write at the map's version: %+v", res)
	}
}

// TestTransferRestartPullsAgain: a receiver restarted mid-transfer missed
// the writes sent to it while it was down, also to keys behind its
// persisted cursors, so it forgets its cursors at start and pulls its
// partitions again from their start: after the restart it holds the
// newest version of every key, overwritten on the source while it was
// stopped.
func TestTransferRestartPullsAgain(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a")
	f := newFakeCoord(t, s, m1, true)
	const keys = 24000
	a := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir()}, func(e *engine) { fillMixed(t, e, keys, 0, 20) }) // ~1500 a partition: pages of 1000
	m2 := retarget(t, m1, "a", "c")
	f.set(m2)
	slow := Config{NodeID: "c", DataDir: t.TempDir(), TransferRate: 64 << 10, MapPoll: 200 * time.Millisecond}
	c := startXfer(t, s, slow, nil)
	waitFor(t, 20*time.Second, "part of the transfer", func() bool {
		return persistedCursors(t, c, "a") > 0 // a first page merged (stage.go: at the next flush)
	})
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if moving(f.current()) == 0 {
		t.Fatal("the transfer finished before the restart; slow it down")
	}
	// While c is down every key is overwritten on a (the copies sent to
	// c, a pending owner, fail).
	nc := natstest.Connect(t, s)
	var batch []subjects.NodeWrite
	send := func() {
		data, err := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: batch, MapVersion: m2.Version()})
		if err != nil {
			t.Fatal(err)
		}
		msg, err := nc.Request(subjects.StorageNode("a", subjects.NodeOpWrite), data, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var rep subjects.NodeWriteReply
		if err := wire.UnmarshalNodeWriteReply(msg.Data, &rep); err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Results {
			if r.Err != "" {
				t.Fatalf("overwrite on a: %+v", r)
			}
		}
		batch = batch[:0]
	}
	// Partitions that flipped before the stop have c as a current owner:
	// writes it missed there are repair's, not the transfer's; leave them.
	stopped := f.current()
	for i := range keys {
		k := fmt.Sprintf("key-%d", i)
		if !stopped.Moving(ring.Partition("lww", k, xferQ)) {
			continue
		}
		batch = append(batch, subjects.NodeWrite{Tenant: "lww", Key: k, LWW: version(uint64(100_000+i), "c2", "new")})
		if len(batch) == 500 {
			send()
		}
	}
	if len(batch) > 0 {
		send()
	}
	cursors := 0
	fastCfg := slow
	fastCfg.TransferRate = Unlimited
	c = startXfer(t, s, fastCfg, func(e *engine) {
		for p := range uint32(xferQ) {
			if cur, err := e.getMeta(transferKey(p, "a")); err == nil && cur != nil {
				cursors++
			}
		}
	})
	if cursors == 0 {
		t.Fatal("no transfer cursor persisted at the stop")
	}
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	for p := range uint32(xferQ) {
		if !stopped.Moving(p) {
			continue
		}
		src, got := partRecords(t, a.eng, p), partRecords(t, c.eng, p)
		for k, want := range src {
			if string(want.LWW.Value) != "new" {
				t.Fatalf("%q on a is %+v, not overwritten", k, want)
			}
			if !sameRecord(got[k], want) {
				t.Fatalf("%q of partition %d on c is %+v, want %+v (a key behind a resumed cursor was not pulled again)", k, p, got[k], want)
			}
		}
	}
}

// TestHandoffPushesAgainWhenOwnersChanged (F8): a handoff that pushed a
// partition to its owners in an older map does not drop it while the
// node's map names an owner the push missed (here c, a receiver of the
// partition in the newer map, whose scan may already have passed the
// records): it pushes again under the newer map, then drops.
func TestHandoffPushesAgainWhenOwnersChanged(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	m2 := retarget(t, m1, "a", "b", "c")
	newFakeCoord(t, s, m2, false)
	cfg := func(id string) Config {
		return Config{NodeID: id, DataDir: t.TempDir(), MapPoll: 200 * time.Millisecond, HandoffGrace: time.Hour}
	}
	const p = xferPart
	if !slices.Contains(m2.Target(p, nil), "c") || m1.Owns(p, "c") {
		t.Fatalf("partition %d: c must be an owner in m2 only (m1 %v, m2 target %v)", p, m1.Owners(p, nil), m2.Target(p, nil))
	}
	a, b, c := startXfer(t, s, cfg("a"), nil), startXfer(t, s, cfg("b"), nil), startXfer(t, s, cfg("c"), nil)
	key := keysIn("lww", p, xferQ, 1)[0]
	x := startXfer(t, s, cfg("x"), func(e *engine) {
		apply(t, e, []subjects.NodeWrite{{Tenant: "lww", Key: key, LWW: version(7, "c1", "on x")}})
	})
	waitFor(t, 5*time.Second, "x to install m2", func() bool { return x.Map().Version() >= m2.Version() })
	// The handoff started under m1 (owners a and b); the drop runs under m2.
	if err := x.handoff(context.Background(), m1, p); err != nil {
		t.Fatal(err)
	}
	if has, err := x.eng.hasRecords(p); err != nil || has {
		t.Fatalf("x still holds partition %d after the handoff: %v %v", p, has, err)
	}
	for _, n := range []*Node{a, b, c} {
		if rec, err := n.eng.read("lww", key); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "on x" {
			t.Fatalf("%s lacks the record x handed off and dropped: %+v %v", n.ID(), rec, err)
		}
	}
}

// Ring and tenant events are plain publishes, lost while a node is
// disconnected from NATS. A node whose connection comes back reloads the
// map (and marks its tenant list stale) at once instead of fencing by the
// map it had until its next poll (an hour here).
func TestReconnectedNodeReloadsTheMap(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, false)
	n := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), MapPoll: time.Hour}, nil)
	waitMap := func(v uint64) error {
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if n.mapVersion() == v {
				return nil
			}
			time.Sleep(10 * time.Millisecond)
		}
		return fmt.Errorf("node holds map version %d, want %d", n.mapVersion(), v)
	}
	if err := waitMap(m1.Version()); err != nil {
		t.Fatal(err)
	}
	// The next map is stored while the node is away: no event reaches it.
	m2 := retarget(t, m1, "a", "b", "c")
	f.mu.Lock()
	f.m = m2
	f.mu.Unlock()
	n.tenants.mu.Lock()
	events := n.tenants.events
	n.tenants.mu.Unlock()
	if err := n.nc.ForceReconnect(); err != nil {
		t.Fatal(err)
	}
	if err := waitMap(m2.Version()); err != nil {
		t.Fatalf("after the connection came back: %v", err)
	}
	n.tenants.mu.Lock()
	defer n.tenants.mu.Unlock()
	if n.tenants.events == events {
		t.Fatal("the tenant list was not marked stale after the connection came back")
	}
}
