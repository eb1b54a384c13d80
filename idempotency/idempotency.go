// Package idempotency de-duplicates client writes that carry an idempotency
// key.
//
// A coordinator that receives a write with an idempotency key derives a store
// key with [Key] and calls [Store.Begin] with a fingerprint of the request:
//
//   - If the Claim is owned, it performs the write and then calls
//     [Store.Complete] with the encoded response (kept for [DefaultTTL]), or
//     [Store.Abort] if the write failed, so the client may retry.
//   - If the Claim carries a Response, the write was already done: the
//     coordinator returns that response, marked as a duplicate.
//   - If Begin returns [ErrInProgress], another request with the same key is
//     still running (HTTP 409).
//   - If Begin returns [ErrMismatch], the key was claimed or completed by a
//     request with another fingerprint: the client reused the key for a
//     different request (HTTP 409), whether that one finished or not.
//   - If Begin returns [ErrUnavailable], the store could not be reached; the
//     write must not proceed (HTTP 503), since it could not be de-duplicated.
//
// A claim is a pending marker with its own short TTL, so the claim of a
// coordinator that crashed mid-write expires by itself and the client may
// retry. Only the claimant may Complete or Abort: each claim carries an
// opaque token, and a token whose marker has expired (and may since have been
// claimed again by someone else) gets [ErrNotOwner] and changes nothing.
//
// Fingerprints are opaque bytes (at most [MaxFingerprintBytes]) that the
// caller derives from the request; the store keeps a claim's fingerprint in
// its pending marker and in its completed response and compares them with
// [FingerprintsMatch]. An empty fingerprint matches every other one: entries
// written before fingerprints existed carry none, and are honoured for any
// request, as they were when they were written.
//
// A write whose key nobody else can know (one the coordinator generated and
// has not returned yet) needs no claim: [Store.Record] stores its completed
// response in one step.
//
// Implementations live in the subpackages redis (Redis) and natskv (JetStream
// key-value, the embedded default); idempotencytest holds the conformance
// suite both pass.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrInProgress is returned by Begin while another claimant holds a
	// pending marker for the key.
	ErrInProgress = errors.New("idempotency: request in progress")

	// ErrUnavailable is wrapped, together with the cause and the name of the
	// backend ("redis: ...", "jetstream: ..."), by every operation that
	// failed because the backing store could not be reached or did not
	// answer in time. Whether the operation took effect is unknown then.
	ErrUnavailable = errors.New("idempotency: store unavailable")

	// ErrNotOwner is returned by Complete and Abort when token no longer
	// owns key: the pending marker expired, was aborted, was completed, or
	// was claimed again by someone else. Nothing is changed then.
	ErrNotOwner = errors.New("idempotency: claim lost")

	// ErrMismatch is returned by Begin when the key holds a pending marker
	// or a response whose fingerprint differs from the one given.
	ErrMismatch = errors.New("idempotency: key used for a different request")
)

const (
	// DefaultTTL is how long a completed response is kept.
	DefaultTTL = 24 * time.Hour

	// DefaultPendingTTL is how long a pending marker lives if its claimant
	// neither completes nor aborts it.
	DefaultPendingTTL = 30 * time.Second

	// MaxFingerprintBytes bounds a fingerprint (backends store its length in
	// one byte).
	MaxFingerprintBytes = 255
)

// Claim is the outcome of Begin.
type Claim struct {
	// Token is non-empty when the caller now owns the key and must Complete
	// or Abort it. It is opaque and only meaningful to the Store that issued
	// it.
	Token string

	// Response is non-nil when a completed response was already stored (a
	// duplicate); Token is empty then. A response stored as nil or empty is
	// returned as a non-nil empty slice, so Response != nil always tells a
	// duplicate apart.
	Response []byte
}

// Owned reports whether the caller owns the key and must Complete or Abort it.
func (c Claim) Owned() bool { return c.Token != "" }

// Store de-duplicates writes. Implementations are safe for concurrent use.
//
// Keys must be valid for every backend: use [Key]. Durations must be
// positive; backends may round them up to their own granularity (JetStream
// works in whole seconds).
type Store interface {
	// Begin atomically claims key with a pending marker that carries
	// fingerprint and expires after pendingTTL, or reports the stored
	// response, or returns ErrInProgress when another claimant holds a
	// pending marker. When the stored marker or response carries a
	// fingerprint that does not match (FingerprintsMatch), Begin returns
	// ErrMismatch instead, and changes nothing.
	Begin(ctx context.Context, key string, fingerprint []byte, pendingTTL time.Duration) (Claim, error)

	// Complete atomically replaces the caller's pending marker with
	// response, kept for ttl, under the claim's fingerprint; later Begins
	// return it as a duplicate. A nil response is stored as an empty one.
	// ErrNotOwner if the marker is gone or someone else's.
	Complete(ctx context.Context, key, token string, response []byte, ttl time.Duration) error

	// Abort atomically removes the caller's pending marker so a retry may
	// claim the key at once. ErrNotOwner as for Complete (callers may ignore
	// it: the marker is not theirs to remove any more).
	Abort(ctx context.Context, key, token string) error

	// Record stores response under fingerprint as key's completed response,
	// kept for ttl, in one step and without a claim: later Begins return it
	// as a duplicate. It overwrites whatever key held, so callers use it
	// only for keys no one else can know yet (a freshly generated random
	// idempotency key). A nil response is stored as an empty one.
	Record(ctx context.Context, key string, fingerprint, response []byte, ttl time.Duration) error

	// Close releases what the Store itself opened. It does not close
	// clients or connections it was handed.
	Close() error
}

// keyHexLen is how many hex digits of the SHA-256 digest Key keeps (128 bits).
const keyHexLen = 32

// Key derives the store key for (tenant, data key, idempotency key):
// tenant + "." + the first 32 hex digits of a SHA-256 over the three parts.
//
// The result is a valid JetStream KV key and Redis key whatever bytes key and
// idempotencyKey hold, provided tenant is a valid tenant ID (a non-empty token
// of letters, digits, '-' and '_'); Key does not check that. The parts are
// length-prefixed before hashing, so no two distinct triples share an input,
// even when a data key contains 0x00 bytes.
func Key(tenant, key, idempotencyKey string) string {
	buf := make([]byte, 0, 3*binary.MaxVarintLen64+len(tenant)+len(key)+len(idempotencyKey)+2)
	buf = binary.AppendUvarint(buf, uint64(len(tenant)))
	buf = append(buf, tenant...)
	buf = append(buf, 0)
	buf = binary.AppendUvarint(buf, uint64(len(key)))
	buf = append(buf, key...)
	buf = append(buf, 0)
	buf = binary.AppendUvarint(buf, uint64(len(idempotencyKey)))
	buf = append(buf, idempotencyKey...)
	sum := sha256.Sum256(buf)
	return tenant + "." + hex.EncodeToString(sum[:])[:keyHexLen]
}

// FingerprintsMatch reports whether a request with fingerprint fp may use an
// entry stored with fingerprint stored: they are equal, or either is empty
// (an entry from before fingerprints, or a caller that does not use them).
func FingerprintsMatch(stored, fp []byte) bool {
	return len(stored) == 0 || len(fp) == 0 || bytes.Equal(stored, fp)
}

// Existing is Begin's answer for an entry that is already stored: pending
// (a claim in progress) or done with payload, stored with fingerprint
// stored, for a request with fingerprint fp. It is ErrMismatch when the
// fingerprints do not match, ErrInProgress while the entry is pending, and
// otherwise a Claim holding a copy of payload (non-nil even when empty).
// Backends share it so that every store answers a repeat alike.
func Existing[P string | []byte](pending bool, stored, fp []byte, payload P) (Claim, error) {
	switch {
	case !FingerprintsMatch(stored, fp):
		return Claim{}, ErrMismatch
	case pending:
		return Claim{}, ErrInProgress
	}
	resp := make([]byte, len(payload)) // non-nil even when empty
	copy(resp, payload)
	return Claim{Response: resp}, nil
}

// CheckFingerprint returns an error when fp is longer than
// MaxFingerprintBytes. Backends use it to validate their arguments.
func CheckFingerprint(fp []byte) error {
	if len(fp) > MaxFingerprintBytes {
		return fmt.Errorf("idempotency: fingerprint is %d bytes; the limit is %d", len(fp), MaxFingerprintBytes)
	}
	return nil
}

// CheckTTL returns an error naming what when d is not positive. Backends use
// it to validate their duration arguments.
func CheckTTL(what string, d time.Duration) error {
	if d <= 0 {
		return errors.New("idempotency: " + what + " must be positive, got " + d.String())
	}
	return nil
}
