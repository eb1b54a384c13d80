package storage

import (
	"bytes"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// TestFullQueueAnswersOverloaded: a message that finds its queue full is
// answered 429 at once, not dropped; one that finds room is queued.
func TestFullQueueAnswersOverloaded(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	n := open(t, "node-1", t.TempDir())
	t.Cleanup(func() { _ = n.Stop() })

	ch := make(chan *nats.Msg, 1)
	sub, err := nc.Subscribe("q", n.enqueue(ch))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	client := natstest.Connect(t, s)

	if err := client.PublishRequest("q", "nobody", []byte("first")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-ch:
		ch <- m // keep the queue full
	case <-time.After(10 * time.Second):
		t.Fatal("a message with room in the queue was not queued")
	}
	reply, err := client.Request("q", []byte("second"), 10*time.Second)
	if err != nil {
		t.Fatalf("a message past a full queue was not answered: %v", err)
	}
	e := subjects.ErrorFromHeaders(reply.Header.Get)
	if e == nil || e.Code != subjects.CodeOverloaded || e.Kind != subjects.KindOverloaded {
		t.Fatalf("got %+v, want 429 overloaded", e)
	}
	if len(ch) != 1 {
		t.Fatalf("queue holds %d messages, want the first only", len(ch))
	}
}

// TestBurstIsAnsweredNotDropped sends a burst of write batches to a node
// with a one-message queue: every batch gets an answer, the writes or a
// 429, and none is left to time out.
func TestBurstIsAnsweredNotDropped(t *testing.T) {
	s := natstest.RunServer(t)
	startNode(t, s, Config{Fsync: true, QueueLen: 1, MaxBatch: 1})
	nc := natstest.Connect(t, s)
	replies := make(chan *nats.Msg, 1<<16)
	inbox := nc.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	value := bytes.Repeat([]byte("v"), 8<<10)
	const batches, items = 500, 8
	deadline := time.Now().Add(60 * time.Second)
	overloaded, written := 0, 0
	for round := 0; overloaded == 0; round++ {
		if time.Now().After(deadline) {
			t.Fatalf("no burst overflowed a one-message queue in %d rounds", round)
		}
		for b := range batches {
			batch := subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion}
			for i := range items {
				id := uint64(b*items + i)
				batch.Items = append(batch.Items, subjects.NodeWrite{ID: id, Tenant: "t", Key: strconv.Itoa(round) + "/" + strconv.FormatUint(id, 10),
					LWW: &vclock.Version{Dot: vclock.Dot{Actor: "a", Counter: id + 1}, Value: value}})
			}
			data, err := msgpack.Marshal(&batch)
			if err != nil {
				t.Fatal(err)
			}
			if err := nc.PublishRequest(subjects.StorageNode("node-1", subjects.NodeOpWrite), inbox+"."+strconv.Itoa(round)+"-"+strconv.Itoa(b), data); err != nil {
				t.Fatal(err)
			}
		}
		answered := map[string]bool{}
		for len(answered) < batches {
			select {
			case m := <-replies:
				if answered[m.Subject] {
					continue // a later part of a reply split in parts
				}
				answered[m.Subject] = true
				if e := subjects.ErrorFromHeaders(m.Header.Get); e != nil {
					if e.Code != subjects.CodeOverloaded {
						t.Fatalf("batch %s: %+v, want success or 429", m.Subject, e)
					}
					overloaded++
					continue
				}
				var r subjects.NodeWriteReply
				if err := msgpack.Unmarshal(m.Data, &r); err != nil {
					t.Fatalf("batch %s: %v", m.Subject, err)
				}
				for _, res := range r.Results {
					if res.Err != "" {
						t.Fatalf("batch %s item %d: %s", m.Subject, res.ID, res.Err)
					}
				}
				written++
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: %d of %d batches answered; the rest were dropped", round, len(answered), batches)
			}
		}
	}
	t.Logf("%d batches written, %d answered overloaded", written, overloaded)
}

// TestReadBacklogIsShed: reads are served on their subscription's
// goroutine; while more than QueueLen read messages wait, the ones served
// are answered 429 at once, and once the backlog is gone reads succeed
// again. Every message gets an answer.
func TestReadBacklogIsShed(t *testing.T) {
	s := natstest.RunServer(t)
	n := startNode(t, s, Config{QueueLen: 2})
	nc := natstest.Connect(t, s)
	replies := make(chan *nats.Msg, 64)
	inbox := nc.NewInbox()
	sub, err := nc.ChanSubscribe(inbox+".*", replies)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	read, err := msgpack.Marshal(&subjects.NodeReadBatch{Proto: subjects.NodeProtocolVersion, Items: []subjects.NodeRead{{ID: 1, Tenant: "t", Key: "k"}}})
	if err != nil {
		t.Fatal(err)
	}
	send := func(name string) {
		t.Helper()
		if err := nc.PublishRequest(subjects.StorageNode("node-1", subjects.NodeOpRead), inbox+"."+name, read); err != nil {
			t.Fatal(err)
		}
	}
	answer := func() (*nats.Msg, *subjects.Error) {
		t.Helper()
		select {
		case m := <-replies:
			return m, subjects.ErrorFromHeaders(m.Header.Get)
		case <-time.After(10 * time.Second):
			t.Fatal("a read was not answered")
			return nil, nil
		}
	}

	// Stall the read goroutine, queue a backlog of 6 behind it, release.
	n.readMu.Lock()
	const burst = 6
	for i := range burst {
		send(strconv.Itoa(i))
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for n.queued(subjects.NodeOpRead) < burst-1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if q := n.queued(subjects.NodeOpRead); q < burst-1 {
		n.readMu.Unlock()
		t.Fatalf("%d reads queued, want %d", q, burst-1)
	}
	n.readMu.Unlock()
	shed, served := 0, 0
	for range burst {
		_, e := answer()
		switch {
		case e == nil:
			served++
		case e.Code == subjects.CodeOverloaded:
			shed++
		default:
			t.Fatalf("got %+v, want a result or 429", e)
		}
	}
	// The first burst-QueueLen-1 served see more than QueueLen behind them.
	if shed != burst-2-1 || served != 3 {
		t.Fatalf("%d shed and %d served, want 3 and 3", shed, served)
	}
	send("after")
	if _, e := answer(); e != nil {
		t.Fatalf("a read after the backlog: %+v", e)
	}
}

// startNode opens and starts node-1 on s with cfg's queue settings, in the
// test's temp dir.
func startNode(t *testing.T, s *server.Server, cfg Config) *Node {
	t.Helper()
	cfg.NodeID, cfg.DataDir, cfg.Heartbeat, cfg.Logger = "node-1", filepath.Join(t.TempDir(), "n"), time.Hour, quiet()
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Stop() })
	if err := n.start(natstest.Connect(t, s)); err != nil {
		t.Fatal(err)
	}
	return n
}
