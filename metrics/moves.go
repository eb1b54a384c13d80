package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// storageMoves counts what a storage node does while partitions move
// (issue 14): records pulled in, partitions received, records handed off,
// partitions dropped, and items refused to senders with an older map.
type storageMoves struct {
	xferBytes, xferKeys, xferParts prometheus.Counter
	handoff, drops                 prometheus.Counter
	notOwner                       *prometheus.CounterVec
}

func newStorageMoves() *storageMoves {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "storage", Name: name, Help: help})
	}
	return &storageMoves{
		xferBytes: c("transfer_bytes_total", "Bytes of partition pages pulled into this node (as received on the wire)."),
		xferKeys:  c("transfer_keys_total", "Records pulled into this node by partition transfers and merged."),
		xferParts: c("transfer_partitions_total", "Partitions this node pulled to their end from every reachable source."),
		handoff:   c("handoff_records_total", "Records of partitions this node no longer owns pushed to their owners as merges."),
		drops:     c("dropped_partitions_total", "Partitions dropped (one range deletion) after their handoff."),
		notOwner: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "storage", Name: "not_owner_total",
			Help: "Items refused not_owner, by operation (write, read): the sender's map was older than the partition's since.",
		}, []string{"op"}),
	}
}

func (m *storageMoves) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.xferBytes, m.xferKeys, m.xferParts, m.handoff, m.drops, m.notOwner}
}

// Transferred counts bytes and keys pulled into the node.
func (s *Storage) Transferred(bytes, keys int64) {
	if s == nil {
		return
	}
	s.moves.xferBytes.Add(float64(bytes))
	s.moves.xferKeys.Add(float64(keys))
}

// TransferPartition counts a partition received completely.
func (s *Storage) TransferPartition() {
	if s != nil {
		s.moves.xferParts.Inc()
	}
}

// HandedOff counts records pushed to a partition's owners.
func (s *Storage) HandedOff(records int) {
	if s != nil {
		s.moves.handoff.Add(float64(records))
	}
}

// DroppedPartition counts a partition dropped after its handoff.
func (s *Storage) DroppedPartition() {
	if s != nil {
		s.moves.drops.Inc()
	}
}

// NotOwner counts items of op refused not_owner.
func (s *Storage) NotOwner(op string, items int) {
	if s != nil {
		s.moves.notOwner.WithLabelValues(op).Add(float64(items))
	}
}

// storageAE holds a storage node's anti-entropy and reaping metrics
// (issue 15).
type storageAE struct {
	exchanges, repaired, bytes prometheus.Counter
	lastPass                   prometheus.Gauge
	reaped                     *prometheus.CounterVec
}

func newStorageAE() *storageAE {
	c := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Subsystem: "ae", Name: name, Help: help})
	}
	return &storageAE{
		exchanges: c("exchanges_total", "Anti-entropy comparisons of one partition with one peer that this node initiated and completed (equal roots included)."),
		repaired:  c("keys_repaired_total", "(key, replica) pairs whose stored record a merge of this node's anti-entropy exchanges changed, here or on the peer."),
		bytes:     c("bytes_total", "Record bytes anti-entropy scanned, fetched and sent on this node."),
		lastPass: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: Namespace, Subsystem: "ae", Name: "last_pass_timestamp_seconds",
			Help: "Unix time at which the node's last full anti-entropy pass over its partitions ended; 0 before the first."}),
		reaped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: "reaped_total",
			Help: "Dead records removed by the reaper, by kind (tombstone, expired)."}, []string{"kind"}),
	}
}

func (m *storageAE) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.exchanges, m.repaired, m.bytes, m.lastPass, m.reaped}
}

// AEExchange counts one completed anti-entropy comparison.
func (s *Storage) AEExchange() {
	if s != nil {
		s.ae.exchanges.Inc()
	}
}

// AERepaired counts (key, replica) pairs changed by anti-entropy.
func (s *Storage) AERepaired(n int) {
	if s != nil && n > 0 {
		s.ae.repaired.Add(float64(n))
	}
}

// AEBytes counts record bytes anti-entropy scanned, fetched or sent.
func (s *Storage) AEBytes(n int) {
	if s != nil && n > 0 {
		s.ae.bytes.Add(float64(n))
	}
}

// AELastPass records when the last full anti-entropy pass ended.
func (s *Storage) AELastPass(t time.Time) {
	if s != nil {
		s.ae.lastPass.Set(float64(t.UnixNano()) / 1e9)
	}
}

// Reaped counts n dead records of kind ("tombstone" or "expired")
// removed by the reaper.
func (s *Storage) Reaped(kind string, n int) {
	if s != nil && n > 0 {
		s.ae.reaped.WithLabelValues(kind).Add(float64(n))
	}
}
