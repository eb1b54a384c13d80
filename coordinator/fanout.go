package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
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
// item, and each item delivers exactly one outcome (or none, once its
// request gave up), so delivering never blocks.
type call struct {
	ch chan outcome
}

// lostTo reports whether the outcome is an lww write that lost its merge,
// and the dot that beat it (see subjects.NodeWriteResult.Lost).
func (o *outcome) lostTo() (vclock.Dot, bool) {
	if o.err != nil || o.write == nil {
		return vclock.Dot{}, false
	}
	return o.write.Lost()
}

func newCall(items int) *call { return &call{ch: make(chan outcome, items)} }

// item is one replica message waiting to be batched.
type item struct {
	id       uint64
	deadline time.Time
	write    subjects.NodeWrite
	read     subjects.NodeRead
	call     *call // set by send
}

// sentItem is an item of a batch in flight. done turns 1 when its outcome
// is delivered (or the fan-out gave up on it), so it is delivered once
// whoever races to deliver it: the reply, a failure, or close.
type sentItem struct {
	id   uint64
	call *call
	done uint32
}

// batch is a message in flight to a node.
type batch struct {
	q        *nodeQueue
	items    []sentItem
	next     int // the item the next result should be; used by onReply only
	deadline time.Time
	sent     time.Time
}

// deliver hands o to item k's call unless it has had its outcome.
func (b *batch) deliver(k int, o outcome) {
	it := &b.items[k]
	if atomic.CompareAndSwapUint32(&it.done, 0, 1) {
		it.call.ch <- o
	}
}

// failRest fails every item of b that has had no outcome yet.
func (b *batch) failRest(err error) {
	for k := range b.items {
		b.deliver(k, outcome{node: b.q.node, err: err})
	}
}

// itemSize estimates an item's bytes in a batch message.
func itemSize(it *item) int {
	n := 48 + len(it.write.Tenant) + len(it.write.Key) + len(it.read.Tenant) + len(it.read.Key)
	n += subjects.VersionSize(it.write.LWW, it.write.DVV)
	if w := it.write.Coordinate; w != nil {
		n += len(w.Value.Data) + 24*len(w.Context)
	}
	return n
}

// fanout sends replica messages to storage nodes and routes their replies.
//
// One wildcard subscription on a private inbox receives every reply, so no
// request creates an inbox or a subscription. Per node and operation, at
// most maxInflight batches are outstanding. An item that finds a slot free
// leaves at once, in the sender's goroutine, as a batch of everything
// queued for that node (up to maxBatch items); otherwise it waits in the
// queue and leaves with the batch sent when a reply frees a slot. Under
// load this turns many small replica messages into few large ones (one
// NATS message, one Pebble batch, one fsync), costs nothing when idle, and
// needs no goroutine per node or per replica message: batches are sent by
// the requests' goroutines and by the reply handler.
type fanout struct {
	nc          *nats.Conn
	log         *slog.Logger
	inbox       string // replies arrive on inbox.<batchID>
	maxInflight int
	maxBatch    int
	maxBytes    int // estimated bytes per batch message, below the server's max payload
	queueLen    int
	metrics     *metrics.Coordinator // nil records nothing; set before the first send

	nextID atomic.Uint64

	// readRTT is a moving average of read batches' round trips, in
	// nanoseconds: the base of the adaptive speculative retry delay.
	readRTT atomic.Int64

	qmu    sync.RWMutex
	queues map[string]*nodeQueues // by node id

	mu      sync.Mutex
	batches map[uint64]*batch
	closed  atomic.Bool // set under mu

	sub  *nats.Subscription
	stop chan struct{}
	wg   sync.WaitGroup
}

// nodeQueues are one node's queues, per operation, and its health.
type nodeQueues struct {
	write, read  *nodeQueue
	suspectUntil atomic.Int64 // unix nanos; see suspect
}

// nodeQueue batches one operation's items for one node.
type nodeQueue struct {
	node    string
	op      string
	subject string

	mu       sync.Mutex
	queued   []item // waiting for a slot, oldest first
	spare    []item // the previous queued array, reused
	inflight int
}

// suspectFor is how long a node that failed or was slow is asked last.
const suspectFor = time.Second

// suspect marks node as failing or slow: reads ask it last for a while.
func (f *fanout) suspect(node string) {
	f.node(node).suspectUntil.Store(time.Now().Add(suspectFor).UnixNano())
}

// suspected reports whether node failed or was slow recently.
func (f *fanout) suspected(node string, now time.Time) bool {
	return now.UnixNano() < f.node(node).suspectUntil.Load()
}

// speculativeDelay is how long a read waits for the primaries it asked
// before it asks the others: four times the recent mean read round trip
// (about its 99th percentile), within 5ms..200ms. The floor keeps a busy
// machine's scheduling hiccups from triggering spare reads.
func (f *fanout) speculativeDelay() time.Duration {
	return min(max(4*time.Duration(f.readRTT.Load()), 5*time.Millisecond), 200*time.Millisecond)
}

// observeRead folds a read batch's round trip into readRTT (weight 1/16;
// a lost update under contention only drops one sample).
func (f *fanout) observeRead(rtt time.Duration) {
	old := f.readRTT.Load()
	f.readRTT.Store(old + (int64(rtt)-old)/16)
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
		batches:     make(map[uint64]*batch),
		queues:      make(map[string]*nodeQueues),
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

// close stops the fan-out: items queued or in flight fail with
// errStopping, and later sends fail at once.
func (f *fanout) close() {
	f.mu.Lock()
	if f.closed.Load() {
		f.mu.Unlock()
		return
	}
	f.closed.Store(true)
	close(f.stop)
	f.mu.Unlock()
	_ = f.sub.Unsubscribe()
	f.wg.Wait()
	f.qmu.RLock()
	for _, qs := range f.queues {
		for _, q := range []*nodeQueue{qs.write, qs.read} {
			q.mu.Lock()
			queued := q.queued
			q.queued = nil
			q.mu.Unlock()
			for _, it := range queued {
				it.call.ch <- outcome{node: q.node, err: errStopping}
			}
		}
	}
	f.qmu.RUnlock()
	f.mu.Lock()
	batches := f.batches
	f.batches = map[uint64]*batch{}
	f.mu.Unlock()
	for _, b := range batches {
		b.failRest(errStopping)
	}
}

// send queues it for node under op, registered to deliver its outcome to
// c, and sends a batch at once if a slot is free. It never waits for a
// reply: a full queue fails the item at once.
func (f *fanout) send(c *call, node, op string, it item) {
	it.call = c
	q := f.queue(node, op)
	q.mu.Lock()
	if f.closed.Load() {
		q.mu.Unlock()
		c.ch <- outcome{node: node, err: errStopping}
		return
	}
	if len(q.queued) >= f.queueLen {
		q.mu.Unlock()
		c.ch <- outcome{node: node, err: errNodeOverloaded}
		return
	}
	q.queued = append(q.queued, it)
	f.dispatchLocked(q) // unlocks
}

func (f *fanout) newID() uint64 { return f.nextID.Add(1) }

// queue returns the queue of op on node, creating it on first use.
func (f *fanout) queue(node, op string) *nodeQueue {
	qs := f.node(node)
	if op == subjects.NodeOpWrite {
		return qs.write
	}
	return qs.read
}

// node returns node's queues, creating them on first use.
func (f *fanout) node(node string) *nodeQueues {
	f.qmu.RLock()
	qs := f.queues[node]
	f.qmu.RUnlock()
	if qs != nil {
		return qs
	}
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if qs = f.queues[node]; qs == nil {
		qs = &nodeQueues{
			write: &nodeQueue{node: node, op: subjects.NodeOpWrite, subject: subjects.StorageNode(node, subjects.NodeOpWrite)},
			read:  &nodeQueue{node: node, op: subjects.NodeOpRead, subject: subjects.StorageNode(node, subjects.NodeOpRead)},
		}
		f.queues[node] = qs
	}
	return qs
}

// dispatchLocked sends what q holds while slots are free. It is called
// with q.mu held and releases it.
func (f *fanout) dispatchLocked(q *nodeQueue) {
	for len(q.queued) > 0 && q.inflight < f.maxInflight {
		items := f.takeLocked(q)
		if len(items) == 0 {
			continue // all expired
		}
		q.inflight++
		q.mu.Unlock()
		f.publish(q, items)
		q.mu.Lock()
	}
	q.mu.Unlock()
}

// takeLocked removes the next batch from q's queue: up to maxBatch live
// items within maxBytes. Items whose request gave up are dropped.
func (f *fanout) takeLocked(q *nodeQueue) []item {
	now := time.Now()
	n, size := 0, 0
	for n < len(q.queued) && n < f.maxBatch {
		s := itemSize(&q.queued[n])
		if n > 0 && size+s > f.maxBytes {
			break
		}
		size += s
		n++
	}
	items := getItems(n)
	for _, it := range q.queued[:n] {
		if !now.After(it.deadline) {
			items = append(items, it)
		}
	}
	rest := q.queued[n:]
	if len(rest) == 0 {
		clear(q.queued)
		q.queued = q.queued[:0]
	} else {
		q.spare = append(q.spare[:0], rest...)
		clear(q.queued)
		q.queued, q.spare = q.spare, q.queued[:0]
	}
	return items
}

// release frees one of q's slots and sends what waits for it.
func (f *fanout) release(q *nodeQueue) {
	q.mu.Lock()
	q.inflight--
	if f.closed.Load() {
		q.mu.Unlock()
		return
	}
	f.dispatchLocked(q)
}

// publish sends items as one batch on a slot of q the caller took.
func (f *fanout) publish(q *nodeQueue, items []item) {
	b := &batch{q: q, items: make([]sentItem, len(items)), sent: time.Now()}
	for i := range items {
		b.items[i] = sentItem{id: items[i].id, call: items[i].call}
		if items[i].deadline.After(b.deadline) {
			b.deadline = items[i].deadline
		}
	}
	buf := batchBufs.Get().(*[]byte)
	data := f.encode((*buf)[:0], q.op, items)
	putItems(items)
	bid := f.newID()
	f.mu.Lock()
	if f.closed.Load() {
		f.mu.Unlock()
		batchBufs.Put(buf)
		b.failRest(errStopping)
		return
	}
	f.batches[bid] = b
	f.mu.Unlock()
	f.metrics.Batch(q.op, len(items))
	var rb [64]byte
	reply := string(strconv.AppendUint(append(append(rb[:0], f.inbox...), '.'), bid, 10))
	err := f.nc.PublishRequest(q.subject, reply, data)
	// NATS has copied data into its buffer.
	*buf = data[:0]
	if cap(data) <= maxPooledBatch {
		batchBufs.Put(buf)
	}
	if err != nil {
		if b := f.take(bid); b != nil {
			b.failRest(fmt.Errorf("publish to %s: %w", q.node, err))
			f.release(q)
		}
	}
}

// itemSlices pools the slices takeLocked hands to publish.
var itemSlices sync.Pool

func getItems(n int) []item {
	if p, ok := itemSlices.Get().(*[]item); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]item, 0, max(n, 16))
}

func putItems(items []item) {
	clear(items) // drop the calls and values they hold
	items = items[:0]
	itemSlices.Put(&items)
}

// batchBufs pools the buffers batches are encoded into.
var batchBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

const maxPooledBatch = 1 << 20

// encode appends the batch message of items to dst.
func (f *fanout) encode(dst []byte, op string, items []item) []byte {
	if op == subjects.NodeOpWrite {
		dst = wire.AppendNodeWriteBatchHeader(dst, subjects.NodeProtocolVersion, len(items))
		for i := range items {
			dst = wire.AppendNodeWrite(dst, &items[i].write)
		}
		return dst
	}
	dst = wire.AppendNodeReadBatchHeader(dst, subjects.NodeProtocolVersion, len(items))
	for i := range items {
		dst = wire.AppendNodeRead(dst, &items[i].read)
	}
	return dst
}

// take removes batch bid; nil if it is gone (answered, expired or
// stopping).
func (f *fanout) take(bid uint64) *batch {
	f.mu.Lock()
	b := f.batches[bid]
	delete(f.batches, bid)
	f.mu.Unlock()
	return b
}

// finish ends batch bid: the items it left unanswered fail with err, and
// its slot is freed.
func (f *fanout) finish(bid uint64, err error) {
	if b := f.take(bid); b != nil {
		b.failRest(err)
		f.release(b.q)
	}
}

// onReply routes a node's reply to the items' calls. A batch may be
// answered in several replies; the one without More ends it, and items it
// left unanswered fail rather than wait for their timeout.
func (f *fanout) onReply(m *nats.Msg) {
	bid, err := strconv.ParseUint(m.Subject[min(len(f.inbox)+1, len(m.Subject)):], 10, 64)
	if err != nil {
		return
	}
	if m.Header.Get("Status") == "503" { // no responders: the node is not subscribed
		f.finish(bid, errNodeUnreachable)
		return
	}
	if e := subjects.ErrorFromHeaders(m.Header.Get); e != nil {
		f.finish(bid, e)
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
		if err := wire.UnmarshalNodeWriteReply(m.Data, &r); err != nil {
			f.finish(bid, fmt.Errorf("bad reply from %s: %w", b.q.node, err))
			return
		}
		for i := range r.Results {
			res := &r.Results[i]
			o := outcome{node: b.q.node, write: res}
			if res.Err != "" {
				o.err = errors.New(res.Err)
			}
			if k := b.find(res.ID); k >= 0 {
				b.deliver(k, o)
			}
		}
		more = r.More
	default:
		if b.next == 0 {
			f.observeRead(time.Since(b.sent))
		}
		var r subjects.NodeReadReply
		if err := wire.UnmarshalNodeReadReply(m.Data, &r); err != nil {
			f.finish(bid, fmt.Errorf("bad reply from %s: %w", b.q.node, err))
			return
		}
		for i := range r.Results {
			res := &r.Results[i]
			o := outcome{node: b.q.node, read: res}
			if res.Err != "" {
				o.err = errors.New(res.Err)
			}
			if k := b.find(res.ID); k >= 0 {
				b.deliver(k, o)
			}
		}
		more = r.More
	}
	if !more {
		f.finish(bid, fmt.Errorf("node %s did not answer the item", b.q.node))
	}
}

// find returns the index of item id in b, or -1. Nodes answer in order,
// so the next expected item is checked first.
func (b *batch) find(id uint64) int {
	if b.next < len(b.items) && b.items[b.next].id == id {
		b.next++
		return b.next - 1
	}
	for k := range b.items {
		if b.items[k].id == id {
			return k
		}
	}
	return -1
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
				}
			}
			f.mu.Unlock()
			for _, b := range expired {
				// Their requests have given up: no outcome is owed.
				for k := range b.items {
					atomic.StoreUint32(&b.items[k].done, 1)
				}
				f.release(b.q)
			}
		}
	}
}
