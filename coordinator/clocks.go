package coordinator

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/quorumkv/quorumkv/vclock"
)

// maxClockSkew is how far ahead of a coordinator's wall time a counter it
// observes may be dated: replica replies to reads and writes beyond it are
// not observed (see observe). Client contexts have the same bound
// (maxContextSkew, checked when the request is parsed).
const maxClockSkew = 5 * time.Minute

// maxRestamps is how many times one lww write is re-stamped after losing
// to a newer version. Once: the re-stamped write is past every version a
// quorum of answers held, and a loss after that is to a concurrent write,
// which counts as an acknowledgement (see sendLWW). The bound guards the
// loop in write should that ever change.
const maxRestamps = 1

// tenantClocks is one hybrid logical clock per tenant. lww dots of
// different tenants are never compared (a key belongs to one tenant), so a
// tenant needs a clock of its own only; sharing one let a context or a
// version of one tenant drag the dots of every other tenant along (issue
// 12). Memory: one small entry per tenant this process served since it
// started. Entries are never dropped: a recreated clock would start from
// the wall time and could mint, under the same actor, a dot the dropped
// one had already minted ahead of the wall time.
type tenantClocks struct {
	now func() time.Time
	mu  sync.RWMutex
	m   map[string]*vclock.HLC
}

func newTenantClocks(now func() time.Time) *tenantClocks {
	return &tenantClocks{now: now, m: make(map[string]*vclock.HLC)}
}

// get returns tenant's clock, creating it on first use.
func (t *tenantClocks) get(tenant string) *vclock.HLC {
	t.mu.RLock()
	h := t.m[tenant]
	t.mu.RUnlock()
	if h != nil {
		return h
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if h = t.m[tenant]; h == nil {
		h = vclock.NewHLC(t.now)
		t.m[tenant] = h
	}
	return h
}

// skewLog lets through at most one log line per minute.
type skewLog struct{ last atomic.Int64 } // unix nanos of the last line

func (l *skewLog) allow(now time.Time) bool {
	last := l.last.Load()
	if last != 0 && now.UnixNano()-last < int64(time.Minute) {
		return false
	}
	return l.last.CompareAndSwap(last, now.UnixNano())
}

// observe observes counter, read from a replica (source "read" or
// "write"), into tenant's clock h unless it is dated beyond maxClockSkew
// ahead of the clock's wall time. A refused counter is counted in
// quorumkv_clock_skew_rejected_total and logged at most once a minute.
func (c *Coordinator) observe(h *vclock.HLC, counter uint64, source, tenant string) bool {
	if h.ObserveBounded(counter, maxClockSkew) {
		return true
	}
	c.metrics.SkewRejected(source)
	if now := c.cfg.Now(); c.skewLog.allow(now) {
		c.log.Warn("a replica holds a version dated beyond the allowed clock skew; not observed into the clock (further ones are counted in quorumkv_clock_skew_rejected_total, logged at most once a minute)",
			"tenant", tenant, "source", source, "dated", vclock.Physical(counter).Format(time.RFC3339), "max_skew", maxClockSkew)
	}
	return false
}
