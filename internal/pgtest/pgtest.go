// Package pgtest gives tests a fresh database on the machine's real
// PostgreSQL, and a TCP proxy in front of it for fault injection.
//
// The server is found through QUORUMKV_TEST_POSTGRES (a URL or keyword/value
// DSN for any database on it, normally "postgres"), by default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable. Tests fail,
// never skip, when it is unreachable.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvVar names the environment variable that overrides DefaultURL.
const EnvVar = "QUORUMKV_TEST_POSTGRES"

// DefaultURL is the server tests use unless EnvVar is set.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// BaseURL returns the DSN of the server's maintenance database.
func BaseURL() string {
	if v := strings.TrimSpace(os.Getenv(EnvVar)); v != "" {
		return v
	}
	return DefaultURL
}

// NewDatabase creates an empty database named quorumkv_test_<random hex> and
// returns a DSN for it. tb.Cleanup drops it WITH (FORCE), ending any
// connections still open to it. NewDatabase fails tb, saying how to start
// PostgreSQL, when the server cannot be reached.
func NewDatabase(tb testing.TB) (dsn string) {
	tb.Helper()
	base := BaseURL()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("pgtest: random database name: %v", err)
	}
	name := "quorumkv_test_" + hex.EncodeToString(b[:])
	dsn, err := WithDatabase(base, name)
	if err != nil {
		tb.Fatalf("pgtest: %s=%q: %v", EnvVar, redact(base), err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := connect(ctx, tb, base)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	_ = conn.Close(ctx)
	if err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn := connect(ctx, tb, base)
		defer func() { _ = conn.Close(ctx) }()
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return dsn
}

// connect opens a connection to dsn or fails tb with instructions.
func connect(ctx context.Context, tb testing.TB, dsn string) *pgx.Conn {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("pgtest: %s=%q: %v", EnvVar, redact(dsn), err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		tb.Fatalf("pgtest: PostgreSQL is not reachable at %s: %v\n"+
			"These tests need a real PostgreSQL server (trust auth, user postgres); they do not skip.\n"+
			"Start the machine's server with\n"+
			"    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"+
			"or set %s to the URL of a reachable one.", redact(dsn), err, EnvVar)
	}
	return conn
}

// WithDatabase returns dsn (a URL or a keyword/value DSN) with its database
// name replaced by name.
func WithDatabase(dsn, name string) (string, error) {
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse dsn: %w", err)
		}
		q := u.Query()
		q.Del("dbname")
		u.RawQuery = q.Encode()
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	// In keyword/value DSNs a later setting overrides an earlier one.
	return dsn + " dbname=" + quoteValue(name), nil
}

// WithHostPort returns dsn (a URL or a keyword/value DSN) pointing at a
// single TCP host and port instead of its own.
func WithHostPort(dsn, host string, port int) (string, error) {
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("parse dsn: %w", err)
		}
		q := u.Query()
		q.Del("host")
		q.Del("port")
		q.Del("hostaddr")
		u.RawQuery = q.Encode()
		u.Host = fmt.Sprintf("%s:%d", host, port)
		return u.String(), nil
	}
	return fmt.Sprintf("%s host=%s port=%d", dsn, quoteValue(host), port), nil
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

func quoteValue(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// redact hides a password in URL DSNs for messages.
func redact(dsn string) string {
	if isURL(dsn) {
		if u, err := url.Parse(dsn); err == nil {
			return u.Redacted()
		}
	}
	return dsn
}
