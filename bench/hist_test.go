package bench

import (
	"math"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverValues(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 127, 128, 129, 255, 256, 1000, 1 << 20, 1<<20 + 1, histMaxValue} {
		i := bucketOf(v)
		if i < prev || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d (prev %d)", v, i, prev)
		}
		prev = i
		lo, w := bucketRange(i)
		if v < lo || v >= lo+w {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, lo+w)
		}
		if w > 1 && float64(w)/float64(lo) > 1.0/histSub+1e-9 {
			t.Fatalf("bucket %d width %d too coarse for %d", i, w, lo)
		}
	}
	if i := bucketOf(1 << 50); i != histBuckets-1 {
		t.Fatalf("huge value not clamped into last bucket: %d", i)
	}
	if i := bucketOf(-5); i != 0 {
		t.Fatalf("negative value in bucket %d", i)
	}
}

func TestQuantilesWithinPrecision(t *testing.T) {
	var h Histogram
	var vals []time.Duration
	r := newPCG(11)
	for range 100_000 {
		// Log-uniform between 10µs and 100ms.
		d := time.Duration(math.Exp(math.Log(10e3) + r.Float64()*math.Log(1e4)))
		vals = append(vals, d)
		h.Record(d)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		exact := vals[int(math.Ceil(q*float64(len(vals))))-1]
		got := h.Quantile(q)
		if rel := math.Abs(float64(got-exact)) / float64(exact); rel > 0.01 {
			t.Errorf("q%.3f = %v, exact %v (%.2f%% off)", q, got, exact, rel*100)
		}
	}
	if h.Count() != 100_000 || h.Max() != vals[len(vals)-1] {
		t.Errorf("count %d max %v", h.Count(), h.Max())
	}
}

func TestMergeEqualsRecordingAll(t *testing.T) {
	var a, b, all Histogram
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.Record(d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(&Histogram{})
	if m != all {
		t.Fatal("merge differs from recording everything in one histogram")
	}
	for _, q := range []float64{0, 0.5, 1} {
		if m.Quantile(q) != all.Quantile(q) {
			t.Fatalf("q%v differs", q)
		}
	}
}

func TestEmptyAndSingle(t *testing.T) {
	var h Histogram
	if h.Quantile(0.5) != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram not zero")
	}
	h.Record(1234 * time.Microsecond)
	for _, q := range []float64{0, 0.5, 0.999, 1} {
		if got := h.Quantile(q); got != 1234*time.Microsecond {
			t.Fatalf("single value: q%v = %v", q, got)
		}
	}
	h.Reset()
	if h.Count() != 0 {
		t.Fatal("reset kept values")
	}
}

func BenchmarkHistogramRecord(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	d := time.Duration(0)
	for b.Loop() {
		d += 997
		h.Record(d & (1<<30 - 1))
	}
}
