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
	resentAged bool   // sent again once already because its batch was old (see lend)
	// once is shared by every copy of the item sent (set when it is first
	// published): the first copy to deliver an outcome turns it 1, so an
	// item sent again while its first batch may still be answered has
	// one outcome, whichever answer comes first.
	once *uint32
}

// claim reports whether the caller may deliver the item's outcome: no
// copy of it has.
func (it *item) claim() bool { return it.once == nil || atomic.CompareAndSwapUint32(it.once, 0, 1) }

// resendable reports whether it may be sent to its node again after its
// batch was lost: a read, or a write the node merges (applying it twice
// is applying it once). A siblings coordinating write is not: the node
// mints a dot for it, so a second application is a second value (its
// caller moves on to the next owner instead).
func (it *item) resendable() bool { return it.write.Coordinate == nil }

// sentItem is an item of a batch in flight. done turns 1 when this copy
// delivered the outcome, the client gave up on it, or it was taken back to
// be sent again (its batch is lost), so this copy delivers at most once
// whoever races to deliver it: the reply, a failure, Stop or a resend;
// item.once makes that one outcome across the item's copies.
type sentItem struct {
	item
	done uint32
}

// The states of a batch's in-flight slot (batch.slot).
const (
	slotHeld  int32 = iota // the batch holds one of its queue's slots
	slotLent               // presumed lost: its slot went to the next batch (nodeQueue.lent)
	slotFreed              // the batch ended
)

// batch is a message in flight to a node.
type batch struct {
	q        *nodeQueue
	items    []sentItem
	next     int // the item the next result should be; used by onReply only
	deadline time.Time
	sent     time.Time
	slot     atomic.Int32 // slotHeld, slotLent or slotFreed
}

// deliver hands o to item k's call unless it has had its outcome.
func (b *batch) deliver(k int, o Outcome) {
	it := &b.items[k]
	if atomic.CompareAndSwapUint32(&it.done, 0, 1) && it.claim() {
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
	answered     atomic.Int64 // unix nanos of the node's last reply (not a no-responders)
}

// nodeQueue batches one operation's items for one node.
type nodeQueue struct {
	node    string
	op      string
	subject string
	health  *nodeQueues // the node's, shared by its queues

	mu       sync.Mutex
	queued   []item // waiting for a slot, oldest first
	spare    []item // the previous queued array, reused
	parked   []item // lost with their batch; queued again on the sweeper's next tick
	inflight int    // slots held (slotHeld batches)
	lent     int    // batches presumed lost whose slots were lent, MaxInflight at most
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
		qs.write.health, qs.read.health = qs, qs
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
	once := make([]uint32, len(items))
	for i := range items {
		b.items[i] = sentItem{item: items[i]}
		if b.items[i].once == nil {
			b.items[i].once = &once[i]
		}
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
		c.free(b)
	}
}

// free ends b's hold on its queue: the slot it holds is released, or,
// when its slot was lent, its place among the lent.
func (c *Client) free(b *batch) {
	if b.slot.CompareAndSwap(slotHeld, slotFreed) {
		c.release(b.q)
		return
	}
	if b.slot.CompareAndSwap(slotLent, slotFreed) {
		b.q.mu.Lock()
		b.q.lent--
		b.q.mu.Unlock()
	}
}

// lend presumes b lost: its slot goes to the next batch, unless
// MaxInflight batches of its queue are lent already (then b keeps it and
// nothing changes). When it lends and resend is set, b's resendable items
// without an outcome are parked to be sent again. Items that are not
// resendable keep waiting for b's reply or their deadline: b stays
// routable, and a late reply still reaches the items it did not resend.
// The cap bounds what a node that is paused rather than gone is sent.
func (c *Client) lend(b *batch, resend bool) {
	q := b.q
	q.mu.Lock()
	if q.lent >= c.cfg.MaxInflight || !b.slot.CompareAndSwap(slotHeld, slotLent) {
		q.mu.Unlock()
		return
	}
	parked := 0
	if resend {
		parked = c.parkLocked(b, true)
	}
	q.inflight--
	q.lent++
	if c.closed.Load() {
		q.mu.Unlock()
		return
	}
	c.dispatchLocked(q) // unlocks
	c.resent(ResendAged, parked)
}

// parkLocked parks a copy of each of b's resendable items that has no
// outcome yet on b's queue, to be sent in a new batch on the sweeper's
// next tick. Without aged (b is lost: its node went away) b's copy is
// taken back: it delivers nothing more. With aged (b is presumed lost
// only by its age: the node may just be slow) b's copy stays, and the
// first answer of either delivers; an item is sent again so once at most,
// so a slow node is not sent the same item again and again while it
// works. It is called with b.q.mu held.
func (c *Client) parkLocked(b *batch, aged bool) (parked int) {
	for k := range b.items {
		it := &b.items[k]
		if !it.resendable() || (aged && it.resentAged) {
			continue
		}
		if aged {
			if atomic.LoadUint32(&it.done) != 0 {
				continue
			}
			it.resentAged = true
		} else if !atomic.CompareAndSwapUint32(&it.done, 0, 1) {
			continue
		}
		if c.closed.Load() {
			if it.claim() {
				it.call.ch <- Outcome{Node: b.q.node, ID: it.id, Err: ErrStopping}
			}
			continue
		}
		b.q.parked = append(b.q.parked, it.item)
		parked++
	}
	return parked
}

// resent reports items of a batch parked to be sent again, for reason.
func (c *Client) resent(reason string, items int) {
	if c.cfg.OnResend != nil && items > 0 {
		c.cfg.OnResend(reason, items)
	}
}

// lostAfter is how long a batch may stay unanswered before it is presumed
// lost with a node that stopped after it was sent (it is never answered
// then): its slot is lent and its resendable items are sent again once.
// The floor under lostAfterRTTs read round trips.
const (
	lostAfter     = time.Second
	lostAfterRTTs = 16
)

// nodeGone handles a no-responders answer to batch bid: nobody serves the
// node's subject now. A node that answered within RestartGrace is most
// likely restarting, so the batch's resendable items are parked for the
// next tick rather than failed; the rest fail with ErrNodeDown. Every
// batch sent to the node before bid and still unanswered was delivered to
// the process that went away: each is presumed lost (lend) at once.
func (c *Client) nodeGone(bid uint64) {
	b := c.take(bid)
	if b == nil {
		return
	}
	health := b.q.health
	restarting := time.Since(time.Unix(0, health.answered.Load())) < c.cfg.RestartGrace
	if restarting {
		b.q.mu.Lock()
		parked := c.parkLocked(b, false)
		b.q.mu.Unlock()
		c.resent(ResendRestarting, parked)
	}
	b.failRest(ErrNodeDown)
	c.free(b)
	var lost []*batch
	c.mu.Lock()
	for _, o := range c.batches {
		if o.q.health == health && o.sent.Before(b.sent) {
			lost = append(lost, o)
		}
	}
	c.mu.Unlock()
	for _, o := range lost {
		if restarting {
			o.q.mu.Lock()
			parked := c.parkLocked(o, false)
			o.q.mu.Unlock()
			c.resent(ResendLost, parked)
		}
		c.lend(o, false)
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
		c.nodeGone(bid)
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
	b.q.health.answered.Store(time.Now().UnixNano())
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

// sweep, every 50ms: frees the slots of batches whose every item's
// deadline passed, so a node that stopped answering (paused, partitioned)
// cannot hold its queue forever; lends the slots of batches unanswered
// for lostAfter and sends their resendable items again (a batch lost with
// a node that stopped is never answered: without this, requests queued
// behind it waited for its deadline, even once the node was back); and
// queues the parked items again.
func (c *Client) sweep() {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			c.sweepOnce(now)
		}
	}
}

// sweepOnce is one tick of sweep at now.
func (c *Client) sweepOnce(now time.Time) {
	var expired, lost []*batch
	lostAt := now.Add(-max(lostAfter, lostAfterRTTs*time.Duration(c.readRTT.Load())))
	c.mu.Lock()
	for bid, b := range c.batches {
		switch {
		case now.After(b.deadline):
			delete(c.batches, bid)
			expired = append(expired, b)
		case b.sent.Before(lostAt) && b.slot.Load() == slotHeld:
			lost = append(lost, b)
		}
	}
	c.mu.Unlock()
	for _, b := range expired {
		// Their callers have given up: no outcome is owed.
		for k := range b.items {
			atomic.StoreUint32(&b.items[k].done, 1)
		}
		c.free(b)
	}
	for _, b := range lost {
		c.lend(b, true)
	}
	c.qmu.RLock()
	var parked []*nodeQueue
	for _, qs := range c.queues {
		for _, q := range []*nodeQueue{qs.write, qs.read} {
			q.mu.Lock()
			if len(q.parked) > 0 {
				parked = append(parked, q)
			}
			q.mu.Unlock()
		}
	}
	c.qmu.RUnlock()
	for _, q := range parked {
		q.mu.Lock()
		// Parked items go first: they are the oldest.
		q.spare = append(append(q.spare[:0], q.parked...), q.queued...)
		clear(q.parked)
		q.parked = q.parked[:0]
		clear(q.queued)
		q.queued, q.spare = q.spare, q.queued[:0]
		if c.closed.Load() {
			q.mu.Unlock()
			continue
		}
		c.dispatchLocked(q) // unlocks
	}
}
