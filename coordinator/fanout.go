package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
)

// Errors a replica outcome can carry.
var (
	errNodeUnreachable = errors.New("node has no subscribers (down)")
	errNodeOverloaded  = errors.New("node queue full at this coordinator")
	errStopping        = errors.New("coordinator stopping")
)

// outcome is one replica's answer to one item.
type outcome struct {
	node  string
	write *subjects.NodeWriteResult
	read  *subjects.NodeReadResult
	err   error
}

// call collects the outcomes of one client request. ch has room for every
// item, so delivering never blocks.
type call struct {
	ch chan outcome
}

func newCall(items int) *call { return &call{ch: make(chan outcome, items)} }

// item is one replica message waiting to be batched.
type item struct {
	id       uint64
	deadline time.Time
	write    subjects.NodeWrite
	read     subjects.NodeRead
}

// pending is what the fan-out remembers about a sent or queued item.
type pending struct {
	call *call
	node string
}

// batch is a message in flight to a node.
type batch struct {
	q        *nodeQueue
	ids      []uint64
	deadline time.Time
}

// itemSize estimates an item's bytes in a batch message.
func itemSize(it *item) int {
	n := 48 + len(it.write.Tenant) + len(it.write.Key) + len(it.read.Tenant) + len(it.read.Key)
	if v := it.write.LWW; v != nil {
		n += len(v.Value) + len(v.Dot.Actor)
	}
	return n
}

// fanout sends replica messages to storage nodes and routes their replies.
//
// One wildcard subscription on a private inbox receives every reply, so no
// request creates an inbox or a subscription. Per node and operation, a
// queue goroutine batches: when a slot is free it takes everything queued
// (up to maxBatch items) and sends it as one message; with maxInflight
// batches outstanding, items wait and leave together with the next batch.
// Under load this turns many small replica messages into few large ones
// (one NATS message, one Pebble batch, one fsync), and costs nothing when
// idle. No goroutine is created per replica message.
type fanout struct {
	nc          *nats.Conn
	log         *slog.Logger
	inbox       string // replies arrive on inbox.<batchID>
	maxInflight int
	maxBatch    int
	maxBytes    int // estimated bytes per batch message, below the server's max payload
	queueLen    int

	nextID atomic.Uint64

	mu      sync.Mutex
	items   map[uint64]pending
	batches map[uint64]*batch
	queues  map[string]*nodeQueue
	closed  bool

	sub  *nats.Subscription
	stop chan struct{}
	wg   sync.WaitGroup
}

// nodeQueue batches one operation's items for one node.
type nodeQueue struct {
	node  string
	op    string
	ch    chan item
	slots chan struct{}
}

func newFanout(nc *nats.Conn, log *slog.Logger, maxInflight, maxBatch, queueLen int) (*fanout, error) {
	f := &fanout{
		nc:          nc,
		log:         log,
		inbox:       nc.NewRespInbox(),
		maxInflight: maxInflight,
		maxBatch:    maxBatch,
		maxBytes:    max(int(nc.MaxPayload())-64<<10, 64<<10),
		queueLen:    queueLen,
		items:       make(map[uint64]pending),
		batches:     make(map[uint64]*batch),
		queues:      make(map[string]*nodeQueue),
		stop:        make(chan struct{}),
	}
	// NewRespInbox is "<prefix>.<token>"; use it as our private prefix.
	sub, err := nc.Subscribe(f.inbox+".*", f.onReply)
	if err != nil {
		return nil, fmt.Errorf("coordinator: subscribe replies: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	f.sub = sub
	f.wg.Add(1)
	go func() { defer f.wg.Done(); f.sweep() }()
	return f, nil
}

// close stops the queues and the reply subscription. Items still pending
// fail with errStopping.
func (f *fanout) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.stop)
	f.mu.Unlock()
	_ = f.sub.Unsubscribe()
	f.wg.Wait()
	f.mu.Lock()
	for id, p := range f.items {
		delete(f.items, id)
		p.call.ch <- outcome{node: p.node, err: errStopping}
	}
	f.mu.Unlock()
}

// send queues it for node under op, registered to deliver its outcome to c.
// It never blocks: a full queue fails the item at once.
func (f *fanout) send(c *call, node, op string, it item) {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		c.ch <- outcome{node: node, err: errStopping}
		return
	}
	q := f.queueLocked(node, op)
	f.items[it.id] = pending{call: c, node: node}
	f.mu.Unlock()
	select {
	case q.ch <- it:
	default:
		f.fail(it.id, errNodeOverloaded)
	}
}

func (f *fanout) newID() uint64 { return f.nextID.Add(1) }

func (f *fanout) queueLocked(node, op string) *nodeQueue {
	key := node + "\x00" + op
	q := f.queues[key]
	if q == nil {
		q = &nodeQueue{node: node, op: op, ch: make(chan item, f.queueLen), slots: make(chan struct{}, f.maxInflight)}
		f.queues[key] = q
		f.wg.Add(1)
		go func() { defer f.wg.Done(); f.runQueue(q) }()
	}
	return q
}

// runQueue is a node queue's batching loop. It owns q until f stops.
func (f *fanout) runQueue(q *nodeQueue) {
	subject := subjects.StorageNode(q.node, q.op)
	var (
		items []item
		carry *item // taken from the queue but did not fit the last batch
	)
	for {
		var first item
		if carry != nil {
			first, carry = *carry, nil
		} else {
			select {
			case first = <-q.ch:
			case <-f.stop:
				return
			}
		}
		select {
		case q.slots <- struct{}{}:
		case <-f.stop:
			return
		}
		items = append(items[:0], first)
		size := itemSize(&first)
	drain:
		for len(items) < f.maxBatch {
			select {
			case it := <-q.ch:
				if s := itemSize(&it); size+s > f.maxBytes {
					carry = &it
					break drain
				} else {
					size += s
				}
				items = append(items, it)
			default:
				break drain
			}
		}
		f.publish(q, subject, items)
	}
}

// publish sends items as one batch. Items whose request already gave up
// are dropped. It releases the slot itself when nothing is sent.
func (f *fanout) publish(q *nodeQueue, subject string, items []item) {
	now := time.Now()
	var (
		deadline time.Time
		ids      = make([]uint64, 0, len(items))
		data     []byte
		err      error
	)
	live := items[:0]
	for _, it := range items {
		if now.After(it.deadline) {
			f.forget(it.id)
			continue
		}
		live = append(live, it)
		ids = append(ids, it.id)
		if it.deadline.After(deadline) {
			deadline = it.deadline
		}
	}
	if len(live) == 0 {
		<-q.slots
		return
	}
	switch q.op {
	case subjects.NodeOpWrite:
		b := subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: make([]subjects.NodeWrite, len(live))}
		for i, it := range live {
			b.Items[i] = it.write
		}
		data, err = msgpack.Marshal(&b)
	default:
		b := subjects.NodeReadBatch{Proto: subjects.NodeProtocolVersion, Items: make([]subjects.NodeRead, len(live))}
		for i, it := range live {
			b.Items[i] = it.read
		}
		data, err = msgpack.Marshal(&b)
	}
	if err != nil {
		<-q.slots
		for _, id := range ids {
			f.fail(id, fmt.Errorf("encode batch: %w", err))
		}
		return
	}
	bid := f.newID()
	f.mu.Lock()
	f.batches[bid] = &batch{q: q, ids: ids, deadline: deadline}
	f.mu.Unlock()
	if err := f.nc.PublishRequest(subject, f.inbox+"."+strconv.FormatUint(bid, 10), data); err != nil {
		f.finishBatch(bid, func(id uint64) { f.fail(id, fmt.Errorf("publish to %s: %w", q.node, err)) })
	}
}

// onReply routes a node's reply to the items' calls. A batch may be
// answered in several replies; the one without More ends it, and items it
// left unanswered fail rather than wait for their timeout.
func (f *fanout) onReply(m *nats.Msg) {
	_, tok, _ := strings.Cut(m.Subject[len(f.inbox):], ".")
	bid, err := strconv.ParseUint(tok, 10, 64)
	if err != nil {
		return
	}
	if m.Header.Get("Status") == "503" { // no responders: the node is not subscribed
		f.finishBatch(bid, func(id uint64) { f.fail(id, errNodeUnreachable) })
		return
	}
	if e := subjects.ErrorFromHeaders(m.Header.Get); e != nil {
		f.finishBatch(bid, func(id uint64) { f.fail(id, e) })
		return
	}
	f.mu.Lock()
	b := f.batches[bid]
	f.mu.Unlock()
	if b == nil {
		return // expired already
	}
	more := false
	switch b.q.op {
	case subjects.NodeOpWrite:
		var r subjects.NodeWriteReply
		if err := msgpack.Unmarshal(m.Data, &r); err != nil {
			f.finishBatch(bid, func(id uint64) { f.fail(id, fmt.Errorf("bad reply from %s: %w", b.q.node, err)) })
			return
		}
		for i := range r.Results {
			res := &r.Results[i]
			o := outcome{node: b.q.node, write: res}
			if res.Err != "" {
				o.err = errors.New(res.Err)
			}
			f.deliver(res.ID, o)
		}
		more = r.More
	default:
		var r subjects.NodeReadReply
		if err := msgpack.Unmarshal(m.Data, &r); err != nil {
			f.finishBatch(bid, func(id uint64) { f.fail(id, fmt.Errorf("bad reply from %s: %w", b.q.node, err)) })
			return
		}
		for i := range r.Results {
			res := &r.Results[i]
			o := outcome{node: b.q.node, read: res}
			if res.Err != "" {
				o.err = errors.New(res.Err)
			}
			f.deliver(res.ID, o)
		}
		more = r.More
	}
	if !more {
		node := b.q.node
		f.finishBatch(bid, func(id uint64) { f.fail(id, fmt.Errorf("node %s did not answer the item", node)) })
	}
}

// takeBatch removes batch bid and frees its slot; nil if it is gone.
func (f *fanout) takeBatch(bid uint64) *batch {
	f.mu.Lock()
	b := f.batches[bid]
	delete(f.batches, bid)
	f.mu.Unlock()
	if b != nil {
		<-b.q.slots
	}
	return b
}

func (f *fanout) finishBatch(bid uint64, each func(id uint64)) {
	if b := f.takeBatch(bid); b != nil {
		for _, id := range b.ids {
			each(id)
		}
	}
}

// deliver hands o to the call waiting for item id, once.
func (f *fanout) deliver(id uint64, o outcome) {
	f.mu.Lock()
	p, ok := f.items[id]
	delete(f.items, id)
	f.mu.Unlock()
	if ok {
		p.call.ch <- o
	}
}

func (f *fanout) fail(id uint64, err error) {
	f.mu.Lock()
	p, ok := f.items[id]
	delete(f.items, id)
	f.mu.Unlock()
	if ok {
		p.call.ch <- outcome{node: p.node, err: err}
	}
}

// forget drops item id without an outcome: its request has already given up.
func (f *fanout) forget(id uint64) {
	f.mu.Lock()
	delete(f.items, id)
	f.mu.Unlock()
}

// sweep frees the slots of batches whose every request has given up, so a
// node that stopped answering (paused, partitioned) cannot hold its queue
// forever.
func (f *fanout) sweep() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case now := <-t.C:
			var expired []*batch
			f.mu.Lock()
			for bid, b := range f.batches {
				if now.After(b.deadline) {
					delete(f.batches, bid)
					expired = append(expired, b)
					for _, id := range b.ids {
						delete(f.items, id)
					}
				}
			}
			f.mu.Unlock()
			for _, b := range expired {
				<-b.q.slots
			}
		}
	}
}
