// Package coordinator is quorumkv's CoordinatorService: a nats.go micro
// service (name "quorumkv", queue group "coordinators") that takes client
// requests on kv.v1.<tenant>.put|get|delete and the admin API on
// kv.v1.admin.>, resolves the tenant, routes the key on the ring, fans out
// to the replicas, and answers once the consistency level is met.
//
// Any number of coordinators may run: they share nothing but the metadata
// store, the idempotency store and NATS. Each mints lww version dots under
// a per-process actor id, from one hybrid logical clock per tenant.
package coordinator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/idempotency"
	"github.com/quorumkv/quorumkv/internal/microsvc"
	"github.com/quorumkv/quorumkv/internal/settings"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Version is the coordinator service's version as micro reports it.
const Version = "0.1.0"

// Config configures a coordinator. Start from [DefaultConfig] and set the
// stores; a zero field takes its value from DefaultConfig, except
// ReadRepairChance, where 0 means never (see below).
type Config struct {
	Metadata    metadata.Store    // required: tenants and nodes
	Idempotency idempotency.Store // required: write de-duplication

	// Actor names this process in the version dots it mints. Default: 8
	// random hex digits, new at every start, so two processes never share
	// one.
	Actor string

	Timeout      time.Duration // default per-request timeout (2s); requests may set timeout_ms up to 60s
	MaxInflight  int           // requests in progress before answering 429 overloaded (4096)
	NodeInflight int           // batches in flight per storage node and operation (2)
	MaxBatch     int           // replica messages per batch at most (512)
	NodeQueue    int           // replica messages queued per node and operation (16384)
	// NodeRestartGrace is how long after a storage node's last reply a
	// no-responders answer is taken for a restart, not an outage: the
	// node's reads and merge writes are sent again until it is back or the
	// request's deadline, instead of failing at once (2s; see
	// replica.Config.RestartGrace; a nanosecond turns it off).
	NodeRestartGrace time.Duration
	TenantTTL        time.Duration // how long a cached tenant is trusted without an event (30s)
	RingRefresh      time.Duration // placement map reload interval (5s)
	// NodeHeartbeat is the storage nodes' heartbeat interval (15s, as
	// storage.Config's): node list shows a node silent for 3 of them as
	// down, and node replace and remove --force accept only such a node.
	NodeHeartbeat time.Duration
	// Partitions is the partition count Q of a new cluster (a power of two
	// in 1..65536; ring.DefaultPartitions). The first coordinator stores it
	// in the metadata store; afterwards the stored count wins and this
	// setting is ignored: Q is fixed when the cluster is created.
	Partitions     int
	IdempotencyTTL time.Duration // how long a write's response is kept for retries (24h)
	PendingTTL     time.Duration // how long an in-progress marker lives (30s)

	// Repair receives read repairs and hints (see repair.Publisher); nil
	// disables both. HintWindow is how long, after answering, the
	// coordinator keeps waiting for the primaries that had not answered:
	// a write hints those that did not acknowledge, a read compares their
	// versions (500ms).
	Repair     RepairPublisher
	HintWindow time.Duration

	// A quorum read asks only as many primaries as it needs,
	// healthy ones first, and asks the others when one of those fails or
	// has not answered after SpeculativeRetry (0: adaptive, four times the
	// recent mean replica round trip, within 5ms..200ms).
	// ReadRepairChance is the fraction of those reads that ask every
	// primary anyway, so read repair also reaches the replicas reads skip
	// (DefaultConfig: 0.1; 1 asks every primary always; 0 never, and so
	// does a negative value, the spelling of "never" before DefaultConfig).
	SpeculativeRetry time.Duration
	ReadRepairChance float64

	// Metrics receives the coordinator's Prometheus metrics; nil records
	// none.
	Metrics prometheus.Registerer

	// ContextSecret is the key under which this coordinator authenticates
	// the contexts it issues (at least vclock.MinContextSecret bytes), and
	// ContextSecretPrevious an older one whose contexts it still accepts
	// during a rotation. Every coordinator of a cluster must accept every
	// other's current secret. Without ContextSecret, the cluster's secret
	// is fetched from the metadata store, created there by the first
	// coordinator that asks; ContextSecretPrevious then must be empty.
	ContextSecret         []byte
	ContextSecretPrevious []byte

	Logger *slog.Logger
	Now    func() time.Time // clock for caches, the hybrid logical clocks and TTLs (a put's expiry, a delete's time, whether a value read has expired); default time.Now
}

// ErrInvalidConfig is wrapped by the error of a constructor whose Config
// is out of range; the message names the setting.
var ErrInvalidConfig = errors.New("coordinator: invalid configuration")

// DefaultConfig returns the settings a coordinator runs with unless told
// otherwise, in the style of memberlist's DefaultLANConfig: every field but
// the stores (Metadata and Idempotency, required), the optional parts
// (Repair, Metrics, Logger, Now, the context secrets) and Actor (random per
// start). The coordinator command's flags take their defaults from it.
func DefaultConfig() Config {
	return Config{
		Timeout:          2 * time.Second,
		MaxInflight:      4096,
		NodeInflight:     2,
		MaxBatch:         512,
		NodeQueue:        16384,
		NodeRestartGrace: 2 * time.Second,
		TenantTTL:        30 * time.Second,
		RingRefresh:      5 * time.Second,
		NodeHeartbeat:    15 * time.Second,
		Partitions:       ring.DefaultPartitions,
		IdempotencyTTL:   idempotency.DefaultTTL,
		PendingTTL:       idempotency.DefaultPendingTTL,
		HintWindow:       500 * time.Millisecond,
		ReadRepairChance: 0.1,
	}
}

// validate is the one check of a Config: it fills zero fields from
// DefaultConfig (and a random Actor, slog.Default, time.Now) and refuses
// values out of range, naming the setting.
func (c *Config) validate() (err error) {
	defer func() { err = settings.Invalid(err, ErrInvalidConfig) }()
	if c.Metadata == nil {
		return errors.New("coordinator: a metadata store is required")
	}
	if c.Idempotency == nil {
		return errors.New("coordinator: an idempotency store is required")
	}
	if c.Actor == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("coordinator: actor id: %w", err)
		}
		c.Actor = hex.EncodeToString(b[:])
	}
	d := DefaultConfig()
	for _, err := range []error{
		settings.Default("coordinator: timeout", &c.Timeout, d.Timeout),
		settings.Default("coordinator: tenant TTL", &c.TenantTTL, d.TenantTTL),
		settings.Default("coordinator: ring refresh", &c.RingRefresh, d.RingRefresh),
		settings.Default("coordinator: node heartbeat", &c.NodeHeartbeat, d.NodeHeartbeat),
		settings.Default("coordinator: idempotency TTL", &c.IdempotencyTTL, d.IdempotencyTTL),
		settings.Default("coordinator: pending TTL", &c.PendingTTL, d.PendingTTL),
		settings.Default("coordinator: hint window", &c.HintWindow, d.HintWindow),
		settings.Default("coordinator: max inflight", &c.MaxInflight, d.MaxInflight),
		settings.Default("coordinator: node inflight", &c.NodeInflight, d.NodeInflight),
		settings.Default("coordinator: max batch", &c.MaxBatch, d.MaxBatch),
		settings.Default("coordinator: node queue", &c.NodeQueue, d.NodeQueue),
		settings.Default("coordinator: node restart grace", &c.NodeRestartGrace, d.NodeRestartGrace),
		settings.Default("coordinator: partitions", &c.Partitions, d.Partitions),
	} {
		if err != nil {
			return err
		}
	}
	if err := ring.ValidatePartitions(c.Partitions); err != nil {
		return fmt.Errorf("coordinator: partitions: %w", err)
	}
	if c.ReadRepairChance > 1 {
		return fmt.Errorf("coordinator: read repair chance %g out of range: use 0..1", c.ReadRepairChance)
	}
	if c.SpeculativeRetry < 0 {
		return fmt.Errorf("coordinator: speculative retry %s is negative: use 0 (adaptive) or a positive duration", c.SpeculativeRetry)
	}
	if c.Timeout > subjects.MaxTimeoutMS*time.Millisecond {
		return fmt.Errorf("coordinator: timeout %s exceeds %dms", c.Timeout, subjects.MaxTimeoutMS)
	}
	if len(c.ContextSecret) > 0 {
		if _, err := vclock.NewContextKeys(c.ContextSecret, c.ContextSecretPrevious); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
	} else if len(c.ContextSecretPrevious) > 0 {
		return errors.New("coordinator: a previous context secret needs a current one (the secret kept in the metadata store is not rotated)")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Coordinator is a running coordinator. Create with New, stop with Stop.
type Coordinator struct {
	cfg     Config
	nc      *nats.Conn
	log     *slog.Logger
	keys    *vclock.ContextKeys // seals and opens client contexts
	clocks  *tenantClocks       // lww: one hybrid logical clock per tenant
	skewLog skewLog
	rep     *replica.Client // the storage-node protocol
	tenants *tenantCache
	routing *routing
	repair  *ConflictService     // nil: repair disabled
	metrics *metrics.Coordinator // nil: no metrics
	svc     *microsvc.Service
	// aeStatus holds, by node id, the anti-entropy figures
	// (*subjects.AEStatus) of the last heartbeat this coordinator
	// answered: kept in memory only, node list shows them as of then.
	aeStatus sync.Map
	subs     []*nats.Subscription
	sem      chan struct{}
	cancel   context.CancelFunc

	mu       sync.RWMutex // guards stopping against wg.Add
	stopping bool
	stopOnce sync.Once
	wg       sync.WaitGroup // request goroutines and background loops
}

// New starts a coordinator on nc: it loads the ring, then serves. It
// returns once the service answers requests.
func New(ctx context.Context, nc *nats.Conn, cfg Config) (*Coordinator, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger.With("coordinator", cfg.Actor)
	keys, err := contextKeys(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c := &Coordinator{
		keys:    keys,
		cfg:     cfg,
		nc:      nc,
		log:     log,
		clocks:  newTenantClocks(cfg.Now),
		tenants: newTenantCache(cfg.Metadata, log, cfg.TenantTTL, cfg.Now),
		routing: newRouting(cfg.Metadata, log, cfg.RingRefresh, cfg.Partitions),
		sem:     make(chan struct{}, cfg.MaxInflight),
	}
	c.routing.down = func(n metadata.Node) bool { return c.isDown(n, c.cfg.Now()) }
	c.tenants.firstSeen = func(ctx context.Context) {
		if err := c.routing.load(ctx); err != nil {
			c.log.Warn("placement map reload for a tenant seen first failed; routing by the last map", "err", err)
		}
	}
	if cfg.Repair != nil {
		c.repair = newConflictService(cfg.Repair, cfg.Actor, log)
	}
	if cfg.Metrics != nil {
		c.metrics = metrics.NewCoordinator(cfg.Metrics, func() float64 { return float64(len(c.sem)) })
	}
	if _, err := c.routing.reconcile(ctx); err != nil {
		// Not fatal: a coordinator may start before the store is reachable
		// and serve once the periodic refresh succeeds.
		log.Warn("initial placement map load failed; retrying in the background", "err", err)
	}
	rep, err := replica.New(nc, replica.Config{
		MaxInflight:  cfg.NodeInflight,
		MaxBatch:     cfg.MaxBatch,
		QueueLen:     cfg.NodeQueue,
		RestartGrace: cfg.NodeRestartGrace,
		OnBatch:      c.metrics.Batch, // nil metrics record nothing
		OnResend:     c.metrics.Resend,
	})
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	c.rep = rep

	bg, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.routing.run(bg) }()
	c.wg.Add(1)
	go func() { defer c.wg.Done(); c.watchReconnects(bg) }()

	if err := c.subscribeEvents(); err != nil {
		c.Stop()
		return nil, err
	}
	if err := c.addService(); err != nil {
		c.Stop()
		return nil, err
	}
	if err := nc.Flush(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("coordinator: flush: %w", err)
	}
	pl := c.routing.placement()
	log.Info("coordinator serving", "placement_version", pl.version, "active", pl.nodeCount(), "partitions", pl.q)
	return c, nil
}

// contextKeys builds the keys contexts are sealed with: the configured
// secrets, or the cluster's secret from the metadata store.
func contextKeys(ctx context.Context, cfg Config) (*vclock.ContextKeys, error) {
	secret := cfg.ContextSecret
	if len(secret) == 0 {
		candidate := make([]byte, 32)
		if _, err := rand.Read(candidate); err != nil {
			return nil, fmt.Errorf("coordinator: context secret candidate: %w", err)
		}
		var err error
		if secret, err = cfg.Metadata.ContextSecret(ctx, candidate); err != nil {
			return nil, fmt.Errorf("coordinator: context secret from the metadata store: %w", err)
		}
	}
	keys, err := vclock.NewContextKeys(secret, cfg.ContextSecretPrevious)
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return keys, nil
}

// watchReconnects reloads the placement map and marks every cached tenant
// stale each time the NATS connection comes back after a disconnection,
// until ctx ends: ring and tenant events are plain publishes, and those
// sent meanwhile were lost. Without it the coordinator would route by the
// old map until a node refused it or the ring refresh came, and serve a
// changed or deleted tenant's old settings until the cache TTL.
func (c *Coordinator) watchReconnects(ctx context.Context) {
	back := c.nc.StatusChanged(nats.CONNECTED)
	defer c.nc.RemoveStatusListener(back)
	for {
		select {
		case <-ctx.Done():
			return
		case <-back:
			c.log.Info("NATS connection back: reloading the placement map and the tenants, whose events may have been missed")
			c.routing.refreshNow()
			c.tenants.invalidateAll()
		}
	}
}

func (c *Coordinator) subscribeEvents() error {
	ringSub, err := c.nc.Subscribe(subjects.EventsRing, func(*nats.Msg) { c.routing.refreshNow() })
	if err != nil {
		return fmt.Errorf("coordinator: subscribe %s: %w", subjects.EventsRing, err)
	}
	tenant, err := c.nc.Subscribe(subjects.EventsTenant, func(m *nats.Msg) {
		var ev subjects.TenantEvent
		if err := msgpack.Unmarshal(m.Data, &ev); err == nil {
			c.tenants.invalidate(ev.TenantID, ev.Deleted)
		}
	})
	if err != nil {
		_ = ringSub.Unsubscribe()
		return fmt.Errorf("coordinator: subscribe %s: %w", subjects.EventsTenant, err)
	}
	c.subs = append(c.subs, ringSub, tenant)
	return nil
}

func (c *Coordinator) addService() error {
	svc, err := microsvc.New(c.nc, microsvc.Config{
		Name:        subjects.ServiceName,
		Version:     Version,
		Description: "quorumkv coordinator: replicated key-value requests and the admin API",
		QueueGroup:  subjects.QueueGroup,
		Metadata:    map[string]string{"actor": c.cfg.Actor},
	})
	if err != nil {
		return fmt.Errorf("coordinator: %w", err)
	}
	c.svc = svc
	for _, op := range []string{subjects.OpPut, subjects.OpGet, subjects.OpDelete} {
		if err := svc.AddEndpoint(op, subjects.DataPrefix+".*."+op, c.async(c.dataHandler(op))); err != nil {
			return fmt.Errorf("coordinator: add endpoint %s: %w", op, err)
		}
	}
	for _, ep := range c.adminEndpoints() {
		if err := svc.AddEndpoint(ep.name, subjects.AdminPrefix+"."+ep.subject, c.async(simple(ep.handle))); err != nil {
			return fmt.Errorf("coordinator: add endpoint %s: %w", ep.name, err)
		}
	}
	return nil
}

// async runs h on its own goroutine, bounded by MaxInflight: a micro
// endpoint delivers one message at a time, and a request that waits on
// replicas must not hold up the next one. Past the bound it answers 429.
func (c *Coordinator) async(h func(req micro.Request, release func())) micro.HandlerFunc {
	return func(req micro.Request) {
		c.mu.RLock()
		defer c.mu.RUnlock()
		if c.stopping {
			c.respondError(req, subjects.Errorf(subjects.KindUnavailable, "coordinator is stopping"))
			return
		}
		select {
		case c.sem <- struct{}{}:
		default:
			c.respondError(req, subjects.Errorf(subjects.KindOverloaded, "coordinator has %d requests in progress; retry with back-off", cap(c.sem)))
			return
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			var once sync.Once
			release := func() { once.Do(func() { <-c.sem }) }
			defer release()
			h(req, release)
		}()
	}
}

// simple adapts a handler that needs no early release for async.
func simple(h func(micro.Request)) func(micro.Request, func()) {
	return func(req micro.Request, _ func()) { h(req) }
}

// Actor is the id this coordinator mints dots under.
func (c *Coordinator) Actor() string { return c.cfg.Actor }

// Stop stops taking requests, lets the ones in progress finish, and stops
// every goroutine it started. It does not close the stores or the NATS
// connection it was handed. Safe to call more than once.
func (c *Coordinator) Stop() {
	c.stopOnce.Do(c.stop)
}

func (c *Coordinator) stop() {
	// Drain first: requests NATS routed here before the unsubscribe took
	// effect are served as usual, not refused (a rolling restart shows
	// clients no errors). Only then do stragglers get "stopping".
	if c.svc != nil {
		c.svc.Stop()
	}
	c.mu.Lock()
	c.stopping = true
	c.mu.Unlock()
	for _, s := range c.subs {
		_ = s.Unsubscribe()
	}
	c.cancel()
	c.wg.Wait()
	c.rep.Stop()
	c.log.Info("coordinator stopped")
}

// Replies go through the request (see package microsvc), which records each
// request when it is answered: micro's stats ($SRV.STATS, nats micro
// stats, quorumkv status) count every error reply and the time from
// receipt to the answer.

// respondError answers req with err as a wire error, in micro's error
// headers. Internal errors are logged; the client sees only their class.
func (c *Coordinator) respondError(req micro.Request, err error) {
	isJSON := wire.IsJSONHeader(req.Headers())
	var e *subjects.Error
	if !errors.As(err, &e) {
		c.log.Error("internal error", "subject", req.Subject(), "err", err)
		e = subjects.Errorf(subjects.KindInternal, "internal error; see the coordinator's log")
	}
	body, _ := wire.Marshal(isJSON, e)
	m := &nats.Msg{Data: body, Header: e.Headers()}
	c.reply(req, m, isJSON)
}

// replyHeaderRoom is what a reply leaves of the max payload for its headers.
const replyHeaderRoom = 4 << 10

// respond answers req with v in the request's encoding.
func (c *Coordinator) respond(req micro.Request, v any) {
	isJSON := wire.IsJSONHeader(req.Headers())
	data, err := wire.Marshal(isJSON, v)
	if err != nil {
		c.respondError(req, fmt.Errorf("encode reply: %w", err))
		return
	}
	if limit := c.nc.MaxPayload() - replyHeaderRoom; int64(len(data)) > limit {
		// Publishing it would fail and leave the client waiting for its
		// timeout; say why instead. (A JSON reply of text that escapes
		// heavily, or a siblings state repair merges grew past the cap.)
		hint := "delete the key without a context"
		if isJSON {
			hint = "read it in msgpack (no Content-Type header), or " + hint
		}
		c.respondError(req, subjects.Errorf(subjects.KindTooLarge,
			"the reply would be %d bytes, more than one message carries (%d): %s", len(data), limit, hint))
		return
	}
	c.reply(req, &nats.Msg{Data: data}, isJSON)
}

func (c *Coordinator) reply(req micro.Request, m *nats.Msg, isJSON bool) {
	if isJSON {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(subjects.ContentType, subjects.JSONContentType)
	}
	if err := microsvc.RespondMsg(c.nc, req, m); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		c.log.Warn("reply failed", "subject", req.Reply(), "err", err)
	}
}

// ActiveNodes is the number of storage nodes in this coordinator's current
// placement map: the active ones when it was claimed.
func (c *Coordinator) ActiveNodes() int { return c.routing.placement().nodeCount() }

// Placement returns the placement map this coordinator routes by (the zero
// Map, with no owners, before any node registered). The Map is immutable.
func (c *Coordinator) Placement() *ring.Map { return c.routing.placement().m }
