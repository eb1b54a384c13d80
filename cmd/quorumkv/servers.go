package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/wiring"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/schema"
	"github.com/quorumkv/quorumkv/storage"
	"github.com/quorumkv/quorumkv/vclock"
)

func runDev(args []string) error {
	fs := newFlags("dev", "", "Run a whole quorumkv in one process, with nothing else installed: an embedded nats-server\nwith JetStream, storage nodes on Pebble, a coordinator (metadata and idempotency on JetStream KV)\nand tenant \"default\". Data survives restarts. Stop with Ctrl-C.")
	listen := fs.String("listen", "127.0.0.1:4222", "NATS client address to serve (HOST:PORT)")
	data := fs.String("data", "./data", "directory for all data (NATS JetStream and storage nodes)")
	nodes := fs.Int("nodes", 3, "storage nodes to run (1..7)")
	fsync := fs.Bool("fsync", true, "fsync storage writes before acknowledging them (false trades durability for speed)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics of every component on HOST:PORT at /metrics (empty: off)")
	lf := logFlags{level: "warn"} // the banner says what matters; --log-level info shows the rest
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *nodes < 1 || *nodes > 7 {
		return usagef("--nodes %d: use 1..7", *nodes)
	}
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	started := time.Now()
	cfg := devcluster.Config{Listen: *listen, DataDir: *data, Nodes: *nodes, Fsync: *fsync, Logger: log}
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
`, version, *nodes, min(3, *nodes), *data, time.Since(started).Round(time.Millisecond), url, url, url, url, url, url, url, url)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping…")
	return nil
}

func runCoordinator(args []string) error {
	fs := newFlags("coordinator", "", "Serve client requests (kv.v1.<tenant>.put|get|delete) and the admin API (kv.v1.admin.>)\nas part of the micro service \"quorumkv\", queue group \"coordinators\". Run as many as you like.")
	var nf natsFlags
	nf.register(fs)
	meta := fs.String("metadata", "nats", "metadata store: nats (JetStream KV) or postgres://user@host/db")
	idem := fs.String("idempotency", "nats", "idempotency store: nats (JetStream KV) or redis://host:6379/0")
	migrate := fs.Bool("migrate", true, "apply PostgreSQL migrations at start (under an advisory lock)")
	kvReplicas := fs.Int("kv-replicas", 1, "replicas of the JetStream KV buckets (3 on a 3-server cluster)")
	redisPrefix := fs.String("redis-prefix", "quorumkv:idem:", "key prefix in Redis")
	actor := fs.String("id", "", "actor id in minted versions (default: random per start; must be unique per process)")
	timeout := fs.Duration("timeout", 2*time.Second, "default request timeout (requests may ask for up to 60s)")
	maxInflight := fs.Int("max-inflight", 4096, "requests in progress before answering 429 overloaded")
	nodeInflight := fs.Int("node-inflight", 2, "batches in flight per storage node and operation")
	maxBatch := fs.Int("max-batch", 512, "replica messages per batch at most")
	tenantTTL := fs.Duration("tenant-ttl", 30*time.Second, "how long a cached tenant is trusted without an update event")
	repairOn := fs.Bool("repair", true, "publish read repairs and hinted handoffs to the JetStream stream KV_REPAIR (run `quorumkv repair` workers to apply them)")
	repairReplicas := fs.Int("repair-replicas", 0, "replicas of KV_REPAIR if this coordinator creates it (0 = 1 outside a cluster, else up to 3)")
	hintWindow := fs.Duration("hint-window", 500*time.Millisecond, "after answering, how long to wait for the slower primaries before hinting them")
	readRepairChance := fs.Float64("read-repair-chance", 0.1, "share of quorum reads that ask every primary, not only as many as the level needs, so read repair reaches them all (0..1)")
	speculativeRetry := fs.Duration("speculative-retry", 0, "how long a read waits for the primaries it asked before asking the others (0: adaptive, 4x the mean replica round trip, 5ms..200ms)")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	ctxSecret := fs.String("context-secret", "", "secret under which contexts are authenticated, the same on every coordinator, at least 32 bytes (e.g. the output of openssl rand -hex 32; empty: the cluster's secret kept in the metadata store)")
	ctxSecretPrev := fs.String("context-secret-previous", "", "the secret before --context-secret, whose contexts are still accepted while a rotation rolls out (see docs/OPERATIONS.md)")
	var lf logFlags
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	secret, secretPrev, err := contextSecrets(*ctxSecret, *ctxSecretPrev)
	if err != nil {
		return err
	}
	if *kvReplicas < 1 || *kvReplicas > 5 {
		return usagef("--kv-replicas %d: use 1..5", *kvReplicas)
	}
	if *timeout <= 0 || *timeout > 60*time.Second {
		return usagef("--timeout %s: use 1ms..60s", *timeout)
	}
	if *readRepairChance < 0 || *readRepairChance > 1 {
		return usagef("--read-repair-chance %g: use 0..1", *readRepairChance)
	}
	if *speculativeRetry < 0 {
		return usagef("--speculative-retry %s: use 0 (adaptive) or a positive duration", *speculativeRetry)
	}
	chance := *readRepairChance
	if chance == 0 {
		chance = -1 // the Config's "never"
	}
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	nc, err := nf.connect("quorumkv-coordinator", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	opts := wiring.StoreOptions{Replicas: *kvReplicas, RedisPrefix: *redisPrefix, Migrate: *migrate}
	ms, err := wiring.OpenMetadata(ctx, *meta, nc, opts)
	if err != nil {
		return fmt.Errorf("metadata store: %w", err)
	}
	defer ms.Close()
	is, err := wiring.OpenIdempotency(ctx, *idem, nc, opts)
	if err != nil {
		return fmt.Errorf("idempotency store: %w", err)
	}
	defer is.Close()
	cfg := coordinator.Config{
		Metadata: ms, Idempotency: is, Actor: *actor, Timeout: *timeout,
		MaxInflight: *maxInflight, NodeInflight: *nodeInflight, MaxBatch: *maxBatch, TenantTTL: *tenantTTL,
		HintWindow: *hintWindow, ReadRepairChance: chance, SpeculativeRetry: *speculativeRetry, Logger: log,
		ContextSecret: secret, ContextSecretPrevious: secretPrev,
	}
	var pub *repair.Publisher
	if *repairOn {
		if pub, err = repair.NewPublisher(ctx, nc, repair.Config{Replicas: *repairReplicas, Logger: log}); err != nil {
			return fmt.Errorf("repair publisher: %w", err)
		}
		defer pub.Close(2 * time.Second)
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
	log.Info("coordinator ready", "nats", nc.ConnectedUrlRedacted(), "metadata", redact(*meta), "idempotency", redact(*idem), "repair", *repairOn)
	<-ctx.Done()
	co.Stop()
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
	id := fs.String("id", "", "node id, a subject token such as node-1 (required)")
	data := fs.String("data", "", "data directory, one per node (required)")
	fsync := fs.Bool("fsync", true, "fsync each write batch before acknowledging it; false trades durability for speed: acknowledged writes may be lost when the process or the machine crashes (the other replicas and repair still hold them)")
	vnodes := fs.Int("virtual-nodes", 128, "ring points of this node (more = larger share)")
	partitions := fs.Int("partitions", ring.DefaultPartitions, "partitions the data directory is laid out in (a power of two up to 65536); must match what the directory was written with")
	queue := fs.Int("queue-len", 8192, "messages queued per subject; past it the node answers 429 overloaded at once")
	maxBatch := fs.Int("max-batch", 256, "write messages group-committed together at most")
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	var lf logFlags
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" || *data == "" {
		return usagef("--id and --data are required")
	}
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()
	scfg := storage.Config{NodeID: *id, DataDir: *data, Fsync: *fsync, VirtualNodes: *vnodes, Partitions: *partitions, QueueLen: *queue, MaxBatch: *maxBatch, Logger: log}
	stopMetrics, err := serveMetrics(ctx, *metricsAddr, log, func(reg prometheus.Registerer) { scfg.Metrics = reg })
	if err != nil {
		return err
	}
	defer stopMetrics()
	n, err := storage.Open(scfg)
	if err != nil {
		return err
	}
	nc, err := nf.connect("quorumkv-storage-"+*id, log)
	if err != nil {
		_ = n.Close()
		return err
	}
	defer nc.Close()
	if err := n.Start(nc); err != nil {
		_ = n.Close()
		return err
	}
	<-ctx.Done()
	log.Info("stopping: finishing queued writes, then closing Pebble")
	return n.Close()
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
