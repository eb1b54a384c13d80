package vclock

import "testing"

var (
	sinkVersion Version
	sinkOK      bool
	sinkUint    uint64
	sinkInt     int
	sinkDot     Dot
)

// TestZeroAllocs counts allocations, which are deterministic (not a timing):
// merge, compare, stamp and context encoding run once per replica reply and
// per write on every coordinator and node, so an allocation here is a
// regression of the design's zero-allocation hot path (an escaping value, a
// lost fast path), a bug to fix rather than a slowdown to measure.
func TestZeroAllocs(t *testing.T) {
	a := ver(uint64(wallMs)<<16|1, "node-a", "value-a", false)
	b := ver(uint64(wallMs)<<16|1, "node-b", "value-b", false)
	c := ver(uint64(wallMs)<<16|1, "node-b", "value-b", true)
	vs := []Version{a, b, c}
	h := NewHLC(nil)
	fake := NewHLC(newFakeClock(wallMs).now)

	tests := []struct {
		name string
		f    func()
	}{
		{"Compare", func() { sinkInt = Compare(b, c) }},
		{"Dot.Compare", func() { sinkInt = b.Dot.Compare(a.Dot) }},
		{"Merge", func() { sinkVersion = Merge(b, c) }},
		{"MergeAll of 3", func() { sinkVersion, sinkOK = MergeAll(vs) }},
		{"HLC.Next", func() { sinkUint = h.Next() }},
		{"HLC.Next injected clock", func() { sinkUint = fake.Next() }},
		{"HLC.Observe", func() { h.Observe(sinkUint + 1) }},
		{"HLC.Stamp", func() { sinkDot = h.Stamp("node-a", b.Dot) }},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(1000, tt.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", tt.name, n)
		}
	}
	if sinkVersion.Dot != c.Dot || !sinkOK {
		t.Errorf("unexpected merge result %+v", sinkVersion)
	}
}
