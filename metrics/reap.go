package metrics

import "github.com/prometheus/client_golang/prometheus"

// Reap kinds of quorumkv_reaped_total. ONLY APPEND TO THIS LIST.
const (
	ReapTombstone = "tombstone" // a delete's tombstone, dead for longer than the tenant's grace
	ReapExpired   = "expired"   // a value whose TTL passed longer than the grace ago (D5)
)

// newReaped is quorumkv_reaped_total: keys a storage node deleted for
// good (tombstone reaping, issue 15), by kind.
func newReaped() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "reaped_total",
		Help: "Keys this storage node deleted for good because they were dead (kind tombstone: deleted; expired: TTL passed) for longer than their tenant's tombstone grace, after every other owner confirmed the same version.",
	}, []string{"kind"})
}

// Reaped counts k keys of kind (ReapTombstone, ReapExpired) reaped.
func (s *Storage) Reaped(kind string, k int) {
	if s != nil && k > 0 {
		s.reaped.WithLabelValues(kind).Add(float64(k))
	}
}
