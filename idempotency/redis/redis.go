// Package redis implements idempotency.Store on Redis.
//
// Each store key is one Redis string at prefix+key. Its value is a one-byte
// tag followed by a payload: 'p' + claim token for a pending marker, 'c' +
// response bytes for a completed response. An entry with a fingerprint uses
// the tags 'P' and 'C' instead, followed by one byte holding the
// fingerprint's length and the fingerprint, then the same payload; the
// lower-case tags are entries without one (written by versions before
// fingerprints, which match every request). Pending markers are written with
// PX pendingTTL and completed responses with PX ttl, so Redis expires both by
// itself. Begin, Complete and Abort are each a single Lua script, hence atomic
// and one round trip; Complete and Abort act only when the stored value is
// still the caller's own pending marker. Record is one SET.
//
// A claim's token is the random part of its pending marker, '.' and the
// claim's fingerprint in hex (empty when it has none), so Complete can
// write the response under the claim's fingerprint.
//
// Every key of an operation is a single Redis key, so the Store works with a
// Redis Cluster client as well.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/quorumkv/quorumkv/idempotency"
)

const (
	tagPending   = 'p'
	tagCompleted = 'c'
	// With a fingerprint.
	tagPendingFP   = 'P'
	tagCompletedFP = 'C'
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
func (s *Store) Begin(ctx context.Context, key string, fingerprint []byte, pendingTTL time.Duration) (idempotency.Claim, error) {
	if err := idempotency.CheckTTL("pendingTTL", pendingTTL); err != nil {
		return idempotency.Claim{}, err
	}
	if err := idempotency.CheckFingerprint(fingerprint); err != nil {
		return idempotency.Claim{}, err
	}
	random := rand.Text()
	res, err := beginScript.Run(ctx, s.client, []string{s.prefix + key},
		pendingValue(random, fingerprint), millis(pendingTTL)).Text()
	if err != nil {
		return idempotency.Claim{}, wrap("begin", key, err)
	}
	if res == "" {
		return idempotency.Claim{Token: makeToken(random, fingerprint)}, nil
	}
	pending, stored, payload, err := parseValue(res)
	if err != nil {
		return idempotency.Claim{}, fmt.Errorf("idempotency: redis: begin %q: %w", key, err)
	}
	return idempotency.Existing(pending, stored, fingerprint, payload)
}

// parseValue splits a stored value into its kind, fingerprint (nil for the
// lower-case tags) and payload.
func parseValue(v string) (pending bool, fingerprint []byte, payload string, err error) {
	if v == "" {
		return false, nil, "", errors.New("stored value is empty")
	}
	switch v[0] {
	case tagPending, tagCompleted:
		return v[0] == tagPending, nil, v[1:], nil
	case tagPendingFP, tagCompletedFP:
		if len(v) < 2 || len(v) < 2+int(v[1]) {
			return false, nil, "", fmt.Errorf("stored value with tag %q is truncated", v[0])
		}
		n := int(v[1])
		return v[0] == tagPendingFP, []byte(v[2 : 2+n]), v[2+n:], nil
	default:
		return false, nil, "", fmt.Errorf("stored value has unknown tag %q", v[0])
	}
}

// Record implements idempotency.Store.Record. ttl is kept to the
// millisecond (at least 1ms).
func (s *Store) Record(ctx context.Context, key string, fingerprint, response []byte, ttl time.Duration) error {
	if err := idempotency.CheckTTL("ttl", ttl); err != nil {
		return err
	}
	if err := idempotency.CheckFingerprint(fingerprint); err != nil {
		return err
	}
	// SET with PX keeps the millisecond: go-redis would round a whole number
	// of seconds to EX, which is the same.
	if err := s.client.Set(ctx, s.prefix+key, completedValue(fingerprint, response), max(ttl, time.Millisecond)).Err(); err != nil {
		return wrap("record", key, err)
	}
	return nil
}

// Complete implements idempotency.Store.Complete. ttl is kept to the
// millisecond (at least 1ms).
func (s *Store) Complete(ctx context.Context, key, token string, response []byte, ttl time.Duration) error {
	if err := idempotency.CheckTTL("ttl", ttl); err != nil {
		return err
	}
	random, fingerprint, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	n, err := completeScript.Run(ctx, s.client, []string{s.prefix + key},
		pendingValue(random, fingerprint), completedValue(fingerprint, response), millis(ttl)).Int()
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
	random, fingerprint, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	n, err := abortScript.Run(ctx, s.client, []string{s.prefix + key}, pendingValue(random, fingerprint)).Int()
	if err != nil {
		return wrap("abort", key, err)
	}
	if n != 1 {
		return idempotency.ErrNotOwner
	}
	return nil
}

// pendingValue is the pending marker of the claim with the random part
// random and fingerprint.
func pendingValue(random string, fingerprint []byte) string {
	if len(fingerprint) == 0 {
		return string(rune(tagPending)) + random
	}
	return string(withFingerprint(tagPendingFP, fingerprint, []byte(random)))
}

// completedValue is the stored form of response under fingerprint.
func completedValue(fingerprint, response []byte) []byte {
	if len(fingerprint) == 0 {
		return append([]byte{tagCompleted}, response...)
	}
	return withFingerprint(tagCompletedFP, fingerprint, response)
}

// withFingerprint is tag, fingerprint's length, fingerprint and payload.
// The fingerprint's length was checked (at most 255).
func withFingerprint(tag byte, fingerprint, payload []byte) []byte {
	v := make([]byte, 0, 2+len(fingerprint)+len(payload))
	v = append(v, tag, byte(len(fingerprint)))
	v = append(v, fingerprint...)
	return append(v, payload...)
}

// makeToken is the claim token of a marker with random part random.
func makeToken(random string, fingerprint []byte) string {
	return random + "." + hex.EncodeToString(fingerprint)
}

// parseToken undoes makeToken; ok is false for a token it cannot have made.
func parseToken(token string) (random string, fingerprint []byte, ok bool) {
	random, fp, found := strings.Cut(token, ".")
	if !found || random == "" {
		return "", nil, false
	}
	fingerprint, err := hex.DecodeString(fp)
	if err != nil || len(fingerprint) > idempotency.MaxFingerprintBytes {
		return "", nil, false
	}
	return random, fingerprint, true
}

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
