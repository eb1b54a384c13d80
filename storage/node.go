// Package storage is a quorumkv storage node: it owns one Pebble store on
// local disk, listens on kv.node.<id>.write|read|dump|scan, merges every
// incoming version into what it holds, and answers with what it holds. It
// can also pull a whole partition from another node (PullPartition,
// transfer.go), merging it the same way.
//
// A node never decides consistency; coordinators do. It only guarantees that
// a write it acknowledged is in Pebble (fsynced unless Config.Fsync is
// false) and that merging is commutative, associative and idempotent, so
// replicas converge whatever order writes and repairs arrive in.
//
// Writes are group-committed: every write message waiting in the node's
// queue when the writer gets to it is applied as one Pebble batch with one
// fsync, then each message is answered.
//
// Data is laid out partition first (Config.Partitions, see engine.go), so a
// partition is one contiguous Pebble range; the directory records its
// partition count and one in the layout from before partitions is migrated
// at Open. dump lists one tenant's keys in (partition, key) order, resuming
// after the last key of the previous page.
//
// Moving partitions (issue 14; docs/ARCHITECTURE.md, "Moving partitions:
// fencing instead of barriers"): the node knows the placement map
// (placement.go) and installs it on the write loop; it refuses write and
// read items from senders whose map is older than the item's partition's
// since (not_owner) and scans naming a map it has not loaded (map_behind).
// Its transfer loop (receive.go) pulls the partitions it receives from
// every reachable current owner, only the tenants whose RF makes it an
// owner (tenants.go), and reports them done; its handoff loop
// (handoff.go) pushes partitions it no longer owns to their owners after
// Config.HandoffGrace and drops them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/settings"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// Config configures a storage node. Start from [DefaultConfig] and set
// NodeID and DataDir; a zero number or duration takes its value from
// DefaultConfig. Fsync is a plain bool: DefaultConfig sets it, the zero
// Config does not.
type Config struct {
	NodeID       string        // required; a subject token
	DataDir      string        // required; created if missing; one node per directory
	Fsync        bool          // fsync every write batch before acknowledging it (true)
	VirtualNodes int           // ring points to register with, 1..4096 (ring.DefaultVirtualNodes)
	Partitions   int           // partitions Q the data is laid out in, a power of two up to 65536; must match the data directory's (ring.DefaultPartitions)
	QueueLen     int           // messages queued per subject; past it the node answers 429 overloaded at once (8192)
	MaxBatch     int           // write messages group-committed together at most (256)
	Heartbeat    time.Duration // re-registration interval, refreshing last_seen (15s)
	Logger       *slog.Logger  // default slog.Default()
	// Metrics receives the node's Prometheus metrics; nil records none.
	Metrics prometheus.Registerer
	// TransferRate caps the bytes per second a partition transfer pulls
	// into this node (DefaultTransferRate); Unlimited for no cap.
	TransferRate int64
	// Hold registers the node with hold: it stays standby, taking no
	// partitions, until `quorumkv node join` (storage --join=false).
	Hold bool
	// HandoffGrace is how long a partition the node holds data for but
	// no longer owns is kept before it is handed off to its owners and
	// dropped (10s): in-flight reads at an older map still find it.
	HandoffGrace time.Duration
	// MapWait bounds the wait for the placement map at start (2s); the
	// node refuses fenced items (not_owner) until one loads. MapPoll is how often the map
	// is reloaded besides kv.v1.events.ring (5s).
	MapWait, MapPoll time.Duration
	// AntiEntropyInterval is how often the node compares the partitions
	// it owns with their other owners and repairs what differs (ae.go);
	// 0 turns anti-entropy off. Unlike the other durations, zero is not
	// filled from DefaultConfig (DefaultAntiEntropyInterval, 5m).
	AntiEntropyInterval time.Duration
	// AntiEntropyRate caps the bytes per second anti-entropy scans,
	// fetches and sends (DefaultAntiEntropyRate); Unlimited for no cap.
	AntiEntropyRate int64
	// ReapInterval, when set, runs tombstone and expiry reaping (reap.go)
	// on its own schedule (tests). 0, the default: a reaping pass follows
	// every anti-entropy pass, so with anti-entropy off nothing is reaped
	// and tombstones are kept.
	ReapInterval time.Duration
}

// ErrInvalidConfig is wrapped by the error of a constructor whose Config
// is out of range; the message names the setting.
var ErrInvalidConfig = errors.New("storage: invalid configuration")

// DefaultConfig returns the settings a storage node runs with unless told
// otherwise: every field but NodeID and DataDir (required), Logger and
// Metrics. The storage command's flags take their defaults from it.
func DefaultConfig() Config {
	return Config{
		Fsync:        true,
		VirtualNodes: ring.DefaultVirtualNodes,
		Partitions:   ring.DefaultPartitions,
		QueueLen:     8192,
		MaxBatch:     256,
		Heartbeat:    15 * time.Second,
		TransferRate: DefaultTransferRate,
		HandoffGrace: 10 * time.Second,
		MapWait:      2 * time.Second,
		MapPoll:      5 * time.Second,

		AntiEntropyInterval: DefaultAntiEntropyInterval,
		AntiEntropyRate:     DefaultAntiEntropyRate,
	}
}

// validate is the one check of a Config: it fills zero fields from
// DefaultConfig and refuses values out of range, naming the setting.
func (c *Config) validate() (err error) {
	defer func() { err = settings.Invalid(err, ErrInvalidConfig) }()
	if err := subjects.ValidateNodeID(c.NodeID); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("storage: a data directory is required")
	}
	if c.VirtualNodes < 0 || c.VirtualNodes > 4096 {
		return fmt.Errorf("storage: virtual nodes %d out of range 1..4096", c.VirtualNodes)
	}
	d := DefaultConfig()
	for _, err := range []error{
		settings.Default("storage: virtual nodes", &c.VirtualNodes, d.VirtualNodes),
		settings.Default("storage: queue length", &c.QueueLen, d.QueueLen),
		settings.Default("storage: max batch", &c.MaxBatch, d.MaxBatch),
		settings.Default("storage: heartbeat", &c.Heartbeat, d.Heartbeat),
		settings.Default("storage: partitions", &c.Partitions, d.Partitions),
		settings.Default("storage: handoff grace", &c.HandoffGrace, d.HandoffGrace),
		settings.Default("storage: map wait", &c.MapWait, d.MapWait),
		settings.Default("storage: map poll", &c.MapPoll, d.MapPoll),
	} {
		if err != nil {
			return err
		}
	}
	if err := ring.ValidatePartitions(c.Partitions); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	if c.TransferRate != Unlimited {
		if err := settings.Default("storage: transfer rate (bytes/s, or Unlimited)", &c.TransferRate, d.TransferRate); err != nil {
			return err
		}
	}
	if c.AntiEntropyInterval < 0 {
		return fmt.Errorf("storage: anti-entropy interval %v is negative (0 = off)", c.AntiEntropyInterval)
	}
	if c.AntiEntropyRate != Unlimited {
		if err := settings.Default("storage: anti-entropy rate (bytes/s, or Unlimited)", &c.AntiEntropyRate, d.AntiEntropyRate); err != nil {
			return err
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Node is a storage node. [New] opens its store and serves it on NATS;
// [Open] only opens the store (tests, offline tools). Stop stops either.
type Node struct {
	cfg Config
	log *slog.Logger
	eng *engine

	replyLimit int // bytes of results per reply message, below the server's max payload
	// xferLimit paces every partition pull of this node together
	// (Config.TransferRate; nil rate: none).
	xferLimit *limiter
	metrics   *metrics.Storage
	writes    chan *nats.Msg     // queued write messages; set by Start
	readSub   *nats.Subscription // its pending messages are the read queue; set by Start

	overloadLog atomic.Int64 // unix nanos of the last "queue full" log

	// Partition transfers (transfer.go): local hands batches pulled from
	// another node to the write loop; stopping closes when Stop begins.
	nc       *nats.Conn
	local    chan *localWrite
	stopping <-chan struct{}
	rc       *replica.Client // created by the first PullPartition; under mu

	// Placement (placement.go): the map the node fences by, stored only
	// by the write loop (or before it starts). The kicks wake the map,
	// transfer and handoff loops.
	pmap        atomic.Pointer[ring.Map]
	mapKick     chan struct{}
	xferKick    chan struct{}
	handoffKick chan struct{}
	// handoffDone is the map version under which the handoff loop last
	// found the node named in no row and holding no records; 0 otherwise
	// (subjects.TransferStatus.HandoffDone).
	handoffDone atomic.Uint64
	xfer        xferState // receive.go
	// stg is the stage of pulled pages (stage.go), the write loop's
	// alone; stageGen mirrors its generation for the pulls, and lost
	// holds the partitions a failed flush of it lost.
	stg      stage
	stageGen atomic.Uint64
	lost     lostParts
	// What the stage holds (bytes), and since when (Unix ns; 0: empty).
	stagedBytes, stagedSince atomic.Int64
	tenants                  tenantRFs    // tenants.go
	reapCounts               reapCounts   // reap.go
	reapMemo                 reapMemos    // reap.go
	rebuild                  rebuildState // rebuild.go
	ae                       aeState      // ae.go
	// runCtx ends when Stop begins; set by start.
	runCtx context.Context

	// afterExchange, when set before start, is called by the
	// anti-entropy loop after each pass for every partition the node
	// owns and that is not moving, once the pass's exchanges of that
	// partition are over (the reaper, reap.go).
	afterExchange func(ctx context.Context, p uint32)

	// beforeApply, set by tests before start, runs on the write loop
	// between the fence and the apply of each batch of write messages.
	beforeApply func()
	// afterReadSnapshot, set by tests before start, runs on the read
	// goroutine right after a read batch opened its Pebble snapshot.
	afterReadSnapshot func()

	// readMu is held shared by each read being served and exclusively by
	// Close, so Pebble is never closed under a read.
	readMu      sync.RWMutex
	readsClosed bool

	mu     sync.Mutex
	subs   []*nats.Subscription
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed bool
}

// New opens the node's store (see Open) and serves it on nc (see start):
// it returns a running node, which the caller stops with Stop. nc stays the
// caller's; Stop does not close it.
func New(nc *nats.Conn, cfg Config) (*Node, error) {
	n, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	if err := n.start(nc); err != nil {
		_ = n.Stop()
		return nil, err
	}
	return n, nil
}

// Open opens the node's store without serving it: what New does before it
// subscribes. It fails if the directory is in use by another node or
// process, or belongs to another node id. Stop closes it.
func Open(cfg Config) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("node", cfg.NodeID)
	eng, err := openEngine(cfg.DataDir, cfg.NodeID, cfg.Partitions, cfg.Fsync, log)
	if err != nil {
		return nil, err
	}
	// A directory down for longer than the smallest tombstone grace is
	// wiped; a new or wiped one is rebuilt (rebuild.go).
	if err := eng.checkStale(cfg.NodeID, time.Now(), log); err != nil {
		_ = eng.close()
		return nil, fmt.Errorf("storage: %s: %w", cfg.DataDir, err)
	}
	mark, err := eng.getMeta(metaRebuild)
	if err != nil {
		_ = eng.close()
		return nil, fmt.Errorf("storage: %s: %w", cfg.DataDir, err)
	}
	n := &Node{cfg: cfg, log: log, eng: eng, xferLimit: newLimiter(cfg.TransferRate, time.Now())}
	n.rebuild.marked, n.rebuild.kick = mark != nil, make(chan struct{}, 1)
	n.rebuild.on.Store(n.rebuild.marked)
	n.ae.limit = newLimiter(cfg.AntiEntropyRate, time.Now())
	n.ae.partPass = make([]atomic.Int64, cfg.Partitions)
	return n, nil
}

// ID is the node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Epoch identifies this incarnation of the node's data directory.
func (n *Node) Epoch() uint64 { return n.eng.epoch }

// start subscribes to the node's subjects on nc and registers the node with
// the coordinators, retrying in the background until one answers and then
// heart-beating. It returns once the subscriptions are in place.
func (n *Node) start(nc *nats.Conn) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return errors.New("storage: node closed")
	}
	// Before the transfer loop runs: cursors of an earlier run are not
	// resumed (receive.go, forgetGenerations).
	if err := n.eng.forgetGenerations(); err != nil {
		return fmt.Errorf("storage: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.runCtx = cancel, ctx
	n.nc, n.local, n.stopping = nc, make(chan *localWrite), ctx.Done()
	n.mapKick, n.xferKick, n.handoffKick = make(chan struct{}, 1), make(chan struct{}, 1), make(chan struct{}, 1)
	n.replyLimit = replica.PayloadLimit(nc.MaxPayload()) // the limit clients batch by
	n.eng.stateCap, n.eng.replyLimit = subjects.MaxStateBytes(nc.MaxPayload()), n.replyLimit
	// The map first (bounded), so that writes are fenced from the start.
	n.initialMap(ctx)
	ringSub, err := nc.Subscribe(subjects.EventsRing, func(*nats.Msg) { n.kickMap() })
	if err != nil {
		cancel()
		return fmt.Errorf("storage: subscribe %s: %w", subjects.EventsRing, err)
	}
	n.subs = append(n.subs, ringSub)
	tenantSub, err := nc.Subscribe(subjects.EventsTenant, func(*nats.Msg) { n.tenantsChanged() })
	if err != nil {
		cancel()
		return fmt.Errorf("storage: subscribe %s: %w", subjects.EventsTenant, err)
	}
	n.subs = append(n.subs, tenantSub)

	// Writes are handed to the write loop, which group-commits whatever
	// queued up. Reads are served on their subscription's own goroutine:
	// each read message is one Pebble read pass and one reply, so a
	// hand-off would only add a goroutine wake-up to every get.
	writes := make(chan *nats.Msg, n.cfg.QueueLen)
	n.writes = writes
	if n.cfg.Metrics != nil && n.metrics == nil {
		n.metrics = metrics.NewStorage(n.cfg.Metrics, n.pebbleStats, n.queued)
	}
	wsub, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpWrite), n.enqueue(writes))
	if err != nil {
		cancel()
		return fmt.Errorf("storage: subscribe %s: %w", subjects.NodeOpWrite, err)
	}
	_ = wsub.SetPendingLimits(-1, -1) // the channel is the bound (see enqueue)
	n.subs = append(n.subs, wsub)
	rsub, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpRead), n.serveRead)
	if err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: subscribe %s: %w", subjects.NodeOpRead, err)
	}
	_ = rsub.SetPendingLimits(-1, -1) // serveRead sheds past QueueLen
	n.readSub = rsub
	n.subs = append(n.subs, rsub)
	dump, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpDump), n.handleDump)
	if err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: subscribe dump: %w", err)
	}
	n.subs = append(n.subs, dump)
	scan, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpScan), n.handleScan)
	if err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: subscribe scan: %w", err)
	}
	n.subs = append(n.subs, scan)
	ae, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpAE), n.handleAE)
	if err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: subscribe ae: %w", err)
	}
	n.subs = append(n.subs, ae)
	reap, err := nc.Subscribe(subjects.StorageNode(n.cfg.NodeID, subjects.NodeOpReap), n.handleReap)
	if err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: subscribe reap: %w", err)
	}
	n.subs = append(n.subs, reap)
	if err := nc.Flush(); err != nil {
		n.unsubscribeLocked()
		cancel()
		return fmt.Errorf("storage: flush subscriptions: %w", err)
	}

	n.wg.Add(7)
	go func() { defer n.wg.Done(); n.writeLoop(ctx, writes) }()
	go func() { defer n.wg.Done(); n.registerLoop(ctx, nc) }()
	go func() { defer n.wg.Done(); n.mapLoop(ctx) }()
	go func() { defer n.wg.Done(); n.transferLoop(ctx) }()
	go func() { defer n.wg.Done(); n.handoffLoop(ctx) }()
	go func() { defer n.wg.Done(); n.aliveLoop(ctx) }()
	go func() { defer n.wg.Done(); n.rebuildLoop(ctx) }()
	if n.cfg.AntiEntropyInterval > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.aeLoop(ctx) }()
	}
	if n.cfg.ReapInterval > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.reapLoop(ctx) }()
	}
	n.log.Info("storage node serving", "data", n.cfg.DataDir, "epoch", n.eng.epoch, "fsync", n.cfg.Fsync)
	return nil
}

// enqueue hands each message to a worker loop through ch. When ch is full
// the message is answered 429 overloaded at once, rather than dropped (as
// NATS would drop it for a slow consumer) and left to time out: the
// coordinator then counts the replica as failed and says why.
func (n *Node) enqueue(ch chan *nats.Msg) nats.MsgHandler {
	return func(m *nats.Msg) {
		select {
		case ch <- m:
		default:
			n.respondOverloaded(m, cap(ch))
		}
	}
}

// respondOverloaded answers m with a 429, and logs at most once a second.
func (n *Node) respondOverloaded(m *nats.Msg, queued int) {
	e := subjects.Errorf(subjects.KindOverloaded, "storage node %s has %d messages queued on %s; retry with back-off", n.cfg.NodeID, queued, m.Subject)
	if now := time.Now().UnixNano(); now-n.overloadLog.Load() > int64(time.Second) {
		n.overloadLog.Store(now)
		n.log.Warn("queue full: answering overloaded", "subject", m.Subject, "queued", queued)
	}
	if m.Reply == "" {
		return
	}
	_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: e.Headers()})
}

func (n *Node) unsubscribeLocked() {
	for _, s := range n.subs {
		_ = s.Unsubscribe()
	}
	n.subs = nil
}

// Stop stops taking messages, finishes the writes already queued (they
// are committed and answered) and the read in progress, then closes
// Pebble; reads still queued are dropped (their coordinators count this
// node as not answering). It does not close the connection. Safe to call
// more than once; only the first call can return an error.
func (n *Node) Stop() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.unsubscribeLocked()
	if n.cancel != nil {
		n.cancel()
	}
	rc := n.rc
	n.mu.Unlock()
	if rc != nil {
		rc.Stop() // fails a transfer's request in flight at once
	}
	n.markAlive() // a clean stop: down time counts from now (rebuild.go)
	n.readMu.Lock()
	n.readsClosed = true
	n.readMu.Unlock()
	n.metrics.Unregister()
	n.wg.Wait()
	if err := n.eng.close(); err != nil {
		return fmt.Errorf("storage: close pebble: %w", err)
	}
	n.log.Info("storage node stopped")
	return nil
}

// writeLoop group-commits write messages until ctx ends, then drains what is
// already queued.
func (n *Node) writeLoop(ctx context.Context, ch chan *nats.Msg) {
	msgs := make([]*nats.Msg, 0, n.cfg.MaxBatch)
	for {
		var first *nats.Msg
		select {
		case first = <-ch:
		case j := <-n.local:
			n.applyLocal(j)
			continue
		case <-ctx.Done():
			for {
				msgs = n.collect(msgs[:0], ch)
				if len(msgs) == 0 {
					return
				}
				n.applyWriteMsgs(msgs)
			}
		}
		msgs = n.collect(append(msgs[:0], first), ch)
		n.applyWriteMsgs(msgs)
	}
}

// collect appends to msgs whatever is queued in ch, up to MaxBatch.
func (n *Node) collect(msgs []*nats.Msg, ch chan *nats.Msg) []*nats.Msg {
	for len(msgs) < n.cfg.MaxBatch {
		select {
		case m := <-ch:
			msgs = append(msgs, m)
		default:
			return msgs
		}
	}
	return msgs
}

// pebbleStats reads the engine's figures unless the node is closing (Pebble
// panics when used after Close).
func (n *Node) pebbleStats() metrics.PebbleStats {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return metrics.PebbleStats{}
	}
	return n.eng.stats()
}

// queued is how many messages of op wait for their worker loop.
func (n *Node) queued(op string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if op == subjects.NodeOpRead {
		if n.readSub == nil {
			return 0
		}
		msgs, _, _ := n.readSub.Pending() // includes the one being served
		return max(msgs, 0)
	}
	return len(n.writes)
}

func (n *Node) applyWriteMsgs(msgs []*nats.Msg) {
	start := time.Now()
	var (
		items   []subjects.NodeWrite
		refused []subjects.NodeWriteResult // items fenced out, in order; nil: none
		at      []int                      // refused[k] belongs before items[at[k]] of the accepted ones
	)
	counts := make([]int, len(msgs)) // items per message; -1 = undecodable
	m := n.pmap.Load()               // only this loop installs maps: stable for the batch
	for i, msg := range msgs {
		var b subjects.NodeWriteBatch
		if err := wire.UnmarshalNodeWriteBatch(msg.Data, &b); err != nil || !subjects.NodeProtocolSupported(b.Proto) {
			counts[i] = -1
			n.respondError(msg, fmt.Sprintf("bad write batch (proto %d, accepted %d..%d): %v", b.Proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion, err))
			continue
		}
		counts[i] = len(b.Items)
		n.sawVersion(b.MapVersion)
		if b.MapVersion == 0 { // unfenced: nothing to check, no hashing
			items = append(items, b.Items...)
			continue
		}
		for _, it := range b.Items {
			if why := fenced(m, ring.Partition(it.Tenant, it.Key, n.eng.q), b.MapVersion); why != "" {
				refused = append(refused, subjects.NodeWriteResult{ID: it.ID, Err: why, Kind: subjects.KindNotOwner})
				at = append(at, len(items))
				continue
			}
			items = append(items, it)
		}
	}
	if n.beforeApply != nil {
		n.beforeApply()
	}
	results := n.eng.applyWrites(items)
	if len(refused) > 0 {
		// Put the refusals back in their places among the results.
		all := make([]subjects.NodeWriteResult, 0, len(results)+len(refused))
		prev := 0
		for k := range refused {
			all = append(all, results[prev:at[k]]...)
			all = append(all, refused[k])
			prev = at[k]
		}
		results = append(all, results[prev:]...)
		n.metrics.NotOwner(subjects.NodeOpWrite, len(refused))
	}
	if n.metrics != nil {
		failed := 0
		for i := range results {
			if results[i].Err != "" {
				failed++
			}
		}
		n.metrics.Applied(subjects.NodeOpWrite, len(msgs), len(results), failed, time.Since(start))
	}
	for i, msg := range msgs {
		if counts[i] < 0 {
			continue
		}
		mine := results[:counts[i]]
		results = results[counts[i]:]
		chunk(mine, writeResultSize, n.replyLimit, func(part []subjects.NodeWriteResult, more bool) {
			n.respond(msg, &subjects.NodeWriteReply{Results: part, More: more})
		})
	}
}

// serveRead answers a read message on the read subscription's goroutine.
// When more than QueueLen read messages wait behind it, it is answered 429
// overloaded instead: shedding the oldest keeps the queue short, and its
// coordinator has likely given up on it anyway.
func (n *Node) serveRead(m *nats.Msg) {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return // unsubscribed: the coordinator counts the node as not answering
	}
	if m.Sub != nil {
		// Pending counts the message being delivered too, until the next.
		if pending, _, err := m.Sub.Pending(); err == nil && pending-1 > n.cfg.QueueLen {
			n.respondOverloaded(m, pending-1)
			return
		}
	}
	n.handleRead(m)
}

func (n *Node) handleRead(m *nats.Msg) {
	var b subjects.NodeReadBatch
	if err := wire.UnmarshalNodeReadBatch(m.Data, &b); err != nil || !subjects.NodeProtocolSupported(b.Proto) {
		n.respondError(m, fmt.Sprintf("bad read batch (proto %d, accepted %d..%d): %v", b.Proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion, err))
		return
	}
	n.sawVersion(b.MapVersion)
	pm := n.pmap.Load()
	reply := subjects.NodeReadReply{Results: make([]subjects.NodeReadResult, len(b.Items))}
	refused := 0
	fence := b.MapVersion != 0 // without a map (pm nil) every fenced item is refused
	for i, it := range b.Items {
		reply.Results[i].ID = it.ID
		if fence {
			if why := fenced(pm, ring.Partition(it.Tenant, it.Key, n.eng.q), b.MapVersion); why != "" {
				// A stale reader must not count what this node holds (maybe
				// nothing, once handed off) as an owner's answer.
				reply.Results[i].Err = why
				refused++
				continue
			}
		}
		if n.rebuildingPartition(ring.Partition(it.Tenant, it.Key, n.eng.q)) {
			// Its data may still be on its way from the other owners: an
			// answer could miss a value (or a tombstone) they hold.
			reply.Results[i].Err = errRebuilding
		}
	}
	// The reader is a snapshot: it is opened only after every item's
	// rebuild check, so an item found rebuilt reads a view that holds what
	// the rebuild pulled (opened before, it could miss all of it).
	r, rerr := n.eng.newReader()
	if rerr == nil {
		defer r.close()
	}
	if n.afterReadSnapshot != nil {
		n.afterReadSnapshot()
	}
	for i, it := range b.Items {
		if reply.Results[i].Err != "" {
			continue // refused above
		}
		if rerr != nil {
			reply.Results[i].Err = rerr.Error()
			continue
		}
		rec, err := r.read(it.Tenant, it.Key)
		if err != nil {
			reply.Results[i].Err = err.Error()
			continue
		}
		reply.Results[i].LWW, reply.Results[i].DVV = rec.LWW, rec.DVV
		if size := readResultSize(&reply.Results[i]); size > n.replyLimit {
			// Only repair merges grow a state this far. Sent, it would
			// exceed the max payload and the coordinator would wait in
			// vain; say why instead.
			reply.Results[i].LWW, reply.Results[i].DVV = nil, nil
			reply.Results[i].Err = fmt.Sprintf("the key's state is %d bytes, more than one message carries (%d): delete it without a context", size, n.replyLimit)
		}
	}
	if refused > 0 {
		n.metrics.NotOwner(subjects.NodeOpRead, refused)
	}
	if n.metrics != nil {
		failed := 0
		for i := range reply.Results {
			if reply.Results[i].Err != "" {
				failed++
			}
		}
		n.metrics.Applied(subjects.NodeOpRead, 1, len(reply.Results), failed, 0)
	}
	chunk(reply.Results, readResultSize, n.replyLimit, func(part []subjects.NodeReadResult, more bool) {
		n.respond(m, &subjects.NodeReadReply{Results: part, More: more})
	})
}

func (n *Node) handleDump(m *nats.Msg) {
	isJSON := wire.IsJSON(m.Header.Get(subjects.ContentType))
	var req subjects.DumpRequest
	if err := wire.Unmarshal(isJSON, m.Data, &req); err != nil {
		n.respondError(m, err.Error())
		return
	}
	if err := subjects.ValidateTenantID(req.Tenant); err != nil {
		n.respondError(m, err.Error())
		return
	}
	if req.Limit <= 0 || req.Limit > 10_000 {
		req.Limit = 1000
	}
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		n.respondError(m, "node is stopping")
		return
	}
	entries, more, err := n.eng.dump(req.Tenant, req.After, req.Limit)
	if err != nil {
		n.respondError(m, err.Error())
		return
	}
	data, err := wire.Marshal(isJSON, subjects.DumpReply{NodeID: n.cfg.NodeID, Entries: entries, More: more})
	if err != nil {
		n.respondError(m, err.Error())
		return
	}
	resp := nats.NewMsg(m.Reply)
	resp.Data = data
	if isJSON {
		resp.Header.Set(subjects.ContentType, subjects.JSONContentType)
	}
	if err := m.RespondMsg(resp); err != nil {
		n.log.Warn("dump reply failed", "err", err)
	}
}

func (n *Node) respond(m *nats.Msg, v any) {
	if m.Reply == "" {
		return
	}
	buf := replyBufs.Get().(*[]byte)
	defer func() {
		if cap(*buf) <= maxPooledReply {
			replyBufs.Put(buf)
		}
	}()
	data, err := appendReply((*buf)[:0], v)
	*buf = data[:0]
	if err != nil {
		n.respondError(m, fmt.Sprintf("encode reply: %v", err))
		return
	}
	if err := m.Respond(data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		n.log.Warn("reply failed", "err", err)
	}
}

func (n *Node) respondError(m *nats.Msg, desc string) {
	n.log.Warn("bad node request", "subject", m.Subject, "err", desc)
	if m.Reply == "" {
		return
	}
	e := subjects.Errorf(subjects.KindInvalid, "%s", desc)
	_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: e.Headers()})
}

// registerLoop registers the node through the admin API until a coordinator
// answers, then re-registers every Heartbeat to refresh last_seen.
func (n *Node) registerLoop(ctx context.Context, nc *nats.Conn) {
	backoff := 100 * time.Millisecond
	registered, warned := false, false
	for {
		// Each heartbeat carries the node's protocol and its transfer
		// progress (node list shows it).
		req := subjects.NodeRequest{
			NodeID: n.cfg.NodeID, VirtualNodes: n.cfg.VirtualNodes, Epoch: n.eng.epoch,
			Protocol: subjects.NodeProtocolVersion, Hold: n.cfg.Hold, Transfer: n.TransferStatus(),
			AntiEntropy: n.AntiEntropy(),
		}
		data, _ := msgpack.Marshal(&req)
		err := n.register(ctx, nc, data)
		wait := n.cfg.Heartbeat
		switch {
		case err == nil && !registered:
			registered, warned = true, false
			n.log.Info("registered with coordinators")
		case errors.Is(err, &subjects.Error{Kind: subjects.KindNodeRemoved}):
			// An operator removed this id: the coordinators refuse it until
			// `quorumkv node join`. Keep serving what it holds (a transfer
			// may still read it) and ask again at the heartbeat interval.
			if !warned || registered {
				n.log.Error("this node was removed by an operator and is not part of the cluster; run 'quorumkv node join "+n.cfg.NodeID+"' to re-admit it, or stop it", "err", err)
				warned = true
			}
			registered = false
		case err != nil && ctx.Err() == nil:
			if !warned || registered {
				n.log.Warn("registration failed; retrying", "err", err)
				warned = true
			}
			registered = false
			wait = backoff
			backoff = min(backoff*2, 5*time.Second)
		}
		if err == nil {
			backoff = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (n *Node) register(ctx context.Context, nc *nats.Conn, data []byte) error {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subjects.AdminNodeRegister, data)
	if err != nil {
		return err
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return e
	}
	return nil
}

// chunk calls send with consecutive parts of results whose estimated sizes
// add up to at most limit (a single oversized result goes alone); more is
// false on the last part only. It always sends at least one part.
func chunk[T any](results []T, size func(*T) int, limit int, send func(part []T, more bool)) {
	start, acc := 0, 0
	for i := range results {
		s := size(&results[i])
		if i > start && acc+s > limit {
			send(results[start:i], true)
			start, acc = i, 0
		}
		acc += s
	}
	send(results[start:], false)
}

const resultOverhead = 64 // msgpack framing, id, dot: generous

func writeResultSize(r *subjects.NodeWriteResult) int {
	return resultOverhead + len(r.Err) + subjects.VersionSize(r.LWW, r.DVV)
}

func readResultSize(r *subjects.NodeReadResult) int {
	return resultOverhead + len(r.Err) + subjects.VersionSize(r.LWW, r.DVV)
}
