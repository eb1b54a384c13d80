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
		out = append(out, metadata.Node{ID: id, Status: st})
	}
	slices.SortFunc(out, func(a, b metadata.Node) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func (s *placementStore) setStatus(id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nodes[id] = status
}

// TestReconcileRaceSerialises: two coordinators drain a node each and
// reconcile at the same moment from the same stored version. One store
// wins that version; the other is refused, re-reads, and stores the next
// version from the winner's map, so the final map has neither node, is
// valid and balanced, and every coordinator routes by it.
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
			st.setStatus(fmt.Sprintf("n%d", 4+i), metadata.NodeDraining)
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
	if got := m.Nodes(); !slices.Equal(got, []string{"n1", "n2", "n3"}) {
		t.Fatalf("final map names %v", got)
	}
	for _, rf := range []int{1, 2, 3} {
		for id, n := range m.Load(rf) {
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

// TestReconcileNoActiveNodes: when the last active node leaves, the stored
// record holds no map (requests get 503 for want of replicas), and the
// next node to register continues the version sequence.
func TestReconcileNoActiveNodes(t *testing.T) {
	ctx := context.Background()
	st := &placementStore{nodes: map[string]string{"n1": metadata.NodeActive}}
	r := newRouting(st, slog.New(slog.DiscardHandler), time.Hour, 64)
	if _, err := r.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	st.setStatus("n1", metadata.NodeDraining)
	if changed, err := r.reconcile(ctx); err != nil || !changed {
		t.Fatalf("reconcile after the last drain: changed %v, %v", changed, err)
	}
	if p := r.placement(); p.version != 2 || p.nodeCount() != 0 || len(p.m.PreferenceList("t", "k", 3, nil)) != 0 {
		t.Fatalf("placement with no active node: version %d, %d nodes", p.version, p.nodeCount())
	}
	st.setStatus("n2", metadata.NodeActive)
	if _, err := r.reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if p := r.placement(); p.version != 3 || p.m.Version() != 3 || p.nodeCount() != 1 {
		t.Fatalf("placement after a new node: version %d (map %d), %d nodes", p.version, p.m.Version(), p.nodeCount())
	}
}
