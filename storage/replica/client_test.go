package replica_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// fakeNode serves node's write subject with answer, which returns the
// replies to send (each a NodeWriteReply) or an error for the headers.
func fakeNode(t *testing.T, nc *nats.Conn, node string, answer func(b *subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error)) {
	t.Helper()
	sub, err := nc.Subscribe(subjects.StorageNode(node, subjects.NodeOpWrite), func(m *nats.Msg) {
		var b subjects.NodeWriteBatch
		if err := wire.UnmarshalNodeWriteBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		replies, e := answer(&b)
		if e != nil {
			_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: e.Headers()})
			return
		}
		for i := range replies {
			_ = m.Respond(wire.MarshalNodeWriteReply(nil, &replies[i]))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func newClient(t *testing.T, nc *nats.Conn, cfg replica.Config) *replica.Client {
	t.Helper()
	c, err := replica.New(nc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Stop)
	return c
}

// outcomes waits for n outcomes of call, by item ID.
func outcomes(t *testing.T, call *replica.Call, n int) map[uint64]replica.Outcome {
	t.Helper()
	got := map[uint64]replica.Outcome{}
	timeout := time.After(5 * time.Second)
	for len(got) < n {
		select {
		case o := <-call.Outcomes():
			if _, dup := got[o.ID]; dup {
				t.Fatalf("second outcome for item %d: %+v", o.ID, o)
			}
			got[o.ID] = o
		case <-timeout:
			t.Fatalf("%d of %d outcomes: %+v", len(got), n, got)
		}
	}
	return got
}

func writes(n int) []subjects.NodeWrite {
	ws := make([]subjects.NodeWrite, n)
	for i := range ws {
		ws[i] = subjects.NodeWrite{Tenant: "t", Key: "k", LWW: &vclock.Version{Dot: vclock.Dot{Counter: uint64(i + 1), Actor: "a"}}}
	}
	return ws
}

// A batch answered in chunks: results of every chunk are delivered, a
// per-item error stays with its item, a result naming no item is ignored,
// and an item the last chunk leaves out fails rather than waiting.
func TestChunkedReplyOneOutcomePerItem(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	fakeNode(t, nc, "n1", func(b *subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error) {
		it := b.Items
		lost := vclock.Dot{Counter: 99, Actor: "z"}
		return []subjects.NodeWriteReply{
			{Results: []subjects.NodeWriteResult{{ID: it[0].ID}, {ID: 12345}}, More: true},
			{Results: []subjects.NodeWriteResult{{ID: it[1].ID, Err: "too big", Kind: subjects.KindTooLarge}}, More: true},
			{Results: []subjects.NodeWriteResult{{ID: it[2].ID, LWW: &vclock.Version{Dot: lost}}}},
		}, nil
	})
	c := newClient(t, nc, replica.Config{})
	call := replica.NewCall(4)
	ws := writes(4)
	c.Write(call, "n1", time.Now().Add(5*time.Second), ws...)
	got := outcomes(t, call, 4)
	if o := got[ws[0].ID]; o.Err != nil || o.Write == nil || o.Node != "n1" {
		t.Fatalf("item 0: %+v", o)
	}
	if o := got[ws[1].ID]; o.Err == nil || o.Err.Error() != "too big" || o.Write == nil || o.Write.Kind != subjects.KindTooLarge {
		t.Fatalf("item 1: %+v", o)
	}
	if o := got[ws[2].ID]; o.Err != nil {
		t.Fatalf("item 2: %+v", o)
	} else if by, lost := o.LostTo(); !lost || by.Counter != 99 {
		t.Fatalf("item 2 lost to %v %v", by, lost)
	}
	if o := got[ws[3].ID]; o.Err == nil || !strings.Contains(o.Err.Error(), "did not answer the item") {
		t.Fatalf("item 3: %+v", o)
	}
}

// Batch-wide errors fail every item: no responders is ErrNodeDown at once,
// a 429 from the node matches ErrOverloaded and the node's *subjects.Error.
func TestBatchErrors(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	fakeNode(t, nc, "busy", func(*subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error) {
		return nil, subjects.Errorf(subjects.KindOverloaded, "queue full")
	})
	c := newClient(t, nc, replica.Config{})

	call := replica.NewCall(2)
	start := time.Now()
	c.Write(call, "gone", start.Add(5*time.Second), writes(2)...)
	for _, o := range outcomes(t, call, 2) {
		if !errors.Is(o.Err, replica.ErrNodeDown) {
			t.Fatalf("no responders: %+v", o)
		}
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("no responders took %s", took)
	}

	call = replica.NewCall(2)
	c.Write(call, "busy", time.Now().Add(5*time.Second), writes(2)...)
	for _, o := range outcomes(t, call, 2) {
		var e *subjects.Error
		if !errors.Is(o.Err, replica.ErrOverloaded) || errors.Is(o.Err, replica.ErrQueueFull) || !errors.As(o.Err, &e) || e.Code != 429 {
			t.Fatalf("429: %+v", o)
		}
	}
}

// Items beyond QueueLen fail at once with ErrQueueFull; a silent node's
// batch frees its slot once its deadline passed, so later items go out.
func TestQueueFullAndSilentNode(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	var silent atomic.Bool
	silent.Store(true)
	fakeNode(t, nc, "n1", func(b *subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error) {
		if silent.Load() {
			return nil, nil
		}
		r := subjects.NodeWriteReply{}
		for _, it := range b.Items {
			r.Results = append(r.Results, subjects.NodeWriteResult{ID: it.ID})
		}
		return []subjects.NodeWriteReply{r}, nil
	})
	c := newClient(t, nc, replica.Config{MaxInflight: 1, MaxBatch: 1, QueueLen: 2})
	call := replica.NewCall(4)
	// One leaves (no reply comes), two queue, the fourth finds the queue full.
	c.Write(call, "n1", time.Now().Add(200*time.Millisecond), writes(4)...)
	select {
	case o := <-call.Outcomes():
		if !errors.Is(o.Err, replica.ErrQueueFull) || !errors.Is(o.Err, replica.ErrOverloaded) {
			t.Fatalf("queue full: %+v", o)
		}
	case <-time.After(time.Second):
		t.Fatal("no outcome for the item past QueueLen")
	}
	time.Sleep(400 * time.Millisecond) // past the deadline: nothing is owed
	silent.Store(false)
	call = replica.NewCall(1)
	c.Write(call, "n1", time.Now().Add(5*time.Second), writes(1)...)
	if o := outcomes(t, call, 1); len(o) != 1 {
		t.Fatal(o)
	}
	for _, o := range outcomes(t, call, 0) {
		t.Fatalf("unexpected %+v", o)
	}
}

// Stop fails what is queued and later items at once; it is safe twice.
func TestStop(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	fakeNode(t, nc, "n1", func(*subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error) { return nil, nil })
	c, err := replica.New(nc, replica.Config{MaxInflight: 1, MaxBatch: 1})
	if err != nil {
		t.Fatal(err)
	}
	call := replica.NewCall(3)
	c.Write(call, "n1", time.Now().Add(time.Minute), writes(2)...)
	c.Stop()
	c.Stop()
	c.Write(call, "n1", time.Now().Add(time.Minute), writes(1)...)
	for _, o := range outcomes(t, call, 3) {
		if !errors.Is(o.Err, replica.ErrStopping) {
			t.Fatalf("%+v", o)
		}
	}
}

func TestPayloadLimit(t *testing.T) {
	for _, tc := range []struct {
		max  int64
		want int
	}{{1 << 20, 1<<20 - 64<<10}, {4 << 20, 4<<20 - 64<<10}, {100 << 10, 64 << 10}} {
		if got := replica.PayloadLimit(tc.max); got != tc.want {
			t.Errorf("PayloadLimit(%d) = %d, want %d", tc.max, got, tc.want)
		}
	}
}

// Reads take the same reply path: chunked results reach their items, the
// read outcome carries the node's version, and the round trip feeds
// SpeculativeDelay (within its 5ms..200ms bounds).
func TestReadChunked(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	v := &vclock.Version{Dot: vclock.Dot{Counter: 7, Actor: "a"}, Value: []byte("x")}
	sub, err := nc.Subscribe(subjects.StorageNode("n1", subjects.NodeOpRead), func(m *nats.Msg) {
		var b subjects.NodeReadBatch
		if err := wire.UnmarshalNodeReadBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		for i, it := range b.Items {
			r := subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: it.ID, LWW: v}}, More: i < len(b.Items)-1}
			_ = m.Respond(wire.MarshalNodeReadReply(nil, &r))
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c := newClient(t, nc, replica.Config{MaxInflight: 1})
	call := replica.NewCall(3)
	deadline := time.Now().Add(5 * time.Second)
	// The first leaves alone; the other two queue and leave as one batch.
	ids := []uint64{
		c.Read(call, "n1", deadline, subjects.NodeRead{Tenant: "t", Key: "a"}),
		c.Read(call, "n1", deadline, subjects.NodeRead{Tenant: "t", Key: "b"}),
		c.Read(call, "n1", deadline, subjects.NodeRead{Tenant: "t", Key: "c"}),
	}
	got := outcomes(t, call, 3)
	for _, id := range ids {
		if o := got[id]; o.Err != nil || o.Read == nil || o.Read.LWW == nil || o.Read.LWW.Dot.Counter != 7 {
			t.Fatalf("item %d: %+v", id, o)
		}
	}
	if d := c.SpeculativeDelay(); d < 5*time.Millisecond || d > 200*time.Millisecond {
		t.Fatalf("speculative delay %s", d)
	}
	c.Suspect("n1")
	if !c.Suspected("n1", time.Now()) || c.Suspected("n1", time.Now().Add(2*time.Second)) || c.Suspected("n2", time.Now()) {
		t.Fatal("suspicion lasts one second, for the node named")
	}
}
