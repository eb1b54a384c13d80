package storage

import (
	"context"
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
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tests of tenant-scoped transfers (tenants.go): a receiver pulls only the
// tenants whose RF puts it in a partition's target, each from the current
// owners within that RF.

// serveTenants makes the fake coordinators answer kv.v1.admin.tenant.list
// with these replication factors.
// With several, the i-th request is answered with rfs[i] (the last one
// from then on); it returns the count of requests.
func (f *fakeCoord) serveTenants(tb testing.TB, rfs ...map[string]int) *atomic.Int64 {
	tb.Helper()
	var lists [][]byte
	for _, rf := range rfs {
		var l subjects.TenantList
		for id, r := range rf {
			l.Tenants = append(l.Tenants, subjects.Tenant{ID: id, ReplicationFactor: r})
		}
		data, err := msgpack.Marshal(&l)
		if err != nil {
			tb.Fatal(err)
		}
		lists = append(lists, data)
	}
	var asked atomic.Int64
	if _, err := f.nc.Subscribe(subjects.AdminTenantList, func(m *nats.Msg) {
		i := int(asked.Add(1)) - 1
		_ = m.Respond(lists[min(i, len(lists)-1)])
	}); err != nil {
		tb.Fatal(err)
	}
	if err := f.nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	return &asked
}

// scanSpy records the scan requests sent to nodes (it does not answer:
// the node does).
type scanSpy struct {
	mu    sync.Mutex
	scans map[string][]subjects.PartitionScan // by source node
}

func spyScans(tb testing.TB, s *server.Server) *scanSpy {
	tb.Helper()
	sp := &scanSpy{scans: map[string][]subjects.PartitionScan{}}
	nc := natstest.Connect(tb, s)
	if _, err := nc.Subscribe("kv.node.*.scan", func(m *nats.Msg) {
		var req subjects.PartitionScan
		if err := wire.UnmarshalPartitionScan(m.Data, &req); err != nil {
			tb.Errorf("spy: %v", err)
			return
		}
		node := strings.Split(m.Subject, ".")[2]
		sp.mu.Lock()
		sp.scans[node] = append(sp.scans[node], req)
		sp.mu.Unlock()
	}); err != nil {
		tb.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	return sp
}

// ownKeys writes, into a node's store, n lww keys of tenant in every
// partition, named after the node so that a receiver's keys tell which
// source they came from.
func ownKeys(tb testing.TB, e *engine, node, tenant string, n int) {
	tb.Helper()
	var ws []subjects.NodeWrite
	for p := range uint32(xferQ) {
		for i, k := range keysIn(tenant, p, xferQ, 3*n) {
			if i%3 == int(node[0])%3 { // a third of them per node, disjoint
				ws = append(ws, subjects.NodeWrite{Tenant: tenant, Key: k, LWW: version(5, node, node)})
			}
		}
	}
	apply(tb, e, ws)
}

// takenFrom is the owners a receiver takes a tenant of RF r of partition
// p of m from while all are up: the leavers where the current and target
// rows within r are full (leavers), else the current owners within r.
func takenFrom(m *ring.Map, p uint32, r int) []string {
	if lv := leavers(m, p, map[string]int{"t": r}, []string{"t"}); lv != nil {
		return lv["t"]
	}
	cur := m.Owners(p, nil)
	return cur[:min(r, len(cur))]
}

// ownedBy is which of ids ownKeys gave key i of keysIn.
func ownedBy(i int, ids ...string) string {
	for _, id := range ids {
		if i%3 == int(id[0])%3 {
			return id
		}
	}
	return ""
}

// isBarrier reports whether a spied scan is a barrier (receive.go).
func isBarrier(sc subjects.PartitionScan) bool { return sc.Limit == 1 && sc.Tenants == nil }

// checkPulls calls check with every spied scan that is not a barrier, and
// fails a source that answered more than two barriers (one per plan, a
// retry at most).
func (sp *scanSpy) checkPulls(tb testing.TB, check func(src string, r subjects.PartitionScan)) {
	tb.Helper()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for src, reqs := range sp.scans {
		barriers := 0
		for _, r := range reqs {
			if isBarrier(r) {
				barriers++
				continue
			}
			check(src, r)
		}
		if barriers > 2 {
			tb.Errorf("%s answered %d barrier scans, want one per plan (a retry at most)", src, barriers)
		}
	}
}

// needyPartitions returns the partitions of m where self needs some
// tenant of rfs (pullPlan), failing when there is none: a test of a
// transfer needs some.
func needyPartitions(tb testing.TB, m *ring.Map, self string, rfs map[string]int) []uint32 {
	tb.Helper()
	var needy []uint32
	for p := range uint32(m.Partitions()) {
		if _, needed := pullPlan(m, p, self, rfs); len(needed) > 0 {
			needy = append(needy, p)
		}
	}
	if len(needy) == 0 {
		tb.Fatalf("%s needs no partition: the test needs some", self)
	}
	return needy
}

// TestTransferScopedToTenants: 3 -> 4 nodes with RF-3 tenants and an RF-1
// tenant. The new node d pulls an RF-3 tenant only in the partitions where
// it is in the first 3 of the target (from all three current owners), the
// RF-1 tenant only where it is target[0] and only from current[0], and
// reports a partition where it needs nothing without any scan. Each
// tenant comes from the owner d takes the place of (leavers) alone; the
// other owners answer a barrier scan (once per plan), no pull.
func TestTransferScopedToTenants(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	f.serveTenants(t, map[string]int{"r3": 3, "s3": 3, "r1": 1})
	spy := spyScans(t, s)
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	for _, id := range []string{"a", "b", "c"} {
		startXfer(t, s, cfg(id), func(e *engine) {
			for _, tenant := range []string{"r3", "s3", "r1", "gone"} { // "gone": in no tenant list
				ownKeys(t, e, id, tenant, 4)
			}
		})
	}
	m2 := retarget(t, m1, "a", "b", "c", "d")
	if got := len(m2.Receiving("d", nil)); got != xferQ {
		t.Fatalf("d receives %d partitions, want all %d (R grows 3 -> 4)", got, xferQ)
	}
	in := func(row []string, k int, id string) bool { return slices.Contains(row[:min(k, len(row))], id) }
	nothing := 0
	for p := range uint32(xferQ) {
		if !in(m2.Target(p, nil), 3, "d") {
			nothing++
		}
	}
	if nothing == 0 || nothing == xferQ {
		t.Fatalf("d is beyond position 3 in %d of %d partitions; the test needs some of each", nothing, xferQ)
	}
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })

	for p := range uint32(xferQ) {
		cur, tgt := m2.Owners(p, nil), m2.Target(p, nil)
		got := partRecords(t, d.eng, p)
		for _, src := range cur {
			for _, tenant := range []string{"r3", "s3", "r1", "gone"} {
				want := false
				switch tenant {
				case "r3", "s3":
					want = in(tgt, 3, "d") && slices.Contains(takenFrom(m2, p, 3), src)
				case "r1":
					want = tgt[0] == "d" && cur[0] == src
				}
				for i, k := range keysIn(tenant, p, xferQ, 12) {
					if i%3 != int(src[0])%3 {
						continue
					}
					if _, has := got[tenant+"\x00"+k]; has != want {
						t.Errorf("partition %d (current %v, target %v): d holds %s/%s from %s: %v, want %v", p, cur, tgt, tenant, k, src, has, want)
					}
				}
			}
		}
	}
	// Scans went only where d needs something, and named the tenants.
	spy.checkPulls(t, func(src string, r subjects.PartitionScan) {
		cur, tgt := m2.Owners(r.Partition, nil), m2.Target(r.Partition, nil)
		var want []string
		if in(tgt, 3, "d") && slices.Contains(takenFrom(m2, r.Partition, 3), src) {
			want = []string{"s3", "r3"}
		}
		if tgt[0] == "d" && cur[0] == src {
			want = append(want, "r1")
		}
		slices.Sort(want)
		if len(want) == 0 || !slices.Equal(r.Tenants, want) {
			t.Errorf("scan of partition %d from %s (current %v, target %v) asked for %v, want %v", r.Partition, src, cur, tgt, r.Tenants, want)
		}
	})
	f.mu.Lock()
	reported := map[uint32]bool{}
	for _, r := range f.reports {
		for _, p := range r.Done {
			reported[p] = true
		}
	}
	f.mu.Unlock()
	if len(reported) != xferQ {
		t.Errorf("d reported %d partitions, want all %d (those needing nothing too)", len(reported), xferQ)
	}
}

// TestTransferRF1NeedsCurrentFirst: a tenant with RF 1 is pulled from
// current[0] alone; while that node is down the partition is not reported
// done, although the other current owners answer.
func TestTransferRF1NeedsCurrentFirst(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b")
	f := newFakeCoord(t, s, m1, true)
	f.serveTenants(t, map[string]int{"r1": 1, "r2": 2})
	m2 := retarget(t, m1, "a", "b", "c")
	// The partitions where c becomes target[0] and a is current[0] need a,
	// which never starts: they must stay unreported; the others flip.
	var blocked []uint32
	for p := range uint32(xferQ) {
		if m2.Target(p, nil)[0] == "c" && m2.Owners(p, nil)[0] == "a" {
			blocked = append(blocked, p)
		}
	}
	if len(blocked) == 0 {
		t.Fatal("no partition where c takes over RF 1 from a")
	}
	startXfer(t, s, Config{NodeID: "b", DataDir: t.TempDir()}, func(e *engine) { ownKeys(t, e, "b", "r1", 2); ownKeys(t, e, "b", "r2", 2) })
	f.set(m2)
	c := startXfer(t, s, Config{NodeID: "c", DataDir: t.TempDir(), MapPoll: 200 * time.Millisecond}, nil)
	waitFor(t, 30*time.Second, "every partition but those needing a to flip", func() bool {
		return moving(f.current()) <= len(blocked)
	})
	time.Sleep(1500 * time.Millisecond) // another round and report tick
	for _, p := range blocked {
		if !f.current().Moving(p) {
			t.Errorf("partition %d flipped without its RF-1 tenant's only source", p)
		}
	}
	if st := c.TransferStatus(); st == nil || st.PartitionsDone != st.PartitionsTotal-len(blocked) {
		t.Errorf("status %+v, want %d partitions left", st, len(blocked))
	}
}

// TestTransferTenantCreatedDuringPlan: a tenant the list did not name
// when the plan started (created meanwhile: a coordinator that still
// routes by the old map may have written it to a source before the source
// installed the new one) is pulled too: once a source answered at the
// plan's version the list is asked for again, and the partitions already
// pulled from it, and those needing nothing, are checked against it.
func TestTransferTenantCreatedDuringPlan(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	asked := f.serveTenants(t, map[string]int{"r3": 3}, map[string]int{"r3": 3, "late": 3})
	for _, id := range []string{"a", "b", "c"} {
		startXfer(t, s, Config{NodeID: id, DataDir: t.TempDir()}, func(e *engine) {
			ownKeys(t, e, id, "r3", 4)
			ownKeys(t, e, id, "late", 4)
		})
	}
	m2 := retarget(t, m1, "a", "b", "c", "d")
	f.set(m2)
	d := startXfer(t, s, Config{NodeID: "d", DataDir: t.TempDir(), MapPoll: 200 * time.Millisecond}, nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	for p := range uint32(xferQ) {
		tgt := m2.Target(p, nil)
		got := partRecords(t, d.eng, p)
		for i, k := range keysIn("late", p, xferQ, 12) {
			want := slices.Contains(tgt[:3], "d") && slices.Contains(takenFrom(m2, p, 3), ownedBy(i, "a", "b", "c"))
			if _, has := got["late\x00"+k]; has != want {
				t.Errorf("partition %d (target %v): d holds late/%s: %v, want %v", p, tgt, k, has, want)
			}
		}
	}
	// Asked at the plan start and again once per source, not per partition.
	if n := asked.Load(); n < 2 || n > 8 {
		t.Errorf("the tenant list was asked for %d times", n)
	}
}

// TestScanTenantFilter: a scan with a tenant filter returns exactly those
// tenants' records, in order, across pages of any size, over NATS; a
// filter that is not sorted and distinct is refused.
func TestScanTenantFilter(t *testing.T) {
	s := natstest.RunServer(t)
	tenants := []string{"a", "a-b", "b", "c", "d"}
	var all []string // tenant 0x00 key, in scan order
	startXfer(t, s, Config{NodeID: "a", DataDir: t.TempDir()}, func(e *engine) {
		var ws []subjects.NodeWrite
		for _, tn := range tenants {
			for _, k := range keysIn(tn, xferPart, xferQ, 7) {
				ws = append(ws, subjects.NodeWrite{Tenant: tn, Key: k, LWW: version(3, "c1", tn+k)})
				all = append(all, tn+"\x00"+k)
			}
			// and records of other partitions, which no scan returns
			ws = append(ws, subjects.NodeWrite{Tenant: tn, Key: keysIn(tn, xferPart+1, xferQ, 1)[0], LWW: version(3, "c1", "x")})
		}
		apply(t, e, ws)
	})
	slices.Sort(all)
	rc, err := replica.New(natstest.Connect(t, s), replica.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	scan := func(filter []string, limit int, cursor []byte) ([]string, error) {
		var out []string
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			rep, _, err := rc.ScanPartition(ctx, "a", subjects.PartitionScan{Partitions: xferQ, Partition: xferPart, Cursor: cursor, Limit: limit, Tenants: filter})
			cancel()
			if err != nil {
				return nil, err
			}
			for _, r := range rep.Records {
				out = append(out, r.Tenant+"\x00"+r.Key)
			}
			if rep.Cursor == nil {
				return out, nil
			}
			cursor = rep.Cursor
		}
	}
	for _, filter := range [][]string{nil, {"a"}, {"a-b", "c"}, {"a", "d"}, {"b", "zz"}, {"nobody"}} {
		var want []string
		for _, k := range all {
			if len(filter) == 0 || slices.Contains(filter, k[:strings.IndexByte(k, 0)]) {
				want = append(want, k)
			}
		}
		for _, limit := range []int{1, 3, 7, 1000} {
			got, err := scan(filter, limit, nil)
			if err != nil || !slices.Equal(got, want) {
				t.Errorf("filter %v, pages of %d: %q (%v), want %q", filter, limit, got, err, want)
			}
		}
	}
	// A cursor from another filter resumes at the next requested range.
	mid := []byte("c\x00" + keysIn("c", xferPart, xferQ, 7)[3])
	got, err := scan([]string{"a", "d"}, 2, mid)
	if err != nil || len(got) != 7 || !strings.HasPrefix(got[0], "d\x00") {
		t.Errorf("filter [a d] after a cursor in c: %q, %v", got, err)
	}
	for _, bad := range [][]string{{"b", "a"}, {"a", "a"}, {"admin"}, {""}} {
		if _, err := scan(bad, 10, nil); !errors.Is(err, &subjects.Error{Kind: subjects.KindInvalid}) {
			t.Errorf("filter %q: %v, want invalid", bad, err)
		}
	}
}

// TestPullPlan: the pure choice of tenants and sources.
func TestPullPlan(t *testing.T) {
	m := retarget(t, claim(t, nil, "a", "b", "c"), "a", "b", "c", "d")
	rf := map[string]int{"x": 3, "y": 1, "w": 2}
	for p := range uint32(xferQ) {
		cur, tgt := m.Owners(p, nil), m.Target(p, nil)
		srcs, needed := pullPlan(m, p, "d", rf)
		var wantNeeded []string
		for _, tn := range []string{"w", "x", "y"} {
			r := rf[tn]
			if slices.Contains(tgt[:r], "d") && !slices.Contains(cur[:r], "d") {
				wantNeeded = append(wantNeeded, tn)
			}
		}
		if !slices.Equal(needed, wantNeeded) {
			t.Errorf("partition %d: needed %v, want %v", p, needed, wantNeeded)
		}
		for _, sc := range srcs {
			i := slices.Index(cur, sc.node)
			for _, tn := range sc.tenants {
				if i < 0 || i >= rf[tn] || !slices.Contains(wantNeeded, tn) {
					t.Errorf("partition %d: %s pulled from %s (position %d)", p, tn, sc.node, i)
				}
			}
		}
		all, none := pullPlan(m, p, "d", nil)
		if len(all) != 3 || none != nil || all[0].tenants != nil {
			t.Errorf("partition %d with unknown RFs: %+v %v", p, all, none)
		}
	}
	if srcs, needed := pullPlan(m, 0, "d", map[string]int{}); srcs != nil || needed != nil {
		t.Errorf("no tenants: %+v %v", srcs, needed)
	}
}

// TestLeavers: the owners a receiver takes the place of, per tenant, for
// joins of one and two nodes, a drain and a tenant of RF 1: each is a
// current owner within the RF that is not a target owner there, there are
// as many as receivers, and a row shorter than the RF has none.
func TestLeavers(t *testing.T) {
	rfs := map[string]int{"r1": 1, "r3": 3}
	both := []string{"r1", "r3"}
	m3 := claim(t, nil, "a", "b", "c")
	two := 0
	for _, tc := range []struct {
		name string
		m    *ring.Map
	}{
		{"3 to 4", retarget(t, m3, "a", "b", "c", "d")},
		{"3 to 5", retarget(t, m3, "a", "b", "c", "d", "e")},
		{"drain c", retarget(t, retarget(t, m3, "a", "b", "c", "d").TargetMap(), "a", "b", "d")},
	} {
		moved := 0
		for p := range uint32(xferQ) {
			cur, tgt := tc.m.Owners(p, nil), tc.m.Target(p, nil)
			lv := leavers(tc.m, p, rfs, both)
			for _, tn := range both {
				r := rfs[tn]
				var in, out []string
				for _, o := range tgt[:r] {
					if !slices.Contains(cur[:r], o) {
						in = append(in, o)
					}
				}
				for _, o := range cur[:r] {
					if !slices.Contains(tgt[:r], o) {
						out = append(out, o)
					}
				}
				if !slices.Equal(lv[tn], out) || len(out) != len(in) {
					t.Errorf("%s, partition %d, %s (current %v, target %v): leavers %v, want %v for receivers %v", tc.name, p, tn, cur, tgt, lv[tn], out, in)
				}
				moved += len(out)
				if len(out) == 2 {
					two++
				}
			}
			if lv != nil && len(lv) == 0 {
				t.Errorf("%s, partition %d: an empty, not nil, map", tc.name, p)
			}
		}
		if moved == 0 {
			t.Errorf("%s moves nothing: the case tests nothing", tc.name)
		}
	}
	if two == 0 {
		t.Error("no partition of the two-node join has two leavers")
	}
	// A row shorter than the RF (2 nodes, RF 3, growing to 3) has none,
	// and an unknown tenant list has none.
	m2 := retarget(t, claim(t, nil, "a", "b"), "a", "b", "c")
	for p := range uint32(xferQ) {
		if lv := leavers(m2, p, map[string]int{"r3": 3}, []string{"r3"}); lv != nil {
			t.Errorf("partition %d of a row shorter than RF 3: leavers %v", p, lv)
		}
		if lv := leavers(m3, p, nil, both); lv != nil {
			t.Errorf("partition %d, tenants unknown: leavers %v", p, lv)
		}
	}
}

// TestTransferBytesScoped measures what a node joining 3 nodes pulls, with
// every key of an RF-3 tenant on all three: every partition from every
// owner when the tenants' RFs are unknown (what the transfer loop did
// before tenant scoping), against only the partitions where the new node
// is among the tenant's first 3 target owners, pulled whole from one
// owner and reconciled with the others by a tree exchange. It prints
// both (docs/PERFORMANCE.md) and checks the scoped figure is the share of
// keys in those partitions, once.
func TestTransferBytesScoped(t *testing.T) {
	const keys, valueBytes = 20000, 100
	run := func(scoped bool) (bytes, recs int64, share float64) {
		s := natstest.RunServer(t)
		m1 := claim(t, nil, "a", "b", "c")
		f := newFakeCoord(t, s, m1, true)
		if scoped {
			f.serveTenants(t, map[string]int{"r3": 3})
		}
		var ws []subjects.NodeWrite
		for i := range keys {
			ws = append(ws, subjects.NodeWrite{Tenant: "r3", Key: fmt.Sprintf("user%08d", i), LWW: version(uint64(i+1), "c1", strings.Repeat("v", valueBytes))})
		}
		for _, id := range []string{"a", "b", "c"} {
			startXfer(t, s, Config{NodeID: id, DataDir: t.TempDir()}, func(e *engine) { apply(t, e, ws) })
		}
		m2 := retarget(t, m1, "a", "b", "c", "d")
		in := 0
		for _, w := range ws {
			if p := ring.Partition(w.Tenant, w.Key, xferQ); slices.Contains(m2.Target(p, nil)[:3], "d") {
				in++
			}
		}
		f.set(m2)
		d := startXfer(t, s, Config{NodeID: "d", DataDir: t.TempDir(), TransferRate: Unlimited, MapPoll: 200 * time.Millisecond}, nil)
		start := time.Now()
		waitFor(t, 60*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
		st := d.TransferStatus()
		t.Logf("scoped %v: d pulled %d records, %d bytes in %v", scoped, st.Keys, st.Bytes, time.Since(start).Round(time.Millisecond))
		return st.Bytes, st.Keys, float64(in) / keys
	}
	allBytes, allRecs := func() (int64, int64) { b, r, _ := run(false); return b, r }()
	scopedBytes, scopedRecs, share := run(true)
	if allRecs != 3*keys {
		t.Errorf("unscoped: %d records pulled, want every key from each of 3 owners (%d)", allRecs, 3*keys)
	}
	// Scoped, each partition is pulled whole from one owner and
	// reconciled with the other two by a tree exchange, which fetches
	// nothing here: the three hold the same records.
	if want := int64(float64(keys) * share); scopedRecs != want {
		t.Errorf("scoped: %d records pulled, want the %.3f of the keys d serves, once (%d)", scopedRecs, share, want)
	}
	t.Logf("%d keys of %d-byte values, RF 3, 3 -> 4 nodes, Q %d: before %d bytes (%.2f× the data), after %d bytes (%.2f×); d serves %.3f of the keys",
		keys, valueBytes, xferQ, allBytes, 3.0, scopedBytes, 3*float64(scopedRecs)/float64(allRecs), share)
}

// TestTransferNeedsQuorumIntersection: a tenant of RF 3 whose leaver (the
// owner the receiver takes the place of) is down is covered only once
// pulled from 2 of its 3 current owners (any write quorum of 2 meets
// them). A write acknowledged by b and c (a missed it) is not lost when b
// and c fail through their tries: the partitions whose leaver is b or c
// are not reported done from a alone, and once b comes back the receiver
// holds the write. Those whose leaver is a flip from a alone: b and c stay
// owners there, holding the write.
func TestTransferNeedsQuorumIntersection(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	rfs := map[string]int{"r3": 3}
	f.serveTenants(t, rfs)
	m2 := retarget(t, m1, "a", "b", "c", "d")
	var needy, fromA []uint32 // needy: the leaver is b or c
	w := map[uint32]string{}  // partition → the key only b (and c) hold
	for p := range uint32(xferQ) {
		if _, needed := pullPlan(m2, p, "d", rfs); len(needed) > 0 {
			if slices.Equal(takenFrom(m2, p, 3), []string{"a"}) {
				fromA = append(fromA, p)
				continue
			}
			needy = append(needy, p)
			w[p] = keysIn("r3", p, xferQ, 1)[0]
		}
	}
	if len(needy) == 0 || len(fromA) == 0 || len(needy)+len(fromA) == xferQ {
		t.Fatalf("d needs r3 in %d+%d of %d partitions, taking it from a alone in %d", len(needy), len(fromA), xferQ, len(fromA))
	}
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	startXfer(t, s, cfg("a"), func(e *engine) { ownKeys(t, e, "a", "r3", 2) })
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	// b and c are down: every partition that needs nothing flips, and
	// those that need r3 stay, a alone being one source of the two.
	waitFor(t, 30*time.Second, "the partitions that need no tenant to flip", func() bool {
		return moving(f.current()) <= len(needy)
	})
	time.Sleep(2500 * time.Millisecond) // the sources' tries, a report tick
	for _, p := range needy {
		if !f.current().Moving(p) {
			t.Fatalf("partition %d flipped with r3 pulled from a alone", p)
		}
	}
	for _, p := range fromA {
		if f.current().Moving(p) {
			t.Fatalf("partition %d (d takes a's place) still moves with a up", p)
		}
	}
	startXfer(t, s, cfg("b"), func(e *engine) {
		var ws []subjects.NodeWrite
		for _, p := range needy {
			ws = append(ws, subjects.NodeWrite{Tenant: "r3", Key: w[p], LWW: version(9, "c1", "acked by b and c")})
		}
		apply(t, e, ws)
	})
	waitFor(t, 60*time.Second, "every partition to flip once b is back", func() bool { return moving(f.current()) == 0 })
	for _, p := range needy {
		if rec, err := d.eng.read("r3", w[p]); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "acked by b and c" {
			t.Fatalf("d lacks the write b and c acknowledged in partition %d: %+v %v", p, rec, err)
		}
	}
}

// TestTransferBarrierWithoutTenants: in a cluster with no tenant yet every
// partition needs nothing, yet the receiver first confirms each source
// with one barrier scan at the plan's map version (a record at most), and
// then asks for the tenant list again: a tenant created meanwhile, written
// to the sources by a coordinator still at the old map, is pulled.
func TestTransferBarrierWithoutTenants(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true)
	asked := f.serveTenants(t, map[string]int{}, map[string]int{"late": 3})
	spy := spyScans(t, s)
	for _, id := range []string{"a", "b", "c"} {
		startXfer(t, s, Config{NodeID: id, DataDir: t.TempDir()}, func(e *engine) { ownKeys(t, e, id, "late", 4) })
	}
	m2 := retarget(t, m1, "a", "b", "c", "d")
	f.set(m2)
	d := startXfer(t, s, Config{NodeID: "d", DataDir: t.TempDir(), MapPoll: 200 * time.Millisecond}, nil)
	waitFor(t, 30*time.Second, "every partition to flip", func() bool { return moving(f.current()) == 0 })
	for p := range uint32(xferQ) {
		tgt := m2.Target(p, nil)
		got := partRecords(t, d.eng, p)
		for i, k := range keysIn("late", p, xferQ, 12) {
			want := slices.Contains(tgt[:3], "d") && slices.Contains(takenFrom(m2, p, 3), ownedBy(i, "a", "b", "c"))
			if _, has := got["late\x00"+k]; has != want {
				t.Errorf("partition %d (target %v): d holds late/%s: %v, want %v", p, tgt, k, has, want)
			}
		}
	}
	if n := asked.Load(); n < 2 {
		t.Errorf("the tenant list was asked for %d times, want again after the barriers", n)
	}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	for _, src := range []string{"a", "b", "c"} {
		barriers := 0
		for _, sc := range spy.scans[src] {
			if sc.Limit == 1 && sc.MapVersion == m2.Version() {
				barriers++
			}
		}
		if barriers == 0 || barriers > 2 {
			t.Errorf("%s answered %d barrier scans, want one (a retry at most)", src, barriers)
		}
	}
}

// TestCoverage: a tenant of RF r is received from r - (r/2+1) + 1 of its
// current owners (every write quorum meets them), at most the owners
// there are.
func TestCoverage(t *testing.T) {
	for _, tc := range []struct{ rf, members, want int }{
		{1, 1, 1}, {2, 2, 1}, {3, 3, 2}, {4, 4, 2}, {5, 5, 3}, {7, 7, 4},
		{3, 2, 2}, {5, 3, 3}, {0, 0, 0},
	} {
		if got := coverage(tc.rf, tc.members); got != tc.want {
			t.Errorf("coverage(%d, %d) = %d, want %d", tc.rf, tc.members, got, tc.want)
		}
	}
}

// TestTransferUnknownTenantsCoversEveryRF: with no tenant list (no
// coordinator answers it) a tenant of any RF up to the row's length may
// exist. A partition whose first current owner (c) is down is not
// reported done from the other two, although they are ceil(3/2) of its 3
// owners: an RF-1 tenant's writes are on c alone. Once c is back the
// partitions flip and the receiver holds c's writes.
func TestTransferUnknownTenantsCoversEveryRF(t *testing.T) {
	s := natstest.RunServer(t)
	m1 := claim(t, nil, "a", "b", "c")
	f := newFakeCoord(t, s, m1, true) // and no tenant list: RFs unknown
	m2 := retarget(t, m1, "a", "b", "c", "d")
	var cFirst []uint32
	w := map[uint32]string{} // partition → the RF-1 key only c holds
	for p := range uint32(xferQ) {
		if m2.Owners(p, nil)[0] == "c" && slices.Contains(m2.Receivers(p, nil), "d") {
			cFirst = append(cFirst, p)
			w[p] = keysIn("r1", p, xferQ, 1)[0]
		}
	}
	if len(cFirst) == 0 {
		t.Fatal("c is first in no partition d receives")
	}
	fast := Config{Heartbeat: 100 * time.Millisecond, MapPoll: 200 * time.Millisecond}
	cfg := func(id string) Config { c := fast; c.NodeID, c.DataDir = id, t.TempDir(); return c }
	startXfer(t, s, cfg("a"), nil)
	startXfer(t, s, cfg("b"), nil)
	f.set(m2)
	d := startXfer(t, s, cfg("d"), nil)
	waitFor(t, 30*time.Second, "the partitions c is not first in to flip", func() bool {
		return moving(f.current()) <= len(cFirst)
	})
	time.Sleep(2500 * time.Millisecond) // c's tries, a report tick
	for _, p := range cFirst {
		if !f.current().Moving(p) {
			t.Fatalf("partition %d (current %v) flipped with its first owner c down and no tenant list", p, m2.Owners(p, nil))
		}
	}
	startXfer(t, s, cfg("c"), func(e *engine) {
		var ws []subjects.NodeWrite
		for _, p := range cFirst {
			ws = append(ws, subjects.NodeWrite{Tenant: "r1", Key: w[p], LWW: version(9, "c1", "on c alone")})
		}
		apply(t, e, ws)
	})
	waitFor(t, 60*time.Second, "every partition to flip once c is back", func() bool { return moving(f.current()) == 0 })
	for _, p := range cFirst {
		if rec, err := d.eng.read("r1", w[p]); err != nil || rec.LWW == nil || string(rec.LWW.Value) != "on c alone" {
			t.Fatalf("d lacks the RF-1 write c held in partition %d: %+v %v", p, rec, err)
		}
	}
}
