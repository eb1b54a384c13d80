package metrics

import "github.com/prometheus/client_golang/prometheus"

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
