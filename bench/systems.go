package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// opTimeout bounds every benchmark operation.
const opTimeout = 5 * time.Second

// system is one of the compared systems, set up on a cluster.
type system interface {
	name() string
	// worker returns the operations of client i, which uses connection nc.
	worker(i int, nc *nats.Conn) (worker, error)
}

// worker is one closed-loop client's view of a system. A worker is used by
// one goroutine at a time.
type worker interface {
	put(key string, value []byte) error
	get(key string) error
}

// Echo subjects of the raw request-reply floor.
const (
	echoPut = "bench.echo.put"
	echoGet = "bench.echo.get"
)

// natsEcho is the floor: a queue group of echo responders, one per server.
// A put request carries key and value and is answered with itself; a get
// request carries the key and is answered with a value of the benchmark's
// size.
type natsEcho struct{}

func startNATSEcho(c *cluster, valueSize int) (*natsEcho, error) {
	value := make([]byte, valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	for i := range clusterSize {
		nc, err := c.connect(i, "bench-echo")
		if err != nil {
			return nil, err
		}
		if _, err := nc.QueueSubscribe(echoPut, "echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
			return nil, fmt.Errorf("echo responder: %w", err)
		}
		if _, err := nc.QueueSubscribe(echoGet, "echo", func(m *nats.Msg) { _ = m.Respond(value) }); err != nil {
			return nil, fmt.Errorf("echo responder: %w", err)
		}
		if err := nc.Flush(); err != nil {
			return nil, fmt.Errorf("echo responder: %w", err)
		}
	}
	return &natsEcho{}, nil
}

func (*natsEcho) name() string { return SysNATS }

func (*natsEcho) worker(_ int, nc *nats.Conn) (worker, error) { return &echoWorker{nc: nc}, nil }

type echoWorker struct {
	nc  *nats.Conn
	buf []byte
}

func (w *echoWorker) put(key string, value []byte) error {
	w.buf = append(append(w.buf[:0], key...), value...)
	_, err := w.nc.Request(echoPut, w.buf, opTimeout)
	return err
}

func (w *echoWorker) get(key string) error {
	w.buf = append(w.buf[:0], key...)
	m, err := w.nc.Request(echoGet, w.buf, opTimeout)
	if err == nil && len(m.Data) == 0 {
		err = errors.New("empty echo")
	}
	return err
}

// jetKV is JetStream KV: one bucket, file storage, three replicas.
type jetKV struct {
	bucket string
	mu     sync.Mutex
	kvs    map[*nats.Conn]jetstream.KeyValue
}

func startJetKV(ctx context.Context, c *cluster, bucket string) (*jetKV, error) {
	nc, err := c.connect(0, "bench-jetstream-setup")
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	_, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:   bucket,
		History:  1,
		Storage:  jetstream.FileStorage,
		Replicas: clusterSize,
	})
	if err != nil {
		return nil, fmt.Errorf("create KV bucket %s: %w", bucket, err)
	}
	return &jetKV{bucket: bucket, kvs: map[*nats.Conn]jetstream.KeyValue{}}, nil
}

func (*jetKV) name() string { return SysJetKV }

func (j *jetKV) worker(_ int, nc *nats.Conn) (worker, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	kv := j.kvs[nc]
	if kv == nil {
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("jetstream: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if kv, err = js.KeyValue(ctx, j.bucket); err != nil {
			return nil, fmt.Errorf("KV bucket %s: %w", j.bucket, err)
		}
		j.kvs[nc] = kv
	}
	return &jetWorker{kv: kv}, nil
}

type jetWorker struct{ kv jetstream.KeyValue }

func (w *jetWorker) put(key string, value []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := w.kv.Put(ctx, key, value)
	return err
}

func (w *jetWorker) get(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := w.kv.Get(ctx, key)
	return err
}

// quorumKV is quorumkv through its Go client, consistency quorum.
type quorumKV struct{ d *deployment }

func (*quorumKV) name() string { return SysQuorumKV }

// repairs counts the read repairs and hints the coordinators asked for.
func (q *quorumKV) repairs() uint64 {
	var n uint64
	for _, co := range q.d.Coordinators() {
		st := co.RepairStats()
		n += st.ReadRepairs + st.Hints + st.Dropped
	}
	return n
}

func (q *quorumKV) worker(_ int, nc *nats.Conn) (worker, error) {
	kv, err := client.New(nc, q.d.tenant, client.WithDefaultTimeout(opTimeout))
	if err != nil {
		return nil, err
	}
	return &qkvWorker{kv: kv, opts: []client.RequestOption{client.WithConsistency(subjects.Quorum)}}, nil
}

type qkvWorker struct {
	kv   *client.Client
	opts []client.RequestOption
}

func (w *qkvWorker) put(key string, value []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := w.kv.Put(ctx, key, value, w.opts...)
	return err
}

func (w *qkvWorker) get(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := w.kv.Get(ctx, key, w.opts...)
	return err
}

// preload writes records 0..n-1 through sys with one goroutine per
// connection slot, reporting progress as a fraction; a record whose write
// fails is retried a few times before preload gives up.
func preload(ctx context.Context, sys system, conns []*nats.Conn, n uint64, concurrency, valueSize int, progress func(float64)) error {
	var next, done atomic.Uint64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for i := range concurrency {
		w, err := sys.worker(i, conns[i%len(conns)])
		if err != nil {
			return err
		}
		value := makeValue(valueSize, uint64(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var kb []byte
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				if k >= n {
					return
				}
				kb = appendRecordKey(kb[:0], k)
				var err error
				for try := 0; try < 5; try++ {
					if err = w.put(string(kb), value); err == nil {
						break
					}
					time.Sleep(time.Duration(try+1) * 50 * time.Millisecond)
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("preload %s record %d: %w", sys.name(), k, err); cancel() })
					return
				}
				done.Add(1)
			}
		}()
	}
	stop := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Add(1)
	go func() {
		defer pwg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				progress(float64(done.Load()) / float64(n))
			}
		}
	}()
	wg.Wait()
	close(stop)
	pwg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}

// makeValue returns a value of size bytes, different per seed.
func makeValue(size int, seed uint64) []byte {
	v := make([]byte, size)
	r := newPCG(seed)
	for i := range v {
		v[i] = byte(r.Uint64())
	}
	return v
}
