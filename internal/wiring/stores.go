// Package wiring opens the stores a coordinator is configured with, from
// the values of its --metadata and --idempotency flags.
package wiring

import (
	"context"
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

// StoreOptions are the knobs shared by the JetStream-backed stores.
type StoreOptions struct {
	Replicas    int    // JetStream replicas of the KV buckets (1 for one server, 3 for a cluster)
	RedisPrefix string // key prefix in Redis; default "quorumkv:idem:"
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
		return metanats.Open(ctx, js, metanats.Options{Replicas: opts.Replicas})
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
		return idemnats.Open(ctx, js, idemnats.Options{Replicas: opts.Replicas, TTL: opts.IdempotencyTTL})
	case strings.HasPrefix(spec, "redis://"), strings.HasPrefix(spec, "rediss://"):
		prefix := opts.RedisPrefix
		if prefix == "" {
			prefix = "quorumkv:idem:"
		}
		return idemredis.Open(spec, prefix)
	}
	return nil, fmt.Errorf("--idempotency %q: use nats or a redis:// URL", spec)
}
