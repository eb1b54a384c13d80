package vclock

import (
	"sync/atomic"
	"time"
)

// fakeClock is an injectable wall clock, safe for concurrent use.
type fakeClock struct{ ms atomic.Int64 }

func newFakeClock(ms int64) *fakeClock {
	c := &fakeClock{}
	c.ms.Store(ms)
	return c
}

func (c *fakeClock) now() time.Time { return time.UnixMilli(c.ms.Load()) }
func (c *fakeClock) set(ms int64)   { c.ms.Store(ms) }

// fixedNow returns a now function that always reads ms.
func fixedNow(ms int64) func() time.Time {
	return func() time.Time { return time.UnixMilli(ms) }
}

// wallMs is a fixed, realistic wall time (2023-11-14T22:13:20Z) for tests.
const wallMs = 1_700_000_000_000

func sign(c int) int {
	switch {
	case c < 0:
		return -1
	case c > 0:
		return 1
	}
	return 0
}

func ver(counter uint64, actor string, value string, tomb bool) Version {
	var v []byte
	if value != "" {
		v = []byte(value)
	}
	return Version{Dot: Dot{Counter: counter, Actor: actor}, Value: v, Tombstone: tomb}
}
