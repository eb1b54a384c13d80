package bench

import (
	"math"
	"sort"
	"testing"
)

func TestZeta(t *testing.T) {
	if got := Zeta(1, 0.99); got != 1 {
		t.Fatalf("zeta(1) = %v, want 1", got)
	}
	want := 1 + 1/math.Pow(2, 0.99) + 1/math.Pow(3, 0.99)
	if got := Zeta(3, 0.99); math.Abs(got-want) > 1e-12 {
		t.Fatalf("zeta(3) = %v, want %v", got, want)
	}
}

func TestFNVHash64MatchesYCSB(t *testing.T) {
	// Computed by transcribing Utils.fnvhash64 into Python with Java's
	// signed 64-bit arithmetic.
	cases := map[uint64]uint64{
		0:     6284781860667377211, // Math.abs(0xa8c7f832281a39c5L)
		1:     8517097267634966620, // Math.abs(0x89cd31291d2aefa4L)
		12345: 1792800413050876852, // Math.abs(0xe71eb185e2edcc4cL)
	}
	for in, want := range cases {
		if got := FNVHash64(in); got != want {
			t.Errorf("fnvhash64(%d) = %d, want %d", in, got, want)
		}
	}
}

func TestZipfianFrequencies(t *testing.T) {
	const n, draws = 1000, 400_000
	z := NewZipfian(n, ZipfianConstant)
	r := newPCG(1)
	counts := make([]int, n)
	for range draws {
		v := z.Next(r)
		if v >= n {
			t.Fatalf("draw %d out of range", v)
		}
		counts[v]++
	}
	zetan := Zeta(n, ZipfianConstant)
	// The first two items are drawn exactly; the rest by the approximation.
	for i := range 2 {
		want := draws / zetan / math.Pow(float64(i+1), ZipfianConstant)
		if got := float64(counts[i]); math.Abs(got-want)/want > 0.03 {
			t.Errorf("item %d drawn %v times, want about %.0f", i, got, want)
		}
	}
	// Popularity falls with rank: the first decile of items holds most draws.
	top := 0
	for _, c := range counts[:n/10] {
		top += c
	}
	if frac := float64(top) / draws; frac < 0.6 {
		t.Errorf("first 10%% of items got %.2f of draws, want > 0.6", frac)
	}
}

func TestScrambledZipfian(t *testing.T) {
	const n, draws = 100_000, 500_000
	g := NewScrambledZipfian(n)
	if g.N() != n {
		t.Fatalf("N() = %d", g.N())
	}
	r := newPCG(7)
	counts := map[uint64]int{}
	for range draws {
		v := g.Next(r)
		if v >= n {
			t.Fatalf("draw %d out of range", v)
		}
		counts[v]++
	}
	freq := make([]int, 0, len(counts))
	for _, c := range counts {
		freq = append(freq, c)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(freq)))
	// The hottest record is item 0 of the huge space: 1/zetan of draws.
	want := draws / scrambledZetan
	if got := float64(freq[0]); math.Abs(got-want)/want > 0.05 {
		t.Errorf("hottest record drawn %v times, want about %.0f", got, want)
	}
	// Skewed, yet spread: many distinct records, far fewer than draws.
	if len(counts) < n/10 || len(counts) > n {
		t.Errorf("%d distinct records", len(counts))
	}
	// The hottest record is not simply record 0 (scrambled).
	hot := uint64(0)
	for k, c := range counts {
		if c == freq[0] {
			hot = k
		}
	}
	if hot != FNVHash64(0)%n {
		t.Errorf("hottest record %d, want fnvhash64(0) mod n = %d", hot, FNVHash64(0)%n)
	}
}

func TestGeneratorsDeterministic(t *testing.T) {
	for _, g := range []KeyGen{NewUniform(1000), NewScrambledZipfian(1000)} {
		a, b := newPCG(3), newPCG(3)
		for range 100 {
			if x, y := g.Next(a), g.Next(b); x != y {
				t.Fatalf("%T: same seed, different draws %d, %d", g, x, y)
			}
		}
	}
}

func TestUniformRange(t *testing.T) {
	g := NewUniform(10)
	r := newPCG(5)
	seen := map[uint64]bool{}
	for range 1000 {
		v := g.Next(r)
		if v >= 10 {
			t.Fatalf("draw %d out of range", v)
		}
		seen[v] = true
	}
	if len(seen) != 10 {
		t.Errorf("saw %d of 10 records", len(seen))
	}
}

func BenchmarkScrambledZipfian(b *testing.B) {
	g := NewScrambledZipfian(100_000)
	r := newPCG(1)
	b.ReportAllocs()
	var sink uint64
	for b.Loop() {
		sink += g.Next(r)
	}
	_ = sink
}
