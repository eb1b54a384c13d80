// Package wiring opens the stores a coordinator is configured with, from
// the values of its --metadata and --idempotency flags.
package wiring

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/idempotency"
	idemnats "github.com/quorumkv/quorumkv/idempotency/natskv"
	idemredis "github.com/quorumkv/quorumkv/idempotency/redis"
	"github.com/quorumkv/quorumkv/metadata"
	metanats "github.com/quorumkv/quorumkv/metadata/natskv"
	metapg "github.com/quorumkv/quorumkv/metadata/postgres"
	"github.com/quorumkv/quorumkv/schema"
)

// DefaultRedisPrefix is the key prefix of the idempotency store in Redis
// unless StoreOptions.RedisPrefix names another.
const DefaultRedisPrefix = "quorumkv:idem:"

// StoreOptions are the knobs shared by the JetStream-backed stores.
type StoreOptions struct {
	Replicas    int    // JetStream replicas of the KV buckets (1 for one server, 3 for a cluster)
	RedisPrefix string // key prefix in Redis; default DefaultRedisPrefix
	Migrate     bool   // apply PostgreSQL migrations before opening
	// IdempotencyTTL is how long completed responses are kept; the
	// JetStream bucket's MaxAge (0 = idempotency.DefaultTTL).
	IdempotencyTTL time.Duration
}

// OpenMetadata opens the metadata store named by spec: "nats" (JetStream KV
// on nc) or a postgres:// URL.
func OpenMetadata(ctx context.Context, spec string, nc *nats.Conn, opts StoreOptions) (metadata.Store, error) {
	switch {
	case spec == "nats":
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("metadata: jetstream: %w", err)
		}
		return retry(ctx, func(ctx context.Context) (metadata.Store, error) {
			return metanats.Open(ctx, js, metanats.Options{Replicas: opts.Replicas})
		})
	case strings.HasPrefix(spec, "postgres://"), strings.HasPrefix(spec, "postgresql://"):
		if opts.Migrate {
			if _, err := schema.Migrate(ctx, spec); err != nil {
				return nil, err
			}
		}
		return metapg.Open(ctx, spec)
	}
	return nil, fmt.Errorf("--metadata %q: use nats or a postgres:// URL", spec)
}

// OpenIdempotency opens the idempotency store named by spec: "nats"
// (JetStream KV with per-key TTL on nc) or a redis:// URL.
func OpenIdempotency(ctx context.Context, spec string, nc *nats.Conn, opts StoreOptions) (idempotency.Store, error) {
	switch {
	case spec == "nats":
		js, err := jetstream.New(nc)
		if err != nil {
			return nil, fmt.Errorf("idempotency: jetstream: %w", err)
		}
		return retry(ctx, func(ctx context.Context) (idempotency.Store, error) {
			return idemnats.Open(ctx, js, idemnats.Options{Replicas: opts.Replicas, TTL: opts.IdempotencyTTL})
		})
	case strings.HasPrefix(spec, "redis://"), strings.HasPrefix(spec, "rediss://"):
		prefix := opts.RedisPrefix
		if prefix == "" {
			prefix = DefaultRedisPrefix
		}
		return idemredis.Open(spec, prefix)
	}
	return nil, fmt.Errorf("--idempotency %q: use nats or a redis:// URL", spec)
}

// Stores are the two stores every coordinator needs. The coordinators
// given them use them; the owner of Stores closes them, after those
// coordinators stopped.
type Stores struct {
	Metadata    metadata.Store
	Idempotency idempotency.Store
}

// OpenStores opens the metadata store named by meta and the idempotency
// store named by idem (see OpenMetadata and OpenIdempotency). On error
// nothing stays open, and the error names the store that failed.
func OpenStores(ctx context.Context, nc *nats.Conn, meta, idem string, opts StoreOptions) (*Stores, error) {
	ms, err := OpenMetadata(ctx, meta, nc, opts)
	if err != nil {
		return nil, fmt.Errorf("metadata store: %w", err)
	}
	is, err := OpenIdempotency(ctx, idem, nc, opts)
	if err != nil {
		_ = ms.Close()
		return nil, fmt.Errorf("idempotency store: %w", err)
	}
	return &Stores{Metadata: ms, Idempotency: is}, nil
}

// Close closes both stores. Safe to call more than once.
func (s *Stores) Close() {
	if s.Idempotency != nil {
		_ = s.Idempotency.Close()
		s.Idempotency = nil
	}
	if s.Metadata != nil {
		_ = s.Metadata.Close()
		s.Metadata = nil
	}
}

// Attempts and per-attempt timeout of retry.
const (
	openAttempts = 5
	openTimeout  = 10 * time.Second
)

// retry calls open with a per-attempt timeout until it succeeds, fails for
// a reason other than time or reachability, ctx ends, or openAttempts have
// failed. Two processes creating the same replicated JetStream bucket at
// the same moment can both stall until they time out (seen on a 3-server
// nats-server 2.15 cluster); a second attempt finds the bucket made.
func retry[T any](ctx context.Context, open func(context.Context) (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for i := 0; i < openAttempts; i++ {
		actx, cancel := context.WithTimeout(ctx, openTimeout)
		v, err = open(actx)
		cancel()
		transient := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, metadata.ErrUnavailable) ||
			errors.Is(err, idempotency.ErrUnavailable) || errors.Is(err, nats.ErrTimeout)
		if err == nil || !transient || ctx.Err() != nil {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		}
	}
	return v, fmt.Errorf("after %d attempts: %w", openAttempts, err)
}
