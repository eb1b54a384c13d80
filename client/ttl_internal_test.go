package client

import (
	"testing"
	"time"
)

// TestTTLMillis: a TTL is sent in whole milliseconds, rounded up, so a
// positive TTL below 1ms never becomes 0 (which means the tenant's
// default); negative ones pass through for the coordinator to refuse.
func TestTTLMillis(t *testing.T) {
	for d, want := range map[time.Duration]int64{
		0:                       0,
		time.Microsecond:        1,
		time.Millisecond:        1,
		1500 * time.Microsecond: 2,
		10 * time.Minute:        600_000,
		-time.Second:            -1000,
	} {
		if got := ttlMillis(d); got != want {
			t.Errorf("ttlMillis(%v) = %d, want %d", d, got, want)
		}
	}
}
