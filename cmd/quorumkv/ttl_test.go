package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
)

func TestParseTTL(t *testing.T) {
	for in, want := range map[string]time.Duration{"10m": 10 * time.Minute, "7d": 7 * 24 * time.Hour, "0": 0, "1h30m": 90 * time.Minute, "0d": 0} {
		if got, err := parseTTL(in); err != nil || got != want {
			t.Errorf("parseTTL(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "1.5d", "ten minutes", "7", "999999999d"} {
		if got, err := parseTTL(in); err == nil {
			t.Errorf("parseTTL(%q) = %v, want an error", in, got)
		}
	}
}

// TestCLITTL: put --ttl stores an expiry on the replicas; tenant create
// and update --default-ttl set and clear default_ttl_ms; a TTL out of
// range is a usage error (400) and writes nothing.
func TestCLITTL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	t.Setenv("QUORUMKV_NATS", c.URL)
	devnull, _ := os.Create(filepath.Join(t.TempDir(), "out"))
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = devnull, devnull
	t.Cleanup(func() { os.Stdout, os.Stderr = stdout, stderr })
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	admin := client.NewAdmin(nc)
	expiresOn := func(key string) int64 {
		t.Helper()
		es, err := admin.DumpAll(ctx, "node-1", "default")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if e.Key == key {
				return e.Expires
			}
		}
		t.Fatalf("node-1 holds no %q", key)
		return 0
	}
	before := time.Now().UnixMilli()
	if got := run([]string{"put", "--consistency", "all", "--ttl", "10m", "session", "v"}); got != exitOK {
		t.Fatalf("put --ttl 10m: exit %d", got)
	}
	after := time.Now().UnixMilli()
	if exp := expiresOn("session"); exp < before+600_000 || exp > after+600_000 {
		t.Fatalf("put --ttl 10m stored Expires %d, want within [%d, %d]", exp, before+600_000, after+600_000)
	}
	for _, args := range [][]string{
		{"put", "--ttl", "-1s", "bad", "v"},
		{"put", "--ttl", "4000d", "bad", "v"},
		{"put", "--ttl", "soon", "bad", "v"},     // a malformed flag value: exit 2, as documented
		{"put", "--timeout", "soon", "bad", "v"}, // (it was 1 for every flag before)
	} {
		if got := run(args); got != exitUsage {
			t.Errorf("quorumkv %q: exit %d, want %d", args, got, exitUsage)
		}
	}
	if es, _ := admin.DumpAll(ctx, "node-1", "default"); len(es) != 1 {
		t.Fatalf("refused puts wrote: %+v", es)
	}
	if got := run([]string{"tenant", "create", "--default-ttl", "1d", "sessions"}); got != exitOK {
		t.Fatalf("tenant create --default-ttl 1d: exit %d", got)
	}
	if tn, err := admin.GetTenant(ctx, "sessions"); err != nil || tn.DefaultTTLMs != 86_400_000 {
		t.Fatalf("tenant %+v, %v; want default_ttl_ms 86400000", tn, err)
	}
	if got := run([]string{"tenant", "update", "--rf", "2", "sessions"}); got != exitOK {
		t.Fatalf("tenant update --rf 2: exit %d", got)
	}
	if tn, _ := admin.GetTenant(ctx, "sessions"); tn.DefaultTTLMs != 86_400_000 {
		t.Fatalf("an update without --default-ttl changed it to %d", tn.DefaultTTLMs)
	}
	if got := run([]string{"tenant", "update", "--default-ttl", "0", "sessions"}); got != exitOK {
		t.Fatalf("tenant update --default-ttl 0: exit %d", got)
	}
	if tn, _ := admin.GetTenant(ctx, "sessions"); tn.DefaultTTLMs != 0 {
		t.Fatalf("--default-ttl 0 left default_ttl_ms %d", tn.DefaultTTLMs)
	}
	if got := run([]string{"tenant", "update", "--default-ttl", "-5m", "sessions"}); got != exitUsage {
		t.Fatalf("tenant update --default-ttl -5m: exit %d, want %d", got, exitUsage)
	}
	if got := run([]string{"tenant", "list"}); got != exitOK {
		t.Fatalf("tenant list: exit %d", got)
	}
}
