package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// fakeNodes stand in for the storage nodes of a cluster: they take write
// batches and answer them only as told.
type fakeNodes struct {
	mu       sync.Mutex
	held     []*nats.Msg
	released bool
	reject   bool // answer every batch 429 overloaded
}

// replaceNodes stops the cluster's storage nodes (they stay active in the
// ring) and subscribes fakes in their place.
func replaceNodes(t *testing.T, c *devcluster.Cluster, n int) *fakeNodes {
	t.Helper()
	f := &fakeNodes{}
	nc := connect(t, c)
	for i := 1; i <= n; i++ {
		id := devcluster.NodeID(i)
		if err := c.StopNode(id); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Subscribe(subjects.StorageNode(id, subjects.NodeOpWrite), f.onWrite); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fakeNodes) onWrite(m *nats.Msg) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.reject:
		e := subjects.Errorf(subjects.KindOverloaded, "fake node queue full")
		r := nats.NewMsg(m.Reply)
		r.Header.Set(subjects.ErrorHeader, e.Description())
		r.Header.Set(subjects.ErrorCodeHeader, fmt.Sprint(int(e.Code)))
		r.Header.Set(subjects.KindHeader, e.Kind)
		_ = m.RespondMsg(r)
	case f.released:
		ack(m)
	default:
		f.held = append(f.held, m)
	}
}

// release answers every held batch and every later one at once.
func (f *fakeNodes) release() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = true
	for _, m := range f.held {
		ack(m)
	}
	f.held = nil
}

// ack answers a write batch: every item written.
func ack(m *nats.Msg) {
	var b subjects.NodeWriteBatch
	if err := msgpack.Unmarshal(m.Data, &b); err != nil {
		return
	}
	r := subjects.NodeWriteReply{}
	for _, it := range b.Items {
		r.Results = append(r.Results, subjects.NodeWriteResult{ID: it.ID})
	}
	data, _ := msgpack.Marshal(&r)
	_ = m.Respond(data)
}

// TestMaxInflightAnswersOverloaded: with MaxInflight requests waiting on
// replicas, a burst is answered 429 at once instead of queueing; the
// requests in flight finish when the replicas answer, and the coordinator
// then takes requests again.
func TestMaxInflightAnswersOverloaded(t *testing.T) {
	const limit, burst = 4, 40
	c := startClusterWith(t, devcluster.Config{Nodes: 3, Coordinator: coordinator.Config{MaxInflight: limit}})
	kv := kvClient(t, c, "default")
	fakes := replaceNodes(t, c, 3)

	type result struct{ err error }
	results := make(chan result, burst)
	for i := range burst {
		go func() {
			// Long enough that the requests in flight outlast the burst.
			_, err := kv.Put(context.Background(), fmt.Sprintf("k%d", i), []byte("v"), client.WithTimeout(30*time.Second))
			results <- result{err}
		}()
	}
	deadline := time.After(60 * time.Second)
	for range burst - limit {
		select {
		case r := <-results:
			if !errors.Is(r.err, client.ErrOverloaded) {
				t.Fatalf("past the limit: %v, want 429 overloaded", r.err)
			}
			var e *client.Error
			if !errors.As(r.err, &e) || e.Code != int(subjects.CodeOverloaded) {
				t.Fatalf("past the limit: %v, want code 429", r.err)
			}
		case <-deadline:
			t.Fatal("the burst was not answered while the limit was reached")
		}
	}
	fakes.release()
	// The rest were in flight and succeed now, but for a burst request
	// that met a slot another request held for a moment (admin requests
	// count too; CI under load met one): it was answered 429 as well, and
	// is only read now.
	succeeded := 0
	for range limit {
		select {
		case r := <-results:
			switch {
			case r.err == nil:
				succeeded++
			case errors.Is(r.err, client.ErrOverloaded):
			default:
				t.Fatalf("a request in flight failed once its replicas answered: %v", r.err)
			}
		case <-deadline:
			t.Fatal("requests in flight did not finish after the replicas answered")
		}
	}
	if succeeded == 0 {
		t.Fatal("no request of the burst was in flight")
	}
	if _, err := kv.Put(ctxT(t), "after", []byte("v")); err != nil {
		t.Fatalf("after the burst: %v", err)
	}
}

// TestOverloadedReplicasFailFast: replicas that answer 429 fail the
// request at once, saying why, instead of leaving it to its timeout.
func TestOverloadedReplicasFailFast(t *testing.T) {
	c := startClusterWith(t, devcluster.Config{Nodes: 3})
	kv := kvClient(t, c, "default")
	fakes := replaceNodes(t, c, 3)
	fakes.mu.Lock()
	fakes.reject = true
	fakes.mu.Unlock()

	_, err := kv.Put(context.Background(), "k", []byte("v"), client.WithTimeout(30*time.Second))
	if err == nil || errors.Is(err, client.ErrTimeout) || !strings.Contains(err.Error(), "overloaded") {
		t.Fatalf("put to overloaded replicas: %v, want a prompt error naming the overload", err)
	}
}
