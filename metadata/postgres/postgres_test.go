package postgres_test

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/pgtest"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/metadata/metadatatest"
	"github.com/quorumkv/quorumkv/metadata/postgres"
	"github.com/quorumkv/quorumkv/schema"
)

// migratedDatabase returns the DSN of a fresh, migrated database.
func migratedDatabase(t *testing.T) string {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := schema.Migrate(ctx, dsn); err != nil {
		t.Fatalf("schema.Migrate: %v", err)
	}
	return dsn
}

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, dsn)
	if err != nil {
		t.Fatalf("postgres.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestConformance(t *testing.T) {
	metadatatest.Run(t, func(t *testing.T) metadata.Store {
		return open(t, migratedDatabase(t))
	})
}

// TestSchemaRejects checks that values the schema forbids fail with an error
// that is none of the sentinels.
func TestSchemaRejects(t *testing.T) {
	s := open(t, migratedDatabase(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tn := range []metadata.Tenant{
		{ID: "Upper", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "lww"},
		{ID: "ok", ReplicationFactor: 8, DefaultConsistency: "one", ConflictPolicy: "lww"},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "most", ConflictPolicy: "lww"},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "crdt"},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "lww", DefaultTTLMs: -1},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "lww", DefaultTTLMs: 315_360_000_001},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "lww", TombstoneGraceMS: 999},
		{ID: "ok", ReplicationFactor: 3, DefaultConsistency: "one", ConflictPolicy: "lww", TombstoneGraceMS: 315360000001},
	} {
		_, err := s.CreateTenant(ctx, tn)
		if err == nil {
			t.Errorf("CreateTenant(%+v) succeeded", tn)
			continue
		}
		for _, sentinel := range []error{metadata.ErrExists, metadata.ErrNotFound, metadata.ErrStale, metadata.ErrUnavailable} {
			if errors.Is(err, sentinel) {
				t.Errorf("CreateTenant(%+v): %v wraps %v", tn, err, sentinel)
			}
		}
	}
	if _, err := s.RegisterNode(ctx, metadata.Node{ID: "n", VirtualNodes: 0}); err == nil {
		t.Error("RegisterNode with 0 virtual nodes succeeded")
	}
	if _, err := s.RegisterNode(ctx, metadata.Node{ID: "n", VirtualNodes: 1}); err != nil {
		t.Fatalf("RegisterNode: %v", err)
	}
	if _, err := s.SetNodeStatus(ctx, "n", "sleeping"); err == nil || errors.Is(err, metadata.ErrNotFound) {
		t.Errorf("SetNodeStatus(sleeping): %v, want a schema error", err)
	}
}

// TestOpenUnavailable opens a store on a port nothing listens on.
func TestOpenUnavailable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	dsn, err := pgtest.WithHostPort(pgtest.BaseURL(), "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := postgres.Open(ctx, dsn)
	if err == nil {
		_ = s.Close()
		t.Fatal("Open on a closed port succeeded")
	}
	if !errors.Is(err, metadata.ErrUnavailable) {
		t.Fatalf("Open on a closed port: error %v, want one wrapping %v", err, metadata.ErrUnavailable)
	}
}

// TestConnectionCut puts a proxy between the store and PostgreSQL, cuts it,
// and expects ErrUnavailable; after Restore the same store must recover by
// itself.
func TestConnectionCut(t *testing.T) {
	dsn := migratedDatabase(t)
	proxy := pgtest.NewProxy(t, dsn)
	s := open(t, proxy.DSN())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	want, err := s.CreateTenant(ctx, metadata.Tenant{ID: "t1", ReplicationFactor: 3, DefaultConsistency: "quorum", ConflictPolicy: "lww"})
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	// Several pooled connections, so the cut hits more than one.
	errs := make(chan error, 4)
	for range 4 {
		go func() { _, err := s.ListTenants(ctx); errs <- err }()
	}
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatalf("ListTenants: %v", err)
		}
	}

	proxy.Cut()
	// The first calls hit broken pooled connections, later ones a refused
	// dial; all must fail the same way.
	for i := range 6 {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := s.GetTenant(cctx, "t1")
		ccancel()
		if !errors.Is(err, metadata.ErrUnavailable) {
			t.Fatalf("GetTenant %d after Cut: error %v, want one wrapping %v", i, err, metadata.ErrUnavailable)
		}
		t.Logf("GetTenant %d after Cut: %v", i, err)
	}
	if _, err := s.RegisterNode(ctx, metadata.Node{ID: "n1", VirtualNodes: 1}); !errors.Is(err, metadata.ErrUnavailable) {
		t.Fatalf("RegisterNode after Cut: error %v, want one wrapping %v", err, metadata.ErrUnavailable)
	} else {
		t.Logf("RegisterNode after Cut: %v", err)
	}

	proxy.Restore()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		got, err := s.GetTenant(cctx, "t1")
		ccancel()
		if err == nil {
			if got.Version != want.Version || !got.CreatedAt.Equal(want.CreatedAt) {
				t.Fatalf("GetTenant after Restore = %+v, want %+v", got, want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover within 10s of Restore: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// And it keeps working.
	if _, err := s.RegisterNode(ctx, metadata.Node{ID: "n1", VirtualNodes: 1}); err != nil {
		t.Fatalf("RegisterNode after recovery: %v", err)
	}
}
