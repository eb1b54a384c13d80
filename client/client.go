// Package client is the Go client of quorumkv. It speaks the wire protocol
// of package subjects over an existing NATS connection.
//
//	nc, _ := nats.Connect(url)
//	kv, _ := client.New(nc, "default")
//	res, err := kv.Put(ctx, "greeting", []byte("hello"))
//	got, err := kv.Get(ctx, "greeting")            // got.Value, got.Context
//	_, err = kv.Put(ctx, "greeting", []byte("hi"), client.WithContext(got.Context))
//
// Every error a call returns can be matched with errors.Is against the
// sentinels below; *Error carries the server's code, kind and message.
package client

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// Sentinels for errors.Is. A server error matches the sentinel of its kind
// and, for 409s, ErrConflict as well.
var (
	ErrNotFound        = errors.New("quorumkv: key not found")
	ErrNoSuchTenant    = errors.New("quorumkv: no such tenant")
	ErrNoSuchNode      = errors.New("quorumkv: no such node")
	ErrInvalid         = errors.New("quorumkv: invalid request")
	ErrTooLarge        = errors.New("quorumkv: too large")
	ErrConflict        = errors.New("quorumkv: conflict")
	ErrExists          = errors.New("quorumkv: already exists")
	ErrInProgress      = errors.New("quorumkv: request in progress")
	ErrTooManySiblings = errors.New("quorumkv: too many siblings")
	ErrOverloaded      = errors.New("quorumkv: overloaded")
	ErrUnavailable     = errors.New("quorumkv: unavailable")
	ErrTimeout         = errors.New("quorumkv: timeout")
	ErrInternal        = errors.New("quorumkv: internal error")
	// ErrIdempotencyMismatch: the idempotency key was used before for a
	// different request (another operation, value or context). A 409, so it
	// matches ErrConflict too.
	ErrIdempotencyMismatch = errors.New("quorumkv: idempotency key used for a different request")
)

var kindSentinel = map[string]error{
	subjects.KindNoSuchTenant:    ErrNoSuchTenant,
	subjects.KindNoSuchNode:      ErrNoSuchNode,
	subjects.KindInvalid:         ErrInvalid,
	subjects.KindTooLarge:        ErrTooLarge,
	subjects.KindConflict:        ErrConflict,
	subjects.KindExists:          ErrExists,
	subjects.KindInProgress:      ErrInProgress,
	subjects.KindTooManySiblings: ErrTooManySiblings,
	subjects.KindOverloaded:      ErrOverloaded,
	subjects.KindUnavailable:     ErrUnavailable,
	subjects.KindTimeout:         ErrTimeout,
	subjects.KindInternal:        ErrInternal,
	// Kinds added later.
	subjects.KindIdempotencyMismatch: ErrIdempotencyMismatch,
}

// Error is an error answered by a coordinator.
type Error struct {
	Code    int    // 400, 404, 409, 413, 429, 500, 503, 504
	Kind    string // subjects.Kind*
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("quorumkv: %s (%d): %s", e.Kind, e.Code, e.Message)
}

// Is matches the sentinel of e's kind, and ErrConflict for every 409.
func (e *Error) Is(target error) bool {
	if s, ok := kindSentinel[e.Kind]; ok && s == target {
		return true
	}
	if _, known := kindSentinel[e.Kind]; !known && target == sentinelOfCode(e.Code) {
		return true
	}
	return target == ErrConflict && e.Code == int(subjects.CodeConflict)
}

func sentinelOfCode(code int) error { return kindSentinel[subjects.CodeKind(subjects.Code(code))] }

// Results of the data calls.
type (
	// WriteResult answers Put and Delete.
	WriteResult = subjects.WriteReply
	// GetResult answers Get.
	GetResult = subjects.GetReply
)

// Client sends data requests for one tenant. Safe for concurrent use.
type Client struct {
	nc      *nats.Conn
	tenant  string
	timeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithDefaultTimeout sets the timeout of requests that set none themselves
// (default 2s). The coordinator gets this as timeout_ms; the NATS request
// waits a little longer so the coordinator's own answer wins.
func WithDefaultTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// New returns a client for tenant over nc, which the caller keeps owning.
func New(nc *nats.Conn, tenant string, opts ...Option) (*Client, error) {
	if err := subjects.ValidateTenantID(tenant); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	c := &Client{nc: nc, tenant: tenant, timeout: 2 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Tenant is the tenant this client acts for.
func (c *Client) Tenant() string { return c.tenant }

// RequestOption sets optional fields of one request.
type RequestOption func(*subjects.Request)

// WithConsistency sets the level: subjects.One, Quorum or All.
func WithConsistency(level string) RequestOption {
	return func(r *subjects.Request) { r.Consistency = level }
}

// WithContext passes the context of an earlier read or write, so the write
// supersedes what that read saw.
func WithContext(ctx string) RequestOption {
	return func(r *subjects.Request) { r.Context = ctx }
}

// WithIdempotencyKey names the write so that retries are answered with the
// first response instead of writing again.
func WithIdempotencyKey(key string) RequestOption {
	return func(r *subjects.Request) { r.IdempotencyKey = key }
}

// WithTimeout bounds how long the coordinator waits for replicas.
func WithTimeout(d time.Duration) RequestOption {
	return func(r *subjects.Request) { r.TimeoutMS = d.Milliseconds() }
}

// WithTTL (put) makes the value expire d after the coordinator accepts the
// put: from then on reads answer ErrNotFound, as for a deleted key. It is
// sent as ttl_ms, rounded up to a whole millisecond; 0 means the tenant's
// default_ttl_ms. The coordinator refuses d < 0 or above 10 years (400),
// and answers 503 while a storage node runs a version without TTL
// support (node protocol < 3).
func WithTTL(d time.Duration) RequestOption {
	return func(r *subjects.Request) { r.TTLMs = ttlMillis(d) }
}

// ttlMillis is d in milliseconds, a positive remainder rounded up (a TTL
// below 1ms must not become 0, which means "the default").
func ttlMillis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if d > 0 && d%time.Millisecond != 0 {
		ms++
	}
	return ms
}

// Put stores value under key.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...RequestOption) (*WriteResult, error) {
	req := subjects.Request{Key: key, Value: value}
	if value == nil {
		req.Value = []byte{}
	}
	var res WriteResult
	if err := c.do(ctx, subjects.Put(c.tenant), &req, opts, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Delete writes a tombstone for key. Deleting a missing key succeeds.
func (c *Client) Delete(ctx context.Context, key string, opts ...RequestOption) (*WriteResult, error) {
	req := subjects.Request{Key: key}
	var res WriteResult
	if err := c.do(ctx, subjects.Delete(c.tenant), &req, opts, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

// Get reads key. A missing or deleted key returns the result (whose
// Context, when set, lets a later write supersede the tombstone) together
// with ErrNotFound.
func (c *Client) Get(ctx context.Context, key string, opts ...RequestOption) (*GetResult, error) {
	req := subjects.Request{Key: key}
	var res GetResult
	if err := c.do(ctx, subjects.Get(c.tenant), &req, opts, &res); err != nil {
		return nil, err
	}
	if !res.Found {
		return &res, ErrNotFound
	}
	if res.Value == nil {
		res.Value = []byte{}
	}
	return &res, nil
}

func (c *Client) do(ctx context.Context, subject string, req *subjects.Request, opts []RequestOption, out any) error {
	for _, o := range opts {
		o(req)
	}
	if req.TimeoutMS == 0 {
		req.TimeoutMS = c.timeout.Milliseconds()
	}
	wait := time.Duration(req.TimeoutMS)*time.Millisecond + 500*time.Millisecond
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	return request(ctx, c.nc, subject, req, out)
}

// request sends v as msgpack to subject and decodes the reply into out.
func request(ctx context.Context, nc *nats.Conn, subject string, v, out any) error {
	data, err := wire.Marshal(false, v)
	if err != nil {
		return fmt.Errorf("%w: encode request: %v", ErrInvalid, err)
	}
	msg, err := nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return &Error{Code: int(subjects.CodeUnavailable), Kind: subjects.KindUnavailable, Message: "no coordinator is serving " + subject}
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: int(subjects.CodeTimeout), Kind: subjects.KindTimeout, Message: "no answer on " + subject + " in time"}
	case err != nil:
		return fmt.Errorf("quorumkv: request %s: %w", subject, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return &Error{Code: int(e.Code), Kind: e.Kind, Message: e.Message}
	}
	if err := wire.Unmarshal(false, msg.Data, out); err != nil {
		return fmt.Errorf("quorumkv: decode reply from %s: %w", subject, err)
	}
	return nil
}
