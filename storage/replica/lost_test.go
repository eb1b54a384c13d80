package replica_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// nodeProcess is one run of a storage node's write endpoint on its own
// connection, as a node process has: stopping it closes the connection,
// so a batch it received and had not answered is lost with it, and the
// subject has no responders until the next process subscribes. swallow
// batches are received and never answered; later ones are answered, each
// item applied. Every item it applied is recorded.
type nodeProcess struct {
	nc *nats.Conn

	mu      sync.Mutex
	swallow int
	applied []subjects.NodeWrite
}

func startNodeProcess(t *testing.T, s *server.Server, node string, swallow int) *nodeProcess {
	t.Helper()
	p := &nodeProcess{nc: natstest.Connect(t, s), swallow: swallow}
	_, err := p.nc.Subscribe(subjects.StorageNode(node, subjects.NodeOpWrite), func(m *nats.Msg) {
		var b subjects.NodeWriteBatch
		if err := wire.UnmarshalNodeWriteBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		p.mu.Lock()
		if p.swallow > 0 {
			p.swallow--
			p.mu.Unlock()
			return
		}
		p.applied = append(p.applied, b.Items...)
		p.mu.Unlock()
		r := subjects.NodeWriteReply{}
		for _, it := range b.Items {
			r.Results = append(r.Results, subjects.NodeWriteResult{ID: it.ID})
		}
		_ = m.Respond(wire.MarshalNodeWriteReply(nil, &r))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *nodeProcess) stop() { p.nc.Close() }

// crashAfterSwallowed stops the process once it has received every batch
// it swallows: those are lost with it.
func (p *nodeProcess) crashAfterSwallowed(t *testing.T) {
	t.Helper()
	waitFor(t, func() bool { p.mu.Lock(); defer p.mu.Unlock(); return p.swallow == 0 })
	p.stop()
}

// answerThenSwallow has p answer one write from c, so that c saw the node
// answer a moment ago (a restart, not an outage, follows), and then
// swallow the next batch.
func (p *nodeProcess) answerThenSwallow(t *testing.T, c *replica.Client, node string) {
	t.Helper()
	call := replica.NewCall(1)
	c.Write(call, node, time.Now().Add(5*time.Second), writes(1)...)
	if o := outcomes(t, call, 1); len(o) != 1 {
		t.Fatal(o)
	}
	p.mu.Lock()
	p.swallow = 1
	p.mu.Unlock()
}

func (p *nodeProcess) appliedIDs() map[uint64]subjects.NodeWrite {
	p.mu.Lock()
	defer p.mu.Unlock()
	ids := map[uint64]subjects.NodeWrite{}
	for _, w := range p.applied {
		ids[w.ID] = w
	}
	return ids
}

// A batch in flight to a node whose process stops is never answered. The
// restart is told apart from an outage by the node having answered a
// moment ago: a batch sent while nothing serves the subject waits for the
// next process instead of failing, and the batch that was lost is sent
// again to it, so both items are applied and answered well within their
// deadline. (Before, the second failed at once with ErrNodeDown and the
// first got no outcome: its request waited for its whole timeout.)
func TestRestartResendsLostAndRefusedBatches(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	c := newClient(t, nc, replica.Config{MaxInflight: 2, MaxBatch: 1})

	first := startNodeProcess(t, s, "n1", 0)
	first.answerThenSwallow(t, c, "n1") // the process stops with the next batch unanswered

	deadline := time.Now().Add(20 * time.Second)
	call := replica.NewCall(2)
	lost := writes(1)
	c.Write(call, "n1", deadline, lost...)
	first.crashAfterSwallowed(t)
	refused := writes(1)
	c.Write(call, "n1", deadline, refused...) // no responders, which tells the first batch is lost
	time.Sleep(300 * time.Millisecond)        // the restart takes a while
	second := startNodeProcess(t, s, "n1", 0)

	got := outcomes(t, call, 2)
	for _, id := range []uint64{lost[0].ID, refused[0].ID} {
		if o := got[id]; o.Err != nil || o.Write == nil {
			t.Fatalf("item %d across a restart: %+v", id, o)
		}
		if _, ok := second.appliedIDs()[id]; !ok {
			t.Fatalf("item %d was answered but not applied by the restarted node", id)
		}
	}
}

// A node that restarted between two batches gives no no-responders
// answer to notice it by: the batches it lost hold every slot, and only
// their age tells. Past lostAfter their slots are lent and their items
// sent again, so an item queued behind them is answered long before the
// lost batches' deadline (a minute here), as are they.
func TestLostBatchesFreeTheirSlots(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	c := newClient(t, nc, replica.Config{MaxInflight: 2, MaxBatch: 1})
	first := startNodeProcess(t, s, "n1", 2)

	deadline := time.Now().Add(time.Minute)
	call := replica.NewCall(3)
	lost := writes(2)
	c.Write(call, "n1", deadline, lost...)
	first.crashAfterSwallowed(t)
	second := startNodeProcess(t, s, "n1", 0)
	behind := writes(1)
	c.Write(call, "n1", deadline, behind...)

	got := outcomes(t, call, 3)
	for _, w := range append(lost, behind...) {
		if o := got[w.ID]; o.Err != nil || o.Write == nil {
			t.Fatalf("item %d: %+v", w.ID, o)
		}
	}
	if n := len(second.appliedIDs()); n != 3 {
		t.Fatalf("the restarted node applied %d items, want 3", n)
	}
}

// A siblings coordinating write mints a dot on the node that applies it:
// it is never sent again (its caller moves on to the next owner), not
// when its batch is presumed lost and not on a no-responders answer.
// A merge write lost in the same way is.
func TestCoordinatingWriteIsNeverResent(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	c := newClient(t, nc, replica.Config{MaxInflight: 1, MaxBatch: 1})
	first := startNodeProcess(t, s, "n1", 0)
	first.answerThenSwallow(t, c, "n1")

	coord := []subjects.NodeWrite{{Tenant: "t", Key: "k", Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("v")}, Deadline: time.Now().Add(time.Minute).UnixMilli()}}}
	call := replica.NewCall(2)
	coordDeadline := time.Now().Add(3 * time.Second)
	c.Write(call, "n1", coordDeadline, coord...)
	first.crashAfterSwallowed(t)
	merge := writes(1)
	c.Write(call, "n1", time.Now().Add(20*time.Second), merge...)
	time.Sleep(200 * time.Millisecond)
	second := startNodeProcess(t, s, "n1", 0)

	o := <-call.Outcomes()
	if o.ID != merge[0].ID || o.Err != nil {
		t.Fatalf("the first outcome should be the merge write's success: %+v", o)
	}
	// The coordinating write has no outcome: it was lost, and its caller
	// times it out.
	select {
	case o := <-call.Outcomes():
		t.Fatalf("coordinating write: %+v", o)
	case <-time.After(time.Until(coordDeadline) + 200*time.Millisecond):
	}
	if _, ok := second.appliedIDs()[coord[0].ID]; ok {
		t.Fatal("the coordinating write was sent again and applied by the restarted node")
	}
}

// A node that has not answered lately (never, here) is down, not
// restarting: no responders fails the items at once, as before.
func TestNoRespondersFromAnAbsentNodeFailsAtOnce(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	c := newClient(t, nc, replica.Config{})
	call := replica.NewCall(1)
	c.Read(call, "absent", time.Now().Add(time.Minute), subjects.NodeRead{Tenant: "t", Key: "k"})
	select {
	case o := <-call.Outcomes():
		if !errors.Is(o.Err, replica.ErrNodeDown) {
			t.Fatalf("%+v", o)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome: an absent node's item waited")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition not met in 5s")
		}
	}
}

// A node that is slow, not gone, answers late. Its batch is presumed lost
// by age and its items are sent again, but once only: the slow node is not
// sent the same item every lostAfter while it works through its backlog.
// Each item still has exactly one outcome.
func TestSlowNodeGetsAnItemTwiceAtMost(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	node := natstest.Connect(t, s)
	var mu sync.Mutex
	received := map[uint64]int{}
	_, err := node.Subscribe(subjects.StorageNode("slow", subjects.NodeOpWrite), func(m *nats.Msg) {
		var b subjects.NodeWriteBatch
		if err := wire.UnmarshalNodeWriteBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		mu.Lock()
		for _, it := range b.Items {
			received[it.ID]++
		}
		mu.Unlock()
		go func() { // answers each batch 2.5s after it came
			time.Sleep(2500 * time.Millisecond)
			r := subjects.NodeWriteReply{}
			for _, it := range b.Items {
				r.Results = append(r.Results, subjects.NodeWriteResult{ID: it.ID})
			}
			_ = m.Respond(wire.MarshalNodeWriteReply(nil, &r))
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = node.Flush()
	c := newClient(t, nc, replica.Config{MaxInflight: 2, MaxBatch: 1})
	call := replica.NewCall(1)
	ws := writes(1)
	c.Write(call, "slow", time.Now().Add(20*time.Second), ws...)
	if o := outcomes(t, call, 1)[ws[0].ID]; o.Err != nil {
		t.Fatalf("%+v", o)
	}
	time.Sleep(500 * time.Millisecond) // any further resend would have left by now
	mu.Lock()
	n := received[ws[0].ID]
	mu.Unlock()
	if n != 2 {
		t.Fatalf("the slow node received the item %d times, want 2 (sent, then resent once when its batch was a second old)", n)
	}
	select {
	case o := <-call.Outcomes():
		t.Fatalf("a second outcome: %+v", o)
	default:
	}
}
