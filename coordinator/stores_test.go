package coordinator_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/internal/pgtest"
	"github.com/quorumkv/quorumkv/internal/redistest"
	"github.com/quorumkv/quorumkv/internal/tcpproxy"
	"github.com/quorumkv/quorumkv/subjects"
)

// backends runs f against each production-shaped store combination.
func backends(t *testing.T, f func(t *testing.T, cfg devcluster.Config)) {
	t.Run("jetstream", func(t *testing.T) { f(t, devcluster.Config{}) })
	t.Run("postgres+redis", func(t *testing.T) {
		_, prefix := redistest.Client(t)
		f(t, devcluster.Config{Metadata: pgtest.NewDatabase(t), Idempotency: redistest.URL(), RedisPrefix: prefix})
	})
}

// TestIdempotentWritesApplyOnce: 50 concurrent requests with one
// idempotency key and then 50 sequential retries store exactly one version;
// exactly one response is not a duplicate; the others are duplicates with
// the same context, or 409 in_progress while the first is pending.
func TestIdempotentWritesApplyOnce(t *testing.T) {
	backends(t, func(t *testing.T, cfg devcluster.Config) {
		c := startClusterWith(t, cfg)
		ctx := ctxT(t)
		kv := kvClient(t, c, "default")
		var (
			mu         sync.Mutex
			firsts     []*client.WriteResult
			dups       []*client.WriteResult
			inProgress int
			wg         sync.WaitGroup
		)
		record := func(res *client.WriteResult, err error) {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, client.ErrInProgress):
				inProgress++
			case err != nil:
				t.Errorf("put: %v", err)
			case res.IsDuplicate:
				dups = append(dups, res)
			default:
				firsts = append(firsts, res)
			}
		}
		for i := 0; i < 50; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				record(kv.Put(ctx, "once", []byte(fmt.Sprintf("attempt-%d", i)), client.WithIdempotencyKey("order-42")))
			}()
		}
		wg.Wait()
		for i := 0; i < 50; i++ {
			record(kv.Put(ctx, "once", []byte("retry"), client.WithIdempotencyKey("order-42")))
		}
		if len(firsts) != 1 {
			t.Fatalf("%d non-duplicate responses, want exactly 1", len(firsts))
		}
		if len(dups)+inProgress != 99 || len(dups) < 50 {
			t.Fatalf("%d duplicates and %d in_progress, want 99 in all with at least the 50 sequential retries as duplicates", len(dups), inProgress)
		}
		for _, d := range dups {
			if d.Context != firsts[0].Context || d.IdempotencyKey != "order-42" {
				t.Fatalf("duplicate %+v differs from the first %+v", d, firsts[0])
			}
		}
		// Exactly one version on every replica: the first write's.
		admin := client.NewAdmin(connect(t, c))
		waitFor(t, 5*time.Second, func() error {
			for i := 1; i <= 3; i++ {
				es, err := admin.DumpAll(ctx, devcluster.NodeID(i), "default")
				if err != nil {
					return err
				}
				// A dump shows the plain context; clients get it sealed.
				if len(es) != 1 || es[0].Context != plainContext(t, firsts[0].Context) {
					return fmt.Errorf("%s holds %+v, want the first write only", devcluster.NodeID(i), es)
				}
			}
			return nil
		})
		// A different key under the same idempotency key is its own write.
		other, err := kv.Put(ctx, "other", []byte("x"), client.WithIdempotencyKey("order-42"))
		if err != nil || other.IsDuplicate {
			t.Fatalf("same idempotency key on another key: %v %+v", err, other)
		}
		// Without a key, the coordinator makes one per write.
		a, _ := kv.Put(ctx, "fresh", []byte("1"))
		b, _ := kv.Put(ctx, "fresh", []byte("2"))
		if a.IdempotencyKey == "" || a.IdempotencyKey == b.IdempotencyKey || a.IsDuplicate || b.IsDuplicate {
			t.Fatalf("generated keys: %+v %+v", a, b)
		}
	})
}

// TestFailedWriteClearsItsClaim: a write that fails (level not reachable)
// releases its idempotency key, so the client's retry writes.
func TestFailedWriteClearsItsClaim(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	kv := kvClient(t, c, "default")
	if err := c.StopNode("node-1"); err != nil {
		t.Fatal(err)
	}
	_, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All), client.WithIdempotencyKey("retry-me"))
	assertCode(t, err, 503, "all needs 3 of 3")
	if err := c.StartNode("node-1"); err != nil {
		t.Fatal(err)
	}
	res, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All), client.WithIdempotencyKey("retry-me"))
	if err != nil || res.IsDuplicate {
		t.Fatalf("retry after a failed write: %v %+v", err, res)
	}
}

// TestRedisOutage: while Redis is unreachable, writes that carry an
// idempotency key answer 503 naming it (never a silent duplicate); writes
// without one go on; when Redis returns, it works again by itself.
func TestRedisOutage(t *testing.T) {
	_, prefix := redistest.Client(t)
	proxy := tcpproxy.New(t, strings.TrimPrefix(strings.TrimSuffix(redistest.URL(), "/0"), "redis://"))
	c := startClusterWith(t, devcluster.Config{
		Idempotency: "redis://" + proxy.Addr() + "/0?max_retries=0&dial_timeout=500ms",
		RedisPrefix: prefix,
	})
	ctx := ctxT(t)
	kv := kvClient(t, c, "default")
	if _, err := kv.Put(ctx, "k", []byte("v"), client.WithIdempotencyKey("before")); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	_, err := kv.Put(ctx, "k", []byte("v2"), client.WithIdempotencyKey("during"))
	var e *client.Error
	if !errors.As(err, &e) || (e.Code != 503 && e.Code != 504) || !strings.Contains(e.Message, "idempotency store") || !strings.Contains(strings.ToLower(e.Message), "redis") {
		t.Fatalf("put with a key while Redis is down: %v, want 503 naming the redis idempotency store", err)
	}
	if _, err := kv.Put(ctx, "k", []byte("v3")); err != nil {
		t.Fatalf("put without a key while Redis is down: %v", err)
	}
	proxy.Restore()
	waitFor(t, 10*time.Second, func() error {
		_, err := kv.Put(ctx, "k", []byte("v4"), client.WithIdempotencyKey("after"))
		return err
	})
}

// TestPostgresOutage: with PostgreSQL unreachable, cached tenants keep
// serving, requests that need the database answer 503 naming it, and the
// coordinator recovers by itself.
func TestPostgresOutage(t *testing.T) {
	proxy := pgtest.NewProxy(t, pgtest.NewDatabase(t))
	c := startClusterWith(t, devcluster.Config{
		Metadata:    proxy.DSN(),
		Coordinator: coordinatorConfigFastTTL(),
	})
	ctx := ctxT(t)
	kv := kvClient(t, c, "default")
	if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	admin := client.NewAdmin(connect(t, c))
	proxy.Cut()
	time.Sleep(300 * time.Millisecond) // past the tenant TTL: the cache must refresh and fail
	for i := 0; i < 5; i++ {
		got, err := kv.Get(ctx, "k")
		if err != nil || !bytes.Equal(got.Value, []byte("v")) {
			t.Fatalf("cached tenant while PostgreSQL is down: %v", err)
		}
	}
	_, err := kvClient(t, c, "uncached").Get(ctx, "k")
	var e *client.Error
	if !errors.As(err, &e) || (e.Code != 503 && e.Code != 504) || !strings.Contains(e.Message, "metadata store") {
		t.Fatalf("uncached tenant while PostgreSQL is down: %v, want 503 naming the metadata store", err)
	}
	_, err = admin.CreateTenant(ctx, "newone", client.TenantSpec{})
	if !errors.As(err, &e) || (e.Code != 503 && e.Code != 504) || !strings.Contains(e.Message, "metadata store") {
		t.Fatalf("tenant create while PostgreSQL is down: %v", err)
	}
	proxy.Restore()
	waitFor(t, 15*time.Second, func() error {
		_, err := admin.CreateTenant(ctx, "newone", client.TenantSpec{})
		if errors.Is(err, client.ErrExists) {
			return nil
		}
		return err
	})
	if _, err := kv.Put(ctx, "k2", []byte("v")); err != nil {
		t.Fatal(err)
	}
}
