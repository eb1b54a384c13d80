// Package postgres is a metadata.Store on PostgreSQL.
//
// It expects the schema of package schema: call schema.Migrate before Open.
// Node epochs (uint64) are stored in a bigint column bit-cast to int64, so
// epochs of 2^63 and above are negative in SQL; Go sees the original value.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/quorumkv/quorumkv/metadata"
)

// defaultConnectTimeout bounds each connection attempt when the DSN sets no
// connect_timeout, so an unreachable server fails calls instead of hanging
// them until the caller's deadline.
const defaultConnectTimeout = 5 * time.Second

// Store is a metadata.Store on a pgxpool. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

var _ metadata.Store = (*Store)(nil)

// Open creates a connection pool for dsn (any DSN pgxpool accepts, including
// pool_* settings) and checks that the server answers. It does not migrate.
// It returns an error wrapping metadata.ErrUnavailable if PostgreSQL cannot be
// reached. The Store owns the pool; Close closes it.
//
// After Open, the pool replaces broken connections by itself: calls made
// while the server is unreachable fail with metadata.ErrUnavailable, and later
// calls succeed again once it is back.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("metadata/postgres: open: parse dsn: %w", err)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = defaultConnectTimeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, wrapErr("open", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, wrapErr("open: ping", err)
	}
	return &Store{pool: pool}, nil
}

// ContextSecret implements metadata.Store on table cluster_secrets (row
// "context"): an insert that does nothing if the row exists, then a read.
// Each statement is its own transaction, so the read sees the row a
// concurrent creator committed first (the insert waited for it). Rows are never updated, so
// coordinators need only INSERT and SELECT on the table.
func (s *Store) ContextSecret(ctx context.Context, candidate []byte) ([]byte, error) {
	const op = "context secret"
	if len(candidate) == 0 {
		return nil, fmt.Errorf("metadata/postgres: %s: empty candidate", op)
	}
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO cluster_secrets (name, secret, created_at)
		VALUES ('context', $1, $2)
		ON CONFLICT (name) DO NOTHING`, candidate, metadata.Now()); err != nil {
		return nil, s.wrap(op, err)
	}
	var secret []byte
	if err := s.pool.QueryRow(ctx, `SELECT secret FROM cluster_secrets WHERE name = 'context'`).Scan(&secret); err != nil {
		return nil, s.wrap(op+": read", err)
	}
	return secret, nil
}

// Partitions implements metadata.Store on table cluster_partitions: an
// insert that does nothing if the row exists, then a read (as
// ContextSecret). The row is never updated.
func (s *Store) Partitions(ctx context.Context, candidate int) (int, error) {
	const op = "partitions"
	if candidate <= 0 {
		return 0, fmt.Errorf("metadata/postgres: %s: candidate %d <= 0", op, candidate)
	}
	if _, err := s.pool.Exec(ctx, `
		INSERT INTO cluster_partitions (partitions, created_at)
		VALUES ($1, $2)
		ON CONFLICT (singleton) DO NOTHING`, candidate, metadata.Now()); err != nil {
		return 0, s.wrap(op, err)
	}
	var q int
	if err := s.pool.QueryRow(ctx, `SELECT partitions FROM cluster_partitions`).Scan(&q); err != nil {
		return 0, s.wrap(op+": read", err)
	}
	return q, nil
}

// GetPlacement implements metadata.Store. Versions (uint64) are bit-cast
// to bigint, as epochs are.
func (s *Store) GetPlacement(ctx context.Context) (metadata.Placement, error) {
	var (
		p       metadata.Placement
		version int64
	)
	err := s.pool.QueryRow(ctx, `SELECT version, map, updated_at FROM placement_map`).Scan(&version, &p.Map, &p.UpdatedAt)
	if err != nil {
		return metadata.Placement{}, s.wrap("get placement", err)
	}
	p.Version, p.UpdatedAt = uint64(version), p.UpdatedAt.UTC()
	if len(p.Map) == 0 {
		p.Map = nil
	}
	return p, nil
}

// SetPlacement implements metadata.Store: an insert that does nothing when
// a row exists (version 1), else an update of the row that holds version
// p.Version-1. Each is one statement, so concurrent writers serialise on
// the row and only the first one finds it at the version it names.
func (s *Store) SetPlacement(ctx context.Context, p metadata.Placement) (metadata.Placement, error) {
	op := fmt.Sprintf("set placement version %d", p.Version)
	if p.Version == 0 {
		return metadata.Placement{}, fmt.Errorf("metadata/postgres: %s: version 0", op)
	}
	p.UpdatedAt = metadata.Now()
	m := p.Map
	if m == nil {
		m = []byte{}
	}
	var (
		tag pgconn.CommandTag
		err error
	)
	if p.Version == 1 {
		tag, err = s.pool.Exec(ctx, `
			INSERT INTO placement_map (version, map, updated_at)
			VALUES (1, $1, $2)
			ON CONFLICT (singleton) DO NOTHING`, m, p.UpdatedAt)
	} else {
		tag, err = s.pool.Exec(ctx, `
			UPDATE placement_map SET version = $1, map = $2, updated_at = $3
			WHERE version = $4`, int64(p.Version), m, p.UpdatedAt, int64(p.Version-1))
	}
	if err != nil {
		return metadata.Placement{}, s.wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return metadata.Placement{}, fmt.Errorf("metadata/postgres: %s: the stored map is not version %d: %w", op, p.Version-1, metadata.ErrStale)
	}
	return p, nil
}

// Close closes the pool, waiting for connections in use to be released.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

const tenantColumns = `tenant_id, replication_factor, default_consistency, conflict_policy, version, created_at, updated_at, default_ttl_ms, tombstone_grace_ms`

func scanTenant(row pgx.Row) (metadata.Tenant, error) {
	var t metadata.Tenant
	err := row.Scan(&t.ID, &t.ReplicationFactor, &t.DefaultConsistency, &t.ConflictPolicy,
		&t.Version, &t.CreatedAt, &t.UpdatedAt, &t.DefaultTTLMs, &t.TombstoneGraceMS)
	t.CreatedAt, t.UpdatedAt = t.CreatedAt.UTC(), t.UpdatedAt.UTC()
	return t, err
}

// CreateTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrExists if the ID is taken. Values the schema forbids (see
// package schema) fail with a non-sentinel error.
func (s *Store) CreateTenant(ctx context.Context, t metadata.Tenant) (metadata.Tenant, error) {
	op := fmt.Sprintf("create tenant %q", t.ID)
	now := metadata.Now()
	got, err := scanTenant(s.pool.QueryRow(ctx, `
		INSERT INTO tenants (`+tenantColumns+`)
		VALUES ($1, $2, $3, $4, 1, $5, $5, $6, $7)
		ON CONFLICT (tenant_id) DO NOTHING
		RETURNING `+tenantColumns,
		t.ID, t.ReplicationFactor, t.DefaultConsistency, t.ConflictPolicy, now, t.DefaultTTLMs, graceOrDefault(t.TombstoneGraceMS)))
	if errors.Is(err, pgx.ErrNoRows) {
		return metadata.Tenant{}, fmt.Errorf("metadata/postgres: %s: %w", op, metadata.ErrExists)
	}
	if err != nil {
		return metadata.Tenant{}, s.wrap(op, err)
	}
	return got, nil
}

// GetTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the tenant does not exist.
func (s *Store) GetTenant(ctx context.Context, id string) (metadata.Tenant, error) {
	t, err := scanTenant(s.pool.QueryRow(ctx,
		`SELECT `+tenantColumns+` FROM tenants WHERE tenant_id = $1`, id))
	if err != nil {
		return metadata.Tenant{}, s.wrap(fmt.Sprintf("get tenant %q", id), err)
	}
	return t, nil
}

// ListTenants implements metadata.Store.
func (s *Store) ListTenants(ctx context.Context) ([]metadata.Tenant, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+tenantColumns+` FROM tenants ORDER BY tenant_id COLLATE "C"`)
	if err != nil {
		return nil, s.wrap("list tenants", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (metadata.Tenant, error) {
		return scanTenant(row)
	})
	if err != nil {
		return nil, s.wrap("list tenants", err)
	}
	if out == nil {
		out = make([]metadata.Tenant, 0)
	}
	return out, nil
}

// UpdateTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrStale if t.Version is not the stored version, and
// metadata.ErrNotFound if the tenant does not exist.
func (s *Store) UpdateTenant(ctx context.Context, t metadata.Tenant) (metadata.Tenant, error) {
	op := fmt.Sprintf("update tenant %q", t.ID)
	got, err := scanTenant(s.pool.QueryRow(ctx, `
		UPDATE tenants
		SET replication_factor = $3, default_consistency = $4, conflict_policy = $5,
		    default_ttl_ms = $7, version = version + 1, updated_at = $6, tombstone_grace_ms = $8
		WHERE tenant_id = $1 AND version = $2
		RETURNING `+tenantColumns,
		t.ID, t.Version, t.ReplicationFactor, t.DefaultConsistency, t.ConflictPolicy, metadata.Now(), t.DefaultTTLMs, graceOrDefault(t.TombstoneGraceMS)))
	if err == nil {
		return got, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return metadata.Tenant{}, s.wrap(op, err)
	}
	// No row matched: either the tenant is gone or its version moved on.
	var stored int64
	err = s.pool.QueryRow(ctx, `SELECT version FROM tenants WHERE tenant_id = $1`, t.ID).Scan(&stored)
	if err != nil {
		return metadata.Tenant{}, s.wrap(op, err)
	}
	return metadata.Tenant{}, fmt.Errorf("metadata/postgres: %s: have version %d, stored %d: %w",
		op, t.Version, stored, metadata.ErrStale)
}

// graceOrDefault stores 0 (a caller that never set the grace) as the
// default grace, as the column's default does for older rows.
func graceOrDefault(ms int64) int64 {
	if ms == 0 {
		return metadata.DefaultTombstoneGraceMS
	}
	return ms
}

// DeleteTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the tenant does not exist.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	op := fmt.Sprintf("delete tenant %q", id)
	tag, err := s.pool.Exec(ctx, `DELETE FROM tenants WHERE tenant_id = $1`, id)
	if err != nil {
		return s.wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("metadata/postgres: %s: %w", op, metadata.ErrNotFound)
	}
	return nil
}

const nodeColumns = `node_id, status, virtual_nodes, epoch, registered_at, last_seen, protocol, transfer`

func scanNode(row pgx.Row) (metadata.Node, error) {
	var (
		n        metadata.Node
		epoch    int64
		transfer []byte
	)
	err := row.Scan(&n.ID, &n.Status, &n.VirtualNodes, &epoch, &n.RegisteredAt, &n.LastSeen, &n.Protocol, &transfer)
	if err != nil {
		return n, err
	}
	n.Epoch = uint64(epoch) // bit-cast back; see the package doc
	n.RegisteredAt, n.LastSeen = n.RegisteredAt.UTC(), n.LastSeen.UTC()
	n.Status = metadata.ReadStatus(n.Status)
	if len(transfer) > 0 {
		n.Transfer = new(metadata.TransferStatus)
		if err := json.Unmarshal(transfer, n.Transfer); err != nil {
			return n, fmt.Errorf("node %q: decode transfer: %w", n.ID, err)
		}
	}
	return n, nil
}

// transferJSON is t as the transfer column holds it: NULL for nil.
func transferJSON(t *metadata.TransferStatus) ([]byte, error) {
	if t == nil {
		return nil, nil
	}
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode transfer: %w", err)
	}
	return b, nil
}

// RegisterNode implements metadata.Store, as a single upsert statement.
func (s *Store) RegisterNode(ctx context.Context, n metadata.Node) (metadata.Node, error) {
	transfer, err := transferJSON(n.Transfer)
	if err != nil {
		return metadata.Node{}, fmt.Errorf("metadata/postgres: register node %q: %w", n.ID, err)
	}
	status := metadata.NodeJoining
	if n.Hold {
		status = metadata.NodeStandby
	}
	got, err := scanNode(s.pool.QueryRow(ctx, `
		INSERT INTO storage_nodes AS n (`+nodeColumns+`)
		VALUES ($1, $6, $2, $3, $4, $4, $5, $7)
		ON CONFLICT (node_id) DO UPDATE SET
			status = CASE WHEN n.status = 'down' THEN 'joining' ELSE n.status END,
			virtual_nodes = EXCLUDED.virtual_nodes,
			epoch = EXCLUDED.epoch,
			last_seen = EXCLUDED.last_seen,
			protocol = EXCLUDED.protocol,
			transfer = EXCLUDED.transfer
		WHERE n.status <> 'removed'
		RETURNING `+nodeColumns,
		n.ID, n.VirtualNodes, int64(n.Epoch), metadata.Now(), n.Protocol, status, transfer))
	if errors.Is(err, pgx.ErrNoRows) {
		// The conflicting row is a removed id's marker (the WHERE above).
		return metadata.Node{}, fmt.Errorf("metadata/postgres: register node %q: %w", n.ID, metadata.ErrRemoved)
	}
	if err != nil {
		return metadata.Node{}, s.wrap(fmt.Sprintf("register node %q", n.ID), err)
	}
	return got, nil
}

// GetNode implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist.
func (s *Store) GetNode(ctx context.Context, id string) (metadata.Node, error) {
	n, err := scanNode(s.pool.QueryRow(ctx,
		`SELECT `+nodeColumns+` FROM storage_nodes WHERE node_id = $1 AND status <> 'removed'`, id))
	if err != nil {
		return metadata.Node{}, s.wrap(fmt.Sprintf("get node %q", id), err)
	}
	return n, nil
}

// ListNodes implements metadata.Store.
func (s *Store) ListNodes(ctx context.Context) ([]metadata.Node, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+nodeColumns+` FROM storage_nodes WHERE status <> 'removed' ORDER BY node_id COLLATE "C"`)
	if err != nil {
		return nil, s.wrap("list nodes", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (metadata.Node, error) {
		return scanNode(row)
	})
	if err != nil {
		return nil, s.wrap("list nodes", err)
	}
	if out == nil {
		out = make([]metadata.Node, 0)
	}
	return out, nil
}

// SetNodeStatus implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist. A status the schema
// forbids fails with a non-sentinel error.
func (s *Store) SetNodeStatus(ctx context.Context, id string, status string) (metadata.Node, error) {
	n, err := scanNode(s.pool.QueryRow(ctx,
		`UPDATE storage_nodes SET status = $2 WHERE node_id = $1 AND status <> 'removed' RETURNING `+nodeColumns, id, status))
	if err != nil {
		return metadata.Node{}, s.wrap(fmt.Sprintf("set node %q status %q", id, status), err)
	}
	return n, nil
}

// ChangeNodeStatus implements metadata.Store, as one conditional UPDATE.
func (s *Store) ChangeNodeStatus(ctx context.Context, id string, from []string, status string) (metadata.Node, error) {
	op := fmt.Sprintf("change node %q status to %q", id, status)
	stored := slices.Clone(from)
	if slices.Contains(from, metadata.NodeLeaving) {
		stored = append(stored, metadata.NodeDraining) // read as leaving
	}
	n, err := scanNode(s.pool.QueryRow(ctx,
		`UPDATE storage_nodes SET status = $2 WHERE node_id = $1 AND status <> 'removed' AND status = ANY($3) RETURNING `+nodeColumns,
		id, status, stored))
	if errors.Is(err, pgx.ErrNoRows) {
		cur, gerr := s.GetNode(ctx, id)
		if gerr != nil {
			return metadata.Node{}, fmt.Errorf("metadata/postgres: %s: %w", op, gerr)
		}
		return metadata.Node{}, fmt.Errorf("metadata/postgres: %s: status is %q, not one of %q: %w", op, cur.Status, from, metadata.ErrStale)
	}
	if err != nil {
		return metadata.Node{}, s.wrap(op, err)
	}
	return n, nil
}

// ChangeNodeStatuses implements metadata.Store: one transaction that
// locks each row, checks its status and updates it.
func (s *Store) ChangeNodeStatuses(ctx context.Context, changes []metadata.StatusChange) ([]metadata.Node, error) {
	const op = "change node statuses"
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return nil, s.wrap(op, err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // a no-op after Commit
	out := make([]metadata.Node, 0, len(changes))
	for _, ch := range changes {
		var status string
		err := tx.QueryRow(ctx, `SELECT status FROM storage_nodes WHERE node_id = $1 AND status <> 'removed' FOR UPDATE`, ch.ID).Scan(&status)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("metadata/postgres: %s: node %q: %w", op, ch.ID, metadata.ErrNotFound)
		}
		if err != nil {
			return nil, s.wrap(op, err)
		}
		if cur := metadata.ReadStatus(status); !slices.Contains(ch.From, cur) {
			return nil, fmt.Errorf("metadata/postgres: %s: node %q status is %q, not one of %q: %w", op, ch.ID, cur, ch.From, metadata.ErrStale)
		}
		n, err := scanNode(tx.QueryRow(ctx, `UPDATE storage_nodes SET status = $2 WHERE node_id = $1 RETURNING `+nodeColumns, ch.ID, ch.To))
		if err != nil {
			return nil, s.wrap(op, err)
		}
		out = append(out, n)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, s.wrap(op, err)
	}
	return out, nil
}

// SetNodeTransfer implements metadata.Store.
func (s *Store) SetNodeTransfer(ctx context.Context, id string, t *metadata.TransferStatus) (metadata.Node, error) {
	op := fmt.Sprintf("set node %q transfer", id)
	transfer, err := transferJSON(t)
	if err != nil {
		return metadata.Node{}, fmt.Errorf("metadata/postgres: %s: %w", op, err)
	}
	n, err := scanNode(s.pool.QueryRow(ctx,
		`UPDATE storage_nodes SET transfer = $2 WHERE node_id = $1 AND status <> 'removed' RETURNING `+nodeColumns, id, transfer))
	if err != nil {
		return metadata.Node{}, s.wrap(op, err)
	}
	return n, nil
}

// RemoveNode implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist. The row stays as a
// removed marker (status 'removed'), which RegisterNode's upsert refuses.
func (s *Store) RemoveNode(ctx context.Context, id string) error {
	op := fmt.Sprintf("remove node %q", id)
	tag, err := s.pool.Exec(ctx, `UPDATE storage_nodes SET status = 'removed' WHERE node_id = $1 AND status <> 'removed'`, id)
	if err != nil {
		return s.wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("metadata/postgres: %s: %w", op, metadata.ErrNotFound)
	}
	return nil
}

// AdmitNode implements metadata.Store: it deletes a removed id's marker row.
// It returns an error wrapping metadata.ErrNotFound if id is not a removed
// node.
func (s *Store) AdmitNode(ctx context.Context, id string) error {
	op := fmt.Sprintf("admit node %q", id)
	tag, err := s.pool.Exec(ctx, `DELETE FROM storage_nodes WHERE node_id = $1 AND status = 'removed'`, id)
	if err != nil {
		return s.wrap(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("metadata/postgres: %s: %w", op, metadata.ErrNotFound)
	}
	return nil
}

// wrap is wrapErr, and also empties the pool when err shows a connection
// broke under a statement: the other idle connections most likely broke the
// same way (a network cut, a server restart), and dropping them lets the next
// calls dial afresh instead of each failing on a dead connection first.
// Connections in use are closed when they are released.
func (s *Store) wrap(op string, err error) error {
	if brokenConn(err) {
		s.pool.Reset()
	}
	return wrapErr(op, err)
}

// wrapErr adds the package prefix and op to err, mapping pgx.ErrNoRows to
// metadata.ErrNotFound and marking connection failures with
// metadata.ErrUnavailable (keeping the cause).
func wrapErr(op string, err error) error {
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("metadata/postgres: %s: %w", op, metadata.ErrNotFound)
	case unavailable(err):
		return fmt.Errorf("metadata/postgres: %s: %w: %w", op, metadata.ErrUnavailable, err)
	default:
		return fmt.Errorf("metadata/postgres: %s: %w", op, err)
	}
}

// brokenConn reports whether err means an established connection broke, as
// opposed to a failed dial, a timeout, or a rejected statement.
func brokenConn(err error) bool {
	var (
		connErr *pgconn.ConnectError
		pgErr   *pgconn.PgError
	)
	switch {
	case errors.As(err, &connErr), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled), pgconn.Timeout(err):
		return false
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	case errors.As(err, &pgErr):
		return pgErr.Code == "57P01" || pgErr.Code == "57P02" || (len(pgErr.Code) >= 2 && pgErr.Code[:2] == "08")
	}
	var netErr net.Error
	return errors.As(err, &netErr) && !netErr.Timeout()
}

// unavailable reports whether err means the server could not be reached or
// did not answer in time, as opposed to rejecting the statement.
func unavailable(err error) bool {
	var (
		connErr *pgconn.ConnectError
		netErr  net.Error
		pgErr   *pgconn.PgError
	)
	switch {
	case errors.As(err, &connErr),
		errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded),
		pgconn.Timeout(err),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE):
		return true
	case errors.As(err, &pgErr):
		switch {
		case len(pgErr.Code) >= 2 && pgErr.Code[:2] == "08": // connection_exception
			return true
		case pgErr.Code == "57P01", // admin_shutdown
			pgErr.Code == "57P02", // crash_shutdown
			pgErr.Code == "57P03", // cannot_connect_now
			pgErr.Code == "53300": // too_many_connections
			return true
		}
	}
	return false
}
