// Package devcluster runs a whole quorumkv deployment in one process: an
// embedded nats-server with JetStream (or the NATS servers it is given),
// storage nodes, coordinators with their stores, a repair publisher and
// worker, and tenant "default". It is the one assembly of the components:
// `quorumkv dev`, the benchmark (on a 3-server cluster) and the
// integration tests all start from it, so what the tests exercise is what
// users run.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/idempotency"
	"github.com/quorumkv/quorumkv/internal/wiring"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/storage"
)

// Config configures a dev cluster. Start from [DefaultConfig]; a zero field
// takes the default shown (the component configs take theirs as their
// packages define: see coordinator.Config and repair.Config).
type Config struct {
	Listen        string // NATS client address of the embedded server (127.0.0.1:4222); port 0 picks a free one
	DataDir       string // everything lives below it (./data)
	Nodes         int    // storage nodes (3); negative for none (tests that register nodes themselves)
	Fsync         bool   // fsync storage writes before acknowledging (DefaultConfig: true)
	DefaultTenant string // created with RF min(3, Nodes) if missing ("default"); "-" for none
	Metadata      string // metadata store: "nats" (default) or a postgres:// URL
	Idempotency   string // idempotency store: "nats" (default) or a redis:// URL
	RedisPrefix   string // key prefix in Redis (default wiring.DefaultRedisPrefix)
	// Servers, when set, are client URLs of running NATS servers to deploy
	// on instead of starting an embedded one (Listen is then unused): the
	// i-th coordinator, storage node (node-i+1) and repair worker connect
	// to Servers[i mod len], the stores and the publisher to Servers[0].
	Servers []string
	// Replicas are the JetStream replicas of the stores' KV buckets and of
	// the repair streams (1; 3 on a 3-server cluster).
	Replicas     int
	Coordinators int // coordinators started (1)
	Coordinator  coordinator.Config
	Repair       repair.Config // repair streams, publisher and workers
	// Metrics receives every component's Prometheus metrics, labelled by
	// coordinator index and storage node id; nil records none.
	Metrics prometheus.Registerer
	Logger  *slog.Logger

	// TransferRate caps the bytes per second a storage node pulls while
	// it receives partitions (0: storage.DefaultTransferRate;
	// storage.Unlimited for no cap), as storage --transfer-rate does.
	TransferRate int64
	// AntiEntropyInterval is each storage node's anti-entropy interval
	// (storage --anti-entropy-interval; 0 = off). DefaultConfig, which
	// `quorumkv dev` runs, sets storage.DefaultAntiEntropyInterval.
	AntiEntropyInterval time.Duration
	// ReapInterval, when set, runs each storage node's tombstone reaping
	// on its own schedule (tests); 0: after every anti-entropy pass.
	ReapInterval time.Duration
}

// DefaultConfig is the deployment `quorumkv dev` runs: three storage nodes
// with fsync, one coordinator and one repair worker with their packages'
// default settings, stores on JetStream KV, tenant "default".
func DefaultConfig() Config {
	return Config{
		Listen:        "127.0.0.1:4222",
		DataDir:       "data",
		Nodes:         3,
		Fsync:         true,
		DefaultTenant: "default",
		Metadata:      "nats",
		Idempotency:   "nats",
		Replicas:      1,
		Coordinators:  1,
		Coordinator:   coordinator.DefaultConfig(),
		Repair:        repair.DefaultConfig(),

		AntiEntropyInterval: storage.DefaultAntiEntropyInterval,
	}
}

// Cluster is a running dev cluster. Stop it with Close.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	Server *server.Server // the embedded server; nil on Config.Servers
	URL    string         // a client URL of the (first) server

	mu     sync.Mutex
	coords []*coordinator.Coordinator
	nodes  map[string]*nodeProc
	stores *wiring.Stores
	conns  []*nats.Conn

	pub     *repair.Publisher
	workers []*repair.Worker
	started int // repair workers started, for their names
}

type nodeProc struct {
	node *storage.Node
	nc   *nats.Conn
}

// Start boots the cluster and returns once tenant default answers.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	cfg.defaults()
	c := &Cluster{cfg: cfg, log: cfg.Logger, nodes: make(map[string]*nodeProc)}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if len(cfg.Servers) == 0 {
		s, err := startServer(cfg.Listen, filepath.Join(cfg.DataDir, "nats"))
		if err != nil {
			return nil, err
		}
		c.Server, c.cfg.Servers = s, []string{s.ClientURL()}
	}
	c.URL = c.cfg.Servers[0]
	nc, err := c.connect("stores", 0)
	if err != nil {
		return nil, err
	}
	storeOpts := wiring.StoreOptions{Replicas: cfg.Replicas, Migrate: true, RedisPrefix: cfg.RedisPrefix}
	if c.stores, err = wiring.OpenStores(ctx, nc, cfg.Metadata, cfg.Idempotency, storeOpts); err != nil {
		return nil, err
	}
	pnc, err := c.connect("repair-publisher", 0)
	if err != nil {
		return nil, err
	}
	if c.pub, err = repair.NewPublisher(ctx, pnc, c.repairConfig("publisher")); err != nil {
		return nil, fmt.Errorf("repair publisher: %w", err)
	}
	for range cfg.Coordinators {
		if _, err := c.AddCoordinator(ctx); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= cfg.Nodes; i++ {
		if err := c.StartNode(NodeID(i)); err != nil {
			return nil, err
		}
	}
	if err := c.WaitForNodes(ctx, cfg.Nodes); err != nil {
		return nil, err
	}
	if err := c.waitSettled(ctx, cfg.Nodes); err != nil {
		return nil, err
	}
	if _, err := c.StartRepairWorker(ctx); err != nil {
		return nil, err
	}
	if cfg.DefaultTenant != "-" {
		if err := c.ensureTenant(ctx, cfg.DefaultTenant, min(3, cfg.Nodes)); err != nil {
			return nil, err
		}
	}
	ok = true
	return c, nil
}

// defaults fills the zero fields of c from DefaultConfig, except the
// component configs (their packages default them) and Fsync (a bool).
func (c *Config) defaults() {
	d := DefaultConfig()
	for _, f := range []struct {
		v   *string
		def string
	}{
		{&c.Listen, d.Listen}, {&c.DataDir, d.DataDir}, {&c.DefaultTenant, d.DefaultTenant},
		{&c.Metadata, d.Metadata}, {&c.Idempotency, d.Idempotency},
	} {
		if *f.v == "" {
			*f.v = f.def
		}
	}
	noNodes := c.Nodes < 0
	defer func() {
		if noNodes {
			c.Nodes = 0
		}
	}()
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&c.Nodes, d.Nodes}, {&c.Replicas, d.Replicas}, {&c.Coordinators, d.Coordinators},
	} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// startServer starts the embedded nats-server with JetStream on listen,
// its store in dir.
func startServer(listen, dir string) (*server.Server, error) {
	host, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen %q: want HOST:PORT: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("--listen %q: bad port", listen)
	}
	if port != 0 {
		// nats-server would only log this; say it plainly instead.
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, fmt.Errorf("cannot listen on %s (is another NATS server or quorumkv dev running? pick another with --listen): %w", listen, err)
		}
		_ = l.Close()
	} else {
		port = -1
	}
	opts := &server.Options{
		ServerName: "quorumkv-dev",
		Host:       host,
		Port:       port,
		NoSigs:     true,
		NoLog:      true,
		JetStream:  true,
		StoreDir:   dir,
		MaxPayload: 4 << 20,
		MaxPending: 64 << 20,
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats-server on %s did not start within 15s", listen)
	}
	return s, nil
}

// NodeID is the id of the i-th storage node (1-based): node-1, node-2, ….
func NodeID(i int) string { return "node-" + strconv.Itoa(i) }

// connect opens a connection named name to server i (mod the servers),
// closed with the cluster.
func (c *Cluster) connect(name string, i int) (*nats.Conn, error) {
	nc, err := c.dial(name, i)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.mu.Unlock()
	return nc, nil
}

// dial opens a connection named name to server i (mod the servers); the
// caller closes it.
func (c *Cluster) dial(name string, i int) (*nats.Conn, error) {
	nc, err := nats.Connect(c.cfg.Servers[i%len(c.cfg.Servers)], nats.Name("quorumkv-dev-"+name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", name, err)
	}
	return nc, nil
}

// AddCoordinator starts one more coordinator on its own connection,
// sharing the cluster's stores and repair publisher.
func (c *Cluster) AddCoordinator(ctx context.Context) (*coordinator.Coordinator, error) {
	c.mu.Lock()
	n := len(c.coords)
	c.mu.Unlock()
	nc, err := c.connect("coordinator", n)
	if err != nil {
		return nil, err
	}
	cfg := c.cfg.Coordinator
	cfg.Metadata, cfg.Idempotency, cfg.Logger = c.stores.Metadata, c.stores.Idempotency, c.log
	cfg.Actor = ""
	if cfg.Repair == nil && c.pub != nil {
		cfg.Repair = c.pub
	}
	if c.cfg.Metrics != nil {
		cfg.Metrics = prometheus.WrapRegistererWith(prometheus.Labels{"coordinator": strconv.Itoa(n)}, c.cfg.Metrics)
	}
	co, err := coordinator.New(ctx, nc, cfg)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.coords = append(c.coords, co)
	c.mu.Unlock()
	return co, nil
}

// StopCoordinator stops the i-th coordinator (0-based) as a crash would
// from a client's view: it stops answering.
func (c *Cluster) StopCoordinator(i int) {
	c.mu.Lock()
	co := c.coords[i]
	c.mu.Unlock()
	co.Stop()
}

// NodeDir is where storage node id keeps its data.
func (c *Cluster) NodeDir(id string) string { return filepath.Join(c.cfg.DataDir, id) }

// StartNode starts (or restarts) storage node id on its own connection, to
// the server of its number (node-1 to the first).
func (c *Cluster) StartNode(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, running := c.nodes[id]; running {
		return fmt.Errorf("storage node %s is already running", id)
	}
	scfg := storage.Config{NodeID: id, DataDir: c.NodeDir(id), Fsync: c.cfg.Fsync, TransferRate: c.cfg.TransferRate, Logger: c.log,
		ReapInterval: c.cfg.ReapInterval, AntiEntropyInterval: c.cfg.AntiEntropyInterval}
	if c.cfg.Metrics != nil {
		scfg.Metrics = prometheus.WrapRegistererWith(prometheus.Labels{"node": id}, c.cfg.Metrics)
	}
	i, _ := strconv.Atoi(strings.TrimPrefix(id, "node-"))
	nc, err := c.dial(id, max(i-1, 0))
	if err != nil {
		return err
	}
	n, err := storage.New(nc, scfg)
	if err != nil {
		nc.Close()
		return err
	}
	c.nodes[id] = &nodeProc{node: n, nc: nc}
	return nil
}

// StopNode stops storage node id: its subscriptions go away, so
// coordinators see it as down at once.
func (c *Cluster) StopNode(id string) error {
	c.mu.Lock()
	p := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("storage node %s is not running", id)
	}
	err := p.node.Stop()
	p.nc.Close()
	return err
}

// Node returns running storage node id, or nil.
func (c *Cluster) Node(id string) *storage.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.nodes[id]; p != nil {
		return p.node
	}
	return nil
}

func (c *Cluster) repairConfig(name string) repair.Config {
	cfg := c.cfg.Repair
	cfg.Replicas, cfg.Logger, cfg.Name = c.cfg.Replicas, c.log, "dev-"+name
	return cfg
}

// StartRepairWorker starts one more repair worker on its own connection.
func (c *Cluster) StartRepairWorker(ctx context.Context) (*repair.Worker, error) {
	c.mu.Lock()
	c.started++
	n := c.started
	c.mu.Unlock()
	name := "worker-" + strconv.Itoa(n)
	nc, err := c.connect("repair-"+name, n)
	if err != nil {
		return nil, err
	}
	w, err := repair.NewWorker(ctx, nc, c.repairConfig(name))
	if err != nil {
		return nil, fmt.Errorf("repair worker: %w", err)
	}
	c.mu.Lock()
	c.workers = append(c.workers, w)
	c.mu.Unlock()
	return w, nil
}

// StopRepairWorkers stops every repair worker the cluster started; the
// repair requests stay in the stream for the next worker.
func (c *Cluster) StopRepairWorkers() {
	c.mu.Lock()
	ws := c.workers
	c.workers = nil
	c.mu.Unlock()
	for _, w := range ws {
		w.Stop()
	}
}

// RepairPublisher is the publisher the cluster's coordinators use.
func (c *Cluster) RepairPublisher() *repair.Publisher { return c.pub }

// Metadata is the cluster's metadata store.
func (c *Cluster) Metadata() metadata.Store { return c.stores.Metadata }

// Idempotency is the cluster's idempotency store.
func (c *Cluster) Idempotency() idempotency.Store { return c.stores.Idempotency }

// WaitForNodes waits until n storage nodes are registered active and every
// coordinator's ring has them.
func (c *Cluster) WaitForNodes(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		ready := true
		c.mu.Lock()
		for _, co := range c.coords {
			ready = ready && co.ActiveNodes() >= n
		}
		c.mu.Unlock()
		if ready {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d storage nodes to register: %w", n, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitSettled waits until the records of the n nodes Start started say
// active and no coordinator's map moves a partition: a test starts on a
// cluster in no transition, whose requests are neither fenced nor retried
// (on a fresh cluster that holds at once, as nodes registering before the
// first tenant enter the map together; on a restarted one it may take the
// last transfers).
func (c *Cluster) waitSettled(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		why := c.unsettled(ctx, n)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the cluster to settle: %s: %w", why, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// unsettled says why the cluster is not settled yet, or "".
func (c *Cluster) unsettled(ctx context.Context, n int) string {
	for i := 1; i <= n; i++ {
		nd, err := c.stores.Metadata.GetNode(ctx, NodeID(i))
		if err != nil {
			return fmt.Sprintf("node %s: %v", NodeID(i), err)
		}
		if nd.Status != metadata.NodeActive {
			return fmt.Sprintf("node %s is %s", nd.ID, nd.Status)
		}
	}
	c.mu.Lock()
	coords := slices.Clone(c.coords)
	c.mu.Unlock()
	for i, co := range coords {
		m := co.Placement()
		for p := range uint32(m.Partitions()) {
			if m.Moving(p) {
				return fmt.Sprintf("coordinator %d's map version %d moves partition %d", i, m.Version(), p)
			}
		}
	}
	return ""
}

func (c *Cluster) ensureTenant(ctx context.Context, id string, rf int) error {
	nc, err := c.connect("admin", 0)
	if err != nil {
		return err
	}
	admin := client.NewAdmin(nc)
	_, err = admin.CreateTenant(ctx, id, client.TenantSpec{ReplicationFactor: &rf})
	if err != nil && !errors.Is(err, client.ErrExists) {
		return fmt.Errorf("create tenant %s: %w", id, err)
	}
	return nil
}

// Close stops everything in reverse order of start: coordinators, the
// repair publisher and workers, storage nodes, the stores, the
// connections, the embedded server. Safe to call twice.
func (c *Cluster) Close() {
	c.mu.Lock()
	coords := c.coords
	c.coords = nil
	nodes := c.nodes
	c.nodes = map[string]*nodeProc{}
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, co := range coords {
		co.Stop()
	}
	if c.pub != nil {
		c.pub.Stop()
	}
	c.StopRepairWorkers()
	for id, p := range nodes {
		if err := p.node.Stop(); err != nil {
			c.log.Warn("stop storage node", "node", id, "err", err)
		}
		p.nc.Close()
	}
	if c.stores != nil {
		c.stores.Close()
	}
	for _, nc := range conns {
		nc.Close()
	}
	if c.Server != nil {
		c.Server.Shutdown()
		c.Server.WaitForShutdown()
		c.Server = nil
	}
}

// Coordinators returns the running coordinators, oldest first.
func (c *Cluster) Coordinators() []*coordinator.Coordinator {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*coordinator.Coordinator(nil), c.coords...)
}
