package storage

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/subjects"
)

// BenchmarkWriteAE measures replicated write throughput (each batch of
// 100 lww writes sent to all three replicas, as a coordinator does) with
// anti-entropy off and on at several intervals and rates: what the
// generation bumps, the trees rebuilt for changed partitions, the bucket
// listings and the merges of writes in flight cost the write path.
//
//	go test -run XXX -bench WriteAE -benchtime 3s ./storage/
func BenchmarkWriteAE(b *testing.B) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		rate     int64
	}{
		{"off", 0, 0},
		{"1s", time.Second, DefaultAntiEntropyRate},
		{"100ms", 100 * time.Millisecond, DefaultAntiEntropyRate},
		{"100ms-unlimited", 100 * time.Millisecond, Unlimited},
	} {
		b.Run("ae="+tc.name, func(b *testing.B) {
			s := natstest.RunServer(b)
			root := b.TempDir()
			f := newFakeCoord(b, s, claim(b, nil, "a", "b", "c"), false)
			f.serveTenants(b, map[string]int{"acme": 3})
			var nodes []*Node
			for _, id := range []string{"a", "b", "c"} {
				nodes = append(nodes, startXfer(b, s, Config{NodeID: id, DataDir: filepath.Join(root, id), Heartbeat: time.Hour, Fsync: false,
					AntiEntropyInterval: tc.interval, AntiEntropyRate: tc.rate}, nil))
			}
			nc := natstest.Connect(b, s)
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				ws := make([]subjects.NodeWrite, 100)
				for j := range ws {
					ws[j] = subjects.NodeWrite{ID: uint64(j), Tenant: "acme", Key: fmt.Sprintf("k%d", (i*100+j)%50_000), LWW: version(uint64(i+1), "c1", "value")}
				}
				for _, id := range []string{"a", "b", "c"} {
					sendBatch(b, nc, id, ws)
				}
			}
			b.ReportMetric(float64(b.N*100)/b.Elapsed().Seconds(), "writes/s")
			var builds int64
			for _, n := range nodes {
				builds += n.TreeBuilds()
			}
			b.ReportMetric(float64(builds), "trees")
		})
	}
}
