package replica

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/settings"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Why items are sent again (Config.OnResend).
const (
	ResendRestarting = "restarting" // no responders from a node that answered within RestartGrace
	ResendLost       = "lost"       // in flight to a node that went away since
	ResendAged       = "aged"       // unanswered for lostAfter: lost, or a slow node
)

// Errors an Outcome can carry besides the node's own (see the package doc
// for which fail a batch and which an item).
var (
	// ErrNodeDown: nobody serves the node's subject (no responders).
	ErrNodeDown = errors.New("node has no subscribers (down)")
	// ErrOverloaded matches a node's 429 answer and ErrQueueFull.
	ErrOverloaded = errors.New("node overloaded")
	// ErrQueueFull: the client's own queue for the node and operation is
	// full; the item was not sent. It matches ErrOverloaded.
	ErrQueueFull = &wrapped{msg: "node queue full at this coordinator", is: ErrOverloaded}
	// ErrStopping: the client was stopped before the item had an outcome.
	ErrStopping = errors.New("coordinator stopping")
	// ErrNotOwner matches an item a node refused because the call's map
	// version is older than the version in which the item's partition
	// last changed in the node's map (subjects.KindNotOwner): nothing was
	// applied; reload the map and retry.
	ErrNotOwner = errors.New(subjects.KindNotOwner)
)

// wrapped is an error with its own text that also matches is.
type wrapped struct {
	msg string
	is  error
	err error // optional cause
}

func (e *wrapped) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return e.msg
}

func (e *wrapped) Unwrap() []error {
	if e.err != nil {
		return []error{e.err, e.is}
	}
	return []error{e.is}
}

// batchError turns the error headers of a node's reply into the error of
// every item of its batch: the *subjects.Error itself, which also matches
// ErrOverloaded when the node answered 429.
func batchError(e *subjects.Error) error {
	if e.Kind == subjects.KindOverloaded {
		return &wrapped{err: e, is: ErrOverloaded}
	}
	return e
}

// PayloadLimit is the estimated size a batch message fills at most under
// a server max payload of maxPayload bytes: the max payload less
// subjects.ReplyHeadroom, and never below 64 KiB. A node chunks its
// replies by the same limit.
func PayloadLimit(maxPayload int64) int {
	return max(int(maxPayload)-subjects.ReplyHeadroom, 64<<10)
}

// Outcome is one node's answer to one item. Exactly one of Write and Read
// is set when the node answered the item, even when its result carries an
// error; both are nil when the batch failed or the item was never sent.
// The results are owned by the receiver.
type Outcome struct {
	Node  string
	ID    uint64 // the item's ID, as Write and Read returned it
	Write *subjects.NodeWriteResult
	Read  *subjects.NodeReadResult
	Err   error // nil: the item was applied (write) or answered (read)
}

// LostTo reports whether the outcome is an lww write that lost its merge,
// and the dot that beat it (see subjects.NodeWriteResult.Lost).
func (o *Outcome) LostTo() (vclock.Dot, bool) {
	if o.Err != nil || o.Write == nil {
		return vclock.Dot{}, false
	}
	return o.Write.Lost()
}

// Call collects the outcomes of one caller's items. It has room for as
// many outcomes as NewCall was given, and each item delivers exactly one
// outcome (or none, once its deadline passed), so delivering never
// blocks: a caller must not send more items through a Call than it has
// room for.
type Call struct {
	ch         chan Outcome
	mapVersion uint64
}

// NewCall returns a Call with room for the outcomes of items items, whose
// items are sent unfenced (map version 0: repair, hints, handoff).
func NewCall(items int) *Call { return &Call{ch: make(chan Outcome, items)} }

// NewCallAt returns a Call like NewCall whose items are sent with the
// caller's placement map version mapVersion (node protocol 2): a node
// refuses an item whose partition changed after it (ErrNotOwner). Only
// items of the same map version share a batch.
func NewCallAt(items int, mapVersion uint64) *Call {
	return &Call{ch: make(chan Outcome, items), mapVersion: mapVersion}
}

// MapVersion returns the map version the call's items are sent with.
func (c *Call) MapVersion() uint64 { return c.mapVersion }

// Outcomes delivers the outcomes of the items sent through the call, in
// the order they arrive.
func (c *Call) Outcomes() <-chan Outcome { return c.ch }

// Config tunes a Client. A zero field takes DefaultConfig's value.
type Config struct {
	MaxInflight int // batches in flight per node and operation (2)
	MaxBatch    int // items per batch message at most (512)
	QueueLen    int // items queued per node and operation; past it ErrQueueFull (16384)
	// RestartGrace is how long after a node's last reply a no-responders
	// answer is taken for a restart rather than an outage (2s): the
	// batch's resendable items are sent again every 50ms, within their
	// deadline, instead of failing with ErrNodeDown at once. After it, no
	// responders fails at once. A nanosecond turns it off.
	RestartGrace time.Duration

	// OnBatch, when set, is called with each batch sent (operation, items),
	// on the sender's goroutine; it must not block.
	OnBatch func(op string, items int)
	// OnResend, when set, is called with the items of a batch that are
	// to be sent again and why: ResendRestarting, ResendLost or
	// ResendAged (see the package doc, "Lost batches"); it must not block.
	OnResend func(reason string, items int)
}

// DefaultConfig returns the coordinators' settings.
func DefaultConfig() Config {
	return Config{MaxInflight: 2, MaxBatch: 512, QueueLen: 16384, RestartGrace: 2 * time.Second}
}

func (c *Config) validate() error {
	d := DefaultConfig()
	return errors.Join(
		settings.Default("replica: max inflight", &c.MaxInflight, d.MaxInflight),
		settings.Default("replica: max batch", &c.MaxBatch, d.MaxBatch),
		settings.Default("replica: queue len", &c.QueueLen, d.QueueLen),
		settings.Default("replica: restart grace", &c.RestartGrace, d.RestartGrace),
	)
}

// Client sends items to storage nodes in batches and routes the replies
// (see the package doc). It is safe for concurrent use.
//
// Per node and operation, at most MaxInflight batches are outstanding. An
// item that finds a slot free leaves at once, in the sender's goroutine,
// as a batch of everything queued for that node (up to MaxBatch items
// within PayloadLimit); otherwise it waits in the queue and leaves with
// the batch sent when a reply frees a slot. Under load this turns many
// small items into few large messages (one NATS message, one Pebble
// batch, one fsync), costs nothing when idle, and needs no goroutine per
// node or per item: batches are sent by the senders' goroutines and by
// the reply handler.
type Client struct {
	nc       *nats.Conn
	cfg      Config
	inbox    string // replies arrive on inbox.<batchID>
	maxBytes int    // estimated bytes per batch message

	nextID atomic.Uint64
	proto  atomic.Int64 // the node protocol batches and scans are written in (SetProtocol)

	// readRTT is a moving average of read batches' round trips, in
	// nanoseconds: the base of SpeculativeDelay.
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

// New starts a client on nc, which the caller keeps owning: it subscribes
// to its reply inbox and starts the sweeper that frees the slots of
// batches whose items all expired. Stop it with Stop.
func New(nc *nats.Conn, cfg Config) (*Client, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	c := &Client{
		nc:       nc,
		cfg:      cfg,
		inbox:    nc.NewRespInbox(),
		maxBytes: PayloadLimit(nc.MaxPayload()),
		batches:  make(map[uint64]*batch),
		queues:   make(map[string]*nodeQueues),
		stop:     make(chan struct{}),
	}
	c.proto.Store(subjects.NodeProtocolBatch)
	// NewRespInbox is "<prefix>.<token>"; use it as our private prefix.
	sub, err := nc.Subscribe(c.inbox+".*", c.onReply)
	if err != nil {
		return nil, fmt.Errorf("replica: subscribe replies: %w", err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	c.sub = sub
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.sweep() }()
	return c, nil
}

// SetProtocol sets the node protocol version the client writes requests
// in, NodeProtocolMin..NodeProtocolVersion (default NodeProtocolBatch,
// the form nodes of the last two protocols read).
// With 1 it sends the 2-element batches and 6-element scans of protocol 1,
// without map versions (no fencing), for clusters with nodes not yet
// upgraded. Batches already encoded keep their protocol. An unsupported
// version is an error and changes nothing.
func (c *Client) SetProtocol(proto int) error {
	if !subjects.NodeProtocolSupported(proto) {
		return fmt.Errorf("replica: node protocol %d not in %d..%d", proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion)
	}
	c.proto.Store(int64(proto))
	return nil
}

// Protocol returns the node protocol version the client writes requests
// in (see SetProtocol).
func (c *Client) Protocol() int { return int(c.proto.Load()) }

// Stop stops the client: items queued or in flight fail with ErrStopping,
// and later ones fail at once. It does not close the connection. Safe to
// call more than once.
func (c *Client) Stop() {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return
	}
	c.closed.Store(true)
	close(c.stop)
	c.mu.Unlock()
	_ = c.sub.Unsubscribe()
	c.wg.Wait()
	c.qmu.RLock()
	for _, qs := range c.queues {
		for _, q := range []*nodeQueue{qs.write, qs.read} {
			q.mu.Lock()
			queued := append(q.parked, q.queued...)
			q.queued, q.parked = nil, nil
			q.mu.Unlock()
			for _, it := range queued {
				if it.claim() {
					it.call.ch <- Outcome{Node: q.node, ID: it.id, Err: ErrStopping}
				}
			}
		}
	}
	c.qmu.RUnlock()
	c.mu.Lock()
	batches := c.batches
	c.batches = map[uint64]*batch{}
	c.mu.Unlock()
	for _, b := range batches {
		b.failRest(ErrStopping)
	}
}

// Write sends each of ws to node as a merge, with deadline, delivering
// one outcome per item to call (see the package doc). It sets each item's
// ID, so the caller can match outcomes to items. It never waits for a
// reply.
func (c *Client) Write(call *Call, node string, deadline time.Time, ws ...subjects.NodeWrite) {
	q := c.node(node).write
	q.mu.Lock()
	for i := range ws {
		ws[i].ID = c.nextID.Add(1)
		c.enqueueLocked(q, item{id: ws[i].ID, deadline: deadline, write: ws[i], call: call, mapVersion: call.mapVersion})
	}
	c.dispatchLocked(q) // unlocks
}

// Read sends r to node, with deadline, delivering its outcome to call. It
// returns the item's ID and never waits for a reply.
func (c *Client) Read(call *Call, node string, deadline time.Time, r subjects.NodeRead) uint64 {
	r.ID = c.nextID.Add(1)
	q := c.node(node).read
	q.mu.Lock()
	c.enqueueLocked(q, item{id: r.ID, deadline: deadline, read: r, call: call, mapVersion: call.mapVersion})
	c.dispatchLocked(q) // unlocks
	return r.ID
}

// enqueueLocked queues it on q, or fails it at once when the client is
// stopped or q is full. It is called with q.mu held.
func (c *Client) enqueueLocked(q *nodeQueue, it item) {
	switch {
	case c.closed.Load():
		it.call.ch <- Outcome{Node: q.node, ID: it.id, Err: ErrStopping}
	case len(q.queued) >= c.cfg.QueueLen:
		it.call.ch <- Outcome{Node: q.node, ID: it.id, Err: ErrQueueFull}
	default:
		q.queued = append(q.queued, it)
	}
}

// suspectFor is how long a node that failed or was slow is asked last.
const suspectFor = time.Second

// Suspect marks node as failing or slow for a second (see Suspected).
func (c *Client) Suspect(node string) {
	c.node(node).suspectUntil.Store(time.Now().Add(suspectFor).UnixNano())
}

// Suspected reports whether node was suspected less than a second before
// now.
func (c *Client) Suspected(node string, now time.Time) bool {
	return now.UnixNano() < c.node(node).suspectUntil.Load()
}

// SpeculativeDelay is how long a read should wait for the nodes it asked
// before it asks others: four times the recent mean read round trip
// (about its 99th percentile), within 5ms..200ms. The floor keeps a busy
// machine's scheduling hiccups from triggering spare reads.
func (c *Client) SpeculativeDelay() time.Duration {
	return min(max(4*time.Duration(c.readRTT.Load()), 5*time.Millisecond), 200*time.Millisecond)
}

// observeRead folds a read batch's round trip into readRTT (weight 1/16;
// a lost update under contention only drops one sample).
func (c *Client) observeRead(rtt time.Duration) {
	old := c.readRTT.Load()
	c.readRTT.Store(old + (int64(rtt)-old)/16)
}
