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
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/storage"
)

// system is quorumkv running on one nats-server started from the shipped
// nats.conf, every process connected as its role.
type system struct {
	srv       *server.Server
	url       string
	log       *slog.Logger
	coord     *coordinator.Coordinator
	admin     *client.Admin
	adminConn *conn
	dirs      map[string]string // storage node id → data directory
	nodes     map[string]*runningNode
	roles     []*conn // the connections of the running processes
}

// noViolations fails tb if a running process was refused anything: the
// roles in nats.conf must allow all the system does.
func (s *system) noViolations(tb testing.TB) {
	tb.Helper()
	for _, c := range s.roles {
		c.mu.Lock()
		for _, err := range c.errs {
			tb.Errorf("user %s: %v", c.user, err)
		}
		c.mu.Unlock()
	}
}

type runningNode struct {
	node *storage.Node
	nc   *conn
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

// startSystem runs three storage nodes (user storage), a repair worker
// (user repair) and a coordinator (user coordinator) with its stores on
// JetStream KV and a repair publisher, and creates tenants default and acme
// through the admin API (user admin).
func startSystem(tb testing.TB, cfg coordinator.Config) *system {
	tb.Helper()
	ctx := ctxT(tb)
	srv := runServer(tb)
	sys := &system{srv: srv, url: srv.ClientURL(), log: testLogger(), dirs: map[string]string{}, nodes: map[string]*runningNode{}}
	log := sys.log
	tb.Cleanup(func() {
		for id := range sys.nodes {
			sys.stopNode(tb, id)
		}
	})
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("node-%d", i)
		sys.dirs[id] = filepath.Join(tb.TempDir(), id)
		sys.startNode(tb, id)
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
	rcfg := repair.Config{Replicas: 1, MaxDeliver: 4, Backoff: 100 * time.Millisecond, MaxBackoff: 500 * time.Millisecond, FetchWait: 200 * time.Millisecond, NodeTimeout: time.Second, DrainTimeout: time.Second, Logger: log}
	pub, err := repair.NewPublisher(ctx, cn.Conn, rcfg)
	if err != nil {
		tb.Fatalf("repair publisher as user coordinator: %v", err)
	}
	tb.Cleanup(pub.Stop)
	rc := dial(tb, sys.url, "repair")
	w, err := repair.NewWorker(ctx, rc.Conn, rcfg)
	if err != nil {
		tb.Fatalf("repair worker as user repair: %v", err)
	}
	tb.Cleanup(w.Stop)

	cfg.Metadata, cfg.Idempotency, cfg.Repair, cfg.Logger = meta, idem, pub, log
	if cfg.RingRefresh == 0 {
		cfg.RingRefresh = 200 * time.Millisecond
	}
	co, err := coordinator.New(ctx, cn.Conn, cfg)
	if err != nil {
		tb.Fatalf("coordinator as user coordinator: %v", err)
	}
	tb.Cleanup(co.Stop)
	sys.coord = co

	ac := dial(tb, sys.url, "admin")
	sys.adminConn = ac
	sys.admin = client.NewAdmin(ac.Conn)
	sys.roles = append(sys.roles, cn, rc, ac)
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

// startNode starts storage node id on its own connection as user storage.
func (s *system) startNode(tb testing.TB, id string) {
	tb.Helper()
	nc, err := tryDial(s.url, "storage", password(tb, "storage"))
	if err != nil {
		tb.Fatalf("connect storage node %s: %v", id, err)
	}
	n, err := storage.New(nc.Conn, storage.Config{NodeID: id, DataDir: s.dirs[id], Heartbeat: 500 * time.Millisecond, Logger: s.log})
	if err != nil {
		nc.Close()
		tb.Fatalf("start storage node %s as user storage: %v", id, err)
	}
	s.nodes[id] = &runningNode{node: n, nc: nc}
	s.roles = append(s.roles, nc)
}

// stopNode stops storage node id, as a crash would look to coordinators.
func (s *system) stopNode(tb testing.TB, id string) {
	tb.Helper()
	r := s.nodes[id]
	delete(s.nodes, id)
	if err := r.node.Stop(); err != nil {
		tb.Errorf("stop storage node %s: %v", id, err)
	}
	r.nc.Close()
}
