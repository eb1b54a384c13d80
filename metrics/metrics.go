// Package metrics defines the Prometheus metrics every quorumkv process
// exports and serves them over HTTP (`--metrics ADDR`, path /metrics).
//
// Each role has a struct of its metrics, created against a Registerer. A
// process that runs several roles of one kind (quorumkv dev runs three
// storage nodes) wraps the registerer with a distinguishing label, e.g.
// prometheus.WrapRegistererWith(prometheus.Labels{"node": id}, reg).
//
// A nil *Coordinator or *Storage is valid and records nothing, so code
// paths need no nil checks and tests need no registry.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/expfmt"
)

// Namespace prefixes every metric name.
const Namespace = "quorumkv"

// latencyBuckets span 100µs to ~6.5s, doubling.
var latencyBuckets = prometheus.ExponentialBuckets(0.0001, 2, 17)

// sizeBuckets count items or messages per batch: 1 to 4096, doubling.
var sizeBuckets = prometheus.ExponentialBuckets(1, 2, 13)

// Coordinator holds a coordinator's metrics.
type Coordinator struct {
	requests        *prometheus.CounterVec
	latency         *prometheus.HistogramVec
	replicaFailures *prometheus.CounterVec
	batchItems      *prometheus.HistogramVec
	siblings        prometheus.Histogram
	spareReads      *prometheus.CounterVec
	skewRejected    *prometheus.CounterVec
	restamps        prometheus.Counter
	notOwner        *prometheus.CounterVec
	resends         *prometheus.CounterVec
}

// NewCoordinator registers a coordinator's metrics with reg. inflight
// reports the requests in progress.
func NewCoordinator(reg prometheus.Registerer, inflight func() float64) *Coordinator {
	c := &Coordinator{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "coordinator", Name: "requests_total",
			Help: "Client requests answered, by operation (put, get, delete, admin), consistency level and outcome (ok, not_found, or the error kind).",
		}, []string{"op", "level", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "coordinator", Name: "request_duration_seconds",
			Help:    "Time from taking a request to answering it, by operation and level.",
			Buckets: latencyBuckets,
		}, []string{"op", "level"}),
		replicaFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "coordinator", Name: "replica_failures_total",
			Help: "Replica messages that failed, by reason: unreachable (no subscriber), timeout (no answer before the request gave up), overloaded (queue full), error (the node answered an error).",
		}, []string{"reason"}),
		batchItems: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "coordinator", Name: "batch_items",
			Help:    "Replica messages per batch sent to a storage node, by operation (write, read): how much natural batching happens.",
			Buckets: sizeBuckets,
		}, []string{"op"}),
	}
	c.siblings = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "coordinator", Name: "read_siblings",
		Help:    "Live values a read of a siblings tenant returned (1 = no conflict). Client writes are refused past 100.",
		Buckets: []float64{1, 2, 3, 5, 10, 25, 50, 100},
	})
	c.spareReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "coordinator", Name: "spare_reads_total",
		Help: "Primaries a read asked beyond the ones its level needs, by why: failed (one it asked failed) or slow (one it asked had not answered within the speculative retry delay).",
	}, []string{"reason"})
	c.skewRejected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "clock_skew_rejected_total",
		Help: "Versions whose counter was dated beyond the allowed clock skew ahead of local time and so were not observed into a clock, by where they were seen: read (a replica's reply to a read), write (the version a replica reported beating a write).",
	}, []string{"source"})
	c.restamps = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "coordinator", Name: "write_restamps_total",
		Help: "lww writes re-stamped and re-sent because a primary already held a newer version (clock skew between coordinators, or a concurrent write).",
	})
	c.notOwner = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "coordinator", Name: "not_owner_total",
		Help: "Storage node answers refusing an item because the coordinator's placement map was older than the partition's last change (not_owner), by operation (write, read); each makes the request reload the map and retry.",
	}, []string{"op"})
	c.resends = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "coordinator", Name: "replica_resends_total",
		Help: "Replica messages sent to a storage node again, by why: restarting (the node answered within --node-restart-grace and now has no subscriber), lost (a batch in flight when its node went away), aged (a batch unanswered for a second: lost, or a slow node).",
	}, []string{"reason"})
	reg.MustRegister(c.requests, c.latency, c.replicaFailures, c.batchItems, c.siblings, c.spareReads, c.skewRejected, c.restamps, c.notOwner, c.resends,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "coordinator", Name: "inflight_requests",
			Help: "Client requests in progress (bounded by --max-inflight; past it requests get 429).",
		}, inflight))
	return c
}

// Request records one answered client request.
func (c *Coordinator) Request(op, level, outcome string, d time.Duration) {
	if c == nil {
		return
	}
	c.requests.WithLabelValues(op, level, outcome).Inc()
	c.latency.WithLabelValues(op, level).Observe(d.Seconds())
}

// ReplicaFailure records a failed replica message.
func (c *Coordinator) ReplicaFailure(reason string) {
	if c == nil {
		return
	}
	c.replicaFailures.WithLabelValues(reason).Inc()
}

// SpareRead records a read asking a primary it had kept in reserve.
func (c *Coordinator) SpareRead(reason string) {
	if c == nil {
		return
	}
	c.spareReads.WithLabelValues(reason).Inc()
}

// SkewRejected records a version not observed into a clock because its
// counter was dated beyond the allowed skew; source is where it was seen.
func (c *Coordinator) SkewRejected(source string) {
	if c == nil {
		return
	}
	c.skewRejected.WithLabelValues(source).Inc()
}

// Restamp records an lww write re-stamped after it lost to a newer version.
func (c *Coordinator) Restamp() {
	if c == nil {
		return
	}
	c.restamps.Inc()
}

// NotOwner records a node's not_owner answer to an item of op (write,
// read).
func (c *Coordinator) NotOwner(op string) {
	if c == nil {
		return
	}
	c.notOwner.WithLabelValues(op).Inc()
}

// Siblings records how many live values a siblings read returned.
func (c *Coordinator) Siblings(n int) {
	if c == nil {
		return
	}
	c.siblings.Observe(float64(n))
}

// Resend records items replica messages sent to a node again, for
// reason (restarting, lost, aged).
func (c *Coordinator) Resend(reason string, items int) {
	if c == nil || items == 0 {
		return
	}
	c.resends.WithLabelValues(reason).Add(float64(items))
}

// Batch records the size of a batch sent to a node.
func (c *Coordinator) Batch(op string, items int) {
	if c == nil {
		return
	}
	c.batchItems.WithLabelValues(op).Observe(float64(items))
}

// Storage holds a storage node's metrics.
type Storage struct {
	messages *prometheus.HistogramVec
	items    *prometheus.CounterVec
	commit   prometheus.Histogram
	moves    *storageMoves // partition transfer, handoff, fencing (moves.go)
	ae       *storageAE    // anti-entropy, reaping (moves.go)

	reg        prometheus.Registerer
	collectors []prometheus.Collector
}

// PebbleStats is what the storage node reports about its engine.
type PebbleStats struct {
	DiskBytes      uint64
	ReadAmp        int
	Compactions    int64
	MemtableBytes  uint64
	WALBytes       uint64
	CompactionDebt uint64
}

// NewStorage registers a storage node's metrics with reg. stats is called
// at every scrape; queue reports messages waiting per operation.
func NewStorage(reg prometheus.Registerer, stats func() PebbleStats, queue func(op string) int) *Storage {
	s := &Storage{
		messages: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "storage", Name: "batch_messages",
			Help:    "Messages applied together, by operation: for writes, how many coordinator batches share one Pebble batch and one fsync (group commit).",
			Buckets: sizeBuckets,
		}, []string{"op"}),
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "storage", Name: "items_total",
			Help: "Replica items processed, by operation (write, read) and outcome (ok, error).",
		}, []string{"op", "outcome"}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "storage", Name: "commit_seconds",
			Help:    "Time to apply and commit one write batch, fsync included when enabled.",
			Buckets: latencyBuckets,
		}),
	}
	gauge := func(name, help string, f func(PebbleStats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "pebble", Name: name, Help: help},
			func() float64 { return f(stats()) })
	}
	s.reg = reg
	s.collectors = []prometheus.Collector{s.messages, s.items, s.commit,
		gauge("disk_bytes", "Bytes the store uses on disk.", func(p PebbleStats) float64 { return float64(p.DiskBytes) }),
		gauge("read_amplification", "Sorted runs a read may consult.", func(p PebbleStats) float64 { return float64(p.ReadAmp) }),
		gauge("compactions", "Compactions since start.", func(p PebbleStats) float64 { return float64(p.Compactions) }),
		gauge("memtable_bytes", "Bytes in memtables.", func(p PebbleStats) float64 { return float64(p.MemtableBytes) }),
		gauge("wal_bytes", "Bytes in the write-ahead log.", func(p PebbleStats) float64 { return float64(p.WALBytes) }),
		gauge("compaction_debt_bytes", "Estimated bytes compaction still has to rewrite.", func(p PebbleStats) float64 { return float64(p.CompactionDebt) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "storage", Name: "queued_writes",
			Help: "Write messages waiting for the writer."}, func() float64 { return float64(queue("write")) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "storage", Name: "queued_reads",
			Help: "Read messages waiting for the reader."}, func() float64 { return float64(queue("read")) }),
	}
	s.moves = newStorageMoves()
	s.collectors = append(s.collectors, s.moves.collectors()...)
	s.ae = newStorageAE()
	s.collectors = append(s.collectors, s.ae.collectors()...)
	reg.MustRegister(s.collectors...)
	return s
}

// Unregister removes the node's metrics, so a node restarted in the same
// process can register again.
func (s *Storage) Unregister() {
	if s == nil {
		return
	}
	for _, c := range s.collectors {
		s.reg.Unregister(c)
	}
}

// Applied records one group of messages applied together.
func (s *Storage) Applied(op string, messages, items, failed int, d time.Duration) {
	if s == nil {
		return
	}
	s.messages.WithLabelValues(op).Observe(float64(messages))
	s.items.WithLabelValues(op, "ok").Add(float64(items - failed))
	if failed > 0 {
		s.items.WithLabelValues(op, "error").Add(float64(failed))
	}
	if op == "write" {
		s.commit.Observe(d.Seconds())
	}
}

// NewRegistry returns a registry with the Go runtime and process
// collectors, ready for a role's metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve serves reg on addr at /metrics until ctx ends. It returns once
// the listener is bound (an error if it cannot be) with the bound address,
// serving in the background; wait blocks until the server has stopped.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) (bound string, wait func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving metrics", "addr", ln.Addr().String(), "path", "/metrics")
	return ln.Addr().String(), func() { <-done }, nil
}

// RepairWorkerStats is what a repair worker reports at every scrape.
type RepairWorkerStats struct {
	Applied, Failed, DeadLettered, NodeWrites uint64
	// SkewRejected counts repair requests dead-lettered at once because
	// their version was dated beyond the allowed clock skew.
	SkewRejected uint64
	// Backlog is the consumer's pending plus unacknowledged messages, or
	// -1 when JetStream did not answer.
	Backlog int64
}

// NewRepairWorker registers a repair worker's metrics with reg; stats is
// called at every scrape.
func NewRepairWorker(reg prometheus.Registerer, stats func() RepairWorkerStats) {
	counter := func(name, help string, f func(RepairWorkerStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "repair", Name: name, Help: help},
			func() float64 { return float64(f(stats())) })
	}
	reg.MustRegister(
		counter("applied_total", "Repair requests whose every target confirmed the merge.", func(s RepairWorkerStats) uint64 { return s.Applied }),
		counter("failed_total", "Repair deliveries that failed and were retried with back-off.", func(s RepairWorkerStats) uint64 { return s.Failed }),
		counter("dead_lettered_total", "Repair requests moved to KV_REPAIR_DEAD after their last delivery.", func(s RepairWorkerStats) uint64 { return s.DeadLettered }),
		counter("node_writes_total", "Merges confirmed by target nodes.", func(s RepairWorkerStats) uint64 { return s.NodeWrites }),
		counter("skew_rejected_total", "Repair requests refused (dead-lettered) because their lww version was dated beyond the allowed clock skew ahead of the worker's clock.", func(s RepairWorkerStats) uint64 { return s.SkewRejected }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "repair", Name: "backlog",
			Help: "Repair requests not yet applied: pending plus delivered and unacknowledged (-1: JetStream did not answer)."},
			func() float64 { return float64(stats().Backlog) }),
	)
}

// RepairPublisherStats is what a coordinator's repair publisher reports.
type RepairPublisherStats struct {
	Queued, Published, Dropped uint64
}

// NewRepairPublisher registers a coordinator's repair publishing metrics.
func NewRepairPublisher(reg prometheus.Registerer, stats func() RepairPublisherStats) {
	counter := func(name, help string, f func(RepairPublisherStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "repair", Name: name, Help: help},
			func() float64 { return float64(f(stats())) })
	}
	reg.MustRegister(
		counter("hints_queued_total", "Read repairs and hints this coordinator queued for KV_REPAIR.", func(s RepairPublisherStats) uint64 { return s.Queued }),
		counter("hints_published_total", "Read repairs and hints stored in KV_REPAIR.", func(s RepairPublisherStats) uint64 { return s.Published }),
		counter("hints_dropped_total", "Read repairs and hints lost (queue full, JetStream unavailable); a later read repairs what they would have.", func(s RepairPublisherStats) uint64 { return s.Dropped }),
	)
}

// Text renders what g gathers in the Prometheus text format, for tests and
// one-off dumps.
func Text(g prometheus.Gatherer) (string, error) {
	mfs, err := g.Gather()
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}
