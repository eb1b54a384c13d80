package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tests of the transfer's single full pull per partition and tenant
// (receive.go, pullOrReconcile): the other current owners are reconciled
// by a hash-tree exchange that fetches only the records that differ.

// reconcileFixture writes, into a node of the 3 current owners of m's
// rows, the same lww and siblings keys (the siblings' dots are the
// node's own, so they differ between owners), and per partition three
// keys that tell the sources apart: "second" only on cur[1] and cur[2]
// (a write a quorum acknowledged without cur[0]), "newer" at version 9 on
// cur[1] and 5 elsewhere, "older" at 9 on cur[0] and 5 elsewhere.
func reconcileFixture(tb testing.TB, m *ring.Map, id string) func(e *engine) {
	return func(e *engine) {
		fillMixed(tb, e, 1500, 300, 20)
		var ws []subjects.NodeWrite
		for p := range uint32(xferQ) {
			cur := m.Owners(p, nil)
			pos := slices.Index(cur, id)
			ks := keysIn("lww", p, xferQ, 3)
			if pos > 0 {
				ws = append(ws, subjects.NodeWrite{Tenant: "lww", Key: ks[0], LWW: version(7, "c1", "second")})
			}
			newer, older := version(5, "c1", "old"), version(5, "c1", "old")
			if pos == 1 {
				newer = version(9, "c1", "new")
			}
			if pos == 0 {
				older = version(9, "c1", "new")
			}
			ws = append(ws, subjects.NodeWrite{Tenant: "lww", Key: ks[1], LWW: newer}, subjects.NodeWrite{Tenant: "lww", Key: ks[2], LWW: older})
		}
		apply(tb, e, ws)
	}
}

// TestTransferReconcilesOtherSources: 2 -> 3 nodes, tenants of RF 3 (rows
// shorter than the RF, so no owner leaves a row and the receiver takes
// each tenant from both current owners: leavers). The new node pulls each
// partition it needs whole from one current owner only (one source
// scanned per partition) and reconciles the other by a tree exchange,
// ending with exactly the merge of both owners' records (a record only
// the other holds, a newer version on it, an older one never replacing
// the newer, siblings synced), and receiving far fewer records than a
// pull from each.
func TestTransferReconcilesOtherSources(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, true)
	rfs := map[string]int{"lww": 3, "sib": 3}
	f.serveTenants(t, rfs)
	spy := spyScans(t, s)
	m2 := retarget(t, m1, "a", "b", "d")
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	srcs := map[string]*Node{}
	for _, id := range []string{"a", "b"} {
		srcs[id] = startXfer(t, s, cfg(id), reconcileFixture(t, m2, id))
	}
	needy := needyPartitions(t, m2, "d", rfs)
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })

	held := 0
	for _, p := range needy {
		want := map[string]record{}
		for _, n := range srcs {
			for k, r := range partRecords(t, n.eng, p) {
				want[k] = merged(want[k], r)
			}
		}
		got := partRecords(t, d.eng, p)
		held += len(got)
		if len(got) != len(want) {
			t.Errorf("partition %d: d holds %d records, the owners' merge %d", p, len(got), len(want))
		}
		for k, w := range want {
			if g, ok := got[k]; !ok || !sameRecord(g, w) {
				t.Errorf("partition %d: d holds %q as %+v (held %v), want the owners' merge %+v", p, strings.ReplaceAll(k, "\x00", "/"), g, ok, w)
			}
		}
		if lv := leavers(m2, p, rfs, []string{"lww"}); lv != nil {
			t.Fatalf("partition %d has leavers %v: the test needs rows shorter than the RF", p, lv)
		}
		ks := keysIn("lww", p, xferQ, 3)
		for i, v := range []string{"second", "new", "new"} {
			if rec, err := d.eng.read("lww", ks[i]); err != nil || rec.LWW == nil || string(rec.LWW.Value) != v {
				t.Errorf("partition %d: d holds %s as %+v (%v), want %q", p, ks[i], rec.LWW, err, v)
			}
		}
	}
	spy.mu.Lock()
	scanned := map[uint32]map[string]bool{}
	for src, reqs := range spy.scans {
		for _, r := range reqs {
			if scanned[r.Partition] == nil {
				scanned[r.Partition] = map[string]bool{}
			}
			scanned[r.Partition][src] = true
		}
	}
	spy.mu.Unlock()
	for _, p := range needy {
		if cur := m2.Owners(p, nil); len(scanned[p]) != 1 || !scanned[p][cur[0]] {
			t.Errorf("partition %d (current %v) was scanned from %v, want from %s alone", p, cur, scanned[p], cur[0])
		}
	}
	if got, want := d.xfer.reconciled.Load(), int64(len(needy)); got < want {
		t.Errorf("%d (partition, source) pairs reconciled, want %d (1 per needed partition)", got, want)
	}
	// One copy, plus the records that differ (the siblings, whose dots
	// are each owner's own, and the three keys per partition).
	st := d.TransferStatus()
	if st == nil || st.Keys >= int64(2*held) {
		t.Errorf("d received %+v records for %d held: want fewer than 2 per record held (one pull and the differences)", st, held)
	}
	t.Logf("d holds %d records of %d partitions; received %d records, %d bytes", held, len(needy), st.Keys, st.Bytes)
}

// TestTransferTakesLeaversOnly: 3 -> 4 nodes, tenants of RF 3, all up.
// Where d takes an owner's place in a tenant's first 3 (its leaver), it
// pulls the partition from that owner alone: no reconcile, the other
// owners answer barrier scans only, and d ends holding exactly the
// leaver's records. No record loses a holder: every record the current
// owners within the RF hold is held by at least as many target owners
// (the staying owners keep theirs, d has the leaver's), including the
// keys a quorum wrote without the leaver and the newer version on one
// owner only.
func TestTransferTakesLeaversOnly(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	rfs := map[string]int{"lww": 3, "sib": 3}
	f.serveTenants(t, rfs)
	spy := spyScans(t, s)
	m2 := retarget(t, m1, "a", "b", "c", "d")
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	nodes := map[string]*Node{}
	for _, id := range []string{"a", "b", "c"} {
		nodes[id] = startXfer(t, s, cfg(id), reconcileFixture(t, m2, id))
	}
	needy := needyPartitions(t, m2, "d", rfs)
	// Each owner's records before the move: the fixture's, nothing else.
	before := map[string]map[uint32]map[string]record{}
	for id, n := range nodes {
		before[id] = map[uint32]map[string]record{}
		for _, p := range needy {
			before[id][p] = partRecords(t, n.eng, p)
		}
	}
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	nodes["d"] = d
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })

	for _, p := range needy {
		lv := leavers(m2, p, rfs, []string{"lww", "sib"})
		if len(lv["lww"]) != 1 || !slices.Equal(lv["lww"], lv["sib"]) {
			t.Fatalf("partition %d: leavers %v, want one, the same for both tenants", p, lv)
		}
		leaver := lv["lww"][0]
		got, want := partRecords(t, d.eng, p), before[leaver][p]
		if len(got) != len(want) {
			t.Errorf("partition %d: d holds %d records, its leaver %s held %d", p, len(got), leaver, len(want))
		}
		for k, w := range want {
			if g, ok := got[k]; !ok || !sameRecord(g, w) {
				t.Errorf("partition %d: d holds %q as %+v (held %v), leaver %s held %+v", p, strings.ReplaceAll(k, "\x00", "/"), g, ok, leaver, w)
			}
		}
		cur, tgt := m2.Owners(p, nil)[:3], m2.Target(p, nil)[:3]
		holders := func(row []string, k string, w record) int {
			c := 0
			for _, id := range row {
				var h map[string]record
				if id == "d" {
					h = got
				} else {
					h = before[id][p]
				}
				if r, ok := h[k]; ok && sameRecord(r, w) {
					c++
				}
			}
			return c
		}
		for _, id := range cur {
			for k, w := range before[id][p] {
				if was, is := holders(cur, k, w), holders(tgt, k, w); is < was {
					t.Errorf("partition %d (current %v, target %v): %q as %+v held by %d current owners, %d target owners", p, cur, tgt, strings.ReplaceAll(k, "\x00", "/"), w, was, is)
				}
			}
		}
	}
	if got := d.xfer.reconciled.Load(); got != 0 {
		t.Errorf("%d (partition, source) pairs reconciled, want none: every leaver was up", got)
	}
	spy.checkPulls(t, func(src string, r subjects.PartitionScan) {
		if lv := leavers(m2, r.Partition, rfs, []string{"lww", "sib"}); !slices.Contains(lv["lww"], src) {
			t.Errorf("partition %d pulled from %s, not its leaver %v", r.Partition, src, lv["lww"])
		}
	})
}

// TestTransferReconcileFallsBackToPull: a source that does not answer the
// anti-entropy op (a release without it: no responder on
// kv.node.<id>.ae) is pulled whole instead, not taken for down. With c
// down, a partition where d takes c's place is covered only by both a and
// b, so every partition flips only if b's missing ae op led to a pull of
// b.
func TestTransferReconcileFallsBackToPull(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	rfs := map[string]int{"lww": 3, "sib": 3}
	f.serveTenants(t, rfs)
	// Only b's scans are watched: a watcher of c's would answer for c
	// (silently), and c must look down.
	var spyMu sync.Mutex
	fromB := map[uint32]bool{}
	spyNC := natstest.Connect(t, s)
	if _, err := spyNC.Subscribe(subjects.StorageNode("b", subjects.NodeOpScan), func(m *nats.Msg) {
		var req subjects.PartitionScan
		if err := wire.UnmarshalPartitionScan(m.Data, &req); err != nil {
			t.Errorf("spy: %v", err)
			return
		}
		spyMu.Lock()
		fromB[req.Partition] = true
		spyMu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	if err := spyNC.Flush(); err != nil {
		t.Fatal(err)
	}
	m2 := retarget(t, m1, "a", "b", "c", "d")
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	startXfer(t, s, cfg("a"), reconcileFixture(t, m2, "a"))
	b := startXfer(t, s, cfg("b"), reconcileFixture(t, m2, "b"))
	b.mu.Lock()
	for _, sub := range b.subs {
		if strings.HasSuffix(sub.Subject, "."+subjects.NodeOpAE) {
			if err := sub.Unsubscribe(); err != nil {
				t.Fatal(err)
			}
		}
	}
	b.mu.Unlock()
	// needed partitions where d takes c's place (c is down, so the tenant
	// comes from a and b) and a comes before b: b is reconciled
	var bSecond []uint32
	for p := range uint32(xferQ) {
		cur := m2.Owners(p, nil)
		if _, needed := pullPlan(m2, p, "d", rfs); len(needed) > 0 && slices.Equal(takenFrom(m2, p, 3), []string{"c"}) && slices.Index(cur, "a") < slices.Index(cur, "b") {
			bSecond = append(bSecond, p)
		}
	}
	if len(bSecond) == 0 {
		t.Fatal("no needed partition has a before b: the test needs some")
	}
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	waitFor(t, 60*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	spyMu.Lock()
	defer spyMu.Unlock()
	for _, p := range bSecond {
		if !fromB[p] {
			t.Errorf("partition %d: b (no ae op) was not scanned", p)
		}
		// b is not current[0] here, so it holds "second" (a too when a is not first).
		k := keysIn("lww", p, xferQ, 1)[0]
		if rec, err := d.eng.read("lww", k); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "second" {
			t.Errorf("partition %d (current %v): d lacks the write b holds: %+v %v", p, m2.Owners(p, nil), rec.LWW, err)
		}
	}
}

// TestTransferReconcileUnpacedByAERate: the sources answer a transfer's
// exchanges (AERequest.Transfer) without their anti-entropy rate and
// figures. At 4 KiB/s each source's trees over its ~2 MB of the moving
// partitions would take minutes; the join finishes in seconds, and no
// source counts an anti-entropy byte or tree.
func TestTransferReconcileUnpacedByAERate(t *testing.T) {
	const keys, valueBytes = 3000, 1000
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b") // rows shorter than the RF: both owners are sources, one reconciled
	f := newFakeCoord(t, s, m1, true)
	f.serveTenants(t, map[string]int{"r3": 3})
	var ws []subjects.NodeWrite
	for i := range keys {
		ws = append(ws, subjects.NodeWrite{Tenant: "r3", Key: fmt.Sprintf("user%08d", i), LWW: version(uint64(i+1), "c1", strings.Repeat("v", valueBytes))})
	}
	var srcs []*Node
	for _, id := range []string{"a", "b"} {
		srcs = append(srcs, startXfer(t, s, Config{NodeID: id, DataDir: t.TempDir(), AntiEntropyRate: 4096}, func(e *engine) { apply(t, e, ws) }))
	}
	f.set(retarget(t, m1, "a", "b", "d"))
	d := startXfer(t, s, Config{NodeID: "d", DataDir: t.TempDir(), TransferRate: Unlimited, MapPoll: 200 * time.Millisecond}, nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	if got := d.xfer.reconciled.Load(); got == 0 {
		t.Error("no partition was reconciled")
	}
	for _, n := range srcs {
		if b, trees := n.ae.bytes.Load(), n.TreeBuilds(); b != 0 || trees != 0 {
			t.Errorf("%s counted %d anti-entropy bytes and %d trees for a transfer's exchanges", n.cfg.NodeID, b, trees)
		}
	}
}

// TestScanRecordTooLarge: a page whose only record exceeds a message is
// refused with too_large naming the record, not sent (the encoder writes
// pages from the iterator straight into a pooled buffer).
func TestScanRecordTooLarge(t *testing.T) {
	s := natstest.RunServer(t)
	big := keysIn("lww", xferPart, xferQ, 1)[0]
	limit := natstest.Connect(t, s).MaxPayload()
	startXfer(t, s, Config{NodeID: "src", DataDir: t.TempDir()}, func(e *engine) {
		apply(t, e, []subjects.NodeWrite{{Tenant: "lww", Key: big, LWW: version(1, "c1", strings.Repeat("v", int(limit)+1))}})
	})
	dst := startXfer(t, s, Config{NodeID: "dst", DataDir: t.TempDir()}, nil)
	rc, err := dst.client()
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = rc.ScanPartition(context.Background(), "src", subjects.PartitionScan{Partitions: xferQ, Partition: xferPart})
	var e *subjects.Error
	if !errors.As(err, &e) || e.Kind != subjects.KindTooLarge || !strings.Contains(e.Message, "record lww/"+fmt.Sprintf("%q", big)) {
		t.Fatalf("scan of a partition holding one record over a message: %v", err)
	}
	// The pooled buffer that held it serves the next page correctly.
	rep, _, err := rc.ScanPartition(context.Background(), "src", subjects.PartitionScan{Partitions: xferQ, Partition: xferPart + 1})
	if err != nil || len(rep.Records) != 0 || rep.Cursor != nil {
		t.Fatalf("scan of an empty partition after: %+v %v", rep, err)
	}
}
