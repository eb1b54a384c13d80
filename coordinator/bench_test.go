package coordinator_test

import (
	"bytes"
	"context"
	"fmt"
	"github.com/vmihailenco/msgpack/v5"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/idempotency"
	idemnats "github.com/quorumkv/quorumkv/idempotency/natskv"
	idemredis "github.com/quorumkv/quorumkv/idempotency/redis"
	"github.com/quorumkv/quorumkv/internal/redistest"
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

// BenchmarkPutGeneratedKey measures quorum puts without an idempotency key
// as the coordinator serves them (key=token: the generated key is a sealed
// token, no store round trip) against the same puts followed by the one
// store write the coordinator made for each before tokens (key=recorded: a
// Record of the reply under a random key, as idempotency.Store.Record did
// it), in one run on one cluster, against the embedded JetStream KV store
// and against Redis.
func BenchmarkPutGeneratedKey(b *testing.B) {
	for _, backend := range []string{"nats", "redis"} {
		b.Run(backend, func(b *testing.B) {
			c := startCluster(b, 3)
			ctx := context.Background()
			var store idempotency.Store
			switch backend {
			case "nats":
				js, err := jetstream.New(connect(b, c))
				if err != nil {
					b.Fatal(err)
				}
				s, err := idemnats.Open(ctx, js, idemnats.Options{Bucket: "bench_idempotency"})
				if err != nil {
					b.Fatal(err)
				}
				store = s
			case "redis":
				rc, prefix := redistest.Client(b)
				store = idemredis.New(rc, prefix)
			}
			// Only this coordinator serves: the cluster's own stops.
			c.StopCoordinator(0)
			co, err := coordinator.New(ctx, connect(b, c), coordinator.Config{
				Metadata: c.Metadata(), Idempotency: store, Repair: c.RepairPublisher(), Logger: quietLogger(),
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(co.Stop)
			kv := kvClient(b, c, "default")
			value := bytes.Repeat([]byte("v"), 256)
			quorum := client.WithConsistency(subjects.Quorum)
			var next atomic.Uint64
			fp := bytes.Repeat([]byte("f"), 16)
			put := func(recorded bool) error {
				res, err := kv.Put(ctx, fmt.Sprintf("user%012d", next.Add(7919)%10_000), value, quorum)
				if err != nil || !recorded {
					return err
				}
				resp, err := msgpack.Marshal(res)
				if err != nil {
					return err
				}
				return store.Record(ctx, fmt.Sprintf("bench/%d", next.Add(1)), fp, resp, time.Hour)
			}
			for _, mode := range []string{"token", "recorded"} {
				b.Run("key="+mode+"/serial", func(b *testing.B) {
					b.ReportAllocs()
					for b.Loop() {
						if err := put(mode == "recorded"); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			for _, mode := range []string{"token", "recorded"} {
				b.Run("key="+mode+"/parallel", func(b *testing.B) {
					b.ReportAllocs()
					b.SetParallelism(32)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := put(mode == "recorded"); err != nil {
								b.Error(err)
								return
							}
						}
					})
				})
			}
		})
	}
}
