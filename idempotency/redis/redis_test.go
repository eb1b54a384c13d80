package redis

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/quorumkv/quorumkv/idempotency"
	"github.com/quorumkv/quorumkv/idempotency/idempotencytest"
	"github.com/quorumkv/quorumkv/internal/redistest"
	"github.com/quorumkv/quorumkv/internal/tcpproxy"
)

func newStore(t *testing.T) (*Store, *goredis.Client, string) {
	t.Helper()
	c, prefix := redistest.Client(t)
	s := New(c, prefix)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, c, prefix
}

func TestConformance(t *testing.T) {
	idempotencytest.Run(t, func(t *testing.T) idempotency.Store {
		s, _, _ := newStore(t)
		return s
	})
}

// TestConformanceRESP2 runs the suite over RESP2, whose script replies
// differ from RESP3's (go-redis speaks RESP3 by default).
func TestConformanceRESP2(t *testing.T) {
	idempotencytest.Run(t, func(t *testing.T) idempotency.Store {
		_, prefix := redistest.Client(t) // cleans the prefix up
		opts := redistest.Options(t)
		opts.Protocol = 2
		c := goredis.NewClient(opts)
		t.Cleanup(func() { _ = c.Close() })
		return New(c, prefix)
	})
}

func TestStoredValuesAndTTLs(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	key := idempotency.Key("t1", "k", "i")
	cl, err := s.Begin(ctx, key, nil, 7*time.Second)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	if v, err := c.Get(ctx, prefix+key).Result(); err != nil || v != "p"+strings.TrimSuffix(cl.Token, ".") {
		t.Fatalf("pending value = %q, %v; want %q", v, err, "p"+strings.TrimSuffix(cl.Token, "."))
	}
	if ttl := c.PTTL(ctx, prefix+key).Val(); ttl <= 6*time.Second || ttl > 7*time.Second {
		t.Fatalf("pending PTTL = %v, want about 7s", ttl)
	}
	if err := s.Complete(ctx, key, cl.Token, []byte("resp"), 42*time.Minute); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if v, err := c.Get(ctx, prefix+key).Result(); err != nil || v != "cresp" {
		t.Fatalf("completed value = %q, %v; want %q", v, err, "cresp")
	}
	if ttl := c.PTTL(ctx, prefix+key).Val(); ttl <= 41*time.Minute || ttl > 42*time.Minute {
		t.Fatalf("completed PTTL = %v, want about 42m", ttl)
	}
	// Nothing is written outside the prefix.
	if n := c.Exists(ctx, key).Val(); n != 0 {
		t.Fatalf("key %q exists without the prefix", key)
	}
}

// TestStoredValuesWithFingerprint pins the format of entries with a
// fingerprint: 'P' or 'C', the fingerprint's length, the fingerprint, then
// the random part of the marker or the response.
func TestStoredValuesWithFingerprint(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	fp := []byte("fp\x00\xff")
	key := idempotency.Key("t1", "k", "fp")
	cl, err := s.Begin(ctx, key, fp, 7*time.Second)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	random, _, _ := strings.Cut(cl.Token, ".")
	if v, err := c.Get(ctx, prefix+key).Result(); err != nil || v != "P\x04fp\x00\xff"+random {
		t.Fatalf("pending value = %q, %v; want %q", v, err, "P\x04fp\x00\xff"+random)
	}
	if err := s.Complete(ctx, key, cl.Token, []byte("resp"), 42*time.Minute); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if v, err := c.Get(ctx, prefix+key).Result(); err != nil || v != "C\x04fp\x00\xffresp" {
		t.Fatalf("completed value = %q, %v; want %q", v, err, "C\x04fp\x00\xffresp")
	}
	rkey := idempotency.Key("t1", "k", "record")
	if err := s.Record(ctx, rkey, fp, []byte("rec"), 42*time.Minute); err != nil {
		t.Fatalf("Record: %v", err)
	}
	if v, err := c.Get(ctx, prefix+rkey).Result(); err != nil || v != "C\x04fp\x00\xffrec" {
		t.Fatalf("recorded value = %q, %v; want %q", v, err, "C\x04fp\x00\xffrec")
	}
	if ttl := c.PTTL(ctx, prefix+rkey).Val(); ttl <= 41*time.Minute || ttl > 42*time.Minute {
		t.Fatalf("recorded PTTL = %v, want about 42m", ttl)
	}
}

// TestEntriesOfOlderVersions: values written before fingerprints existed
// ('c' + response, 'p' + token) are honoured for a request with one.
func TestEntriesOfOlderVersions(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	done := idempotency.Key("t1", "k", "old-done")
	pending := idempotency.Key("t1", "k", "old-pending")
	if err := c.Set(ctx, prefix+done, "cold response", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, prefix+pending, "pOLDTOKEN", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	cl, err := s.Begin(ctx, done, []byte("fp"), time.Second)
	if err != nil || string(cl.Response) != "old response" {
		t.Fatalf("Begin on an old completed entry = %+v, %v; want its response", cl, err)
	}
	if _, err := s.Begin(ctx, pending, []byte("fp"), time.Second); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Begin on an old pending marker = %v, want ErrInProgress", err)
	}
}

// TestTruncatedFingerprintValue: a value whose fingerprint length runs past
// its end is an error, not a panic or a match.
func TestTruncatedFingerprintValue(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	key := idempotency.Key("t1", "k", "truncated")
	if err := c.Set(ctx, prefix+key, "C\x09abc", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(ctx, key, []byte("fp"), time.Second); err == nil || errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("Begin on a truncated value: %v, want a truncated-value error", err)
	}
}

func TestCorruptValue(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	key := idempotency.Key("t1", "k", "corrupt")
	if err := c.Set(ctx, prefix+key, "zzz", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Begin(ctx, key, nil, time.Second)
	if err == nil || errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "unknown tag") {
		t.Fatalf("Begin on a corrupt value: %v, want an unknown-tag error", err)
	}
}

func TestWrongTypeIsNotUnavailable(t *testing.T) {
	s, c, prefix := newStore(t)
	ctx := t.Context()
	key := idempotency.Key("t1", "k", "hash")
	if err := c.HSet(ctx, prefix+key, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	_, err := s.Begin(ctx, key, nil, time.Second)
	if err == nil || errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("Begin on a hash: %v, want a WRONGTYPE error that is not ErrUnavailable", err)
	}
}

func TestCanceledContextIsNotUnavailable(t *testing.T) {
	s, _, _ := newStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Begin(ctx, idempotency.Key("t1", "k", "cancel"), nil, time.Second)
	if !errors.Is(err, context.Canceled) || errors.Is(err, idempotency.ErrUnavailable) {
		t.Fatalf("Begin with a canceled context: %v, want context.Canceled and not ErrUnavailable", err)
	}
}

func TestExpiredDeadlineIsUnavailable(t *testing.T) {
	s, _, _ := newStore(t)
	ctx, cancel := context.WithDeadline(t.Context(), time.Now().Add(-time.Second))
	defer cancel()
	_, err := s.Begin(ctx, idempotency.Key("t1", "k", "deadline"), nil, time.Second)
	if !errors.Is(err, idempotency.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Begin past its deadline: %v, want ErrUnavailable wrapping context.DeadlineExceeded", err)
	}
}

func TestOpen(t *testing.T) {
	_, prefix := redistest.Client(t)
	s, err := Open(redistest.URL(), prefix)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	key := idempotency.Key("t1", "k", "open")
	cl, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	if err := s.Abort(t.Context(), key, cl.Token); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close closed the client Open made.
	if _, err := s.Begin(t.Context(), key, nil, time.Minute); err == nil {
		t.Fatal("Begin after Close succeeded, want an error")
	}

	if _, err := Open("http://nope", prefix); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Fatalf("Open with a bad URL: %v, want a redis parse error", err)
	}
}

func TestCloseKeepsHandedClient(t *testing.T) {
	s, c, _ := newStore(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Ping(t.Context()).Err(); err != nil {
		t.Fatalf("client unusable after Store.Close: %v", err)
	}
}

// TestFaultProxy cuts the network between a Store and Redis, then restores
// it: the Store fails with ErrUnavailable meanwhile and recovers by itself.
func TestFaultProxy(t *testing.T) {
	_, prefix := redistest.Client(t) // cleans the prefix up
	opts := redistest.Options(t)
	proxy := tcpproxy.New(t, opts.Addr)
	opts.Addr = proxy.Addr()
	opts.DialTimeout = time.Second
	opts.ReadTimeout = time.Second
	opts.WriteTimeout = time.Second
	c := goredis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	s := New(c, prefix)

	opCtx := func() context.Context {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		t.Cleanup(cancel)
		return ctx
	}

	// Healthy: a pooled connection now exists through the proxy.
	key := idempotency.Key("t1", "k", "fault")
	cl, err := s.Begin(opCtx(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin before the cut = %+v, %v", cl, err)
	}

	proxy.Cut()
	checkUnavailable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "redis") {
			t.Fatalf("%s while cut: %v, want ErrUnavailable mentioning redis", what, err)
		}
	}
	_, err = s.Begin(opCtx(), idempotency.Key("t1", "k", "other"), nil, time.Minute)
	checkUnavailable("Begin", err)
	checkUnavailable("Complete", s.Complete(opCtx(), key, cl.Token, []byte("x"), time.Minute))
	checkUnavailable("Abort", s.Abort(opCtx(), key, cl.Token))
	t.Logf("error while cut: %v", err)

	proxy.Restore()
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := s.Begin(opCtx(), key, nil, time.Minute)
		if errors.Is(err, idempotency.ErrInProgress) {
			break // reached Redis, which still holds the claim
		}
		if err == nil {
			t.Fatal("Begin after restore claimed a key that is still pending")
		}
		if !errors.Is(err, idempotency.ErrUnavailable) {
			t.Fatalf("Begin after restore: %v, want ErrUnavailable until it recovers", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Store did not recover within 15s of restore: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.Complete(opCtx(), key, cl.Token, []byte("after restore"), time.Minute); err != nil {
		t.Fatalf("Complete after restore: %v", err)
	}
	cl2, err := s.Begin(opCtx(), key, nil, time.Minute)
	if err != nil || string(cl2.Response) != "after restore" {
		t.Fatalf("Begin after restore = %+v, %v; want the stored response", cl2, err)
	}
}
