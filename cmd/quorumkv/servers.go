package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/wiring"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/schema"
	"github.com/quorumkv/quorumkv/storage"
	"github.com/quorumkv/quorumkv/vclock"
)

func runDev(args []string) error {
	fs := newFlags("dev", "", "Run a whole quorumkv in one process, with nothing else installed: an embedded nats-server\nwith JetStream, storage nodes on Pebble, a coordinator (metadata and idempotency on JetStream KV)\nand tenant \"default\". Data survives restarts. Stop with Ctrl-C.")
	cfg := devcluster.DefaultConfig()
	cfg.DataDir = "./data"
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "NATS client address to serve (HOST:PORT)")
	fs.StringVar(&cfg.DataDir, "data", cfg.DataDir, "directory for all data (NATS JetStream and storage nodes)")
	fs.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "storage nodes to run (1..7)")
	fs.BoolVar(&cfg.Fsync, "fsync", cfg.Fsync, "fsync storage writes before acknowledging them (false trades durability for speed)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics of every component on HOST:PORT at /metrics (empty: off)")
	lf := logFlags{level: "warn"} // the banner says what matters; --log-level info shows the rest
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if cfg.Nodes < 1 || cfg.Nodes > 7 {
		return usagef("--nodes %d: use 1..7", cfg.Nodes)
	}
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	started := time.Now()
	cfg.Logger = log
	stopMetrics, err := serveMetrics(ctx, *metricsAddr, log, func(reg prometheus.Registerer) { cfg.Metrics = reg })
	if err != nil {
		return err
	}
	defer stopMetrics()
	c, err := devcluster.Start(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	url := c.URL
	fmt.Printf(`quorumkv dev %s: embedded NATS with JetStream, %d storage nodes, 1 coordinator, tenant "default" (RF %d)
data:  %s   (started in %s)
ready: %s

Try it (in another terminal; "go run ./cmd/quorumkv" works wherever "quorumkv" is written):
  quorumkv put --nats %s --tenant default greeting "hello, world"
  quorumkv get --nats %s --tenant default greeting
  quorumkv get --nats %s --tenant default --json greeting
  quorumkv tenant list --nats %s
  quorumkv node list --nats %s
With the nats CLI, in JSON:
  nats --server %s req kv.v1.default.put '{"key":"greeting","value":"hello"}' -H 'Content-Type:application/json'
  nats --server %s req kv.v1.default.get '{"key":"greeting"}' -H 'Content-Type:application/json'
Stop with Ctrl-C.
`, version, cfg.Nodes, min(3, cfg.Nodes), cfg.DataDir, time.Since(started).Round(time.Millisecond), url, url, url, url, url, url, url, url)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping…")
	return nil
}

func runCoordinator(args []string) error {
	fs := newFlags("coordinator", "", "Serve client requests (kv.v1.<tenant>.put|get|delete) and the admin API (kv.v1.admin.>)\nas part of the micro service \"quorumkv\", queue group \"coordinators\". Run as many as you like.")
	var nf natsFlags
	nf.register(fs)
	var st storeFlags
	st.register(fs)
	cfg := coordinator.DefaultConfig()
	registerCoordinatorFlags(fs, &cfg)
	repairOn := fs.Bool("repair", true, "publish read repairs and hinted handoffs to the JetStream stream KV_REPAIR (run `quorumkv repair` workers to apply them)")
	rcfg := repair.DefaultConfig()
	fs.IntVar(&rcfg.Replicas, "repair-replicas", rcfg.Replicas, "replicas of KV_REPAIR if this coordinator creates it (0 = 1 outside a cluster, else up to 3)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	ctxSecret := fs.String("context-secret", "", "secret under which contexts are authenticated, the same on every coordinator, at least 32 bytes (e.g. the output of openssl rand -hex 32; empty: the cluster's secret kept in the metadata store)")
	ctxSecretPrev := fs.String("context-secret-previous", "", "the secret before --context-secret, whose contexts are still accepted while a rotation rolls out (see docs/OPERATIONS.md)")
	var lf logFlags
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var err error
	if cfg.ContextSecret, cfg.ContextSecretPrevious, err = contextSecrets(*ctxSecret, *ctxSecretPrev); err != nil {
		return err
	}
	if err := st.check(); err != nil {
		return err
	}
	r, err := startRole("quorumkv-coordinator", &nf, &lf)
	if err != nil {
		return err
	}
	defer r.close()
	ctx, log, nc := r.ctx, r.log, r.nc
	stores, err := wiring.OpenStores(ctx, nc, st.meta, st.idem, st.opts)
	if err != nil {
		return err
	}
	defer stores.Close()
	cfg.Metadata, cfg.Idempotency, cfg.Logger = stores.Metadata, stores.Idempotency, log
	var pub *repair.Publisher
	if *repairOn {
		rcfg.Logger = log
		if pub, err = repair.NewPublisher(ctx, nc, rcfg); err != nil {
			return fmt.Errorf("repair publisher: %w", err)
		}
		defer pub.Stop()
		cfg.Repair = pub
	}
	stopMetrics, err := serveMetrics(ctx, *metricsAddr, log, func(reg prometheus.Registerer) {
		cfg.Metrics = reg
		if pub != nil {
			metrics.NewRepairPublisher(reg, func() metrics.RepairPublisherStats {
				s := pub.Stats()
				return metrics.RepairPublisherStats{Queued: s.Queued, Published: s.Published, Dropped: s.Dropped}
			})
		}
	})
	if err != nil {
		return err
	}
	defer stopMetrics()
	co, err := coordinator.New(ctx, nc, cfg)
	if err != nil {
		return err
	}
	log.Info("coordinator ready", "nats", nc.ConnectedUrlRedacted(), "metadata", redact(st.meta), "idempotency", redact(st.idem), "repair", *repairOn)
	<-ctx.Done()
	co.Stop()
	return nil
}

// role is what a long-running role command starts with: its logger, a
// context that SIGINT or SIGTERM cancels, and its NATS connection.
type role struct {
	ctx  context.Context
	log  *slog.Logger
	nc   *nats.Conn
	stop context.CancelFunc
}

// startRole builds the logger from lf, then connects as name with nf.
// close closes the connection and the signal context.
func startRole(name string, nf *natsFlags, lf *logFlags) (*role, error) {
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return nil, err
	}
	ctx, stop := signalContext()
	nc, err := nf.connect(name, log)
	if err != nil {
		stop()
		return nil, err
	}
	return &role{ctx: ctx, log: log, nc: nc, stop: stop}, nil
}

func (r *role) close() {
	r.nc.Close()
	r.stop()
}

// registerCoordinatorFlags binds the coordinator's tuning flags to cfg;
// each flag's default is cfg's value (coordinator.DefaultConfig), and
// coordinator.New checks what they hold.
func registerCoordinatorFlags(fs *flag.FlagSet, cfg *coordinator.Config) {
	fs.StringVar(&cfg.Actor, "id", cfg.Actor, "actor id in minted versions (default: random per start; must be unique per process)")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "default request timeout (requests may ask for up to 60s)")
	fs.IntVar(&cfg.MaxInflight, "max-inflight", cfg.MaxInflight, "requests in progress before answering 429 overloaded")
	fs.IntVar(&cfg.NodeInflight, "node-inflight", cfg.NodeInflight, "batches in flight per storage node and operation")
	fs.IntVar(&cfg.MaxBatch, "max-batch", cfg.MaxBatch, "replica messages per batch at most")
	fs.DurationVar(&cfg.NodeRestartGrace, "node-restart-grace", cfg.NodeRestartGrace, "after a storage node's last reply, how long \"no responders\" is taken for a restart: its reads and merge writes are sent again until it is back (within the request's timeout) instead of failing at once (1ns: never)")
	fs.DurationVar(&cfg.TenantTTL, "tenant-ttl", cfg.TenantTTL, "how long a cached tenant is trusted without an update event")
	fs.DurationVar(&cfg.HintWindow, "hint-window", cfg.HintWindow, "after answering, how long to wait for the slower primaries before hinting them")
	fs.Float64Var(&cfg.ReadRepairChance, "read-repair-chance", cfg.ReadRepairChance, "share of quorum reads that ask every primary, not only as many as the level needs, so read repair reaches them all (0..1)")
	fs.DurationVar(&cfg.SpeculativeRetry, "speculative-retry", cfg.SpeculativeRetry, "how long a read waits for the primaries it asked before asking the others (0: adaptive, 4x the mean replica round trip, 5ms..200ms)")
	fs.DurationVar(&cfg.NodeHeartbeat, "node-heartbeat", cfg.NodeHeartbeat, "the storage nodes' --heartbeat: node list shows a node silent for 3 of them as down, and only such a node may be replaced or force-removed")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partition count Q of a new cluster (a power of two up to 65536); the first coordinator stores it and it never changes, so later values are ignored")
}

// storeFlags are the flags naming a coordinator's metadata and
// idempotency stores.
type storeFlags struct {
	meta, idem string
	opts       wiring.StoreOptions
}

func (s *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.meta, "metadata", "nats", "metadata store: nats (JetStream KV) or postgres://user@host/db")
	fs.StringVar(&s.idem, "idempotency", "nats", "idempotency store: nats (JetStream KV) or redis://host:6379/0")
	fs.BoolVar(&s.opts.Migrate, "migrate", true, "apply PostgreSQL migrations at start (under an advisory lock)")
	fs.IntVar(&s.opts.Replicas, "kv-replicas", 1, "replicas of the JetStream KV buckets (3 on a 3-server cluster)")
	fs.StringVar(&s.opts.RedisPrefix, "redis-prefix", wiring.DefaultRedisPrefix, "key prefix in Redis")
}

func (s *storeFlags) check() error {
	if s.opts.Replicas < 1 || s.opts.Replicas > 5 {
		return usagef("--kv-replicas %d: use 1..5", s.opts.Replicas)
	}
	return nil
}

// contextSecrets checks the values of --context-secret and
// --context-secret-previous: each empty or at least
// vclock.MinContextSecret bytes, and a previous one only with a current
// one.
func contextSecrets(current, previous string) ([]byte, []byte, error) {
	for _, f := range []struct{ name, v string }{{"context-secret", current}, {"context-secret-previous", previous}} {
		if f.v != "" && len(f.v) < vclock.MinContextSecret {
			return nil, nil, usagef("--%s is %d bytes; use at least %d (for example the output of \"openssl rand -hex 32\")", f.name, len(f.v), vclock.MinContextSecret)
		}
	}
	if previous != "" && current == "" {
		return nil, nil, usagef("--context-secret-previous needs --context-secret (the new secret); the secret kept in the metadata store is not rotated")
	}
	if current == previous && current != "" {
		return nil, nil, usagef("--context-secret-previous is the same as --context-secret; give the old secret, or drop it")
	}
	if current == "" {
		return nil, nil, nil
	}
	var prev []byte
	if previous != "" {
		prev = []byte(previous)
	}
	return []byte(current), prev, nil
}

// serveMetrics starts the metrics server when addr is set, after letting
// register hand the registry to the process's components. stop shuts the
// server down (it also stops when ctx ends) and waits for it.
func serveMetrics(ctx context.Context, addr string, log *slog.Logger, register func(prometheus.Registerer)) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	reg := metrics.NewRegistry()
	register(reg)
	ctx, cancel := context.WithCancel(ctx)
	_, wait, err := metrics.Serve(ctx, addr, reg, log)
	if err != nil {
		cancel()
		return nil, err
	}
	return func() { cancel(); wait() }, nil
}

// redact hides the password of a store URL for logging.
func redact(u string) string {
	if at := strings.Index(u, "@"); at > 0 {
		if scheme := strings.Index(u, "://"); scheme > 0 && scheme < at {
			if colon := strings.Index(u[scheme+3:at], ":"); colon >= 0 {
				return u[:scheme+3+colon] + ":***" + u[at:]
			}
		}
	}
	return u
}

func runStorage(args []string) error {
	fs := newFlags("storage", "", "Serve one storage node: versions in Pebble under --data, on subjects kv.node.<id>.>.\nIt registers itself with the coordinators (no database credentials needed).")
	var nf natsFlags
	nf.register(fs)
	cfg := storage.DefaultConfig()
	fs.StringVar(&cfg.NodeID, "id", "", "node id, a subject token such as node-1 (required)")
	fs.StringVar(&cfg.DataDir, "data", "", "data directory, one per node (required)")
	fs.BoolVar(&cfg.Fsync, "fsync", cfg.Fsync, "fsync each write batch before acknowledging it; false trades durability for speed: acknowledged writes may be lost when the process or the machine crashes (the other replicas and repair still hold them)")
	fs.IntVar(&cfg.VirtualNodes, "virtual-nodes", cfg.VirtualNodes, "ignored since placement is by partitions (the placement map gives every node an equal share); kept so existing command lines still start")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions the data directory is laid out in (a power of two up to 65536); must match what the directory was written with")
	fs.IntVar(&cfg.QueueLen, "queue-len", cfg.QueueLen, "messages queued per subject; past it the node answers 429 overloaded at once")
	fs.IntVar(&cfg.MaxBatch, "max-batch", cfg.MaxBatch, "write messages group-committed together at most")
	transferRate := fs.Float64("transfer-rate", float64(cfg.TransferRate)/(1<<20), "MiB per second a partition transfer into this node pulls at most; 0 = unlimited")
	join := fs.Bool("join", true, "join the cluster at registration (a new node takes its share of partitions and streams them); false registers it standby until 'quorumkv node join ID'")
	fs.DurationVar(&cfg.HandoffGrace, "handoff-grace", cfg.HandoffGrace, "how long a partition this node no longer owns is kept before it is handed off to its owners and dropped (reads at the older map finish meanwhile)")
	fs.DurationVar(&cfg.AntiEntropyInterval, "anti-entropy-interval", cfg.AntiEntropyInterval, "how often the node compares the partitions it owns with their other owners (Merkle trees) and repairs what differs; 0 = off (then nothing repairs replicas that no read touches, and tombstones are never reaped)")
	aeRate := fs.Float64("anti-entropy-rate", float64(cfg.AntiEntropyRate)/(1<<20), "MiB per second of records anti-entropy scans, fetches and sends at most, as --transfer-rate; 0 = unlimited")
	fs.DurationVar(&cfg.Heartbeat, "heartbeat", cfg.Heartbeat, "how often the node re-registers with the coordinators; a node silent for 3 heartbeats shows as down (give coordinators the same --node-heartbeat)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	var lf logFlags
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if cfg.NodeID == "" || cfg.DataDir == "" {
		return usagef("--id and --data are required")
	}
	if cfg.HandoffGrace <= 0 {
		return usagef("--handoff-grace %v must be positive", cfg.HandoffGrace)
	}
	if cfg.Heartbeat <= 0 {
		return usagef("--heartbeat %v must be positive", cfg.Heartbeat)
	}
	if cfg.AntiEntropyInterval < 0 {
		return usagef("--anti-entropy-interval %v is negative (0 = off)", cfg.AntiEntropyInterval)
	}
	switch {
	case *aeRate < 0:
		return usagef("--anti-entropy-rate %v is negative (0 = unlimited)", *aeRate)
	case *aeRate == 0:
		cfg.AntiEntropyRate = storage.Unlimited
	default:
		cfg.AntiEntropyRate = max(int64(*aeRate*(1<<20)), 1)
	}
	cfg.Hold = !*join
	switch {
	case *transferRate < 0:
		return usagef("--transfer-rate %v is negative (0 = unlimited)", *transferRate)
	case *transferRate == 0:
		cfg.TransferRate = storage.Unlimited
	default:
		cfg.TransferRate = max(int64(*transferRate*(1<<20)), 1)
	}
	r, err := startRole("quorumkv-storage-"+cfg.NodeID, &nf, &lf)
	if err != nil {
		return err
	}
	defer r.close()
	ctx, log := r.ctx, r.log
	cfg.Logger = log
	stopMetrics, err := serveMetrics(ctx, *metricsAddr, log, func(reg prometheus.Registerer) { cfg.Metrics = reg })
	if err != nil {
		return err
	}
	defer stopMetrics()
	n, err := storage.New(r.nc, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("stopping: finishing queued writes, then closing Pebble")
	return n.Stop()
}

func runMigrate(args []string) error {
	fs := newFlags("migrate", "", "Apply the metadata schema to PostgreSQL. Safe to run concurrently and repeatedly.")
	meta := fs.String("metadata", "", "postgres://user@host:5432/db (required)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if !strings.HasPrefix(*meta, "postgres://") && !strings.HasPrefix(*meta, "postgresql://") {
		return usagef("--metadata must be a postgres:// URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	n, err := schema.Migrate(ctx, *meta)
	if err != nil {
		return err
	}
	fmt.Printf("applied %d migration(s) to %s\n", n, redact(*meta))
	return nil
}
