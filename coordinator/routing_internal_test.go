package coordinator

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
)

// placementStore is an in-memory metadata.Store with just what routing
// uses; the real stores' compare-and-set is checked by metadatatest. The
// next `waiters` calls of GetPlacement wait for each other, so that
// concurrent reconciles all read the same version and race to store the
// next; later calls pass.
type placementStore struct {
	metadata.Store // nil: other methods panic
	mu             sync.Mutex
	q              int
	rec            *metadata.Placement
	nodes          map[string]string // id → status
	stale          int               // SetPlacement calls refused with ErrStale
	waiters        int
	released       chan struct{}
	// tenants, when set, is the tenant list ListTenants reports (else one
	// RF 1 tenant); listed, when set, runs once after a ListTenants read
	// it, before that call returns.
	tenants *[]metadata.Tenant
	listed  func()
}

// race makes the next n GetPlacement calls wait for each other.
func (s *placementStore) race(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiters, s.released = n, make(chan struct{})
}

func (s *placementStore) Partitions(_ context.Context, candidate int) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.q == 0 {
		s.q = candidate
	}
	return s.q, nil
}

func (s *placementStore) GetPlacement(context.Context) (metadata.Placement, error) {
	s.mu.Lock()
	rec := s.rec // read before waiting: the racers see the same version
	var wait chan struct{}
	if s.waiters > 0 {
		if s.waiters--; s.waiters == 0 {
			close(s.released)
		}
		wait = s.released
	}
	s.mu.Unlock()
	if wait != nil {
		<-wait
	}
	if rec == nil {
		return metadata.Placement{}, metadata.ErrNotFound
	}
	return *rec, nil
}

func (s *placementStore) SetPlacement(_ context.Context, p metadata.Placement) (metadata.Placement, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var cur uint64
	if s.rec != nil {
		cur = s.rec.Version
	}
	if p.Version != cur+1 {
		s.stale++
		return metadata.Placement{}, fmt.Errorf("stored %d: %w", cur, metadata.ErrStale)
	}
	s.rec = &p
	return p, nil
}

func (s *placementStore) ListNodes(context.Context) ([]metadata.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []metadata.Node
	for id, st := range s.nodes {
		out = append(out, metadata.Node{ID: id, Status: st, Protocol: 2})
	}
	slices.SortFunc(out, func(a, b metadata.Node) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// ListTenants reports one RF 1 tenant (the cluster may hold data, so
// membership changes stream), or s.tenants when set.
func (s *placementStore) ListTenants(context.Context) ([]metadata.Tenant, error) {
	s.mu.Lock()
	if s.tenants == nil {
		s.mu.Unlock()
		return []metadata.Tenant{{ID: "t", ReplicationFactor: 1}}, nil
	}
	ts, hook := slices.Clone(*s.tenants), s.listed
	s.listed = nil
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	return ts, nil
}

func (s *placementStore) ChangeNodeStatus(_ context.Context, id string, from []string, status string) (metadata.Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, ok := s.nodes[id]
	if !ok {
		return metadata.Node{}, metadata.ErrNotFound
	}
	if !slices.Contains(from, cur) {
		return metadata.Node{}, metadata.ErrStale
	}
	s.nodes[id] = status
	return metadata.Node{ID: id, Status: status, Protocol: 2}, nil
}

func (s *placementStore) status(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[id]
}

func (s *placementStore) setStatus(id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[id] = status
}

// TestReconcileRaceSerialises: two coordinators drain a node each and
// reconcile at the same moment from the same stored version. One store
// wins that version; the other is refused, re-reads, and stores the next
// version from the winner's map, so the final map's target has neither
// node, is valid and balanced, and every coordinator routes by it.
func TestReconcileRaceSerialises(t *testing.T) {
	ctx := context.Background()
	st := &placementStore{nodes: map[string]string{}}
	for i := 1; i <= 5; i++ {
		st.nodes[fmt.Sprintf("n%d", i)] = metadata.NodeActive
	}
	log := slog.New(slog.DiscardHandler)
	a := newRouting(st, log, time.Hour, 256)
	b := newRouting(st, log, time.Hour, 256)
	if changed, err := a.reconcile(ctx); err != nil || !changed {
		t.Fatalf("first reconcile: changed %v, %v", changed, err)
	}
	v1 := a.placement().version
	if changed, err := b.reconcile(ctx); err != nil || changed || b.placement().version != v1 {
		t.Fatalf("second coordinator's reconcile of an unchanged set: changed %v, version %d, %v", changed, b.placement().version, err)
	}

	st.race(2)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*routing{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st.setStatus(fmt.Sprintf("n%d", 4+i), metadata.NodeLeaving)
			_, errs[i] = r.reconcile(ctx)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st.mu.Lock()
	stale, final := st.stale, *st.rec
	st.mu.Unlock()
	if stale == 0 {
		t.Fatalf("no store was refused: the two reconciles did not race (final version %d from %d)", st.rec.Version, v1)
	}
	m, err := ring.Decode(final.Map)
	if err != nil {
		t.Fatal(err)
	}
	if m.Version() != final.Version || final.Version < v1+1 || final.Version > v1+2 {
		t.Fatalf("final map version %d (record %d) from version %d", m.Version(), final.Version, v1)
	}
	if got := m.TargetNodes(); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Fatalf("final map's target names %v", got)
	}
	for _, rf := range []int{1, 2, 3} {
		for id, n := range m.TargetMap().Load(rf) {
			if lo := 256 * rf / 3; n < lo || n > lo+1 {
				t.Fatalf("node %s holds %d of the first %d owner slots", id, n, rf)
			}
		}
	}
	// Both coordinators end on it: the loser stored or installed it, the
	// winner installs it at its next load (the ring event).
	if err := a.load(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.load(ctx); err != nil {
		t.Fatal(err)
	}
	for i, r := range []*routing{a, b} {
		if p := r.placement(); p.version != final.Version || !p.m.Equal(m) {
			t.Fatalf("coordinator %d routes by version %d, want %d", i, p.version, final.Version)
		}
	}
}

// TestReconcileLastNodeStays: when the last node of the target leaves,
// reconcile keeps the map (the node holds the data and there is nowhere to
// stream it), and the node stays leaving; once a new node joins, the map
// heads for it, the new node becomes active when it reported its
// partitions, and the old one left.
func TestReconcileLastNodeStays(t *testing.T) {
	ctx := context.Background()
	st := &placementStore{nodes: map[string]string{"n1": metadata.NodeJoining}}
	r := newRouting(st, slog.New(slog.DiscardHandler), time.Hour, 64)
	// n1's process is stopped once drained (down): left needs no handoff
	// report from it.
	r.down = func(n metadata.Node) bool { return n.ID == "n1" }
	if _, err := r.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if s := st.status("n1"); s != metadata.NodeActive {
		t.Fatalf("the first node of an empty cluster is %s, want active at once", s)
	}
	st.setStatus("n1", metadata.NodeLeaving)
	if changed, err := r.reconcile(ctx); err != nil || changed {
		t.Fatalf("reconcile after the last drain: changed %v, %v; want the map kept", changed, err)
	}
	if p := r.placement(); p.version != 1 || !p.m.HasNode("n1") || st.status("n1") != metadata.NodeLeaving {
		t.Fatalf("placement version %d names %v; n1 is %s", p.version, p.m.Nodes(), st.status("n1"))
	}
	st.setStatus("n2", metadata.NodeJoining)
	if changed, err := r.reconcile(ctx); err != nil || !changed {
		t.Fatalf("reconcile after a join: changed %v, %v", changed, err)
	}
	p := r.placement()
	ps := p.m.Receiving("n2", nil)
	if p.version != 2 || len(ps) != 64 || !slices.Equal(p.m.TargetNodes(), []string{"n2"}) {
		t.Fatalf("placement version %d: target %v, n2 receives %d partitions", p.version, p.m.TargetNodes(), len(ps))
	}
	next, _, err := p.m.MarkDone("n2", ps, 3)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := next.MarshalBinary()
	if _, err := st.SetPlacement(ctx, metadata.Placement{Version: 3, Map: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if a, b := st.status("n1"), st.status("n2"); a != metadata.NodeLeft || b != metadata.NodeActive {
		t.Fatalf("after the transfer n1 is %s, n2 %s; want left and active", a, b)
	}
}

// TestReconcileNoDataShortcutLosesToTenantCreation: a reconcile that read
// an empty tenant list (and so would give a joining node its partitions at
// once, streaming nothing) while a tenant was being created stores no such
// map: the creation's map version (fenceTenant) makes its compare-and-set
// fail, and its retry reads the list again, so the new node receives.
func TestReconcileNoDataShortcutLosesToTenantCreation(t *testing.T) {
	ctx := context.Background()
	none := []metadata.Tenant{}
	st := &placementStore{tenants: &none, nodes: map[string]string{
		"n1": metadata.NodeActive, "n2": metadata.NodeActive, "n3": metadata.NodeActive}}
	log := slog.New(slog.DiscardHandler)
	a, b := newRouting(st, log, time.Hour, 64), newRouting(st, log, time.Hour, 64)
	if _, err := a.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	st.setStatus("n4", metadata.NodeJoining)
	st.mu.Lock()
	st.listed = func() {
		// The tenant is created (through another coordinator) right after
		// the reconcile read the empty list.
		st.mu.Lock()
		*st.tenants = append(*st.tenants, metadata.Tenant{ID: "t", ReplicationFactor: 3})
		st.mu.Unlock()
		if _, err := b.fenceTenant(ctx); err != nil {
			t.Error(err)
		}
	}
	st.mu.Unlock()
	if _, err := a.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	p := a.placement()
	if slices.Contains(p.m.CurrentNodes(), "n4") || len(p.m.Receiving("n4", nil)) == 0 {
		t.Fatalf("map version %d gives n4 partitions without streaming (current nodes %v, n4 receives %d) although a tenant exists",
			p.version, p.m.CurrentNodes(), len(p.m.Receiving("n4", nil)))
	}
}
