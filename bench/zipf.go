package bench

import (
	"math"
	"math/rand/v2"
)

// KeyGen picks the record numbers (0..n-1) a workload touches. A KeyGen is
// immutable after construction, so workers share one and each brings its
// own random source.
type KeyGen interface {
	Next(r *rand.Rand) uint64
	N() uint64
}

// Uniform picks every record with the same probability.
type Uniform struct{ n uint64 }

// NewUniform returns a generator over n records.
func NewUniform(n uint64) *Uniform { return &Uniform{n: max(n, 1)} }

func (u *Uniform) Next(r *rand.Rand) uint64 { return r.Uint64N(u.n) }
func (u *Uniform) N() uint64                { return u.n }

// ZipfianConstant is YCSB's default skew (theta).
const ZipfianConstant = 0.99

// Zipfian is YCSB's ZipfianGenerator (Gray et al., "Quickly Generating
// Billion-Record Synthetic Databases", SIGMOD 1994): item i (0-based) is
// drawn with probability proportional to 1/(i+1)^theta, so item 0 is the
// most popular. It is the unscrambled form; workloads use
// [ScrambledZipfian] so that the popular items are spread over the key
// space.
type Zipfian struct {
	items      uint64
	theta      float64
	alpha      float64
	zetan      float64
	eta        float64
	halfPowTh  float64 // 1 + 0.5^theta
	itemsFloat float64
}

// NewZipfian returns a zipfian generator over items records with skew
// theta, computing zeta(items, theta) (O(items)).
func NewZipfian(items uint64, theta float64) *Zipfian {
	return newZipfianZeta(items, theta, Zeta(items, theta))
}

// newZipfianZeta is YCSB's ZipfianGenerator(min=0, max=items-1, theta,
// zetan) with zetan precomputed.
func newZipfianZeta(items uint64, theta, zetan float64) *Zipfian {
	items = max(items, 1)
	zeta2 := Zeta(2, theta)
	return &Zipfian{
		items:      items,
		theta:      theta,
		alpha:      1 / (1 - theta),
		zetan:      zetan,
		eta:        (1 - math.Pow(2/float64(items), 1-theta)) / (1 - zeta2/zetan),
		halfPowTh:  1 + math.Pow(0.5, theta),
		itemsFloat: float64(items),
	}
}

// Zeta is sum_{i=1..n} 1/i^theta.
func Zeta(n uint64, theta float64) float64 {
	var sum float64
	for i := uint64(1); i <= n; i++ {
		sum += 1 / math.Pow(float64(i), theta)
	}
	return sum
}

// Next draws an item, as YCSB's ZipfianGenerator.nextLong.
func (z *Zipfian) Next(r *rand.Rand) uint64 {
	u := r.Float64()
	uz := u * z.zetan
	if uz < 1 {
		return 0
	}
	if uz < z.halfPowTh {
		return 1
	}
	v := uint64(z.itemsFloat * math.Pow(z.eta*u-z.eta+1, z.alpha))
	return min(v, z.items-1)
}

func (z *Zipfian) N() uint64 { return z.items }

// YCSB's ScrambledZipfianGenerator draws from a zipfian over a fixed, huge
// item space whose zeta is a precomputed constant, then hashes the item
// into the record range: the popularity curve is the same whatever the
// record count, and no O(n) setup is needed.
const (
	scrambledItemCount = 10_000_000_000 // ScrambledZipfianGenerator.ITEM_COUNT
	scrambledZetan     = 26.46902820178302
)

// ScrambledZipfian is YCSB's ScrambledZipfianGenerator with theta 0.99:
// zipfian popularity, with the popular records scattered over 0..n-1 by
// FNV-1a so they do not cluster at the low record numbers.
type ScrambledZipfian struct {
	n   uint64
	gen *Zipfian
}

// NewScrambledZipfian returns a scrambled zipfian generator over n records.
func NewScrambledZipfian(n uint64) *ScrambledZipfian {
	// YCSB builds ZipfianGenerator(0, ITEM_COUNT), i.e. ITEM_COUNT+1 items.
	return &ScrambledZipfian{n: max(n, 1), gen: newZipfianZeta(scrambledItemCount+1, ZipfianConstant, scrambledZetan)}
}

func (s *ScrambledZipfian) Next(r *rand.Rand) uint64 { return FNVHash64(s.gen.Next(r)) % s.n }
func (s *ScrambledZipfian) N() uint64                { return s.n }

// FNVHash64 is YCSB's Utils.fnvhash64: FNV-1a over the 8 little-endian
// bytes of v, made non-negative as Java's Math.abs of a long would (the one
// value Math.abs leaves negative maps to 0 here).
func FNVHash64(v uint64) uint64 {
	const (
		offset = 0xCBF29CE484222325
		prime  = 1099511628211
	)
	h := uint64(offset)
	for range 8 {
		h ^= v & 0xff
		v >>= 8
		h *= prime
	}
	s := int64(h)
	if s < 0 {
		s = -s
	}
	if s < 0 { // math.MinInt64
		return 0
	}
	return uint64(s)
}
