package vclock

import (
	"errors"
	"math"
	"sync/atomic"
	"time"
)

// logicalBits is the width of the logical part of an HLC counter: a counter
// is wall-clock Unix milliseconds << logicalBits | logical.
const logicalBits = 16

// maxPhysicalMilli is the largest number of Unix milliseconds a counter can
// encode (a date in the year 10889).
const maxPhysicalMilli = math.MaxUint64 >> logicalBits

// ErrClockExhausted is returned by [HLC.TryNext] and [HLC.TryStamp], and is
// the panic value of [HLC.Next] and [HLC.Stamp], when the clock has reached
// math.MaxUint64 and so cannot mint a greater counter. Wall time cannot get
// there before the year 10889; only an observed counter can (see
// [HLC.Observe]).
var ErrClockExhausted = errors.New("vclock: hybrid logical clock exhausted")

// HLC is a hybrid logical clock: it mints uint64 counters of the form
// wall-clock Unix milliseconds << 16 | logical, strictly increasing, that
// never fall below the current wall time nor below any counter the clock has
// returned or observed.
//
// When more than 65536 counters are minted within one millisecond, or after
// a counter from the future is observed, the counters run ahead of the wall
// clock and the physical part drifts forward until wall time catches up.
//
// An HLC is safe for concurrent use; its methods are lock-free. The zero HLC
// is ready to use and reads time.Now. An HLC must not be copied after first
// use.
type HLC struct {
	last atomic.Uint64
	now  func() time.Time
}

// NewHLC returns an HLC that reads wall time from now, or from time.Now when
// now is nil. now must be safe for concurrent use if the HLC is. The clock
// starts at 0: a coordinator that restarts should [HLC.Observe] the greatest
// counter it persisted before minting (see the package documentation).
func NewHLC(now func() time.Time) *HLC {
	return &HLC{now: now}
}

// CounterAt returns the smallest counter whose physical part is t: Unix
// milliseconds of t << 16. Times before 1970 map to 0 and times after the
// year 10889 to the last representable millisecond. [Physical] is its
// inverse for times in range, truncated to the millisecond.
func CounterAt(t time.Time) uint64 {
	ms := t.UnixMilli()
	switch {
	case ms <= 0:
		return 0
	case uint64(ms) > maxPhysicalMilli:
		return maxPhysicalMilli << logicalBits
	}
	return uint64(ms) << logicalBits
}

// Physical returns the wall time a counter encodes, in UTC, with millisecond
// precision: counter >> 16 Unix milliseconds.
func Physical(counter uint64) time.Time {
	return time.UnixMilli(int64(counter >> logicalBits)).UTC()
}

func (h *HLC) wall() uint64 {
	if h.now == nil {
		return CounterAt(time.Now())
	}
	return CounterAt(h.now())
}

// TryNext is [HLC.Next] that returns [ErrClockExhausted] instead of
// panicking.
func (h *HLC) TryNext() (uint64, error) {
	wall := h.wall()
	for {
		old := h.last.Load()
		if old == math.MaxUint64 {
			return 0, ErrClockExhausted
		}
		next := max(old+1, wall)
		if h.last.CompareAndSwap(old, next) {
			return next, nil
		}
	}
}

// Next returns a new counter. It is strictly greater than every counter this
// HLC returned or observed before the call began, and at least
// [CounterAt](now()) for the wall time read during the call. Concurrent
// calls never return the same counter. It does not allocate.
//
// Next panics with [ErrClockExhausted] if the clock is at math.MaxUint64;
// use [HLC.TryNext] where an observed counter may be hostile.
func (h *HLC) Next() uint64 {
	c, err := h.TryNext()
	if err != nil {
		panic(err)
	}
	return c
}

// Observe advances the clock to c if c is greater than the clock's current
// value, so later counters exceed c; otherwise it does nothing. The clock
// never goes backwards.
//
// Observe honours any c, however far in the future: the counters this clock
// mints afterwards stay at or above c, so a caller that observes untrusted
// counters (client contexts) should bound them first, for example by
// rejecting a counter greater than CounterAt(time.Now().Add(maxSkew)).
func (h *HLC) Observe(c uint64) {
	for {
		old := h.last.Load()
		if c <= old || h.last.CompareAndSwap(old, c) {
			return
		}
	}
}

// WithinSkew reports whether counter c is dated at most maxSkew ahead of
// the wall time now: c <= [CounterAt](now.Add(maxSkew)). A counter beyond
// that was minted by a clock running further ahead than the deployment
// allows (or forged, or corrupted); observing it would drag every counter
// minted afterwards along with it. A negative maxSkew counts as zero. It is
// pure and does not allocate.
func WithinSkew(c uint64, now time.Time, maxSkew time.Duration) bool {
	return c <= CounterAt(now.Add(max(maxSkew, 0)))
}

// ObserveBounded is [HLC.Observe] for counters from outside this process
// (replica replies, repair messages, hints): it observes c only when c is
// dated at most maxSkew ahead of the clock's own wall time (see
// [WithinSkew]), and reports whether it did. A counter it refuses leaves the
// clock unchanged; the caller decides what to do with the version that
// carried it (count it, refuse it).
func (h *HLC) ObserveBounded(c uint64, maxSkew time.Duration) bool {
	var now time.Time
	if h.now == nil {
		now = time.Now()
	} else {
		now = h.now()
	}
	if !WithinSkew(c, now, maxSkew) {
		return false
	}
	h.Observe(c)
	return true
}

// Last returns the greatest counter this HLC has returned or observed, or 0
// if none.
func (h *HLC) Last() uint64 { return h.last.Load() }

// TryStamp is [HLC.Stamp] that returns [ErrClockExhausted] instead of
// panicking. On error it still observes ctx.Counter.
func (h *HLC) TryStamp(actor string, ctx Dot) (Dot, error) {
	h.Observe(ctx.Counter)
	c, err := h.TryNext()
	if err != nil {
		return Dot{}, err
	}
	return Dot{Counter: c, Actor: actor}, nil
}

// Stamp mints the Dot of a write coordinated by actor whose client read the
// version identified by ctx (the zero Dot if the client sent no context). It
// observes ctx.Counter and then returns Dot{Counter: h.Next(), Actor: actor},
// so the result's Counter is strictly greater than ctx.Counter and the result
// compares greater than ctx whatever the actors: the write beats the version
// its client read.
//
// Stamp panics with [ErrClockExhausted] when ctx.Counter is math.MaxUint64
// or the clock is already exhausted; use [HLC.TryStamp] for contexts that
// were not bounded by the caller.
func (h *HLC) Stamp(actor string, ctx Dot) Dot {
	d, err := h.TryStamp(actor, ctx)
	if err != nil {
		panic(err)
	}
	return d
}
