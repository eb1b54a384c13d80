// Package natskv implements idempotency.Store on a JetStream key-value
// bucket, the embedded default.
//
// The bucket keeps one revision per key (History 1) and allows per-message
// TTLs (LimitMarkerTTL is set). A key's value is a one-byte tag and a
// payload: 'p' for a pending marker, 'c' + response bytes for a completed
// response. An entry with a fingerprint uses the tags 'P' and 'C' instead,
// followed by one byte holding the fingerprint's length and the
// fingerprint, then the same payload; the lower-case tags are entries
// without one (written by versions before fingerprints, which match every
// request).
//
//   - Begin creates the key with the pending marker and a per-key TTL of
//     pendingTTL (kv.Create with jetstream.KeyTTL). The claim token is the
//     revision that Create returned: revisions are stream sequence numbers,
//     never reused, so no later claim of the key can share it. The token
//     goes on with '.' and the claim's fingerprint in hex (empty when it
//     has none), so Complete can write the response under it.
//   - Complete publishes the response on the key's subject only if the
//     key's latest revision is still the claim's (the same compare-and-set
//     kv.Update does), with a per-message TTL of ttl.
//   - Abort purges the key only if its latest revision is still the claim's
//     (kv.Purge with jetstream.LastRevision), leaving a delete marker that
//     itself expires after a minute.
//   - Record publishes the response on the key's subject unconditionally,
//     with a per-message TTL of ttl.
//
// While the NATS connection is down (reconnecting), every operation fails at
// once with idempotency.ErrUnavailable rather than being buffered for the
// reconnect.
//
// JetStream keeps TTLs in whole seconds: pendingTTL and ttl are rounded up
// to whole seconds, at least one, and expiry happens within about a second
// after that. The bucket's MaxAge (Options.TTL) bounds every entry: a
// response is kept for min(ttl, Options.TTL).
package natskv

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/idempotency"
)

const (
	// DefaultBucket is the bucket Open uses when Options.Bucket is empty.
	DefaultBucket = "quorumkv_idempotency"

	// markerTTL is how long JetStream keeps the delete markers that Abort
	// and expiry leave behind. They only matter to watchers.
	markerTTL = time.Minute

	// beginAttempts bounds Begin's create-or-read loop, which repeats only
	// while a marker keeps vanishing between the two steps.
	beginAttempts = 5

	tagPending   = 'p'
	tagCompleted = 'c'
	// With a fingerprint.
	tagPendingFP   = 'P'
	tagCompletedFP = 'C'
)

// Options configures Open.
type Options struct {
	// Bucket is the KV bucket's name; default DefaultBucket.
	Bucket string
	// TTL is the bucket's MaxAge: the longest any entry, in particular a
	// completed response, is kept. Default idempotency.DefaultTTL.
	TTL time.Duration
	// Replicas is the bucket's replica count; default 1.
	Replicas int
}

// Store is an idempotency.Store on a JetStream KV bucket. It is safe for
// concurrent use.
type Store struct {
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	subj   string // subject prefix that Put publishes to, ending in "."
	maxAge time.Duration
}

var _ idempotency.Store = (*Store)(nil)

// Open creates the bucket, or updates an existing one to opts, and returns
// a Store on it. The server must support per-message TTLs (nats-server 2.11
// or later). Close does not close js or its connection.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if opts.Bucket == "" {
		opts.Bucket = DefaultBucket
	}
	if opts.TTL == 0 {
		opts.TTL = idempotency.DefaultTTL
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.TTL < time.Second {
		return nil, fmt.Errorf("idempotency: jetstream: open bucket %q: TTL must be at least 1s, got %v", opts.Bucket, opts.TTL)
	}
	if opts.Replicas < 0 {
		return nil, fmt.Errorf("idempotency: jetstream: open bucket %q: Replicas must be positive, got %d", opts.Bucket, opts.Replicas)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         opts.Bucket,
		Description:    "quorumkv idempotency keys",
		History:        1,
		TTL:            opts.TTL,
		Replicas:       opts.Replicas,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: markerTTL,
	})
	if err != nil {
		return nil, wrap("open bucket", opts.Bucket, err)
	}
	return &Store{
		js:     js,
		kv:     kv,
		subj:   apiPrefix(js.Options()) + "$KV." + opts.Bucket + ".",
		maxAge: opts.TTL,
	}, nil
}

// apiPrefix returns what nats.go's KV puts in front of a key's subject when it
// publishes: nothing for the default JetStream API prefix, the domain's or
// custom API prefix otherwise (see jetstream.mapStreamToKVS).
func apiPrefix(o jetstream.JetStreamOptions) string {
	var p string
	switch {
	case o.Domain != "":
		p = "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		p = o.APIPrefix
		if !strings.HasSuffix(p, ".") {
			p += "."
		}
	}
	if p == jetstream.DefaultAPIPrefix {
		return ""
	}
	return p
}

// Close does nothing: the Store holds no resources of its own.
func (s *Store) Close() error { return nil }

// Begin implements idempotency.Store.Begin. pendingTTL is rounded up to whole
// seconds.
func (s *Store) Begin(ctx context.Context, key string, fingerprint []byte, pendingTTL time.Duration) (idempotency.Claim, error) {
	if err := idempotency.CheckTTL("pendingTTL", pendingTTL); err != nil {
		return idempotency.Claim{}, err
	}
	if err := idempotency.CheckFingerprint(fingerprint); err != nil {
		return idempotency.Claim{}, err
	}
	if err := checkKey(key); err != nil {
		return idempotency.Claim{}, err
	}
	if err := s.connected("begin", key); err != nil {
		return idempotency.Claim{}, err
	}
	for range beginAttempts {
		rev, err := s.kv.Create(ctx, key, entry(tagPending, tagPendingFP, fingerprint, nil), jetstream.KeyTTL(seconds(pendingTTL)))
		if err == nil {
			return idempotency.Claim{Token: makeToken(rev, fingerprint)}, nil
		}
		if !conflict(err) {
			return idempotency.Claim{}, wrap("begin", key, err)
		}
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue // expired or aborted since Create saw it: try again
		}
		if err != nil {
			return idempotency.Claim{}, wrap("begin", key, err)
		}
		pending, stored, payload, err := parseEntry(e.Value())
		if err != nil {
			return idempotency.Claim{}, fmt.Errorf("idempotency: jetstream: begin %q: stored value at revision %d: %w", key, e.Revision(), err)
		}
		return idempotency.Existing(pending, stored, fingerprint, payload)
	}
	// The key kept changing under us: someone else is working on it.
	return idempotency.Claim{}, idempotency.ErrInProgress
}

// Complete implements idempotency.Store.Complete. The response is kept for
// ttl rounded up to whole seconds, but never longer than the bucket's MaxAge
// (Options.TTL): a longer ttl is cut to MaxAge.
func (s *Store) Complete(ctx context.Context, key, token string, response []byte, ttl time.Duration) error {
	if err := idempotency.CheckTTL("ttl", ttl); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	rev, fingerprint, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	if err := s.connected("complete", key); err != nil {
		return err
	}
	val := entry(tagCompleted, tagCompletedFP, fingerprint, response)
	// kv.Update has no TTL option and would drop the claim's TTL, leaving
	// the response for MaxAge; publish with the same compare-and-set
	// instead, and a TTL when it is shorter than MaxAge.
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if ttl := seconds(ttl); ttl < s.maxAge {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	_, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: s.subj + key, Data: val}, opts...)
	if conflict(err) {
		return idempotency.ErrNotOwner
	}
	if err != nil {
		return wrap("complete", key, err)
	}
	return nil
}

// Abort implements idempotency.Store.Abort.
func (s *Store) Abort(ctx context.Context, key, token string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	rev, _, ok := parseToken(token)
	if !ok {
		return idempotency.ErrNotOwner
	}
	if err := s.connected("abort", key); err != nil {
		return err
	}
	err := s.kv.Purge(ctx, key, jetstream.LastRevision(rev), jetstream.PurgeTTL(markerTTL))
	if conflict(err) {
		return idempotency.ErrNotOwner
	}
	if err != nil {
		return wrap("abort", key, err)
	}
	return nil
}

// Record implements idempotency.Store.Record. ttl is rounded up and cut to
// the bucket's MaxAge as for Complete.
func (s *Store) Record(ctx context.Context, key string, fingerprint, response []byte, ttl time.Duration) error {
	if err := idempotency.CheckTTL("ttl", ttl); err != nil {
		return err
	}
	if err := idempotency.CheckFingerprint(fingerprint); err != nil {
		return err
	}
	if err := checkKey(key); err != nil {
		return err
	}
	if err := s.connected("record", key); err != nil {
		return err
	}
	var opts []jetstream.PublishOpt
	if ttl := seconds(ttl); ttl < s.maxAge {
		opts = append(opts, jetstream.WithMsgTTL(ttl))
	}
	val := entry(tagCompleted, tagCompletedFP, fingerprint, response)
	if _, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: s.subj + key, Data: val}, opts...); err != nil {
		return wrap("record", key, err)
	}
	return nil
}

// entry is a stored value: tag and payload without a fingerprint, or tagFP,
// the fingerprint's length (checked: at most 255), the fingerprint and
// payload.
func entry(tag, tagFP byte, fingerprint, payload []byte) []byte {
	if len(fingerprint) == 0 {
		return append([]byte{tag}, payload...)
	}
	v := make([]byte, 0, 2+len(fingerprint)+len(payload))
	v = append(v, tagFP, byte(len(fingerprint)))
	v = append(v, fingerprint...)
	return append(v, payload...)
}

// parseEntry undoes entry: the kind, fingerprint (nil for the lower-case
// tags) and payload of a stored value.
func parseEntry(v []byte) (pending bool, fingerprint, payload []byte, err error) {
	if len(v) == 0 {
		return false, nil, nil, errors.New("empty value")
	}
	switch v[0] {
	case tagPending, tagCompleted:
		return v[0] == tagPending, nil, v[1:], nil
	case tagPendingFP, tagCompletedFP:
		if len(v) < 2 || len(v) < 2+int(v[1]) {
			return false, nil, nil, fmt.Errorf("value with tag %q is truncated", v[0])
		}
		n := int(v[1])
		return v[0] == tagPendingFP, v[2 : 2+n], v[2+n:], nil
	default:
		return false, nil, nil, fmt.Errorf("value has unknown tag %q", v[0])
	}
}

// errNotConnected is the cause connected reports.
var errNotConnected = errors.New("nats connection is not connected")

// connected fails fast with ErrUnavailable while the connection is down.
// Without it a request would wait for its context's deadline, and its
// publish would sit in nats.go's reconnect buffer and take effect after the
// caller was told it failed. (A disconnect between this check and the
// publish can still do that; ErrUnavailable's contract allows it.)
func (s *Store) connected(op, key string) error {
	nc := s.js.Conn()
	if nc == nil || nc.IsConnected() {
		return nil
	}
	return fmt.Errorf("%w: jetstream: %s %q: %w (status %v)", idempotency.ErrUnavailable, op, key, errNotConnected, nc.Status())
}

// validKey is what nats.go accepts as a KV key (jetstream.validKeyRe), which
// Complete must check itself since it publishes directly.
var validKey = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func checkKey(key string) error {
	if !validKey.MatchString(key) || key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, "..") {
		return fmt.Errorf("idempotency: jetstream: invalid key %q (use idempotency.Key)", key)
	}
	return nil
}

// makeToken is the claim token of the marker at revision rev.
func makeToken(rev uint64, fingerprint []byte) string {
	return strconv.FormatUint(rev, 10) + "." + hex.EncodeToString(fingerprint)
}

// parseToken undoes makeToken; ok is false for a token it cannot have made.
func parseToken(token string) (rev uint64, fingerprint []byte, ok bool) {
	revText, fp, found := strings.Cut(token, ".")
	rev, err := strconv.ParseUint(revText, 10, 64)
	if !found || err != nil || rev == 0 {
		return 0, nil, false
	}
	fingerprint, err = hex.DecodeString(fp)
	if err != nil || len(fingerprint) > idempotency.MaxFingerprintBytes {
		return 0, nil, false
	}
	return rev, fingerprint, true
}

// seconds rounds d up to whole seconds, at least one: JetStream truncates
// TTLs to seconds and rejects those under a second.
func seconds(d time.Duration) time.Duration {
	s := (d + time.Second - 1) / time.Second * time.Second
	return max(s, time.Second)
}

// conflict reports whether err is a failed compare-and-set: the key exists
// (Create) or its latest revision is not the expected one (Update, Purge).
// Replicated streams report it with another error code, which nats.go does
// not map everywhere, so both codes are checked.
func conflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var jerr jetstream.JetStreamError
	if errors.As(err, &jerr) && jerr.APIError() != nil {
		code := jerr.APIError().ErrorCode
		return code == jetstream.JSErrCodeStreamWrongLastSequence ||
			code == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return false
}

// wrap adds context to err, and ErrUnavailable when err means JetStream could
// not be reached or could not serve the request now.
func wrap(op, key string, err error) error {
	if unavailable(err) {
		return fmt.Errorf("%w: jetstream: %s %q: %w", idempotency.ErrUnavailable, op, key, err)
	}
	return fmt.Errorf("idempotency: jetstream: %s %q: %w", op, key, err)
}

// unavailable classifies err. The caller giving up (context.Canceled) is not
// the store's fault, nor is a request the server refused as such (a 4xx API
// error, an oversized payload). API errors with a 5xx code (JetStream not
// enabled, no quorum, insufficient resources) and everything on the
// transport side (no responders, timeouts, a closed or reconnecting
// connection, context deadlines) are.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrMaxPayload) {
		return false
	}
	var jerr jetstream.JetStreamError
	if errors.As(err, &jerr) && jerr.APIError() != nil {
		return jerr.APIError().Code >= 500
	}
	return true
}
