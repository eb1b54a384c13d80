package coordinator_test

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// BenchmarkPutGet measures quorum puts and gets end to end on an
// in-process cluster (one nats-server, three Pebble storage nodes without
// fsync, one coordinator, RF 3): client encoding, the coordinator, the
// batched fan-out, the nodes and the replies. allocs/op counts every
// allocation of the process, nats-server's included. The serial cases show
// latency (ns/op is one round trip); the parallel ones show throughput with
// 32 goroutines per CPU.
func BenchmarkPutGet(b *testing.B) {
	c := startCluster(b, 3)
	kv := kvClient(b, c, "default")
	ctx := context.Background()
	value := bytes.Repeat([]byte("v"), 256)
	const keys = 10_000
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("user%012d", i)
		if _, err := kv.Put(ctx, names[i], value); err != nil {
			b.Fatal(err)
		}
	}
	quorum := client.WithConsistency(subjects.Quorum)
	run := func(b *testing.B, parallel bool, op func(key string) error) {
		b.ReportAllocs()
		if !parallel {
			i := 0
			for b.Loop() {
				if err := op(names[i%keys]); err != nil {
					b.Fatal(err)
				}
				i += 7919
			}
			return
		}
		var next atomic.Uint64
		b.SetParallelism(32)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(names[next.Add(7919)%keys]); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	put := func(key string) error { _, err := kv.Put(ctx, key, value, quorum); return err }
	get := func(key string) error { _, err := kv.Get(ctx, key, quorum); return err }
	// The floor: a raw request-reply echo through the same server.
	enc := connect(b, c)
	if _, err := enc.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		b.Fatal(err)
	}
	_ = enc.Flush()
	nc := connect(b, c)
	echo := func(key string) error { _, err := nc.Request("bench.echo", value, time.Second); return err }
	b.Run("echo/serial", func(b *testing.B) { run(b, false, echo) })
	b.Run("put/serial", func(b *testing.B) { run(b, false, put) })
	b.Run("get/serial", func(b *testing.B) { run(b, false, get) })
	b.Run("put/parallel", func(b *testing.B) { run(b, true, put) })
	b.Run("get/parallel", func(b *testing.B) { run(b, true, get) })
}
