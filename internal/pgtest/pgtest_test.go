package pgtest_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/quorumkv/quorumkv/internal/pgtest"
)

func TestRewriteDSN(t *testing.T) {
	u, err := pgtest.WithDatabase("postgres://postgres:pw@db.example:5433/postgres?sslmode=disable&dbname=x", "fresh")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(u)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database != "fresh" || cfg.Host != "db.example" || cfg.Port != 5433 || cfg.Password != "pw" {
		t.Errorf("WithDatabase(URL) = %q parses as db=%q host=%q port=%d", u, cfg.Database, cfg.Host, cfg.Port)
	}

	kv, err := pgtest.WithHostPort("host=/var/run/postgresql port=5432 user=postgres dbname=postgres sslmode=disable", "127.0.0.1", 6000)
	if err != nil {
		t.Fatal(err)
	}
	kv, err = pgtest.WithDatabase(kv, "o'dd")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err = pgconn.ParseConfig(kv)
	if err != nil {
		t.Fatalf("parse %q: %v", kv, err)
	}
	if cfg.Database != "o'dd" || cfg.Host != "127.0.0.1" || cfg.Port != 6000 || cfg.User != "postgres" {
		t.Errorf("keyword/value rewrite %q parses as db=%q host=%q port=%d user=%q", kv, cfg.Database, cfg.Host, cfg.Port, cfg.User)
	}

	hp, err := pgtest.WithHostPort("postgresql://u@h1:1,h2:2/d?host=h3", "127.0.0.1", 7)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := url.Parse(hp)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Host != "127.0.0.1:7" || parsed.Query().Has("host") {
		t.Errorf("WithHostPort(URL) = %q", hp)
	}
}

func TestNewDatabaseDropped(t *testing.T) {
	var name string
	t.Run("create", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		name = cfg.Database
		if !strings.HasPrefix(name, "quorumkv_test_") {
			t.Fatalf("database name %q lacks the quorumkv_test_ prefix", name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A connection left open must not stop the drop.
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connect to the new database: %v", err)
		}
		_ = conn // deliberately not closed: DROP ... WITH (FORCE) ends it
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.BaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close(ctx) }()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

func TestProxy(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	p := pgtest.NewProxy(t, dsn)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ping := func() error {
		conn, err := pgx.Connect(ctx, p.DSN())
		if err != nil {
			return err
		}
		defer func() { _ = conn.Close(ctx) }()
		return conn.Ping(ctx)
	}
	if err := ping(); err != nil {
		t.Fatalf("through the proxy: %v", err)
	}
	held, err := pgx.Connect(ctx, p.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = held.Close(ctx) }()
	p.Cut()
	if err := held.Ping(ctx); err == nil {
		t.Error("a connection made before Cut still works")
	}
	if err := ping(); err == nil {
		t.Error("a new connection works while cut")
	}
	p.Restore()
	if err := ping(); err != nil {
		t.Fatalf("after Restore: %v", err)
	}
}
