// Package redis implements idempotency.Store on Redis.
//
// Each store key is one Redis string at prefix+key. Its value is a one-byte
// tag followed by a payload: 'p' + claim token for a pending marker, 'c' +
// response bytes for a completed response. Pending markers are written with
// PX pendingTTL and completed responses with PX ttl, so Redis expires both by
// itself. Begin, Complete and Abort are each a single Lua script, hence atomic
// and one round trip; Complete and Abort act only when the stored value is
// still the caller's own pending marker.
//
// Every key of an operation is a single Redis key, so the Store works with a
// Redis Cluster client as well.
package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/quorumkv/quorumkv/idempotency"
)

const (
	tagPending   = 'p'
	tagCompleted = 'c'
)

// beginScript returns the current value if KEYS[1] exists; otherwise it sets
// KEYS[1] to the pending marker ARGV[1] for ARGV[2] ms and returns "" (a
// value that is never stored, since stored values always carry a tag; an
// empty string rather than a Lua false, which RESP2 and RESP3 reply as
// different types).
var beginScript = goredis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ''
`)

// completeScript replaces the pending marker ARGV[1] at KEYS[1] with ARGV[2]
// for ARGV[3] ms. Returns 1 on success, 0 if the marker is not ARGV[1].
var completeScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`)

// abortScript deletes KEYS[1] if it holds the pending marker ARGV[1].
// Returns 1 on success, 0 if the marker is not ARGV[1].
var abortScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
`)

// Store is an idempotency.Store on Redis. It is safe for concurrent use.
type Store struct {
	client goredis.UniversalClient
	prefix string
	owned  bool // Close closes client
}

var _ idempotency.Store = (*Store)(nil)

// New returns a Store that keeps its keys under prefix (for example
// "quorumkv:idem:") through client. Close does not close client.
func New(client goredis.UniversalClient, prefix string) *Store {
	return &Store{client: client, prefix: prefix}
}

// Open parses a Redis URL (redis://[user:password@]host:port/db, or rediss://
// for TLS, with go-redis's query options such as dial_timeout) and returns a
// Store that owns its client: Close closes it. Open does not contact Redis;
// an unreachable server shows up as ErrUnavailable from the first operation.
func Open(url, prefix string) (*Store, error) {
	opts, err := goredis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("idempotency: redis: parse url: %w", err)
	}
	s := New(goredis.NewClient(opts), prefix)
	s.owned = true
	return s, nil
}

// Close closes the client if Open created it; it does nothing for a Store
// made by New.
func (s *Store) Close() error {
	if !s.owned {
		return nil
	}
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("idempotency: redis: close: %w", err)
	}
	return nil
}

// Begin implements idempotency.Store.Begin. pendingTTL is kept to the
// millisecond (at least 1ms).
func (s *Store) Begin(ctx context.Context, key string, pendingTTL time.Duration) (idempotency.Claim, error) {
	if err := idempotency.CheckTTL("pendingTTL", pendingTTL); err != nil {
		return idempotency.Claim{}, err
	}
	token := rand.Text()
	res, err := beginScript.Run(ctx, s.client, []string{s.prefix + key},
		pendingValue(token), millis(pendingTTL)).Text()
	if err != nil {
		return idempotency.Claim{}, wrap("begin", key, err)
	}
	if res == "" {
		return idempotency.Claim{Token: token}, nil
	}
	switch res[0] {
	case tagPending:
		return idempotency.Claim{}, idempotency.ErrInProgress
	case tagCompleted:
		resp := make([]byte, len(res)-1) // non-nil even when empty
		copy(resp, res[1:])
		return idempotency.Claim{Response: resp}, nil
	default:
		return idempotency.Claim{}, fmt.Errorf("idempotency: redis: begin %q: stored value has unknown tag %q", key, res[0])
	}
}

// Complete implements idempotency.Store.Complete. ttl is kept to the
// millisecond (at least 1ms).
func (s *Store) Complete(ctx context.Context, key, token string, response []byte, ttl time.Duration) error {
	if err := idempotency.CheckTTL("ttl", ttl); err != nil {
		return err
	}
	if token == "" {
		return idempotency.ErrNotOwner
	}
	val := make([]byte, 0, 1+len(response))
	val = append(val, tagCompleted)
	val = append(val, response...)
	n, err := completeScript.Run(ctx, s.client, []string{s.prefix + key},
		pendingValue(token), val, millis(ttl)).Int()
	if err != nil {
		return wrap("complete", key, err)
	}
	if n != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

// Abort implements idempotency.Store.Abort.
func (s *Store) Abort(ctx context.Context, key, token string) error {
	if token == "" {
		return idempotency.ErrNotOwner
	}
	n, err := abortScript.Run(ctx, s.client, []string{s.prefix + key}, pendingValue(token)).Int()
	if err != nil {
		return wrap("abort", key, err)
	}
	if n != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

func pendingValue(token string) string { return string(rune(tagPending)) + token }

// millis converts d to whole milliseconds for PX, rounding up.
func millis(d time.Duration) string {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return strconv.FormatInt(int64(ms), 10)
}

// wrap adds context to err, and ErrUnavailable when err means Redis could
// not be reached or could not serve the request now.
func wrap(op, key string, err error) error {
	if unavailable(err) {
		return fmt.Errorf("%w: redis: %s %q: %w", idempotency.ErrUnavailable, op, key, err)
	}
	return fmt.Errorf("idempotency: redis: %s %q: %w", op, key, err)
}

// unavailable classifies err. The caller giving up (context.Canceled) is not
// the store's fault. Replies from Redis are errors of the request (wrong
// type, no permission, ...) except those that say the server cannot serve it
// now. Everything else is the transport: dial and I/O errors, timeouts,
// pool timeouts, a closed client, context deadlines.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		return goredis.IsLoadingError(err) || goredis.IsReadOnlyError(err) ||
			goredis.IsClusterDownError(err) || goredis.IsTryAgainError(err) ||
			goredis.IsMasterDownError(err) || goredis.IsMaxClientsError(err) ||
			goredis.IsNoReplicasError(err)
	}
	return true
}
