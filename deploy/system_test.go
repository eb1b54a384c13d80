package deploy_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/wiring"
	"github.com/quorumkv/quorumkv/storage"
)

// system is quorumkv running on one nats-server started from the shipped
// nats.conf, every process connected as its role.
type system struct {
	srv   *server.Server
	url   string
	coord *coordinator.Coordinator
	admin *client.Admin
}

func testLogger() *slog.Logger {
	level := slog.LevelError
	if os.Getenv("QUORUMKV_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

// startSystem runs three storage nodes (user storage) and a coordinator
// (user coordinator) with its stores on JetStream KV, and creates tenants
// default and acme through the admin API (user admin).
func startSystem(tb testing.TB, cfg coordinator.Config) *system {
	tb.Helper()
	ctx := ctxT(tb)
	srv := runServer(tb)
	sys := &system{srv: srv, url: srv.ClientURL()}
	log := testLogger()

	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("node-%d", i)
		n, err := storage.Open(storage.Config{NodeID: id, DataDir: filepath.Join(tb.TempDir(), id), Heartbeat: 500 * time.Millisecond, Logger: log})
		if err != nil {
			tb.Fatalf("open storage node %s: %v", id, err)
		}
		tb.Cleanup(func() { _ = n.Close() }) // after the connection closes: cleanups run last-in first-out
		nc := dial(tb, sys.url, "storage")
		if err := n.Start(nc.Conn); err != nil {
			tb.Fatalf("start storage node %s: %v", id, err)
		}
	}

	cn := dial(tb, sys.url, "coordinator")
	meta, err := wiring.OpenMetadata(ctx, "nats", cn.Conn, wiring.StoreOptions{Replicas: 1})
	if err != nil {
		tb.Fatalf("metadata store as user coordinator: %v", err)
	}
	tb.Cleanup(func() { _ = meta.Close() })
	idem, err := wiring.OpenIdempotency(ctx, "nats", cn.Conn, wiring.StoreOptions{Replicas: 1})
	if err != nil {
		tb.Fatalf("idempotency store as user coordinator: %v", err)
	}
	tb.Cleanup(func() { _ = idem.Close() })
	cfg.Metadata, cfg.Idempotency, cfg.Logger = meta, idem, log
	if cfg.RingRefresh == 0 {
		cfg.RingRefresh = 200 * time.Millisecond
	}
	co, err := coordinator.New(ctx, cn.Conn, cfg)
	if err != nil {
		tb.Fatalf("coordinator as user coordinator: %v", err)
	}
	tb.Cleanup(co.Stop)
	sys.coord = co

	sys.admin = client.NewAdmin(dial(tb, sys.url, "admin").Conn)
	for co.ActiveNodes() < 3 {
		select {
		case <-ctx.Done():
			tb.Fatalf("storage nodes did not register through the admin subject: %d active", co.ActiveNodes())
		case <-time.After(20 * time.Millisecond):
		}
	}
	rf := 3
	for _, id := range []string{"default", "acme"} {
		if _, err := sys.admin.CreateTenant(ctx, id, client.TenantSpec{ReplicationFactor: &rf}); err != nil {
			tb.Fatalf("create tenant %s as user admin: %v", id, err)
		}
	}
	return sys
}

// tenant returns a client of tenant id, logged in as that tenant's user.
func (s *system) tenant(tb testing.TB, id string) (*client.Client, *conn) {
	tb.Helper()
	c := dial(tb, s.url, id)
	kv, err := client.New(c.Conn, id)
	if err != nil {
		tb.Fatal(err)
	}
	return kv, c
}
