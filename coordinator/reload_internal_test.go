package coordinator

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
)

// countingStore counts GetPlacement calls and holds each until gate is
// closed, so concurrent reloads overlap.
type countingStore struct {
	*placementStore
	gets atomic.Int32
	gate chan struct{}
}

func (s *countingStore) GetPlacement(ctx context.Context) (metadata.Placement, error) {
	s.gets.Add(1)
	select {
	case <-s.gate:
	case <-ctx.Done():
		return metadata.Placement{}, ctx.Err()
	}
	return s.placementStore.GetPlacement(ctx)
}

// Requests refused as not_owner at once share one map load; once the map
// is newer than the version they were refused under, reload reads
// nothing.
func TestReloadIsSharedByConcurrentRefusals(t *testing.T) {
	ctx := context.Background()
	ps := &placementStore{nodes: map[string]string{}}
	st := &countingStore{placementStore: ps, gate: make(chan struct{})}
	close(st.gate)
	r := newRouting(st, slog.New(slog.DiscardHandler), time.Hour, 64)
	m, err := ring.Claim(nil, []ring.Node{{ID: "n1"}, {ID: "n2"}}, 64)
	if err != nil {
		t.Fatal(err)
	}
	store := func(v uint64) {
		data, err := m.WithVersion(v).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ps.SetPlacement(ctx, metadata.Placement{Version: v, Map: data}); err != nil {
			t.Fatal(err)
		}
	}
	store(1)
	if err := r.load(ctx); err != nil {
		t.Fatal(err)
	}
	v := r.placement().version
	store(v + 1) // another coordinator stores the next version
	st.gate = make(chan struct{})
	st.gets.Store(0)
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = r.reload(ctx, v) }()
	}
	// Let the callers pile up on the one load, then release it.
	for st.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(st.gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	if got := st.gets.Load(); got != 1 {
		t.Fatalf("%d concurrent reloads read the map %d times, want 1", n, got)
	}
	if r.placement().version != v+1 {
		t.Fatalf("version %d after reload, want %d", r.placement().version, v+1)
	}
	if err := r.reload(ctx, v); err != nil || st.gets.Load() != 1 {
		t.Fatalf("reload past a newer map read it again (%d reads, %v)", st.gets.Load(), err)
	}
}

// A waiter whose leader's load failed because the leader's request ran
// out of time loads the map itself.
func TestReloadWaiterOutlivesItsLeader(t *testing.T) {
	ctx := context.Background()
	ps := &placementStore{nodes: map[string]string{}}
	st := &countingStore{placementStore: ps, gate: make(chan struct{})}
	r := newRouting(st, slog.New(slog.DiscardHandler), time.Hour, 64)
	m, err := ring.Claim(nil, []ring.Node{{ID: "n1"}}, 64)
	if err != nil {
		t.Fatal(err)
	}
	data, err := m.WithVersion(1).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ps.SetPlacement(ctx, metadata.Placement{Version: 1, Map: data}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.partitions(ctx); err != nil {
		t.Fatal(err)
	}
	lctx, cancel := context.WithCancel(ctx)
	leader := make(chan error, 1)
	go func() { leader <- r.reload(lctx, 0) }()
	for st.gets.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	waiter := make(chan error, 1)
	go func() { waiter <- r.reload(ctx, 0) }()
	time.Sleep(20 * time.Millisecond) // the waiter joins the flight
	cancel()
	if err := <-leader; err == nil {
		t.Fatal("the leader's load succeeded although its context was cancelled")
	}
	close(st.gate)
	if err := <-waiter; err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if v := r.placement().version; v != 1 {
		t.Fatalf("version %d after the waiter's reload, want 1", v)
	}
}
