package bench

import (
	"math/bits"
	"time"
)

// Histogram records latencies in log-linear buckets, as HdrHistogram does:
// each power of two is split into 2^histSubBits equal buckets, so a recorded
// value is known to within 1/2^histSubBits (0.8%) of itself, from 1ns to
// about 18 minutes, in a fixed 35 KiB. Recording is a few instructions and
// never allocates. A Histogram is not safe for concurrent use: give each
// worker its own and Merge them.
type Histogram struct {
	counts [histBuckets]uint64
	n      uint64
	min    int64
	max    int64
	sum    float64
}

const (
	histSubBits  = 7
	histSub      = 1 << histSubBits
	histMaxExp   = 40 // values ≥ 2^40 ns (18 min) are clamped
	histBuckets  = (histMaxExp - histSubBits + 1) * histSub
	histMaxValue = 1<<histMaxExp - 1
)

// bucketOf returns the bucket index of v ≥ 0.
func bucketOf(v int64) int {
	if v < histSub {
		return int(max(v, 0))
	}
	if v > histMaxValue {
		v = histMaxValue
	}
	e := bits.Len64(uint64(v)) - 1 // ≥ histSubBits
	shift := e - histSubBits
	mantissa := int(v>>shift) & (histSub - 1)
	return (shift+1)*histSub + mantissa
}

// bucketRange returns the smallest value of bucket i and its width.
func bucketRange(i int) (lo, width int64) {
	if i < histSub {
		return int64(i), 1
	}
	shift := i/histSub - 1
	mantissa := int64(i % histSub)
	return (histSub + mantissa) << shift, 1 << shift
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Count is the number of recorded values.
func (h *Histogram) Count() uint64 { return h.n }

// Max is the largest recorded value, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean is the average of the recorded values.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Merge adds o's values to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Reset forgets every value.
func (h *Histogram) Reset() { *h = Histogram{} }

// Quantile returns the value below which fraction q (0..1) of the recorded
// values fall: the middle of the bucket holding the rank ⌈q·n⌉, clamped to
// the exact minimum and maximum. It is 0 for an empty histogram.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, w := bucketRange(i)
			v := lo + w/2
			return time.Duration(min(max(v, h.min), h.max))
		}
	}
	return time.Duration(h.max)
}
