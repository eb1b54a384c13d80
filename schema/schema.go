// Package schema holds the PostgreSQL schema of quorumkv's metadata store as
// goose SQL migrations, and applies them.
//
// Coordinators call Migrate before metadata/postgres.Open. Migrate is safe to
// run from several processes at once: a PostgreSQL session-level advisory
// lock lets one apply the pending migrations while the others wait, then find
// nothing left to do.
package schema

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/quorumkv/quorumkv/metadata"
)

// FS holds the migrations, named NNNNN_description.sql, at its root.
//
//go:embed *.sql
var FS embed.FS

const (
	// VersionTable is the table in which goose records applied migrations.
	VersionTable = "quorumkv_schema_version"
	// LockID is the key of the advisory lock Migrate holds while migrating.
	// It differs from goose's default so that other goose users of the same
	// database neither wait for quorumkv nor make it wait.
	LockID int64 = 0x71756f72756d6b76 // "quorumkv"

	// defaultConnectTimeout applies when dsn sets no connect_timeout.
	defaultConnectTimeout = 10 * time.Second
)

// Migrate applies every pending migration in FS to the database at dsn and
// returns how many it applied (0 when the schema is current). It waits up to
// five minutes for another Migrate holding the lock.
//
// It returns an error wrapping metadata.ErrUnavailable if PostgreSQL cannot be
// reached. When a migration fails, applied counts the ones before it that
// succeeded.
func Migrate(ctx context.Context, dsn string) (applied int, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, fmt.Errorf("schema: migrate: parse dsn: %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = defaultConnectTimeout
	}
	db := stdlib.OpenDB(*cfg)
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("schema: migrate: close: %w", cerr)
		}
	}()
	if err := db.PingContext(ctx); err != nil {
		return 0, fmt.Errorf("schema: migrate: connect: %w", classify(err))
	}

	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(LockID),
		lock.WithLockTimeout(1, 300),
		lock.WithUnlockTimeout(1, 60),
	)
	if err != nil {
		return 0, fmt.Errorf("schema: migrate: session locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS,
		goose.WithSessionLocker(locker),
		goose.WithTableName(VersionTable),
	)
	if err != nil {
		return 0, fmt.Errorf("schema: migrate: goose provider: %w", err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		var partial *goose.PartialError
		if errors.As(err, &partial) {
			applied = len(partial.Applied)
		}
		return applied, fmt.Errorf("schema: migrate: %w", classify(err))
	}
	return len(results), nil
}

// classify additionally wraps metadata.ErrUnavailable around errors that mean
// PostgreSQL could not be reached.
func classify(err error) error {
	var (
		connErr *pgconn.ConnectError
		netErr  net.Error
	)
	switch {
	case errors.As(err, &connErr), errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded), pgconn.Timeout(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", metadata.ErrUnavailable, err)
	}
	return err
}
