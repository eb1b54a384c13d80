package natskv

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/idempotency"
	"github.com/quorumkv/quorumkv/idempotency/idempotencytest"
	"github.com/quorumkv/quorumkv/internal/natstest"
)

func newJS(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return js
}

func open(t *testing.T, js jetstream.JetStream, opts Options) *Store {
	t.Helper()
	s, err := Open(t.Context(), js, opts)
	if err != nil {
		t.Fatalf("Open(%+v): %v", opts, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func opCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestConformance(t *testing.T) {
	idempotencytest.Run(t, func(t *testing.T) idempotency.Store {
		srv := natstest.RunServer(t)
		return open(t, newJS(t, natstest.Connect(t, srv)), Options{})
	})
}

// TestConformanceSharedServer runs the suite with every subtest's bucket on
// one server and connection, as coordinators share them in production.
func TestConformanceSharedServer(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	idempotencytest.Run(t, func(t *testing.T) idempotency.Store {
		bucket := "idem_" + strings.NewReplacer("/", "_").Replace(t.Name())
		return open(t, js, Options{Bucket: bucket})
	})
}

func TestOpenDefaultsAndReopen(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	s := open(t, js, Options{})
	key := idempotency.Key("t1", "k", "reopen")
	cl, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}

	kv, err := js.KeyValue(t.Context(), DefaultBucket)
	if err != nil {
		t.Fatalf("bucket %q: %v", DefaultBucket, err)
	}
	st, err := kv.Status(t.Context())
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	kst := st.(*jetstream.KeyValueBucketStatus)
	cfg := kst.Config()
	if cfg.TTL != idempotency.DefaultTTL || cfg.History != 1 || cfg.Replicas != 1 || cfg.LimitMarkerTTL != markerTTL {
		t.Fatalf("bucket config = TTL %v, History %d, Replicas %d, LimitMarkerTTL %v", cfg.TTL, cfg.History, cfg.Replicas, cfg.LimitMarkerTTL)
	}

	// A second coordinator opening the same bucket sees the same claims.
	s2 := open(t, js, Options{})
	if _, err := s2.Begin(t.Context(), key, nil, time.Minute); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Begin through a reopened Store: %v, want ErrInProgress", err)
	}
	if err := s2.Complete(t.Context(), key, cl.Token, []byte("r"), time.Minute); err != nil {
		t.Fatalf("Complete through a reopened Store: %v", err)
	}
}

// TestStoredValuesWithFingerprint pins the format of entries with a
// fingerprint ('P' or 'C', its length, the fingerprint, then the response)
// and honours entries of older versions ('p', 'c' + response) for requests
// with one.
func TestStoredValuesWithFingerprint(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	s := open(t, js, Options{})
	kv, err := js.KeyValue(t.Context(), DefaultBucket)
	if err != nil {
		t.Fatal(err)
	}
	get := func(key string) string {
		t.Helper()
		e, err := kv.Get(t.Context(), key)
		if err != nil {
			t.Fatalf("get %q: %v", key, err)
		}
		return string(e.Value())
	}
	fp := []byte("fp\x00\xff")
	key := idempotency.Key("t1", "k", "fp")
	cl, err := s.Begin(t.Context(), key, fp, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	if v := get(key); v != "P\x04fp\x00\xff" {
		t.Fatalf("pending value = %q", v)
	}
	if err := s.Complete(t.Context(), key, cl.Token, []byte("resp"), time.Minute); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if v := get(key); v != "C\x04fp\x00\xffresp" {
		t.Fatalf("completed value = %q", v)
	}
	rkey := idempotency.Key("t1", "k", "record")
	if err := s.Record(t.Context(), rkey, fp, []byte("rec"), time.Minute); err != nil {
		t.Fatalf("Record: %v", err)
	}
	if v := get(rkey); v != "C\x04fp\x00\xffrec" {
		t.Fatalf("recorded value = %q", v)
	}

	old := idempotency.Key("t1", "k", "old-done")
	if _, err := kv.Put(t.Context(), old, []byte("cold response")); err != nil {
		t.Fatal(err)
	}
	if cl, err := s.Begin(t.Context(), old, fp, time.Minute); err != nil || string(cl.Response) != "old response" {
		t.Fatalf("Begin on an old completed entry = %+v, %v; want its response", cl, err)
	}
	oldPending := idempotency.Key("t1", "k", "old-pending")
	if _, err := kv.Put(t.Context(), oldPending, []byte("p")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(t.Context(), oldPending, fp, time.Minute); !errors.Is(err, idempotency.ErrInProgress) {
		t.Fatalf("Begin on an old pending marker = %v, want ErrInProgress", err)
	}
	truncated := idempotency.Key("t1", "k", "truncated")
	if _, err := kv.Put(t.Context(), truncated, []byte("C\x09abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Begin(t.Context(), truncated, fp, time.Minute); err == nil || errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("Begin on a truncated value: %v, want a truncated-value error", err)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	for _, o := range []Options{
		{TTL: -time.Second},
		{TTL: 10 * time.Millisecond},
		{Replicas: -1},
		{Bucket: "bad bucket"},
	} {
		if _, err := Open(t.Context(), js, o); err == nil {
			t.Errorf("Open(%+v) succeeded, want an error", o)
		}
	}
}

// TestCompleteTTLBoundedByMaxAge: a response ttl beyond the bucket's MaxAge
// is cut to MaxAge.
func TestCompleteTTLBoundedByMaxAge(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	s := open(t, js, Options{TTL: 2 * time.Second})
	key := idempotency.Key("t1", "k", "maxage")
	cl, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	start := time.Now()
	if err := s.Complete(t.Context(), key, cl.Token, []byte("r"), time.Hour); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	deadline := start.Add(10 * time.Second)
	for {
		cl, err := s.Begin(t.Context(), key, nil, time.Minute)
		if err != nil {
			t.Fatalf("Begin: %v", err)
		}
		if cl.Owned() {
			if d := time.Since(start); d < 1900*time.Millisecond {
				t.Fatalf("response expired after %v, before MaxAge 2s", d)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("response outlived MaxAge by 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInvalidKey(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	s := open(t, js, Options{})
	for _, key := range []string{"", "a b", "a.*", "a.>", ".a", "a.", "a..b", "t\x00"} {
		if _, err := s.Begin(t.Context(), key, nil, time.Second); err == nil || errors.Is(err, idempotency.ErrUnavailable) {
			t.Errorf("Begin(%q) = %v, want an invalid-key error", key, err)
		}
		if err := s.Complete(t.Context(), key, "1", nil, time.Second); err == nil || errors.Is(err, idempotency.ErrNotOwner) {
			t.Errorf("Complete(%q) = %v, want an invalid-key error", key, err)
		}
		if err := s.Abort(t.Context(), key, "1"); err == nil || errors.Is(err, idempotency.ErrNotOwner) {
			t.Errorf("Abort(%q) = %v, want an invalid-key error", key, err)
		}
	}
}

func TestCanceledContextIsNotUnavailable(t *testing.T) {
	js := newJS(t, natstest.Connect(t, natstest.RunServer(t)))
	s := open(t, js, Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Begin(ctx, idempotency.Key("t1", "k", "cancel"), nil, time.Second)
	if !errors.Is(err, context.Canceled) || errors.Is(err, idempotency.ErrUnavailable) {
		t.Fatalf("Begin with a canceled context: %v, want context.Canceled and not ErrUnavailable", err)
	}
}

func TestClosedConnectionIsUnavailable(t *testing.T) {
	nc := natstest.Connect(t, natstest.RunServer(t))
	s := open(t, newJS(t, nc), Options{})
	nc.Close()
	_, err := s.Begin(opCtx(t, 5*time.Second), idempotency.Key("t1", "k", "closed"), nil, time.Second)
	if !errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "jetstream") {
		t.Fatalf("Begin on a closed connection: %v, want ErrUnavailable mentioning jetstream", err)
	}
}

// TestServerShutdown: with its server gone every operation fails with
// ErrUnavailable; once a server is back on the same address and store
// directory, the same Store works again by itself, with its claims intact.
func TestServerShutdown(t *testing.T) {
	opts := natstest.Options(t)
	srv := natstest.RunServerWith(t, &opts)
	port := srv.Addr().(*net.TCPAddr).Port
	nc := natstest.Connect(t, srv, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	s := open(t, newJS(t, nc), Options{})

	key := idempotency.Key("t1", "k", "shutdown")
	cl, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}

	srv.Shutdown()
	srv.WaitForShutdown()
	// Wait for the client to notice, or the first request below could be
	// written to the dead socket and replayed on reconnect.
	for deadline := time.Now().Add(10 * time.Second); nc.IsConnected(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("client still connected 10s after server shutdown")
		}
	}
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, idempotency.ErrUnavailable) || !strings.Contains(err.Error(), "jetstream") {
			t.Fatalf("%s with the server down: %v, want ErrUnavailable mentioning jetstream", what, err)
		}
	}
	_, err = s.Begin(opCtx(t, 2*time.Second), idempotency.Key("t1", "k", "other"), nil, time.Minute)
	check("Begin", err)
	t.Logf("error with the server down: %v", err)
	check("Complete", s.Complete(opCtx(t, 2*time.Second), key, cl.Token, []byte("x"), time.Minute))
	check("Abort", s.Abort(opCtx(t, 2*time.Second), key, cl.Token))

	opts2 := natstest.Options(t)
	opts2.Port = port
	opts2.StoreDir = opts.StoreDir
	natstest.RunServerWith(t, &opts2)
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := s.Begin(opCtx(t, 2*time.Second), key, nil, time.Minute)
		if errors.Is(err, idempotency.ErrInProgress) {
			break // the claim survived the restart
		}
		if err == nil {
			t.Fatal("Begin after restart claimed a key that is still pending")
		}
		if !errors.Is(err, idempotency.ErrUnavailable) {
			t.Fatalf("Begin after restart: %v, want ErrUnavailable until it recovers", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Store did not recover within 15s of restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := s.Complete(t.Context(), key, cl.Token, []byte("after restart"), time.Minute); err != nil {
		t.Fatalf("Complete after restart: %v", err)
	}
	cl2, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || string(cl2.Response) != "after restart" {
		t.Fatalf("Begin after restart = %+v, %v; want the stored response", cl2, err)
	}
}

func TestAPIPrefix(t *testing.T) {
	for _, tc := range []struct {
		o    jetstream.JetStreamOptions
		want string
	}{
		{jetstream.JetStreamOptions{}, ""},
		{jetstream.JetStreamOptions{APIPrefix: "$JS.API"}, ""},
		{jetstream.JetStreamOptions{APIPrefix: "$JS.API."}, ""},
		{jetstream.JetStreamOptions{APIPrefix: "acct.js"}, "acct.js."},
		{jetstream.JetStreamOptions{Domain: "hub"}, "$JS.hub.API."},
	} {
		if got := apiPrefix(tc.o); got != tc.want {
			t.Errorf("apiPrefix(%+v) = %q, want %q", tc.o, got, tc.want)
		}
	}
}

// TestDomain runs a claim's whole life through a JetStream context bound to
// a domain, where nats.go's KV publishes on domain-prefixed subjects and so
// must Complete. A single server maps the domain's prefix onto its own
// subjects before any subscriber sees them, so the unprefixed subject would
// work here too and no observer can tell them apart; the test therefore
// also checks the subject the store publishes Complete on (a leaf-node
// topology, where only the prefix crosses domains, is the end-to-end test
// this lacks).
func TestDomain(t *testing.T) {
	opts := natstest.Options(t)
	opts.JetStreamDomain = "hub"
	nc := natstest.Connect(t, natstest.RunServerWith(t, &opts))
	js, err := jetstream.NewWithDomain(nc, "hub")
	if err != nil {
		t.Fatalf("NewWithDomain: %v", err)
	}
	s := open(t, js, Options{})
	if want := "$JS.hub.API.$KV." + DefaultBucket + "."; s.subj != want {
		t.Fatalf("Complete publishes on %q+key, want %q+key", s.subj, want)
	}
	key := idempotency.Key("t1", "k", "domain")
	cl, err := s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || !cl.Owned() {
		t.Fatalf("Begin = %+v, %v", cl, err)
	}
	if err := s.Complete(opCtx(t, 5*time.Second), key, cl.Token, []byte("r"), time.Minute); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	cl, err = s.Begin(t.Context(), key, nil, time.Minute)
	if err != nil || string(cl.Response) != "r" {
		t.Fatalf("Begin after Complete = %+v, %v", cl, err)
	}
}
