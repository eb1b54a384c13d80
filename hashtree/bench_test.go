package hashtree

import (
	"fmt"
	"strconv"
	"testing"
)

func BenchmarkUpdate(b *testing.B) {
	tr := mustNew(b, DefaultConfig())
	for i := range 100000 {
		tr.Insert("tenant-1", "user:"+strconv.Itoa(i), Hash{uint64(i)})
	}
	tr.Root()
	v := [2]Hash{VersionHash([]byte("a")), VersionHash([]byte("b"))}
	tr.Insert("tenant-1", "user:profile:12345", v[0])
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_ = tr.Update("tenant-1", "user:profile:12345", v[i&1], v[(i+1)&1])
		i++
	}
}

func BenchmarkInsertDelete(b *testing.B) {
	tr := mustNew(b, DefaultConfig())
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "user:" + strconv.Itoa(i)
	}
	v := VersionHash([]byte("state"))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := keys[i%len(keys)]
		tr.Insert("tenant-1", k, v)
		_ = tr.Delete("tenant-1", k, v)
		i++
	}
}

// BenchmarkVersionHash is the caller's share of a write: hashing the
// stored state (a 200-byte msgpack record here).
func BenchmarkVersionHash(b *testing.B) {
	state := make([]byte, 200)
	b.SetBytes(int64(len(state)))
	b.ReportAllocs()
	for b.Loop() {
		VersionHash(state)
	}
}

// BenchmarkRoot is the cost of a root after n writes to distinct leaves.
func BenchmarkRoot(b *testing.B) {
	for _, n := range []int{1, 16, 256, 4096} {
		b.Run(fmt.Sprintf("dirty=%d", n), func(b *testing.B) {
			tr := mustNew(b, DefaultConfig())
			b.ReportAllocs()
			for b.Loop() {
				for leaf := range n {
					tr.apply(leaf*(4096/n), Hash{1}) // n distinct, spread leaves
				}
				tr.Root()
			}
		})
	}
}

// divergentScan yields n keys; when diverge, every 100th key (1%) has
// another version.
func divergentScan(n int, diverge bool) func(func(Entry) bool) {
	return func(yield func(Entry) bool) {
		for i := range n {
			v := Hash{uint64(i), 1}
			if diverge && i%100 == 0 {
				v[1] = 2
			}
			if !yield(Entry{"tenant-1", "key-" + strconv.Itoa(i), v}) {
				return
			}
		}
	}
}

// BenchmarkDiff1M compares two trees of 1M keys that differ in 1% of
// them, for several shapes, and reports what the exchange would cost:
// hashes compared, bytes per side, differing buckets, and the keys those
// buckets hold (what the next step would have to exchange).
func BenchmarkDiff1M(b *testing.B) {
	for _, cfg := range []Config{DefaultConfig(), {FanOut: 16, Depth: 4}, {FanOut: 16, Depth: 5}, {FanOut: 256, Depth: 2}} {
		benchDiff(b, cfg, 1<<20)
	}
}

// BenchmarkDiffPartition is the same at the ~1,000 keys a partition holds
// when 1M keys spread over the default 1024 partitions.
func BenchmarkDiffPartition(b *testing.B) {
	for _, cfg := range []Config{DefaultConfig(), {FanOut: 16, Depth: 2}} {
		benchDiff(b, cfg, 1000)
	}
}

func benchDiff(b *testing.B, cfg Config, n int) {
	b.Run(fmt.Sprintf("keys=%d/fanout=%d/depth=%d", n, cfg.FanOut, cfg.Depth), func(b *testing.B) {
		x, err := Build(cfg, divergentScan(n, false))
		if err != nil {
			b.Fatal(err)
		}
		y, err := Build(cfg, divergentScan(n, true))
		if err != nil {
			b.Fatal(err)
		}
		var got []uint32
		var st DiffStats
		b.ReportAllocs()
		for b.Loop() {
			got, st, err = Diff(Local{x}, Local{y})
			if err != nil {
				b.Fatal(err)
			}
		}
		keys := 0
		for _, bk := range got {
			keys += x.BucketCount(int(bk))
		}
		b.ReportMetric(float64(st.Compared), "hashes")
		b.ReportMetric(float64(st.RequestBytes+st.ReplyBytes), "bytes/side")
		b.ReportMetric(float64(st.Rounds), "rounds")
		b.ReportMetric(float64(len(got)), "buckets")
		b.ReportMetric(float64(keys), "keys-in-buckets")
	})
}

// BenchmarkBuild1M is a rebuild from a scan of 1M keys (the hashing only;
// a real rebuild also reads them from disk).
func BenchmarkBuild1M(b *testing.B) {
	for b.Loop() {
		if _, err := Build(DefaultConfig(), divergentScan(1<<20, false)); err != nil {
			b.Fatal(err)
		}
	}
}
