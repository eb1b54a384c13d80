package storage

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Tests of anti-entropy (ae.go, aeloop.go) with real in-process NATS and
// real nodes; fakeCoord (moves_test.go) serves the map and the tenants.

const aeInterval = 200 * time.Millisecond

// aeCluster starts nodes ids in dirs under root, all owning every
// partition, with anti-entropy every aeInterval and tenants rf.
func aeCluster(t *testing.T, s *server.Server, root string, rf map[string]int, ids ...string) (*fakeCoord, map[string]*Node) {
	t.Helper()
	f := newFakeCoord(t, s, claim(t, nil, ids...), false)
	f.serveTenants(t, rf)
	nodes := map[string]*Node{}
	for _, id := range ids {
		nodes[id] = startAE(t, s, root, id)
	}
	return f, nodes
}

func startAE(t *testing.T, s *server.Server, root, id string) *Node {
	t.Helper()
	return startXfer(t, s, Config{NodeID: id, DataDir: filepath.Join(root, id), Heartbeat: time.Hour,
		AntiEntropyInterval: aeInterval, AntiEntropyRate: Unlimited}, nil)
}

// sendBatch sends writes to node's write subject unfenced (as a repair
// would) and fails on any item error: the write reaches that replica only.
func sendBatch(t testing.TB, nc *nats.Conn, node string, ws []subjects.NodeWrite) {
	t.Helper()
	data, err := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: ws})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpWrite), data, 10*time.Second)
	if err != nil {
		t.Fatalf("write to %s: %v", node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		t.Fatalf("write to %s: %v", node, e)
	}
	var rep subjects.NodeWriteReply
	if err := wire.UnmarshalNodeWriteReply(msg.Data, &rep); err != nil || len(rep.Results) != len(ws) {
		t.Fatalf("write reply from %s: %d results, %v", node, len(rep.Results), err)
	}
	for _, r := range rep.Results {
		if r.Err != "" {
			t.Fatalf("write to %s: %s", node, r.Err)
		}
	}
}

// stored returns the stored bytes of every key of tenant on n, by key.
func stored(t *testing.T, n *Node, tenant string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for p := range uint32(n.eng.q) {
		es, _, err := n.eng.scanPartition(p, nil, 100_000)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Tenant == tenant {
				out[e.Key] = string(e.Record)
			}
		}
	}
	return out
}

// converged reports whether every node stores exactly want's keys of
// tenant with identical records.
func converged(t *testing.T, nodes map[string]*Node, tenant string, want int) bool {
	t.Helper()
	var first map[string]string
	for _, n := range nodes {
		got := stored(t, n, tenant)
		if len(got) != want {
			return false
		}
		if first == nil {
			first = got
			continue
		}
		for k, v := range first {
			if got[k] != v {
				return false
			}
		}
	}
	return true
}

func repairedTotal(nodes map[string]*Node) (repaired, exchanges, builds int64) {
	for _, n := range nodes {
		st := n.AntiEntropy()
		repaired += st.KeysRepaired
		exchanges += st.Exchanges
		builds += n.TreeBuilds()
	}
	return
}

// TestAERepairsWritesToOneReplica: writes applied to one replica only
// reach the other two through anti-entropy, with no read, and the keys
// repaired count each (key, replica) changed exactly once; an idle
// cluster then builds no tree (the generation cache), though its passes
// go on.
func TestAERepairsWritesToOneReplica(t *testing.T) {
	s := natstest.RunServer(t)
	_, nodes := aeCluster(t, s, t.TempDir(), map[string]int{"acme": 3, "other": 3}, "a", "b", "c")
	nc := natstest.Connect(t, s)
	const keys = 300
	var ws []subjects.NodeWrite
	for i := range keys {
		ws = append(ws, subjects.NodeWrite{ID: uint64(i), Tenant: "acme", Key: fmt.Sprintf("k%d", i), LWW: version(uint64(100+i), "c1", fmt.Sprint(i))})
	}
	// Half of them on a, the other half on c: both directions of merge.
	sendBatch(t, nc, "a", ws[:keys/2])
	sendBatch(t, nc, "c", ws[keys/2:])
	// A key both hold, c's version newer: a merges it, c is unchanged.
	sendBatch(t, nc, "a", []subjects.NodeWrite{{Tenant: "acme", Key: "both", LWW: version(5, "c1", "old")}})
	sendBatch(t, nc, "c", []subjects.NodeWrite{{Tenant: "acme", Key: "both", LWW: version(6, "c1", "new")}})
	sendBatch(t, nc, "b", []subjects.NodeWrite{{Tenant: "acme", Key: "both", LWW: version(5, "c1", "old")}})
	waitFor(t, 20*time.Second, "replicas to converge", func() bool { return converged(t, nodes, "acme", keys+1) })
	// Each of the 300 keys changed on two replicas, "both" on a and b.
	want := int64(2*keys + 2)
	waitFor(t, 5*time.Second, "the repairs counted", func() bool { r, _, _ := repairedTotal(nodes); return r >= want })
	time.Sleep(3 * aeInterval)
	r, _, _ := repairedTotal(nodes)
	if r != want {
		t.Fatalf("keys repaired %d, want %d", r, want)
	}
	for id, n := range nodes {
		rec, err := n.eng.read("acme", "both")
		if err != nil || rec.LWW == nil || string(rec.LWW.Value) != "new" {
			t.Fatalf("%s holds %+v (%v), want the newer version", id, rec.LWW, err)
		}
		// Errors may be counted at start, before a peer subscribed (no
		// responders); every partition must have passed cleanly since.
		if st := n.AntiEntropy(); st.LastPass.IsZero() || st.OldestPartitionPass.IsZero() {
			t.Fatalf("%s status %+v: want a pass, every partition passed", id, st)
		}
	}

	// Idle: passes go on, but no tree is built again.
	waitFor(t, 5*time.Second, "trees to settle", func() bool {
		_, _, b0 := repairedTotal(nodes)
		time.Sleep(2 * aeInterval)
		_, _, b1 := repairedTotal(nodes)
		return b0 == b1
	})
	_, x0, b0 := repairedTotal(nodes)
	time.Sleep(5 * aeInterval)
	_, x1, b1 := repairedTotal(nodes)
	if b1 != b0 || b0 == 0 {
		t.Fatalf("idle cluster built %d trees (%d before)", b1-b0, b0)
	}
	if x1 <= x0 {
		t.Fatalf("no exchange while idle (%d, %d): the passes stopped", x0, x1)
	}
	// One write makes exactly its partition's trees rebuilt.
	sendBatch(t, nc, "b", []subjects.NodeWrite{{Tenant: "acme", Key: "late", LWW: version(9, "c1", "x")}})
	waitFor(t, 10*time.Second, "the late key everywhere", func() bool { return converged(t, nodes, "acme", keys+2) })
	if _, _, b2 := repairedTotal(nodes); b2 == b1 {
		t.Fatal("a write rebuilt no tree")
	}
}

// TestAERestoredFromOldCopyConverges: a node whose data directory is
// restored from an old copy gets back what it missed, newer versions of
// keys it held included.
func TestAERestoredFromOldCopyConverges(t *testing.T) {
	s := natstest.RunServer(t)
	root := t.TempDir()
	_, nodes := aeCluster(t, s, root, map[string]int{"acme": 3}, "a", "b", "c")
	nc := natstest.Connect(t, s)
	all := func(from, to int, counter uint64) {
		var ws []subjects.NodeWrite
		for i := from; i < to; i++ {
			ws = append(ws, subjects.NodeWrite{ID: uint64(i), Tenant: "acme", Key: fmt.Sprintf("k%d", i), LWW: version(counter, "c1", fmt.Sprint(counter))})
		}
		for _, id := range []string{"a", "b", "c"} {
			sendBatch(t, nc, id, ws)
		}
	}
	all(0, 100, 10)
	if err := nodes["c"].Stop(); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(t.TempDir(), "c-old")
	if err := os.CopyFS(old, os.DirFS(filepath.Join(root, "c"))); err != nil {
		t.Fatal(err)
	}
	nodes["c"] = startAE(t, s, root, "c")
	all(50, 200, 20) // 50 newer versions, 100 new keys
	if err := nodes["c"].Stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(root, "c")); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(root, "c"), os.DirFS(old)); err != nil {
		t.Fatal(err)
	}
	nodes["c"] = startAE(t, s, root, "c")
	if got := len(stored(t, nodes["c"], "acme")); got != 100 {
		t.Fatalf("restored node holds %d keys, want the old copy's 100", got)
	}
	waitFor(t, 20*time.Second, "the restored node to converge", func() bool { return converged(t, nodes, "acme", 200) })
	rec, err := nodes["c"].eng.read("acme", "k60")
	if err != nil || rec.LWW == nil || rec.LWW.Dot.Counter != 20 {
		t.Fatalf("restored node holds %+v (%v) for k60, want counter 20", rec.LWW, err)
	}
}

// TestAESiblingsConverge: a siblings tenant whose replicas took
// concurrent values converges to the sync of the states on every replica.
func TestAESiblingsConverge(t *testing.T) {
	s := natstest.RunServer(t)
	_, nodes := aeCluster(t, s, t.TempDir(), map[string]int{"sib": 3}, "a", "b", "c")
	nc := natstest.Connect(t, s)
	const keys = 40
	for _, id := range []string{"a", "b"} {
		var ws []subjects.NodeWrite
		for i := range keys {
			ws = append(ws, subjects.NodeWrite{ID: uint64(i), Tenant: "sib", Key: fmt.Sprintf("k%d", i), Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte(id)}}})
		}
		sendBatch(t, nc, id, ws)
	}
	waitFor(t, 20*time.Second, "siblings to converge", func() bool { return converged(t, nodes, "sib", keys) })
	for id, n := range nodes {
		rec, err := n.eng.read("sib", "k7")
		if err != nil || rec.DVV == nil || rec.DVV.Size() != 2 {
			t.Fatalf("%s holds %+v (%v), want both concurrent values", id, rec.DVV, err)
		}
	}
	// Stable: nothing left to repair, so no tree is built again.
	_, _, b0 := repairedTotal(nodes)
	time.Sleep(4 * aeInterval)
	r1, _, b1 := repairedTotal(nodes)
	time.Sleep(4 * aeInterval)
	r2, _, b2 := repairedTotal(nodes)
	if r2 != r1 || b2 != b1 {
		t.Fatalf("converged siblings keep being repaired: repaired %d → %d, builds %d → %d → %d", r1, r2, b0, b1, b2)
	}
}

// aeRequest sends raw bytes to node's AE subject and returns the error
// the node answered (nil when it answered a reply).
func aeRequest(t *testing.T, nc *nats.Conn, node string, data []byte) (*subjects.AEReply, *subjects.Error) {
	t.Helper()
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpAE), data, 10*time.Second)
	if err != nil {
		t.Fatalf("ae request to %s: %v", node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, e
	}
	var rep subjects.AEReply
	if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
		t.Fatalf("ae reply: %v", err)
	}
	return &rep, nil
}

// TestAEBadRequests: malformed AE requests are answered with an error of
// the right kind, never a panic, and the node goes on answering.
func TestAEBadRequests(t *testing.T) {
	s := natstest.RunServer(t)
	f, _ := aeCluster(t, s, t.TempDir(), map[string]int{"acme": 3}, "a", "b")
	// z knows the map but owns nothing in it.
	startXfer(t, s, Config{NodeID: "z", DataDir: filepath.Join(t.TempDir(), "z"), Heartbeat: time.Hour}, nil)
	nc := natstest.Connect(t, s)
	mv := f.current().Version()
	good := func() subjects.AERequest {
		return subjects.AERequest{Proto: subjects.NodeProtocolVersion, Op: subjects.AEOpRoots, Partitions: xferQ, MapVersion: mv,
			Tenants: []string{"acme"}, Config: subjects.AEConfig{FanOut: 16, Depth: 2}, Parts: []uint32{1, 2}}
	}
	enc := func(r subjects.AERequest) []byte {
		b, err := msgpack.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	otherPart := func(p uint32) string { // a key of acme outside p
		for i := 0; ; i++ {
			if k := fmt.Sprint("x", i); ring.Partition("acme", k, xferQ) != p {
				return k
			}
		}
	}
	cases := []struct {
		name, node, kind string
		data             []byte
	}{
		{"garbage", "a", subjects.KindInvalid, []byte{0xc1, 0xff, 0x00}},
		{"empty", "a", subjects.KindInvalid, nil},
		{"a map", "a", subjects.KindInvalid, []byte{0x81, 0xa1, 'x', 0x01}},
		{"proto", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Proto = 99; return r }())},
		{"wrong Q", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Partitions = 1024; return r }())},
		{"bad fan-out", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Config.FanOut = 3; return r }())},
		{"huge tree", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Config.Depth = 8; return r }())},
		// Valid shapes too large to build per request (FuzzServeAE ran a
		// node out of memory with them).
		{"tree over 4096 leaves", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Config.FanOut = 256; return r }())},
		{"roots over 2^20 leaves", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Config.Depth, r.Parts = 3, make([]uint32, 257)
			return r
		}())},
		{"no tenants", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Tenants = nil; return r }())},
		{"unsorted tenants", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Tenants = []string{"b", "a"}; return r }())},
		{"unknown op", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Op = "drop"; return r }())},
		{"no map version", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.MapVersion = 0; return r }())},
		{"map behind", "a", subjects.KindMapBehind, enc(func() subjects.AERequest { r := good(); r.MapVersion = mv + 100; return r }())},
		{"not owner", "z", subjects.KindNotOwner, enc(good())},
		{"partition out of range", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Parts = []uint32{xferQ}; return r }())},
		{"no parts", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Parts = nil; return r }())},
		{"level out of range", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Level, r.Indices = subjects.AEOpChildren, 1, 2, []uint32{0}
			return r
		}())},
		{"parent out of level", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Level, r.Indices = subjects.AEOpChildren, 1, 1, []uint32{16}
			return r
		}())},
		{"too many parents", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Level, r.Indices = subjects.AEOpChildren, 1, 0, []uint32{0, 0}
			return r
		}())},
		{"bucket out of range", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Indices = subjects.AEOpKeys, 1, []uint32{256}
			return r
		}())},
		{"record of another partition", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Keys = subjects.AEOpRecords, 1, []subjects.AEKey{{Tenant: "acme", Key: otherPart(1)}}
			return r
		}())},
		{"record of another tenant", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			r.Op, r.Partition, r.Keys = subjects.AEOpRecords, 1, []subjects.AEKey{{Tenant: "zeta", Key: "k"}}
			return r
		}())},
		{"push of a bad state", "a", subjects.KindInvalid, enc(func() subjects.AERequest {
			r := good()
			k := keysIn("acme", 1, xferQ, 1)[0]
			r.Op, r.Partition, r.Records = subjects.AEOpPush, 1, []subjects.PartitionRecord{{Tenant: "acme", Key: k, State: []byte{0x92, 0xc0, 0xc0}}}
			return r
		}())},
		{"empty push", "a", subjects.KindInvalid, enc(func() subjects.AERequest { r := good(); r.Op, r.Partition = subjects.AEOpPush, 1; return r }())},
	}
	for _, c := range cases {
		rep, e := aeRequest(t, nc, c.node, c.data)
		if e == nil || e.Kind != c.kind {
			t.Errorf("%s: answered %+v, error %v; want kind %s", c.name, rep, e, c.kind)
		}
	}
	// Still serving: a good request answers both roots.
	rep, e := aeRequest(t, nc, "a", enc(good()))
	if e != nil || len(rep.Hashes) != 2 {
		t.Fatalf("good request after the bad ones: %+v, %v", rep, e)
	}
	// A push is counted: the first changes the key, the second does not.
	k := keysIn("acme", 1, xferQ, 1)[0]
	state, err := encodeRecord(nil, &record{LWW: version(3, "c1", "v")})
	if err != nil {
		t.Fatal(err)
	}
	push := good()
	push.Op, push.Partition, push.Records = subjects.AEOpPush, 1, []subjects.PartitionRecord{{Tenant: "acme", Key: k, State: state}}
	for i, want := range []int{1, 0} {
		rep, e := aeRequest(t, nc, "b", enc(push))
		if e != nil || rep.Changed != want {
			t.Fatalf("push %d: %+v, %v; want %d changed", i, rep, e, want)
		}
	}
}

// TestAEPairs: the lower position initiates, once per pair, over the
// tenants whose RF covers both; moving partitions are skipped.
func TestAEPairs(t *testing.T) {
	m := claim(t, nil, "a", "b", "c")
	rf := map[string]int{"one": 1, "two": 2, "three": 3}
	for p := range uint32(xferQ) {
		owners := m.Owners(p, nil)
		pairs := map[string][]string{}
		for _, self := range owners {
			for _, x := range aePairs(m, p, self, rf) {
				pairs[self+">"+x.peer] = x.tenants
			}
		}
		want := map[string][]string{
			owners[0] + ">" + owners[1]: {"three", "two"},
			owners[0] + ">" + owners[2]: {"three"},
			owners[1] + ">" + owners[2]: {"three"},
		}
		if fmt.Sprint(pairs) != fmt.Sprint(want) {
			t.Fatalf("partition %d: pairs %v, want %v", p, pairs, want)
		}
	}
	mv := retarget(t, m, "a", "b", "c", "d")
	for p := range uint32(xferQ) {
		if mv.Moving(p) && len(aePairs(mv, p, mv.Owners(p, nil)[0], rf)) != 0 {
			t.Fatalf("moving partition %d exchanged", p)
		}
	}
	if got := aeConfig(aeDeepKeys - 1); got.Depth != 2 {
		t.Fatalf("config below the threshold %+v", got)
	}
	if got := aeConfig(aeDeepKeys); got.Depth != 3 || got.Leaves() != 4096 {
		t.Fatalf("config at the threshold %+v", got)
	}
}

// TestGenerationBumps: a partition's generation moves on a write that
// changes it and on a drop, and not on a merge that changes nothing.
func TestGenerationBumps(t *testing.T) {
	n := openQ(t, t.TempDir(), xferQ)
	t.Cleanup(func() { _ = n.Stop() })
	k := keysIn("acme", 3, xferQ, 1)[0]
	w := []subjects.NodeWrite{{Tenant: "acme", Key: k, LWW: version(5, "c1", "v")}}
	changed := make([]bool, 1)
	if r := n.eng.applyWritesChanged(w, changed); r[0].Err != "" || !changed[0] {
		t.Fatalf("first write: %+v changed %v", r[0], changed)
	}
	g := n.eng.gen(3)
	if g == 0 || n.eng.gen(4) != 0 {
		t.Fatalf("generations after a write to 3: %d, %d", g, n.eng.gen(4))
	}
	if r := n.eng.applyWritesChanged(w, changed); r[0].Err != "" || changed[0] || n.eng.gen(3) != g {
		t.Fatalf("the same write again: %+v changed %v, gen %d → %d", r[0], changed, g, n.eng.gen(3))
	}
	if err := n.eng.dropPartition(3); err != nil || n.eng.gen(3) == g {
		t.Fatalf("drop: %v, gen %d → %d", err, g, n.eng.gen(3))
	}
}

// TestAEMetricsAndHeartbeat: a node's anti-entropy figures are on its
// metrics registry and in its heartbeat; a node with anti-entropy off
// reports none.
func TestAEMetricsAndHeartbeat(t *testing.T) {
	s := natstest.RunServer(t)
	root := t.TempDir()
	f := newFakeCoord(t, s, claim(t, nil, "a", "b"), false)
	f.serveTenants(t, map[string]int{"acme": 2})
	reg := prometheus.NewRegistry()
	cfg := func(id string) Config {
		return Config{NodeID: id, DataDir: filepath.Join(root, id), Heartbeat: 100 * time.Millisecond,
			AntiEntropyInterval: aeInterval, AntiEntropyRate: 1 << 20}
	}
	ca := cfg("a")
	ca.Metrics = reg
	nodes := map[string]*Node{"a": startXfer(t, s, ca, nil), "b": startXfer(t, s, cfg("b"), nil)}
	off := cfg("off")
	off.AntiEntropyInterval = 0
	startXfer(t, s, off, nil)
	nc := natstest.Connect(t, s)
	var ws []subjects.NodeWrite
	for i := range 20 {
		ws = append(ws, subjects.NodeWrite{ID: uint64(i), Tenant: "acme", Key: fmt.Sprint("k", i), LWW: version(7, "c1", "v")})
	}
	sendBatch(t, nc, "b", ws)
	waitFor(t, 20*time.Second, "convergence", func() bool { return converged(t, nodes, "acme", 20) })
	// Whichever node initiated a partition's exchange counted it: a's
	// share of the 20 repairs is on its registry.
	waitFor(t, 5*time.Second, "the last pass metric", func() bool {
		return nodes["a"].AntiEntropy().KeysRepaired+nodes["b"].AntiEntropy().KeysRepaired == 20 &&
			!strings.Contains(gather(t, reg), "quorumkv_ae_last_pass_timestamp_seconds 0\n")
	})
	text := gather(t, reg)
	for _, want := range []string{
		fmt.Sprintf("quorumkv_ae_keys_repaired_total %d\n", nodes["a"].AntiEntropy().KeysRepaired),
		"quorumkv_ae_exchanges_total ",
		"quorumkv_ae_bytes_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("metrics lack %q:\n%s", want, text)
		}
	}
	waitFor(t, 5*time.Second, "heartbeats with the figures", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		var sawA, sawOff bool
		for _, r := range f.regs {
			switch {
			case r.NodeID == "a" && r.AntiEntropy != nil && r.AntiEntropy.Exchanges > 0 && !r.AntiEntropy.LastPass.IsZero():
				sawA = true
			case r.NodeID == "off":
				if r.AntiEntropy != nil {
					t.Errorf("a node with anti-entropy off reported %+v", r.AntiEntropy)
				}
				sawOff = true
			}
		}
		return sawA && sawOff
	})
}

// TestAEAfterExchangeHook: after a pass the reaper's hook is called for
// every partition the node owns, once the partition's exchanges are over:
// on the initiating node the repair is already merged.
func TestAEAfterExchangeHook(t *testing.T) {
	s := natstest.RunServer(t)
	root := t.TempDir()
	m := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m, false)
	f.serveTenants(t, map[string]int{"acme": 2})
	const p = 3
	k := keysIn("acme", p, xferQ, 1)[0]
	first := m.Owners(p, nil)[0]
	type call struct {
		p    uint32
		have bool
	}
	calls := map[string]chan call{"a": make(chan call, 1000), "b": make(chan call, 1000)}
	nodes := map[string]*Node{}
	for _, id := range []string{"a", "b"} {
		n, err := Open(Config{NodeID: id, DataDir: filepath.Join(root, id), Partitions: xferQ, Heartbeat: time.Hour, Logger: quiet(),
			AntiEntropyInterval: aeInterval, AntiEntropyRate: Unlimited})
		if err != nil {
			t.Fatal(err)
		}
		n.afterExchange = func(ctx context.Context, q uint32) {
			rec, err := n.eng.read("acme", k)
			calls[id] <- call{q, err == nil && rec.LWW != nil}
		}
		if err := n.start(natstest.Connect(t, s)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Stop() })
		nodes[id] = n
	}
	second := "a"
	if first == "a" {
		second = "b"
	}
	sendBatch(t, natstest.Connect(t, s), second, []subjects.NodeWrite{{Tenant: "acme", Key: k, LWW: version(4, "c1", "v")}})
	seen := map[uint32]bool{}
	deadline := time.After(10 * time.Second)
	for len(seen) < xferQ {
		select {
		case c := <-calls[first]:
			if c.p == p && !seen[p] && !c.have {
				// The write may have landed after this pass's exchange
				// of p began; the next pass must then have it.
				continue
			}
			seen[c.p] = true
		case <-deadline:
			t.Fatalf("hook called for %d of %d partitions on %s", len(seen), xferQ, first)
		}
	}
}

// TestAERateLimitsScans: building a tree is paced by the anti-entropy
// rate, and its bytes are counted.
func TestAERateLimitsScans(t *testing.T) {
	s := natstest.RunServer(t)
	n := startXfer(t, s, Config{NodeID: "a", DataDir: filepath.Join(t.TempDir(), "a"), Heartbeat: time.Hour,
		AntiEntropyRate: 256 << 10}, nil)
	const p = 2
	val := strings.Repeat("x", 1000)
	var ws []subjects.NodeWrite
	for _, k := range keysIn("acme", p, xferQ, 600) {
		ws = append(ws, subjects.NodeWrite{Tenant: "acme", Key: k, LWW: version(1, "c1", val)})
	}
	apply(t, n.eng, ws) // ~600 KB
	start := time.Now()
	at, err := n.tree(context.Background(), p, []string{"acme"}, aeConfig(0))
	if err != nil || at.t.Len() != 600 {
		t.Fatalf("tree: %v, %v keys", err, at)
	}
	b := n.ae.bytes.Load()
	if b < 600_000 {
		t.Fatalf("counted %d bytes scanned, want ≥ 600000", b)
	}
	if d, min := time.Since(start), time.Duration(float64(b)/(256<<10)*0.8*float64(time.Second)); d < min {
		t.Fatalf("scan of %d bytes took %v at 256 KiB/s, want ≥ %v", b, d, min)
	}
	// Cached: the same tree again costs no scan and no wait.
	if again, err := n.tree(context.Background(), p, []string{"acme"}, aeConfig(0)); err != nil || again != at || n.TreeBuilds() != 1 {
		t.Fatalf("second tree: %v, same %v, builds %d", err, again == at, n.TreeBuilds())
	}
}

// TestAEUnderWrites: exchanges run while writes keep changing every
// partition (most reach all three replicas, every fifth batch misses c);
// once the writes stop, every replica holds the same records, and each
// key c missed was repaired on c.
func TestAEUnderWrites(t *testing.T) {
	s := natstest.RunServer(t)
	root := t.TempDir()
	f := newFakeCoord(t, s, claim(t, nil, "a", "b", "c"), false)
	f.serveTenants(t, map[string]int{"acme": 3})
	nodes := map[string]*Node{}
	for _, id := range []string{"a", "b", "c"} {
		nodes[id] = startXfer(t, s, Config{NodeID: id, DataDir: filepath.Join(root, id), Heartbeat: time.Hour, Fsync: false,
			AntiEntropyInterval: 50 * time.Millisecond, AntiEntropyRate: Unlimited}, nil)
	}
	nc := natstest.Connect(t, s)
	missed := map[string]bool{}
	keys := map[string]bool{}
	deadline := time.Now().Add(1500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		ws := make([]subjects.NodeWrite, 50)
		for j := range ws {
			k := fmt.Sprint("k", (i*50+j)%3000)
			ws[j] = subjects.NodeWrite{ID: uint64(j), Tenant: "acme", Key: k, LWW: version(uint64(i+1), "c1", fmt.Sprint(i))}
			keys[k] = true
			if i%5 == 4 {
				missed[k] = true
			} else {
				delete(missed, k) // a later batch reached c
			}
		}
		targets := []string{"a", "b", "c"}
		if i%5 == 4 {
			targets = targets[:2]
		}
		for _, id := range targets {
			sendBatch(t, nc, id, ws)
		}
	}
	waitFor(t, 20*time.Second, "convergence after the writes", func() bool { return converged(t, nodes, "acme", len(keys)) })
	// An exchange adds its repairs to the count when it returns, after
	// its merges are visible: the count may trail convergence a moment.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r, _, _ := repairedTotal(nodes)
		if r >= int64(len(missed)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d keys repaired, fewer than the %d whose last version c missed", r, len(missed))
		}
	}
}

// TestMergeLocalCountsWhatCommitted: a batch of anti-entropy merges in
// which one item fails still commits the others, and the count of keys
// repaired includes them (it used to be 0 for the whole batch).
func TestMergeLocalCountsWhatCommitted(t *testing.T) {
	s := natstest.RunServer(t)
	n := startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir(), MapPoll: time.Hour}, nil)
	items := []subjects.NodeWrite{
		{ID: 0, Tenant: "lww", Key: "k1", LWW: version(5, "c", "v1")},
		{ID: 1, Tenant: "lww", Key: "k2"}, // carries no version: fails
		{ID: 2, Tenant: "lww", Key: "k3", LWW: version(5, "c", "v3")},
	}
	changed, err := n.mergeLocal(context.Background(), items)
	if err == nil || !strings.Contains(err.Error(), "k2") {
		t.Fatalf("err %v, want the failure of k2", err)
	}
	if changed != 2 {
		t.Fatalf("changed %d, want 2 (k1 and k3 committed)", changed)
	}
	for _, k := range []string{"k1", "k3"} {
		if rec, err := n.eng.read("lww", k); err != nil || rec.LWW == nil {
			t.Fatalf("%s not stored: %+v %v", k, rec, err)
		}
	}
}
