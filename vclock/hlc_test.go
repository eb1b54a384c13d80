package vclock

import (
	"errors"
	"math"
	"sync"
	"testing"
	"time"
)

func TestHLCClockGoingBackwards(t *testing.T) {
	clk := newFakeClock(wallMs)
	h := NewHLC(clk.now)
	// Wall times in ms, including steps back, repeats and jumps forward.
	steps := []int64{
		wallMs, wallMs, wallMs + 1, wallMs - 1, wallMs - 10_000, wallMs + 1,
		wallMs + 2, wallMs + 2, 0, -5, wallMs + 100, wallMs + 50,
	}
	var prev uint64
	for i, ms := range steps {
		clk.set(ms)
		got := h.Next()
		if got <= prev {
			t.Fatalf("step %d (wall %d): Next = %d, not greater than previous %d", i, ms, got, prev)
		}
		if wall := CounterAt(time.UnixMilli(ms)); got < wall {
			t.Fatalf("step %d: Next = %d below wall counter %d", i, got, wall)
		}
		if h.Last() != got {
			t.Fatalf("step %d: Last = %d, want %d", i, h.Last(), got)
		}
		prev = got
	}
}

func TestHLCNextValues(t *testing.T) {
	clk := newFakeClock(wallMs)
	h := NewHLC(clk.now)
	base := uint64(wallMs) << 16
	want := []struct {
		setMs int64
		want  uint64
	}{
		{wallMs, base},             // first call takes the wall time
		{wallMs, base + 1},         // same millisecond: logical tick
		{wallMs, base + 2},         //
		{wallMs - 1, base + 3},     // clock went back: keep ticking
		{wallMs + 1, base + 1<<16}, // wall moved on: logical resets
		{wallMs + 1, base + 1<<16 + 1},
	}
	for i, w := range want {
		clk.set(w.setMs)
		if got := h.Next(); got != w.want {
			t.Errorf("call %d: Next = %#x, want %#x", i, got, w.want)
		}
	}
}

func TestHLCLogicalOverflowRunsAhead(t *testing.T) {
	h := NewHLC(fixedNow(wallMs))
	var last uint64
	for range 1<<16 + 3 {
		last = h.Next()
	}
	// 65539 counters in one millisecond: the last spills into the next ms.
	if want := uint64(wallMs+1)<<16 + 2; last != want {
		t.Errorf("last = %#x, want %#x", last, want)
	}
	if got := Physical(last); !got.Equal(time.UnixMilli(wallMs + 1)) {
		t.Errorf("Physical(last) = %v, want one ms past the wall", got)
	}
}

func TestHLCObserve(t *testing.T) {
	far := CounterAt(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)) + 5
	h := NewHLC(fixedNow(wallMs))

	h.Observe(far)
	if got := h.Last(); got != far {
		t.Fatalf("Last after Observe(far) = %d, want %d", got, far)
	}
	if got := h.Next(); got != far+1 {
		t.Fatalf("Next after Observe(far) = %d, want %d", got, far+1)
	}
	// Observing anything not greater is a no-op: the clock never goes back.
	for _, c := range []uint64{0, 1, uint64(wallMs) << 16, far, far + 1} {
		h.Observe(c)
		if got := h.Last(); got != far+1 {
			t.Fatalf("Observe(%d) moved Last to %d, want %d", c, got, far+1)
		}
	}
	if got := h.Next(); got != far+2 {
		t.Fatalf("Next = %d, want %d", got, far+2)
	}
	// A far-future counter is honoured even after wall time passes it.
	h.Observe(far + 100)
	if got := h.Next(); got != far+101 {
		t.Fatalf("Next = %d, want %d", got, far+101)
	}
}

func TestHLCConcurrentNextUnique(t *testing.T) {
	const goroutines, perG = 8, 5000
	clk := newFakeClock(wallMs)
	h := NewHLC(clk.now)
	results := make([][]uint64, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			out := make([]uint64, 0, perG)
			for i := range perG {
				if g == 0 && i%100 == 0 {
					clk.set(wallMs - int64(i)) // wall clock wanders backwards
				}
				if g == 1 && i%250 == 0 {
					h.Observe(h.Last() + 10)
				}
				out = append(out, h.Next())
			}
			results[g] = out
		})
	}
	wg.Wait()

	seen := make(map[uint64]int, goroutines*perG)
	for g, out := range results {
		for i, c := range out {
			if i > 0 && c <= out[i-1] {
				t.Fatalf("goroutine %d: Next went from %d to %d", g, out[i-1], c)
			}
			if prev, dup := seen[c]; dup {
				t.Fatalf("counter %d returned to goroutines %d and %d", c, prev, g)
			}
			seen[c] = g
		}
	}
	if len(seen) != goroutines*perG {
		t.Fatalf("got %d distinct counters, want %d", len(seen), goroutines*perG)
	}
}

func TestHLCConcurrentObserve(t *testing.T) {
	h := NewHLC(fixedNow(0))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 2000 {
				h.Observe(uint64(i*8 + g))
			}
		})
	}
	wg.Wait()
	if got, want := h.Last(), uint64(1999*8+7); got != want {
		t.Fatalf("Last = %d, want %d", got, want)
	}
}

func TestHLCZeroValue(t *testing.T) {
	var h HLC
	before := CounterAt(time.Now())
	got := h.Next()
	if got < before {
		t.Fatalf("zero HLC Next = %d, below wall counter %d read before the call", got, before)
	}
	if h.Next() <= got {
		t.Fatal("zero HLC not increasing")
	}
	if NewHLC(nil).Next() < before {
		t.Fatal("NewHLC(nil) does not read time.Now")
	}
}

func TestHLCOutOfRangeWall(t *testing.T) {
	pre1970 := NewHLC(func() time.Time { return time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC) })
	if a, b := pre1970.Next(), pre1970.Next(); a != 1 || b != 2 {
		t.Errorf("pre-1970 clock: Next = %d, %d; want 1, 2", a, b)
	}
	farFuture := NewHLC(func() time.Time { return time.Date(20000, 1, 1, 0, 0, 0, 0, time.UTC) })
	top := uint64(maxPhysicalMilli) << 16
	if a, b := farFuture.Next(), farFuture.Next(); a != top || b != top+1 {
		t.Errorf("year-20000 clock: Next = %#x, %#x; want %#x, %#x", a, b, top, top+1)
	}
}

func TestHLCExhausted(t *testing.T) {
	h := NewHLC(fixedNow(wallMs))
	h.Observe(math.MaxUint64 - 1)
	if got := h.Next(); got != math.MaxUint64 {
		t.Fatalf("Next = %d, want MaxUint64", got)
	}
	if _, err := h.TryNext(); !errors.Is(err, ErrClockExhausted) {
		t.Fatalf("TryNext err = %v, want ErrClockExhausted", err)
	}
	if _, err := h.TryStamp("n", Dot{}); !errors.Is(err, ErrClockExhausted) {
		t.Fatalf("TryStamp err = %v, want ErrClockExhausted", err)
	}
	mustPanicExhausted(t, func() { h.Next() })
	mustPanicExhausted(t, func() { h.Stamp("n", Dot{}) })
	if h.Last() != math.MaxUint64 {
		t.Fatalf("Last = %d after exhaustion", h.Last())
	}
}

func mustPanicExhausted(t *testing.T, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if err, ok := r.(error); !ok || !errors.Is(err, ErrClockExhausted) {
			t.Errorf("panic value = %v, want ErrClockExhausted", r)
		}
	}()
	f()
}

func TestStamp(t *testing.T) {
	wall := uint64(wallMs) << 16
	tests := []struct {
		name      string
		state     uint64 // observed before the stamp
		ctx       Dot
		actor     string
		wantCount uint64
	}{
		{"no context", 0, Dot{}, "n1", wall},
		{"context behind wall", 0, Dot{Counter: wall - 1000, Actor: "n2"}, "n1", wall},
		{"context equal to wall, smaller actor wins anyway", 0, Dot{Counter: wall, Actor: "zz"}, "a", wall + 1},
		{"context ahead of wall", 0, Dot{Counter: wall + 5<<16, Actor: "n2"}, "n1", wall + 5<<16 + 1},
		{"clock ahead of context", wall + 10, Dot{Counter: wall + 3, Actor: "n2"}, "n1", wall + 11},
		{"actor-only context", 0, Dot{Actor: "n2"}, "n1", wall},
		{"empty actor", 0, Dot{Counter: wall + 1, Actor: "n2"}, "", wall + 2},
		{"context one below max", 0, Dot{Counter: math.MaxUint64 - 1, Actor: "n2"}, "n1", math.MaxUint64},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := NewHLC(fixedNow(wallMs))
			h.Observe(tt.state)
			got := h.Stamp(tt.actor, tt.ctx)
			want := Dot{Counter: tt.wantCount, Actor: tt.actor}
			if got != want {
				t.Fatalf("Stamp = %+v, want %+v", got, want)
			}
			if got.Compare(tt.ctx) <= 0 {
				t.Fatalf("Stamp = %+v does not beat context %+v", got, tt.ctx)
			}
			if h.Last() != got.Counter {
				t.Fatalf("Last = %d, want %d", h.Last(), got.Counter)
			}
		})
	}
}

func TestStampMaxContext(t *testing.T) {
	h := NewHLC(fixedNow(wallMs))
	ctx := Dot{Counter: math.MaxUint64, Actor: "n2"}
	if _, err := h.TryStamp("n1", ctx); !errors.Is(err, ErrClockExhausted) {
		t.Fatalf("TryStamp err = %v, want ErrClockExhausted", err)
	}
	mustPanicExhausted(t, func() { NewHLC(fixedNow(wallMs)).Stamp("n1", ctx) })
}

// TestRestart shows the restart guarantee and the caller's duty behind it.
func TestRestart(t *testing.T) {
	old := NewHLC(fixedNow(wallMs))
	var last uint64
	for range 3 {
		last = old.Next() // logical part > 0: runs ahead within the ms
	}

	// Wall time moved forward by a millisecond: a fresh clock is enough.
	if got := NewHLC(fixedNow(wallMs + 1)).Next(); got <= last {
		t.Errorf("restart after wall moved on: Next = %d, not above %d", got, last)
	}
	// Same millisecond (or wall stepped back): a fresh clock alone would mint
	// an older dot, so the caller must observe its persisted high-water mark.
	if got := NewHLC(fixedNow(wallMs)).Next(); got > last {
		t.Fatalf("test premise: expected a fresh clock to fall behind, got %d > %d", got, last)
	}
	restarted := NewHLC(fixedNow(wallMs - 1000))
	restarted.Observe(last)
	if got := restarted.Next(); got <= last {
		t.Errorf("restart with Observe: Next = %d, not above %d", got, last)
	}
}

func TestPhysicalAndCounterAt(t *testing.T) {
	times := []time.Time{
		time.UnixMilli(0),
		time.UnixMilli(1),
		time.UnixMilli(wallMs),
		time.Date(2025, 6, 30, 23, 59, 59, 999_999_999, time.UTC),
		time.Date(2024, 2, 29, 12, 0, 0, 123_456_789, time.FixedZone("X", 3600)),
		time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
	}
	for _, tm := range times {
		c := CounterAt(tm)
		want := tm.Truncate(time.Millisecond)
		for _, counter := range []uint64{c, c | 0xffff} {
			got := Physical(counter)
			if !got.Equal(want) {
				t.Errorf("Physical(%#x) = %v, want %v", counter, got, want)
			}
			if got.Location() != time.UTC {
				t.Errorf("Physical(%#x) location = %v, want UTC", counter, got.Location())
			}
		}
		if c&0xffff != 0 {
			t.Errorf("CounterAt(%v) = %#x has a logical part", tm, c)
		}
	}
	if got, want := CounterAt(time.UnixMilli(wallMs)), uint64(wallMs)<<16; got != want {
		t.Errorf("CounterAt(wallMs) = %#x, want %#x", got, want)
	}
	if got := CounterAt(time.UnixMilli(-1)); got != 0 {
		t.Errorf("CounterAt(pre-1970) = %d, want 0", got)
	}
	if got, want := CounterAt(time.Date(20000, 1, 1, 0, 0, 0, 0, time.UTC)), uint64(maxPhysicalMilli)<<16; got != want {
		t.Errorf("CounterAt(year 20000) = %#x, want %#x", got, want)
	}
	if got := Physical(math.MaxUint64).Year(); got != 10889 {
		t.Errorf("Physical(MaxUint64).Year() = %d, want 10889", got)
	}
	if got := Physical(0); !got.Equal(time.Unix(0, 0)) {
		t.Errorf("Physical(0) = %v", got)
	}
}

func TestWithinSkew(t *testing.T) {
	now := time.UnixMilli(wallMs)
	edge := CounterAt(now.Add(5 * time.Minute)) // the last millisecond allowed, logical 0
	cases := []struct {
		name string
		c    uint64
		skew time.Duration
		want bool
	}{
		{"zero", 0, 5 * time.Minute, true},
		{"now", CounterAt(now), 5 * time.Minute, true},
		{"past", CounterAt(now.Add(-time.Hour)), 5 * time.Minute, true},
		{"just inside", edge, 5 * time.Minute, true},
		{"logical tick past the edge", edge + 1, 5 * time.Minute, false},
		{"one ms past the edge", CounterAt(now.Add(5*time.Minute + time.Millisecond)), 5 * time.Minute, false},
		{"a year ahead", CounterAt(now.Add(365 * 24 * time.Hour)), 5 * time.Minute, false},
		{"max", math.MaxUint64, 5 * time.Minute, false},
		{"no skew allowed, now", CounterAt(now), 0, true},
		{"no skew allowed, 1ms ahead", CounterAt(now.Add(time.Millisecond)), 0, false},
		{"negative skew is zero", CounterAt(now), -time.Hour, true},
	}
	for _, tc := range cases {
		if got := WithinSkew(tc.c, now, tc.skew); got != tc.want {
			t.Errorf("%s: WithinSkew(%#x, now, %s) = %v, want %v", tc.name, tc.c, tc.skew, got, tc.want)
		}
	}
}

func TestHLCObserveBounded(t *testing.T) {
	clk := newFakeClock(wallMs)
	skew := 10 * time.Second
	base := CounterAt(time.UnixMilli(wallMs))
	steps := []struct {
		name     string
		wallMs   int64
		c        uint64
		observed bool
		last     uint64 // Last after the call
	}{
		{"behind the wall: observed", wallMs, base - 5, true, base - 5},
		{"ahead within the skew", wallMs, base + 5<<16, true, base + 5<<16},
		{"a year ahead: refused", wallMs, CounterAt(time.UnixMilli(wallMs).AddDate(1, 0, 0)), false, base + 5<<16},
		{"max: refused, never exhausts", wallMs, math.MaxUint64, false, base + 5<<16},
		{"just past the bound: refused", wallMs, CounterAt(time.UnixMilli(wallMs).Add(skew)) + 1, false, base + 5<<16},
		{"at the bound: observed", wallMs, CounterAt(time.UnixMilli(wallMs).Add(skew)), true, CounterAt(time.UnixMilli(wallMs).Add(skew))},
		// The bound moves with the injected wall clock.
		{"later wall time admits it", wallMs + 60_000, CounterAt(time.UnixMilli(wallMs).Add(time.Minute + skew)), true, CounterAt(time.UnixMilli(wallMs).Add(time.Minute + skew))},
	}
	h := NewHLC(clk.now)
	for _, s := range steps {
		clk.set(s.wallMs)
		if got := h.ObserveBounded(s.c, skew); got != s.observed {
			t.Fatalf("%s: ObserveBounded = %v, want %v", s.name, got, s.observed)
		}
		if got := h.Last(); got != s.last {
			t.Fatalf("%s: Last = %#x, want %#x", s.name, got, s.last)
		}
	}
	if _, err := h.TryNext(); err != nil {
		t.Fatalf("TryNext after refused counters: %v", err)
	}
	// The zero HLC reads time.Now.
	var z HLC
	if z.ObserveBounded(CounterAt(time.Now().Add(time.Hour)), time.Minute) {
		t.Fatal("zero HLC observed a counter an hour ahead")
	}
	if !z.ObserveBounded(CounterAt(time.Now()), time.Minute) || z.Last() == 0 {
		t.Fatal("zero HLC refused a current counter")
	}
}
