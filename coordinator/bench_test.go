package coordinator_test

import (
	"bytes"
	"context"
	"fmt"
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

// recordSwitch is an idempotency store whose Record can be turned off, to
// measure what recording generated keys costs a write without a key.
type recordSwitch struct {
	idempotency.Store
	off atomic.Bool
}

func (s *recordSwitch) Record(ctx context.Context, key string, fp, resp []byte, ttl time.Duration) error {
	if s.off.Load() {
		return nil
	}
	return s.Store.Record(ctx, key, fp, resp, ttl)
}

// BenchmarkPutGeneratedKey measures quorum puts without an idempotency key
// with the generated key recorded (record=on, what the coordinator does)
// and without (record=off, as before it recorded them), in one run on one
// cluster, against the embedded JetStream KV store and against Redis. Only
// the store round trip is switched off: the reply's encoding and the
// request's fingerprint are computed in both cases.
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
			sw := &recordSwitch{Store: store}
			// Only this coordinator serves: the cluster's own stops.
			c.StopCoordinator(0)
			co, err := coordinator.New(ctx, connect(b, c), coordinator.Config{
				Metadata: c.Metadata(), Idempotency: sw, Repair: c.RepairPublisher(), Logger: quietLogger(),
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(co.Stop)
			kv := kvClient(b, c, "default")
			value := bytes.Repeat([]byte("v"), 256)
			quorum := client.WithConsistency(subjects.Quorum)
			var next atomic.Uint64
			put := func() error {
				_, err := kv.Put(ctx, fmt.Sprintf("user%012d", next.Add(7919)%10_000), value, quorum)
				return err
			}
			for _, mode := range []string{"off", "on"} {
				b.Run("record="+mode+"/serial", func(b *testing.B) {
					sw.off.Store(mode == "off")
					b.ReportAllocs()
					for b.Loop() {
						if err := put(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
			for _, mode := range []string{"off", "on"} {
				b.Run("record="+mode+"/parallel", func(b *testing.B) {
					sw.off.Store(mode == "off")
					b.ReportAllocs()
					b.SetParallelism(32)
					b.RunParallel(func(pb *testing.PB) {
						for pb.Next() {
							if err := put(); err != nil {
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
