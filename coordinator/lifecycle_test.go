package coordinator_test

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

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/pgtest"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// The lifecycle tests run coordinators (two, sharing the real JetStream
// KV metadata store) without storage processes: the test registers nodes
// through the admin API, as a storage node does, and plays the receivers'
// part by sending their transfer reports, so each rule of the lifecycle is
// driven step by step.

const lifecycleHeartbeat = time.Second

type lifecycle struct {
	t     *testing.T
	c     *devcluster.Cluster
	nc    *nats.Conn
	admin *client.Admin

	// regMu orders registrations: each reads its protocol and lands
	// before the next reads, so a heartbeat that read a protocol before
	// register changed it cannot store the old one after it (a downgrade
	// undone, or an upgrade: TestLifecycleTransferWaitsForProtocol2 met
	// it under CI load).
	regMu sync.Mutex

	mu    sync.Mutex
	alive map[string]bool // nodes the heartbeat loop keeps registering
	// xfer is each node's last reported transfer progress, which its
	// heartbeat carries, as a storage node's does (a registration stores
	// the progress it carries: one without it clears the reported one).
	xfer map[string]*subjects.TransferStatus
	// holding marks the nodes whose handoff has not finished: their
	// heartbeats do not report it. The others report it, as a storage
	// node holding nothing does, while the map names them nowhere.
	holding map[string]bool
	// proto is the node protocol each node registered with: its
	// heartbeats carry the same, as a process of that build would.
	proto map[string]int
}

func startLifecycle(t *testing.T) *lifecycle { return startLifecycleOn(t, "") }

// startLifecycleOn starts the coordinators on metadata store md ("" for
// JetStream KV, or a postgres:// URL).
func startLifecycleOn(t *testing.T, md string) *lifecycle {
	t.Helper()
	cfg := coordinator.Config{RingRefresh: time.Hour, NodeHeartbeat: lifecycleHeartbeat}
	c := startClusterWith(t, devcluster.Config{Nodes: -1, Coordinators: 2, DefaultTenant: "-", Coordinator: cfg, Metadata: md})
	nc := connect(t, c)
	l := &lifecycle{t: t, c: c, nc: nc, admin: client.NewAdmin(nc), alive: map[string]bool{}, xfer: map[string]*subjects.TransferStatus{},
		holding: map[string]bool{}, proto: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go l.heartbeats(ctx, done)
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// heartbeats re-registers the alive nodes, as their processes would.
func (l *lifecycle) heartbeats(ctx context.Context, done chan struct{}) {
	defer close(done)
	tk := time.NewTicker(lifecycleHeartbeat / 4)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		l.mu.Lock()
		ids := make([]string, 0, len(l.alive))
		for id := range l.alive {
			ids = append(ids, id)
		}
		l.mu.Unlock()
		for _, id := range ids {
			if err := l.heartbeat(ctx, id); err != nil && ctx.Err() == nil && !errors.Is(err, client.ErrConflict) {
				l.t.Logf("heartbeat of %s: %v", id, err)
			}
		}
	}
}

// heartbeat sends one heartbeat of id, with its last reported progress
// and, unless id is holding, its handoff done while the map names it
// nowhere.
func (l *lifecycle) heartbeat(ctx context.Context, id string) error {
	l.regMu.Lock()
	defer l.regMu.Unlock()
	l.mu.Lock()
	var st *subjects.TransferStatus
	if x := l.xfer[id]; x != nil {
		c := *x
		st = &c
	}
	holding := l.holding[id]
	proto, ok := l.proto[id]
	if !ok {
		proto = subjects.NodeProtocolVersion
	}
	l.mu.Unlock()
	if !holding {
		if m, err := l.admin.Placement(ctx); err == nil && m.Partitions() > 0 && !m.HasNode(id) {
			if st == nil {
				st = &subjects.TransferStatus{}
			}
			st.HandoffDone = m.Version()
		}
	}
	req := subjects.NodeRequest{NodeID: id, Epoch: 1, Protocol: proto, Transfer: st}
	_, err := client.NewAdmin(l.nc).Register(ctx, req)
	return err
}

// report sends a transfer report, and keeps its progress for id's
// heartbeats.
func (l *lifecycle) report(ctx context.Context, rep subjects.TransferReport) (*subjects.PlacementReply, error) {
	if rep.Status != nil {
		l.mu.Lock()
		l.xfer[rep.NodeID] = rep.Status
		l.mu.Unlock()
	}
	return l.admin.ReportTransfer(ctx, rep)
}

// register registers node id (NodeProtocolVersion unless proto says otherwise) and
// keeps it heartbeating.
func (l *lifecycle) register(id string, hold bool, proto ...int) *subjects.Node {
	l.t.Helper()
	p := subjects.NodeProtocolVersion
	if len(proto) > 0 {
		p = proto[0]
	}
	// The protocol is kept before the registration, and regMu keeps a
	// heartbeat from reading it before and registering after.
	l.regMu.Lock()
	defer l.regMu.Unlock()
	l.mu.Lock()
	l.proto[id] = p
	l.mu.Unlock()
	n, err := l.admin.Register(ctxT(l.t), subjects.NodeRequest{NodeID: id, Epoch: 1, Protocol: p, Hold: hold})
	if err != nil {
		l.t.Fatalf("register %s: %v", id, err)
	}
	l.setAlive(id, true)
	return n
}

func (l *lifecycle) setAlive(id string, on bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if on {
		l.alive[id] = true
	} else {
		delete(l.alive, id)
	}
}

// kill stops id's heartbeats and waits until node list shows it down.
func (l *lifecycle) kill(id string) {
	l.t.Helper()
	l.setAlive(id, false)
	waitFor(l.t, 10*time.Second, func() error {
		if s := l.status(id); s != "down" {
			return fmt.Errorf("node %s is %s, not down yet", id, s)
		}
		return nil
	})
}

func (l *lifecycle) placement() *ring.Map {
	l.t.Helper()
	m, err := l.admin.Placement(ctxT(l.t))
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

// statuses returns node id → status as node list shows it.
func (l *lifecycle) statuses() map[string]string {
	l.t.Helper()
	ns, err := l.admin.ListNodes(ctxT(l.t))
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range ns {
		out[n.ID] = n.Status
	}
	return out
}

func (l *lifecycle) status(id string) string { return l.statuses()[id] }

func (l *lifecycle) wantStatuses(want map[string]string) {
	l.t.Helper()
	waitFor(l.t, 10*time.Second, func() error {
		if got := l.statuses(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("statuses %v, want %v", got, want)
		}
		return nil
	})
}

// transfer plays the receivers: every node of ids reports every partition
// it receives in the stored map as done, until none moves.
func (l *lifecycle) transfer(ids ...string) *ring.Map {
	l.t.Helper()
	for range 20 {
		m := l.placement()
		moving := false
		for p := range uint32(m.Partitions()) {
			moving = moving || m.Moving(p)
		}
		if !moving {
			return m
		}
		for _, id := range ids {
			ps := m.Receiving(id, nil)
			if len(ps) == 0 {
				continue
			}
			st := &subjects.TransferStatus{MapVersion: m.Version(), PartitionsDone: len(ps), PartitionsTotal: len(ps), Bytes: 1000, Updated: time.Now()}
			if _, err := l.report(ctxT(l.t), subjects.TransferReport{NodeID: id, MapVersion: m.Version(), Done: ps, Status: st}); err != nil {
				l.t.Fatalf("transfer report of %s: %v", id, err)
			}
		}
	}
	l.t.Fatalf("partitions still move after 20 rounds of reports")
	return nil
}

func (l *lifecycle) tenant(rf int, name ...string) {
	l.t.Helper()
	id := "t"
	if len(name) > 0 {
		id = name[0]
	}
	if _, err := l.admin.CreateTenant(ctxT(l.t), id, client.TenantSpec{ReplicationFactor: &rf}); err != nil {
		l.t.Fatal(err)
	}
}

// checkRows fails unless every current and target row of m has at least
// rf distinct owners.
func checkRows(t *testing.T, m *ring.Map, rf int) {
	t.Helper()
	for p := range uint32(m.Partitions()) {
		if cur := m.Owners(p, nil); len(cur) < rf {
			t.Fatalf("map version %d: partition %d has %d current owners %v, want at least %d", m.Version(), p, len(cur), cur, rf)
		}
		if tgt := m.Target(p, nil); len(tgt) < rf {
			t.Fatalf("map version %d: partition %d has %d target owners %v, want at least %d", m.Version(), p, len(tgt), tgt, rf)
		}
	}
}

// TestLifecycleGrowAndShrink walks a cluster from 3 to 5 nodes and back:
// the first node is active at once; every later one is joining until it
// reported its partitions, then active; a drained node is leaving until
// the map names it nowhere, then left, and only then removable.
func TestLifecycleGrowAndShrink(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	if n := l.register("n1", false); n.Status != "active" {
		t.Fatalf("the first node of an empty cluster registered %s, want active at once", n.Status)
	}
	l.tenant(1, "first") // from now on the cluster may hold data: joins stream
	for _, id := range []string{"n2", "n3"} {
		if n := l.register(id, false); n.Status != "joining" {
			t.Fatalf("%s registered %s, want joining", id, n.Status)
		}
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "joining", "n3": "joining"})
	l.transfer("n1", "n2", "n3")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active"})
	l.tenant(3)

	// Grow to 5: the new nodes receive, and node list shows their share
	// and progress.
	l.register("n4", false)
	l.register("n5", false)
	m := l.placement()
	if got := m.TargetNodes(); fmt.Sprint(got) != "[n1 n2 n3 n4 n5]" {
		t.Fatalf("target nodes %v", got)
	}
	if got := m.CurrentNodes(); fmt.Sprint(got) != "[n1 n2 n3]" {
		t.Fatalf("current nodes %v before any transfer", got)
	}
	checkRows(t, m, 3)
	ps := m.Receiving("n4", nil)
	if len(ps) == 0 {
		t.Fatal("n4 receives nothing")
	}
	// The background heartbeat of n4 is paused while the progress is
	// checked: one built before the report (no progress yet) but landing
	// after it would clear it (a real node's next heartbeat carries it
	// again; here the list would catch the gap). Waiting one of its ticks
	// lets a heartbeat already in flight land first.
	l.mu.Lock()
	delete(l.alive, "n4")
	l.mu.Unlock()
	time.Sleep(lifecycleHeartbeat / 2)
	st := &subjects.TransferStatus{MapVersion: m.Version(), PartitionsDone: 1, PartitionsTotal: len(ps), Bytes: 4096, Keys: 7, RateBytes: 2048, Updated: time.Now()}
	after, err := l.report(ctx, subjects.TransferReport{NodeID: "n4", MapVersion: m.Version(), Done: ps[:1], Status: st})
	if err != nil {
		t.Fatal(err)
	}
	if after.Version != m.Version()+1 {
		t.Fatalf("a transfer report answered map version %d, want %d", after.Version, m.Version()+1)
	}
	// A heartbeat comes between the report and the node list (on a loaded
	// machine one often did); the progress it carries is what list shows.
	if err := l.heartbeat(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	list, err := l.admin.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range list {
		if n.ID == "n4" && (n.Status != "joining" || n.Transfer == nil || n.Transfer.PartitionsDone != 1 || n.Transfer.Bytes != 4096 || n.Protocol != subjects.NodeProtocolVersion) {
			t.Fatalf("node list entry of n4: %+v transfer %+v", n, n.Transfer)
		}
	}
	l.mu.Lock()
	l.alive["n4"] = true
	l.mu.Unlock()
	// Removing or re-draining mid-transfer: remove of a joining node is
	// refused and changes nothing.
	before := l.placement().Version()
	_, err = l.admin.Remove(ctx, "n4", false)
	assertKind(t, err, 409, subjects.KindNodeActive)
	if v := l.placement().Version(); v != before {
		t.Fatalf("a refused remove moved the map from %d to %d", before, v)
	}
	m = l.transfer("n1", "n2", "n3", "n4", "n5")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "n4": "active", "n5": "active"})
	if got := m.CurrentNodes(); fmt.Sprint(got) != "[n1 n2 n3 n4 n5]" {
		t.Fatalf("current nodes %v after the transfers", got)
	}

	// Shrink back: drain n4 and n5.
	for _, id := range []string{"n4", "n5"} {
		n, err := l.admin.DrainNode(ctx, id)
		if err != nil || n.Status != "leaving" {
			t.Fatalf("drain %s: %+v %v", id, n, err)
		}
	}
	// Drain again: idempotent.
	if n, err := l.admin.DrainNode(ctx, "n4"); err != nil || n.Status != "leaving" {
		t.Fatalf("second drain of n4: %+v %v", n, err)
	}
	m = l.placement()
	checkRows(t, m, 3)
	if !m.HasNode("n4") {
		t.Fatal("a leaving node left the current rows before its partitions streamed away")
	}
	l.transfer("n1", "n2", "n3")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "n4": "left", "n5": "left"})
	if m := l.placement(); m.HasNode("n4") || m.HasNode("n5") {
		t.Fatalf("the map still names a left node: %v", m.Nodes())
	}
	if _, err := l.admin.Remove(ctx, "n4", false); err != nil {
		t.Fatalf("remove of a left node: %v", err)
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "n5": "left"})
}

// snapshot is what a refused admin call must leave unchanged.
func (l *lifecycle) snapshot() string {
	l.t.Helper()
	m := l.placement()
	return fmt.Sprintf("map %d %v %v", m.Version(), m.TargetNodes(), l.statuses())
}

// TestLifecycleBadInput: every bad request is a clear 4xx and changes
// nothing: neither the placement map nor a node status.
func TestLifecycleBadInput(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3")
	l.tenant(3)
	l.register("spare", true)
	l.register("gone", true)
	if _, err := l.admin.DrainNode(ctx, "gone"); err != nil { // standby: left at once
		t.Fatal(err)
	}
	l.setAlive("gone", false)
	if err := l.admin.RemoveNode(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "spare": "standby"})
	want := l.snapshot()

	cases := []struct {
		name       string
		call       func() error
		code       int
		kind, text string
	}{
		{"drain of an unknown node", func() error { _, err := l.admin.DrainNode(ctx, "nope"); return err }, 404, subjects.KindNoSuchNode, "nope"},
		{"drain below a tenant's RF", func() error { _, err := l.admin.DrainNode(ctx, "n1"); return err }, 409, subjects.KindTooFewNodes, "replication_factor 3"},
		{"drain with a bad id", func() error { _, err := l.admin.DrainNode(ctx, "Bad Id"); return err }, 400, subjects.KindInvalid, ""},
		{"remove of an active node", func() error { return l.admin.RemoveNode(ctx, "n2") }, 409, subjects.KindNodeActive, "active"},
		{"remove --force of a live node", func() error { _, err := l.admin.Remove(ctx, "n2", true); return err }, 409, subjects.KindNodeLive, "down"},
		{"remove of an unknown node", func() error { return l.admin.RemoveNode(ctx, "nope") }, 404, subjects.KindNoSuchNode, ""},
		{"join of an unknown id", func() error { _, err := l.admin.Join(ctx, "nope"); return err }, 404, subjects.KindNoSuchNode, ""},
		{"replace of a live node", func() error { _, err := l.admin.Replace(ctx, "n1", "spare"); return err }, 409, subjects.KindNodeLive, "down"},
		{"replace onto an id in use", func() error { _, err := l.admin.Replace(ctx, "n1", "n2"); return err }, 409, subjects.KindNodeLive, ""},
		{"replace onto itself", func() error { _, err := l.admin.Replace(ctx, "n1", "n1"); return err }, 400, subjects.KindInvalid, ""},
		{"replace onto an unregistered id", func() error { _, err := l.admin.Replace(ctx, "n1", "nope"); return err }, 404, subjects.KindNoSuchNode, "--join=false"},
		{"replace of an unknown node", func() error { _, err := l.admin.Replace(ctx, "nope", "spare"); return err }, 404, subjects.KindNoSuchNode, ""},
		{"register of a removed id", func() error {
			_, err := l.admin.Register(ctx, subjects.NodeRequest{NodeID: "gone", Epoch: 1, Protocol: 2})
			return err
		}, 409, subjects.KindNodeRemoved, "join"},
		{"transfer report without a map version", func() error {
			_, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "n1", Done: []uint32{1}})
			return err
		}, 400, subjects.KindInvalid, "map_version"},
		{"transfer report of a partition out of range", func() error {
			_, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "n1", MapVersion: 1, Done: []uint32{1 << 20}})
			return err
		}, 400, subjects.KindInvalid, "out of range"},
		{"transfer report of an unknown node", func() error {
			_, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "nope", MapVersion: 1, Done: []uint32{1}})
			return err
		}, 404, subjects.KindNoSuchNode, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			assertKind(t, err, tc.code, tc.kind)
			if !strings.Contains(err.Error(), tc.text) {
				t.Errorf("error %q does not say %q", err, tc.text)
			}
			if got := l.snapshot(); got != want {
				t.Fatalf("a refused call changed the cluster:\n got %s\nwant %s", got, want)
			}
		})
	}

	// Replace onto a node that is active is refused, even once the dead
	// one is down.
	l.kill("n3")
	want = l.snapshot()
	_, err := l.admin.Replace(ctx, "n3", "n2")
	assertKind(t, err, 409, subjects.KindNodeActive)
	if got := l.snapshot(); got != want {
		t.Fatalf("a refused replace changed the cluster:\n got %s\nwant %s", got, want)
	}
	// A join of a removed id re-admits it (nothing else); it registers as
	// a new, joining node.
	if n, err := l.admin.Join(ctx, "gone"); err != nil || n != nil {
		t.Fatalf("join of a removed id: %+v %v, want a re-admission", n, err)
	}
	if got := l.snapshot(); got != want {
		t.Fatalf("a re-admission changed the cluster:\n got %s\nwant %s", got, want)
	}
}

// TestLifecycleConcurrentDrains: drains through two coordinators at once
// serialise through the map's optimistic locking. With 4 nodes and RF 3
// at most one of two drains succeeds, the other answers too_few_nodes
// with its node's status back; with spare nodes both succeed; a join
// during a drain ends with both in the target. No map ever has a row
// shorter than RF.
func TestLifecycleConcurrentDrains(t *testing.T) { testConcurrentDrains(t, startLifecycle(t)) }

// TestLifecycleConcurrentDrainsPostgres is TestLifecycleConcurrentDrains
// on the PostgreSQL metadata store.
func TestLifecycleConcurrentDrainsPostgres(t *testing.T) {
	testConcurrentDrains(t, startLifecycleOn(t, pgtest.NewDatabase(t)))
}

func testConcurrentDrains(t *testing.T, l *lifecycle) {
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3", "n4")
	l.tenant(3)
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "n4": "active"})

	// Watch every stored map while the drains run.
	stop := make(chan struct{})
	watched := make(chan error, 1)
	go func() {
		var bad error
		defer func() { watched <- bad }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, err := l.admin.Placement(context.Background())
			if err != nil {
				continue
			}
			for p := range uint32(m.Partitions()) {
				if len(m.Owners(p, nil)) < 3 || len(m.Target(p, nil)) < 3 {
					bad = fmt.Errorf("map version %d: partition %d has rows %v / %v", m.Version(), p, m.Owners(p, nil), m.Target(p, nil))
					return
				}
			}
		}
	}()
	drainBoth := func(a, b string) []error {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, id := range []string{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = l.admin.DrainNode(context.WithoutCancel(ctx), id)
			}()
		}
		wg.Wait()
		return errs
	}
	errs := drainBoth("n3", "n4")
	ok := 0
	for i, err := range errs {
		id := []string{"n3", "n4"}[i]
		switch {
		case err == nil:
			ok++
		default:
			assertKind(t, err, 409, subjects.KindTooFewNodes)
			if s := l.status(id); s != "active" {
				t.Fatalf("%s after its refused drain is %s, want active again", id, s)
			}
		}
	}
	if ok > 1 {
		t.Fatalf("both drains succeeded with 4 nodes and RF 3")
	}
	if tn := l.placement().TargetNodes(); len(tn) < 3 {
		t.Fatalf("target nodes %v", tn)
	}

	// With a fifth and sixth node both drains succeed; a join runs during them.
	l.transfer("n1", "n2", "n3", "n4")
	for _, id := range []string{"n3", "n4"} {
		if l.status(id) == "leaving" || l.status(id) == "left" {
			if _, err := l.admin.Join(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.transfer("n1", "n2", "n3", "n4")
	l.register("n5", false)
	l.register("n6", true)
	l.transfer("n1", "n2", "n3", "n4", "n5")
	var wg sync.WaitGroup
	var joinErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, joinErr = l.admin.Join(context.WithoutCancel(ctx), "n6")
	}()
	errs = drainBoth("n3", "n4")
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || joinErr != nil {
		t.Fatalf("drains with spare nodes: %v; join: %v", errs, joinErr)
	}
	m := l.placement()
	if got := m.TargetNodes(); fmt.Sprint(got) != "[n1 n2 n5 n6]" {
		t.Fatalf("target after two drains and a join: %v", got)
	}
	l.transfer("n1", "n2", "n5", "n6")
	close(stop)
	if err := <-watched; err != nil {
		t.Fatal(err)
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "left", "n4": "left", "n5": "active", "n6": "active"})
	// Both coordinators route by the same map.
	waitFor(t, 10*time.Second, func() error {
		final := l.placement()
		for i, co := range l.c.Coordinators() {
			if v := co.Placement().Version(); v != final.Version() {
				return fmt.Errorf("coordinator %d routes by version %d, stored %d", i, v, final.Version())
			}
		}
		return nil
	})
}

// TestLifecycleNoTenantsNoStreaming: before the first tenant no key can
// exist, so nodes that register (a cluster starting) are active at once.
func TestLifecycleNoTenantsNoStreaming(t *testing.T) {
	l := startLifecycle(t)
	for _, id := range []string{"n1", "n2", "n3"} {
		l.register(id, false)
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active"})
	if m := l.placement(); fmt.Sprint(m.CurrentNodes()) != "[n1 n2 n3]" {
		t.Fatalf("current nodes %v", m.CurrentNodes())
	}
	for _, co := range l.c.Coordinators() {
		waitFor(t, 5*time.Second, func() error {
			if n := co.ActiveNodes(); n != 3 {
				return fmt.Errorf("coordinator counts %d active nodes", n)
			}
			return nil
		})
	}
}

// TestLifecycleReplaceAndForceRemove: replace gives exactly a dead node's
// partitions to a standby node, which alone receives; remove --force
// takes a down node out with a warning.
func TestLifecycleReplaceAndForceRemove(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3", "n4", "n5"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3", "n4", "n5")
	l.tenant(3)
	if n := l.register("new", true); n.Status != "standby" {
		t.Fatalf("a held node registered %s, want standby", n.Status)
	}
	if l.placement().HasNode("new") {
		t.Fatal("a standby node got partitions")
	}
	before := l.placement()
	l.kill("n2")
	n, err := l.admin.Replace(ctx, "n2", "new")
	if err != nil || n.Status != "joining" || n.ID != "new" {
		t.Fatalf("replace: %+v %v", n, err)
	}
	m := l.placement()
	var a, b []string
	for p := range uint32(m.Partitions()) {
		a, b = before.Owners(p, a), m.Target(p, b)
		for j := range a {
			want := a[j]
			if want == "n2" {
				want = "new"
			}
			if b[j] != want {
				t.Fatalf("partition %d: target %v from %v; replace must swap n2 for new only", p, b, a)
			}
		}
		if rs := m.Receivers(p, nil); len(rs) > 0 && !slices.Equal(rs, []string{"new"}) {
			t.Fatalf("partition %d has receivers %v, want only new", p, rs)
		}
	}
	l.transfer("new")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "left", "n3": "active", "n4": "active", "n5": "active", "new": "active"})

	// remove --force of a down node.
	l.kill("n5")
	warning, err := l.admin.Remove(ctx, "n5", true)
	if err != nil || !strings.Contains(warning, "lost") {
		t.Fatalf("remove --force: %q %v, want a warning about lost writes", warning, err)
	}
	m = l.placement()
	if slices.Contains(m.TargetNodes(), "n5") {
		t.Fatalf("target still names the force-removed node: %v", m.TargetNodes())
	}
	checkRows(t, m, 3)
	l.transfer("n1", "n3", "n4", "new")
	if m := l.placement(); m.HasNode("n5") {
		t.Fatalf("the map still names n5 after the transfers")
	}
	l.wantStatuses(map[string]string{"n1": "active", "n2": "left", "n3": "active", "n4": "active", "new": "active"})
}

// TestLifecycleProtocolNegotiation: a node of protocol 1 in a cluster
// with data blocks membership changes (409 naming the upgrade) and the
// map stays; once it re-registers with protocol 2, its join proceeds.
func TestLifecycleProtocolNegotiation(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	l.register("n1", false)
	l.register("n2", false)
	l.transfer("n1", "n2")
	l.tenant(1)
	before := l.placement().Version()
	if n := l.register("old", false, 0); n.Status != "joining" {
		t.Fatalf("old node registered %s", n.Status)
	}
	if m := l.placement(); m.Version() != before || m.HasNode("old") {
		t.Fatalf("a protocol-1 node got into the map (version %d, was %d)", m.Version(), before)
	}
	_, err := l.admin.DrainNode(ctx, "n2")
	assertKind(t, err, 409, subjects.KindConflict)
	if !strings.Contains(err.Error(), "upgrade every storage node first") {
		t.Fatalf("refusal %q does not say to upgrade", err)
	}
	for _, co := range l.c.Coordinators() {
		waitFor(t, 5*time.Second, func() error {
			if p := co.NodeProtocol(); p != subjects.NodeProtocolVersion {
				return fmt.Errorf("protocol %d; the map names only protocol-%d nodes", p, subjects.NodeProtocolVersion)
			}
			return nil
		})
	}
	// Upgraded: the same id registers with protocol 2 and joins.
	l.register("old", false)
	if m := l.placement(); !slices.Contains(m.TargetNodes(), "old") {
		t.Fatalf("the upgraded node is not in the target: %v", m.TargetNodes())
	}
	l.transfer("n1", "n2", "old")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "old": "active"})
}

// TestLifecycleTransferWaitsForProtocol2: while a node of the map speaks
// protocol 1 (it takes unfenced writes a receiver's scan may miss), a
// transfer report marks nothing and flips nothing; once the node speaks
// protocol 2 again, the same report flips the partitions.
func TestLifecycleTransferWaitsForProtocol2(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3")
	l.tenant(2)
	l.register("n4", false)
	m := l.placement()
	ps := m.Receiving("n4", nil)
	if len(ps) == 0 {
		t.Fatalf("n4 receives nothing after its join")
	}
	// n1 is downgraded: it re-registers with protocol 1.
	l.register("n1", false, 0)
	rep, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "n4", MapVersion: m.Version(), Done: ps})
	if err != nil {
		t.Fatal(err)
	}
	after, err := ring.Decode(rep.Map)
	if err != nil {
		t.Fatal(err)
	}
	if after.Version() != m.Version() {
		t.Fatalf("a report with a protocol-1 node in the map changed the map: version %d, was %d", after.Version(), m.Version())
	}
	for _, p := range ps {
		if !after.Moving(p) || after.Done(p, "n4") {
			t.Fatalf("partition %d marked done or flipped while n1 speaks protocol 1", p)
		}
	}
	if s := l.status("n4"); s != "joining" {
		t.Fatalf("n4 is %s while its partitions wait, want joining", s)
	}
	// Upgraded again: the same report flips every partition.
	l.register("n1", false)
	rep, err = l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "n4", MapVersion: m.Version(), Done: ps})
	if err != nil {
		t.Fatal(err)
	}
	if after, err = ring.Decode(rep.Map); err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if after.Moving(p) {
			t.Fatalf("partition %d still moves after the report with every node on protocol 2", p)
		}
	}
}

// TestLifecycleStaleTransferReport: a receiver's report made under a map
// older than a partition's last change does not mark that partition (the
// receiver pulled it for rows that no longer hold); the others it does.
func TestLifecycleStaleTransferReport(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	// Seven nodes: owner rows are full (ring.MaxReplicas), so a join
	// changes only some rows.
	for i := 1; i <= 7; i++ {
		l.register(fmt.Sprintf("n%d", i), false)
	}
	l.tenant(3)
	l.register("n8", false)
	old := l.placement()
	ps := old.Receiving("n8", nil)
	l.register("n9", false) // retargets: some of n8's partitions change rows
	m := l.placement()
	var changed, same []uint32
	for _, p := range ps {
		if m.Since(p) > old.Version() {
			changed = append(changed, p)
		} else {
			same = append(same, p)
		}
	}
	if len(changed) == 0 || len(same) == 0 {
		t.Fatalf("of n8's %d partitions %d changed rows with n9's join; the test needs both kinds", len(ps), len(changed))
	}
	rep, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: "n8", MapVersion: old.Version(), Done: ps})
	if err != nil {
		t.Fatal(err)
	}
	after, err := ring.Decode(rep.Map)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range changed {
		if after.Moving(p) && after.Done(p, "n8") {
			t.Fatalf("partition %d changed rows at version %d, after the report's map %d, but was marked done", p, m.Since(p), old.Version())
		}
	}
	for _, p := range same {
		if after.Moving(p) && !after.Done(p, "n8") && slices.Contains(after.Receivers(p, nil), "n8") {
			t.Fatalf("partition %d did not change since the report's map, yet n8's report did not mark it", p)
		}
	}
}

// TestLifecycleProtocol1InTheMap: a map that names a node of protocol 1
// makes every coordinator speak protocol 1 to the nodes (the others learn
// it with the map, on the ring event).
func TestLifecycleProtocol1InTheMap(t *testing.T) {
	l := startLifecycle(t)
	l.register("old", false, 0) // no tenants yet: it enters the map
	l.register("n2", false)
	if m := l.placement(); !m.HasNode("old") || !m.HasNode("n2") {
		t.Fatalf("map names %v", m.Nodes())
	}
	for i, co := range l.c.Coordinators() {
		waitFor(t, 5*time.Second, func() error {
			if p := co.NodeProtocol(); p != 1 {
				return fmt.Errorf("coordinator %d speaks protocol %d to a map with a protocol-1 node", i, p)
			}
			return nil
		})
	}
}

// TestLifecycleReconcileBetweenReplaceSteps: replace changes two node
// statuses before it stores Substitute(dead, new); a reconcile that runs
// in between (here the new node's heartbeat, made at exactly that point)
// must build the same target, not Claim one that moves live nodes' rows.
func TestLifecycleReconcileBetweenReplaceSteps(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3", "n4", "n5"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3", "n4", "n5")
	l.tenant(3)
	l.register("new", true)
	before := l.placement()
	l.kill("n2")
	// The replace's status changes, as nodeReplace makes them.
	md := l.c.Metadata()
	if _, err := md.ChangeNodeStatus(ctx, "new", []string{"standby"}, "joining"); err != nil {
		t.Fatal(err)
	}
	if _, err := md.ChangeNodeStatus(ctx, "n2", []string{"active"}, "leaving"); err != nil {
		t.Fatal(err)
	}
	// The heartbeat of a joining node the map does not name reconciles.
	l.register("new", true)
	m := l.placement()
	if m.Version() == before.Version() {
		t.Fatal("the heartbeat stored no map")
	}
	var a, b []string
	for p := range uint32(m.Partitions()) {
		a, b = before.Owners(p, a), m.Target(p, b)
		want := slices.Clone(a)
		if j := slices.Index(want, "n2"); j >= 0 {
			want[j] = "new"
		}
		if !slices.Equal(b, want) {
			t.Fatalf("partition %d: target %v from %v; a reconcile mid-replace must swap n2 for new only", p, b, a)
		}
	}
	l.transfer("new")
	l.wantStatuses(map[string]string{"n1": "active", "n2": "left", "n3": "active", "n4": "active", "n5": "active", "new": "active"})
}

// TestLifecycleLeftWaitsForHandoff (F5): a drained node the map names
// nowhere stays leaving while its heartbeats do not report its handoff
// done (drain --wait keeps waiting), and becomes left at the heartbeat
// that reports it under the current map; a report under an older map
// does not count.
func TestLifecycleLeftWaitsForHandoff(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3", "n4")
	l.tenant(3)
	l.mu.Lock()
	l.holding["n4"] = true
	l.mu.Unlock()
	if n, err := l.admin.DrainNode(ctx, "n4"); err != nil || n.Status != "leaving" {
		t.Fatalf("drain n4: %+v %v", n, err)
	}
	m := l.transfer("n1", "n2", "n3")
	if m.HasNode("n4") {
		t.Fatalf("the map still names n4 after the transfers: %v", m.Nodes())
	}
	// A report under an older map: n4 may have been named since.
	l.mu.Lock()
	l.xfer["n4"] = &subjects.TransferStatus{HandoffDone: m.Version() - 1}
	l.mu.Unlock()
	time.Sleep(3 * lifecycleHeartbeat)
	if got := l.statuses()["n4"]; got != "leaving" {
		t.Fatalf("n4 is %s before reporting its handoff done under map %d, want leaving", got, m.Version())
	}
	l.mu.Lock()
	l.holding["n4"] = false
	l.mu.Unlock()
	l.wantStatuses(map[string]string{"n1": "active", "n2": "active", "n3": "active", "n4": "left"})
}

// downHeartbeatsFor is how long a node must stay silent to be down.
func downHeartbeatsFor(hb time.Duration) time.Duration { return 3*hb + hb/2 }

// splitReplaceStore is the cluster's metadata store, but right after a
// single status change makes node "new" joining from standby (the first
// half of a replace made in two steps) it runs between: a heartbeat of
// "new", which reconciles.
type splitReplaceStore struct {
	metadata.Store
	between func()
}

func (s *splitReplaceStore) ChangeNodeStatus(ctx context.Context, id string, from []string, status string) (metadata.Node, error) {
	n, err := s.Store.ChangeNodeStatus(ctx, id, from, status)
	if err == nil && id == "new" && status == metadata.NodeJoining && slices.Contains(from, metadata.NodeStandby) && s.between != nil {
		s.between()
	}
	return n, err
}

// TestLifecycleReplaceReconcileCannotSplit: a reconcile that runs right
// after node replace changed the new node's status cannot see the dead
// node still active (a join: Claim over both nodes, moving rows of live
// nodes): the replace stores both changes in one step. Only one
// coordinator serves, on a store that runs a heartbeat of the new node
// right after a single status change makes it joining.
func TestLifecycleReplaceReconcileCannotSplit(t *testing.T) {
	l := startLifecycle(t)
	ctx := ctxT(t)
	st := &splitReplaceStore{Store: l.c.Metadata()}
	co, err := coordinator.New(ctx, connect(t, l.c), coordinator.Config{RingRefresh: time.Hour, NodeHeartbeat: lifecycleHeartbeat,
		Metadata: st, Idempotency: l.c.Idempotency()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(co.Stop)
	for i := range l.c.Coordinators() {
		l.c.StopCoordinator(i)
	}
	for _, id := range []string{"n1", "n2", "n3", "n4", "n5"} {
		l.register(id, false)
	}
	l.transfer("n1", "n2", "n3", "n4", "n5")
	l.tenant(3)
	l.register("new", true)
	l.kill("n2")
	time.Sleep(downHeartbeatsFor(lifecycleHeartbeat))
	ran := false
	st.between = func() {
		ran = true
		if _, err := client.NewAdmin(connect(t, l.c)).Register(ctx, subjects.NodeRequest{NodeID: "new", Epoch: 1, Protocol: subjects.NodeProtocolVersion, Hold: true}); err != nil {
			t.Errorf("heartbeat between the replace's steps: %v", err)
		}
	}
	before := l.placement()
	if _, err := l.admin.Replace(ctx, "n2", "new"); err != nil {
		t.Fatalf("replace: %v", err)
	}
	m := l.placement()
	var a, b []string
	for p := range uint32(m.Partitions()) {
		a, b = before.Owners(p, a), m.Target(p, b)
		want := slices.Clone(a)
		if j := slices.Index(want, "n2"); j >= 0 {
			want[j] = "new"
		}
		if !slices.Equal(b, want) {
			t.Fatalf("partition %d: target %v from %v (a reconcile ran between the replace's status changes: %v); replace must swap n2 for new only", p, b, a, ran)
		}
	}
}

// TestNodeListShowsAntiEntropy: a heartbeat's anti-entropy figures show
// in node list (JSON anti_entropy); a heartbeat without them clears them;
// negative counts are refused.
func TestNodeListShowsAntiEntropy(t *testing.T) {
	c := startClusterWith(t, devcluster.Config{Nodes: -1, Coordinators: 1, DefaultTenant: "-"})
	ad := client.NewAdmin(connect(t, c))
	ctx := ctxT(t)
	pass := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	ae := &subjects.AEStatus{Exchanges: 7, KeysRepaired: 3, Bytes: 4096, LastPass: pass, OldestPartitionPass: pass.Add(-time.Minute), Errors: 1}
	list := func() *subjects.AEStatus {
		t.Helper()
		ns, err := ad.ListNodes(ctx)
		if err != nil || len(ns) != 1 {
			t.Fatalf("node list: %+v, %v", ns, err)
		}
		return ns[0].AntiEntropy
	}
	if _, err := ad.Register(ctx, subjects.NodeRequest{NodeID: "n1", Epoch: 1, Protocol: subjects.NodeProtocolVersion, AntiEntropy: ae}); err != nil {
		t.Fatal(err)
	}
	if got := list(); got == nil || got.Exchanges != 7 || got.KeysRepaired != 3 || got.Bytes != 4096 || got.Errors != 1 ||
		!got.LastPass.Equal(ae.LastPass) || !got.OldestPartitionPass.Equal(ae.OldestPartitionPass) {
		t.Fatalf("node list anti_entropy %+v, want %+v", got, ae)
	}
	bad := *ae
	bad.KeysRepaired = -1
	_, err := ad.Register(ctx, subjects.NodeRequest{NodeID: "n1", Epoch: 1, Protocol: subjects.NodeProtocolVersion, AntiEntropy: &bad})
	assertKind(t, err, 400, subjects.KindInvalid)
	if _, err := ad.Register(ctx, subjects.NodeRequest{NodeID: "n1", Epoch: 1, Protocol: subjects.NodeProtocolVersion}); err != nil {
		t.Fatal(err)
	}
	if got := list(); got != nil {
		t.Fatalf("anti_entropy %+v after a heartbeat without it", got)
	}
}
