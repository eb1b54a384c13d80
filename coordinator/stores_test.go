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

// TestIdempotentWritesApplyOnce: 50 concurrent copies of one request with
// one idempotency key and then 50 sequential retries store exactly one version;
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
				record(kv.Put(ctx, "once", []byte("v"), client.WithIdempotencyKey("order-42")))
			}()
		}
		wg.Wait()
		for i := 0; i < 50; i++ {
			record(kv.Put(ctx, "once", []byte("v"), client.WithIdempotencyKey("order-42")))
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
// without one go on, and their generated keys are honoured (they need no
// store); when Redis returns, it works again by itself.
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
	// The write goes on, and its generated key is honoured on a retry
	// with Redis still down: it is a sealed token, not a store entry.
	res, err := kv.Put(ctx, "k", []byte("v3"))
	if err != nil || res.IdempotencyKey == "" {
		t.Fatalf("put without a key while Redis is down: %v %+v, want success with a generated idempotency key", err, res)
	}
	dup, err := kv.Put(ctx, "k", []byte("v3"), client.WithIdempotencyKey(res.IdempotencyKey))
	if err != nil || !dup.IsDuplicate || dup.Context != res.Context {
		t.Fatalf("retry with the generated key while Redis is down: %v %+v, want a duplicate of %+v", err, dup, res)
	}
	_, err = kv.Put(ctx, "k", []byte("other"), client.WithIdempotencyKey(res.IdempotencyKey))
	assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
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

// dumpText is what the three nodes hold for key, as text.
func dumpText(t *testing.T, c *devcluster.Cluster, tenant, key string) string {
	t.Helper()
	var b strings.Builder
	for _, e := range dumpKey(t, c, tenant, key, 3) {
		fmt.Fprintf(&b, "%q %q %t %s %d %s %d; ", e.Key, e.Value, e.Tombstone, e.Context, e.Counter, e.Actor, e.Siblings)
	}
	return b.String()
}

// TestGeneratedIdempotencyKeyIsHonoured: a write without an idempotency key
// returns a generated one, and a retry with it is a duplicate with the same
// context that writes nothing, for puts and deletes, under either policy.
func TestGeneratedIdempotencyKeyIsHonoured(t *testing.T) {
	backends(t, func(t *testing.T, cfg devcluster.Config) {
		c := startClusterWith(t, cfg)
		ctx := ctxT(t)
		for _, kv := range []*client.Client{kvClient(t, c, "default"), siblingsTenant(t, c, "sib")} {
			// At all, so every replica holds the write before the dump that
			// the retries must leave unchanged.
			first, err := kv.Put(ctx, "gen", []byte("v1"), client.WithConsistency(subjects.All))
			if err != nil || first.IdempotencyKey == "" || first.IsDuplicate {
				t.Fatalf("put without a key: %v %+v", err, first)
			}
			before := dumpText(t, c, kv.Tenant(), "gen")
			for range 2 {
				again, err := kv.Put(ctx, "gen", []byte("v1"), client.WithIdempotencyKey(first.IdempotencyKey))
				if err != nil || !again.IsDuplicate || again.Context != first.Context || again.IdempotencyKey != first.IdempotencyKey {
					t.Fatalf("%s: retry with the generated key %q: %v %+v, want a duplicate of %+v", kv.Tenant(), first.IdempotencyKey, err, again, first)
				}
			}
			if after := dumpText(t, c, kv.Tenant(), "gen"); after != before {
				t.Fatalf("%s: the retry wrote: replicas held %+v, now %+v", kv.Tenant(), before, after)
			}
			del, err := kv.Delete(ctx, "gen")
			if err != nil || del.IdempotencyKey == "" {
				t.Fatalf("delete without a key: %v %+v", err, del)
			}
			again, err := kv.Delete(ctx, "gen", client.WithIdempotencyKey(del.IdempotencyKey))
			if err != nil || !again.IsDuplicate || again.Context != del.Context {
				t.Fatalf("%s: delete retried with the generated key: %v %+v, want a duplicate of %+v", kv.Tenant(), err, again, del)
			}
		}
	})
}

// TestIdempotencyKeyReusedForAnotherRequest: a key is bound to the request
// that first used it; the same request is a duplicate, another value, a
// delete, or another context is 409 idempotency_mismatch and writes nothing.
func TestIdempotencyKeyReusedForAnotherRequest(t *testing.T) {
	backends(t, func(t *testing.T, cfg devcluster.Config) {
		c := startClusterWith(t, cfg)
		ctx := ctxT(t)
		kv := kvClient(t, c, "default")
		first, err := kv.Put(ctx, "k", []byte("v1"), client.WithIdempotencyKey("order-1"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = kv.Put(ctx, "k", []byte("v2"), client.WithIdempotencyKey("order-1"))
		assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
		if !errors.Is(err, client.ErrIdempotencyMismatch) || !errors.Is(err, client.ErrConflict) {
			t.Errorf("%v does not match ErrIdempotencyMismatch and ErrConflict", err)
		}
		_, err = kv.Delete(ctx, "k", client.WithIdempotencyKey("order-1"))
		assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
		_, err = kv.Put(ctx, "k", []byte("v1"), client.WithIdempotencyKey("order-1"), client.WithContext(first.Context))
		assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
		// The same request is a duplicate, whatever level or timeout it asks.
		dup, err := kv.Put(ctx, "k", []byte("v1"), client.WithIdempotencyKey("order-1"),
			client.WithConsistency(subjects.All), client.WithTimeout(5*time.Second))
		if err != nil || !dup.IsDuplicate || dup.Context != first.Context {
			t.Fatalf("same request retried: %v %+v, want a duplicate of %+v", err, dup, first)
		}
		// A generated key is bound the same way.
		gen, err := kv.Put(ctx, "k", []byte("v1"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = kv.Put(ctx, "k", []byte("other"), client.WithIdempotencyKey(gen.IdempotencyKey))
		assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
		_, err = kv.Delete(ctx, "k", client.WithIdempotencyKey(gen.IdempotencyKey))
		assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
		got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
		if err != nil || string(got.Value) != "v1" || got.Context != gen.Context {
			t.Fatalf("get after the refused requests: %v %+v, want v1 at %s", err, got, gen.Context)
		}
	})
}

// TestIdempotencyMismatchWhilePending: while the first request with a key
// is still running, a different request with that key is 409
// idempotency_mismatch (it would never be honoured) and the same request is
// 409 in_progress.
func TestIdempotencyMismatchWhilePending(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	kv := kvClient(t, c, "default")
	silence(t, c, "node-3")
	// A request at all that waits for the silent node: it holds its claim
	// for its whole timeout.
	slow := func(timeout time.Duration) error {
		_, err := kv.Put(ctx, "k", []byte("v1"), client.WithIdempotencyKey("slow"),
			client.WithConsistency(subjects.All), client.WithTimeout(timeout))
		return err
	}
	firstDone := make(chan error, 1)
	go func() {
		for {
			// A probe below may hold the claim for a moment: then retry.
			if err := slow(8 * time.Second); !errors.Is(err, client.ErrInProgress) {
				firstDone <- err
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// The first request holds the claim once the same request, sent again,
	// is in progress (a probe that claims the key itself fails after 1s
	// and releases it).
	waitFor(t, 20*time.Second, func() error {
		if err := slow(time.Second); !errors.Is(err, client.ErrInProgress) {
			return fmt.Errorf("same request while the first runs: %v, want in_progress", err)
		}
		return nil
	})
	_, err := kv.Put(ctx, "k", []byte("v2"), client.WithIdempotencyKey("slow"), client.WithTimeout(time.Second))
	assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
	_, err = kv.Delete(ctx, "k", client.WithIdempotencyKey("slow"), client.WithTimeout(time.Second))
	assertKind(t, err, 409, subjects.KindIdempotencyMismatch)
	// The first one times out waiting for the silent node.
	select {
	case err := <-firstDone:
		assertCode(t, err, 503, "all needs 3 of 3")
	case <-ctx.Done():
		t.Fatal("the first request never answered")
	}
}
