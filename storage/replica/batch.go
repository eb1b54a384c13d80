package replica

import (
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// item is one item waiting to be batched.
type item struct {
	id         uint64
	deadline   time.Time
	write      subjects.NodeWrite
	read       subjects.NodeRead
	call       *Call
	mapVersion uint64 // the call's; a batch holds items of one map version
}

// sentItem is an item of a batch in flight. done turns 1 when its outcome
// is delivered (or the client gave up on it), so it is delivered once
// whoever races to deliver it: the reply, a failure, or Stop.
type sentItem struct {
	id   uint64
	call *Call
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
func (b *batch) deliver(k int, o Outcome) {
	it := &b.items[k]
	if atomic.CompareAndSwapUint32(&it.done, 0, 1) {
		o.Node, o.ID = b.q.node, it.id
		it.call.ch <- o
	}
}

// failRest fails every item of b that has had no outcome yet.
func (b *batch) failRest(err error) {
	for k := range b.items {
		b.deliver(k, Outcome{Err: err})
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

// itemSize estimates an item's bytes in a batch message.
func itemSize(it *item) int {
	n := 48 + len(it.write.Tenant) + len(it.write.Key) + len(it.read.Tenant) + len(it.read.Key)
	n += subjects.VersionSize(it.write.LWW, it.write.DVV)
	if w := it.write.Coordinate; w != nil {
		n += len(w.Value.Data) + 24*len(w.Context)
	}
	return n
}

// nodeQueues are one node's queues, per operation, and its health.
type nodeQueues struct {
	write, read  *nodeQueue
	suspectUntil atomic.Int64 // unix nanos; see Suspect
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

// node returns node's queues, creating them on first use.
func (c *Client) node(node string) *nodeQueues {
	c.qmu.RLock()
	qs := c.queues[node]
	c.qmu.RUnlock()
	if qs != nil {
		return qs
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if qs = c.queues[node]; qs == nil {
		qs = &nodeQueues{
			write: &nodeQueue{node: node, op: subjects.NodeOpWrite, subject: subjects.StorageNode(node, subjects.NodeOpWrite)},
			read:  &nodeQueue{node: node, op: subjects.NodeOpRead, subject: subjects.StorageNode(node, subjects.NodeOpRead)},
		}
		c.queues[node] = qs
	}
	return qs
}

// dispatchLocked sends what q holds while slots are free. It is called
// with q.mu held and releases it.
func (c *Client) dispatchLocked(q *nodeQueue) {
	for len(q.queued) > 0 && q.inflight < c.cfg.MaxInflight {
		items := c.takeLocked(q)
		if len(items) == 0 {
			continue // all expired
		}
		q.inflight++
		q.mu.Unlock()
		c.publish(q, items)
		q.mu.Lock()
	}
	q.mu.Unlock()
}

// takeLocked removes the next batch from q's queue: up to MaxBatch live
// items within maxBytes, all of the first item's map version (a batch
// carries one; the rest wait for the next batch, in order). Items whose
// deadline passed are dropped.
func (c *Client) takeLocked(q *nodeQueue) []item {
	now := time.Now()
	n, size := 0, 0
	for n < len(q.queued) && n < c.cfg.MaxBatch && q.queued[n].mapVersion == q.queued[0].mapVersion {
		s := itemSize(&q.queued[n])
		if n > 0 && size+s > c.maxBytes {
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
func (c *Client) release(q *nodeQueue) {
	q.mu.Lock()
	q.inflight--
	if c.closed.Load() {
		q.mu.Unlock()
		return
	}
	c.dispatchLocked(q)
}

// publish sends items as one batch on a slot of q the caller took.
func (c *Client) publish(q *nodeQueue, items []item) {
	b := &batch{q: q, items: make([]sentItem, len(items)), sent: time.Now()}
	for i := range items {
		b.items[i] = sentItem{id: items[i].id, call: items[i].call}
		if items[i].deadline.After(b.deadline) {
			b.deadline = items[i].deadline
		}
	}
	buf := batchBufs.Get().(*[]byte)
	data := encode((*buf)[:0], q.op, c.Protocol(), items)
	putItems(items)
	bid := c.nextID.Add(1)
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		batchBufs.Put(buf)
		b.failRest(ErrStopping)
		return
	}
	c.batches[bid] = b
	c.mu.Unlock()
	if c.cfg.OnBatch != nil {
		c.cfg.OnBatch(q.op, len(items))
	}
	var rb [64]byte
	reply := string(strconv.AppendUint(append(append(rb[:0], c.inbox...), '.'), bid, 10))
	err := c.nc.PublishRequest(q.subject, reply, data)
	// NATS has copied data into its buffer.
	*buf = data[:0]
	if cap(data) <= maxPooledBatch {
		batchBufs.Put(buf)
	}
	if err != nil {
		c.finish(bid, fmt.Errorf("publish to %s: %w", q.node, err))
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

// encode appends the batch message of items, all of one map version, to
// dst in node protocol proto.
func encode(dst []byte, op string, proto int, items []item) []byte {
	var v uint64
	if len(items) > 0 {
		v = items[0].mapVersion
	}
	if op == subjects.NodeOpWrite {
		dst = wire.AppendNodeWriteBatchHeader(dst, proto, len(items))
		for i := range items {
			dst = wire.AppendNodeWrite(dst, &items[i].write)
		}
		return wire.AppendNodeBatchEnd(dst, proto, v)
	}
	dst = wire.AppendNodeReadBatchHeader(dst, proto, len(items))
	for i := range items {
		dst = wire.AppendNodeRead(dst, &items[i].read)
	}
	return wire.AppendNodeBatchEnd(dst, proto, v)
}

// take removes batch bid; nil if it is gone (answered, expired or
// stopping).
func (c *Client) take(bid uint64) *batch {
	c.mu.Lock()
	b := c.batches[bid]
	delete(c.batches, bid)
	c.mu.Unlock()
	return b
}

// finish ends batch bid: the items it left unanswered fail with err, and
// its slot is freed.
func (c *Client) finish(bid uint64, err error) {
	if b := c.take(bid); b != nil {
		b.failRest(err)
		c.release(b.q)
	}
}

// onReply is the one reply router: it routes a node's reply to the items'
// calls. A batch may be answered in several replies; the one without More
// ends it, and items it left unanswered fail rather than wait for their
// deadline.
func (c *Client) onReply(m *nats.Msg) {
	bid, err := strconv.ParseUint(m.Subject[min(len(c.inbox)+1, len(m.Subject)):], 10, 64)
	if err != nil {
		return
	}
	if m.Header.Get("Status") == "503" { // no responders: the node is not subscribed
		c.finish(bid, ErrNodeDown)
		return
	}
	if e := subjects.ErrorFromHeaders(m.Header.Get); e != nil {
		c.finish(bid, batchError(e))
		return
	}
	c.mu.Lock()
	b := c.batches[bid]
	c.mu.Unlock()
	if b == nil {
		return // expired already
	}
	more, err := c.route(b, m.Data)
	switch {
	case err != nil:
		c.finish(bid, fmt.Errorf("bad reply from %s: %w", b.q.node, err))
	case !more:
		c.finish(bid, fmt.Errorf("node %s did not answer the item", b.q.node))
	}
}

// route decodes one reply to b and delivers each result it holds to its
// item; more is the reply's More flag. A reply that does not decode
// delivers nothing. Only the decoding differs by operation.
func (c *Client) route(b *batch, data []byte) (more bool, err error) {
	if b.q.op == subjects.NodeOpWrite {
		var r subjects.NodeWriteReply
		if err := wire.UnmarshalNodeWriteReply(data, &r); err != nil {
			return false, err
		}
		for i := range r.Results {
			b.deliverResult(r.Results[i].ID, r.Results[i].Kind, r.Results[i].Err, Outcome{Write: &r.Results[i]})
		}
		return r.More, nil
	}
	if b.next == 0 {
		c.observeRead(time.Since(b.sent))
	}
	var r subjects.NodeReadReply
	if err := wire.UnmarshalNodeReadReply(data, &r); err != nil {
		return false, err
	}
	for i := range r.Results {
		b.deliverResult(r.Results[i].ID, "", r.Results[i].Err, Outcome{Read: &r.Results[i]})
	}
	return r.More, nil
}

// deliverResult delivers o, a node's result for item id that failed with
// errText (of kind, when set) unless it is empty, to the item, if b holds
// it. A not_owner refusal matches ErrNotOwner.
func (b *batch) deliverResult(id uint64, kind, errText string, o Outcome) {
	if errText != "" {
		o.Err = errors.New(errText)
		if subjects.ItemKind(kind, errText) == subjects.KindNotOwner {
			o.Err = &wrapped{msg: errText, is: ErrNotOwner}
		}
	}
	if k := b.find(id); k >= 0 {
		b.deliver(k, o)
	}
}

// sweep frees the slots of batches whose every item's deadline passed, so
// a node that stopped answering (paused, partitioned) cannot hold its
// queue forever.
func (c *Client) sweep() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			var expired []*batch
			c.mu.Lock()
			for bid, b := range c.batches {
				if now.After(b.deadline) {
					delete(c.batches, bid)
					expired = append(expired, b)
				}
			}
			c.mu.Unlock()
			for _, b := range expired {
				// Their callers have given up: no outcome is owed.
				for k := range b.items {
					atomic.StoreUint32(&b.items[k].done, 1)
				}
				c.release(b.q)
			}
		}
	}
}
