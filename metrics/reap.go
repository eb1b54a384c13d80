package metrics

// Reap kinds of quorumkv_reaped_total (Storage.Reaped). ONLY APPEND TO
// THIS LIST.
const (
	ReapTombstone = "tombstone" // a delete's tombstone, dead for longer than the tenant's grace
	ReapExpired   = "expired"   // a value whose TTL passed longer than the grace ago
)
