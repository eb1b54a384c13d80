package schema_test

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quorumkv/quorumkv/internal/pgtest"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/schema"
)

func migrationCount(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(schema.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("schema.FS holds no migrations")
	}
	return len(files)
}

func connect(t *testing.T, ctx context.Context, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestMigrateConcurrent(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	want := migrationCount(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const coordinators = 2
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		applied [coordinators]int
		errs    [coordinators]error
	)
	for i := range coordinators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			applied[i], errs[i] = schema.Migrate(ctx, dsn)
		}()
	}
	close(start)
	wg.Wait()
	total := 0
	for i := range coordinators {
		if errs[i] != nil {
			t.Fatalf("Migrate %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != want {
		t.Fatalf("concurrent Migrate applied %v migrations in total, want %d (each once)", applied, want)
	}

	conn := connect(t, ctx, dsn)
	var rows, versions int
	err := conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT version_id) FROM `+schema.VersionTable+` WHERE version_id > 0`).
		Scan(&rows, &versions)
	if err != nil {
		t.Fatalf("read version table: %v", err)
	}
	if rows != want || versions != want {
		t.Fatalf("version table has %d rows for %d versions, want %d each", rows, versions, want)
	}
	for _, table := range []string{"tenants", "storage_nodes"} {
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, table).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if !exists {
			t.Errorf("table %s missing after Migrate", table)
		}
	}

	n, err := schema.Migrate(ctx, dsn)
	if err != nil {
		t.Fatalf("Migrate again: %v", err)
	}
	if n != 0 {
		t.Fatalf("Migrate again applied %d, want 0", n)
	}
}

// TestConstraints checks the schema's CHECKs and the byte-order collation.
func TestConstraints(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := schema.Migrate(ctx, dsn); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	conn := connect(t, ctx, dsn)

	insertTenant := `INSERT INTO tenants (tenant_id, replication_factor, default_consistency, conflict_policy, version, created_at, updated_at)
		VALUES ($1, $2, $3, $4, 1, now(), now())`
	insertNode := `INSERT INTO storage_nodes (node_id, status, virtual_nodes, epoch, registered_at, last_seen)
		VALUES ($1, $2, $3, $4, now(), now())`
	long := "a"
	for len(long) < 63 {
		long += "b"
	}
	cases := []struct {
		name string
		sql  string
		args []any
		ok   bool
	}{
		{"tenant ok", insertTenant, []any{"acme", 3, "quorum", "lww"}, true},
		{"tenant id 63 chars", insertTenant, []any{long, 1, "one", "siblings"}, true},
		{"tenant id with _ and -", insertTenant, []any{"0a_b-c", 7, "all", "lww"}, true},
		{"tenant id 64 chars", insertTenant, []any{long + "c", 3, "one", "lww"}, false},
		{"tenant id uppercase", insertTenant, []any{"Acme", 3, "one", "lww"}, false},
		{"tenant id leading dash", insertTenant, []any{"-acme", 3, "one", "lww"}, false},
		{"tenant id empty", insertTenant, []any{"", 3, "one", "lww"}, false},
		{"tenant id with dot", insertTenant, []any{"a.b", 3, "one", "lww"}, false},
		{"rf 0", insertTenant, []any{"rf0", 0, "one", "lww"}, false},
		{"rf 8", insertTenant, []any{"rf8", 8, "one", "lww"}, false},
		{"bad consistency", insertTenant, []any{"c", 3, "two", "lww"}, false},
		{"bad policy", insertTenant, []any{"p", 3, "one", "mvcc"}, false},
		{"node ok", insertNode, []any{"n1", "draining", 16, int64(-1)}, true},
		{"node bad status", insertNode, []any{"n2", "up", 16, int64(0)}, false},
		{"node 0 vnodes", insertNode, []any{"n3", "active", 0, int64(0)}, false},
	}
	for _, tc := range cases {
		_, err := conn.Exec(ctx, tc.sql, tc.args...)
		if tc.ok && err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if !tc.ok {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
				t.Errorf("%s: error %v, want a check violation (23514)", tc.name, err)
			}
		}
	}

	if _, err := conn.Exec(ctx, `INSERT INTO storage_nodes (node_id, status, virtual_nodes, epoch, registered_at, last_seen)
		VALUES ('b', 'active', 1, 0, now(), now()), ('B', 'active', 1, 0, now(), now()), ('a-b', 'active', 1, 0, now(), now()), ('ab', 'active', 1, 0, now(), now())`); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT node_id FROM storage_nodes ORDER BY node_id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"B", "a-b", "ab", "b", "n1"}
	if len(ids) != len(want) {
		t.Fatalf("node ids %q, want %q", ids, want)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Fatalf("ORDER BY node_id gives %q, want byte order %q", ids, want)
		}
	}
}

func TestMigrateUnavailable(t *testing.T) {
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
	n, err := schema.Migrate(ctx, dsn)
	if !errors.Is(err, metadata.ErrUnavailable) || n != 0 {
		t.Fatalf("Migrate on a closed port = %d, %v; want 0 and an error wrapping %v", n, err, metadata.ErrUnavailable)
	}
}
