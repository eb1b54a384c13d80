package bench

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// BenchmarkTransportFloor is what a partition transfer's pages cost in
// CPU to move by NATS request-reply and nothing else: no scan, no merge,
// no write. Three sources answer every request with the same 300 kB page
// (about 1000 records of the membership cell), the receiver asks two at a
// time (as a joining node's two transfer workers do) over the bench's
// routed 3-server cluster. "routed": the sources are on servers 0, 1 and
// 2 and the receiver on 0, as in the membership cell; "local": all on
// server 0. It reports MB per CPU second of the whole process (servers
// and clients), the figure docs/PERFORMANCE.md compares with what the
// membership goal allows.
func BenchmarkTransportFloor(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := startCluster(ctx, b.TempDir(), false, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer c.close()
	page := make([]byte, 300_000)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range page {
		page[i] = byte(r.Uint64())
	}
	for _, mode := range []string{"routed", "local"} {
		b.Run(mode, func(b *testing.B) {
			prefix := "floor." + mode + "."
			for i := range clusterSize {
				server := i
				if mode == "local" {
					server = 0
				}
				nc, err := c.connect(server, "floor-source")
				if err != nil {
					b.Fatal(err)
				}
				sub, err := nc.Subscribe(prefix+strconv.Itoa(i), func(m *nats.Msg) { _ = m.Respond(page) })
				if err != nil {
					b.Fatal(err)
				}
				defer func() { _ = sub.Unsubscribe() }()
				if err := nc.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			rc, err := c.connect(0, "floor-receiver")
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(page)))
			b.ResetTimer()
			cpu0, _ := processUsage()
			var wg sync.WaitGroup
			errs := make(chan error, 2)
			for w := range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < b.N; i += 2 {
						m, err := rc.Request(prefix+strconv.Itoa(i%clusterSize), nil, 10*time.Second)
						if err == nil && len(m.Data) != len(page) {
							err = fmt.Errorf("page of %d bytes, want %d", len(m.Data), len(page))
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			cpu1, _ := processUsage()
			b.StopTimer()
			close(errs)
			for err := range errs {
				b.Fatal(err)
			}
			if s := (cpu1 - cpu0).Seconds(); s > 0 {
				b.ReportMetric(float64(b.N)*float64(len(page))/1e6/s, "MB/cpu-s")
			}
		})
	}
}
