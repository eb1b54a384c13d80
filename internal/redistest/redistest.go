// Package redistest connects tests to the machine's real Redis.
//
// The server is redis://127.0.0.1:6379/0 unless QUORUMKV_TEST_REDIS holds
// another redis:// URL. Tests never skip when it is missing: they fail with
// a message that says where they looked. Each test gets its own random key
// prefix and its keys are deleted at cleanup; the shared database is never
// flushed.
package redistest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// EnvURL names the environment variable that overrides DefaultURL.
const EnvURL = "QUORUMKV_TEST_REDIS"

// DefaultURL is the Redis tests use when EnvURL is unset.
const DefaultURL = "redis://127.0.0.1:6379/0"

// URL returns the Redis URL tests use.
func URL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return DefaultURL
}

// Options returns the parsed URL, for tests that build their own client (for
// example through a proxy, by changing Addr).
func Options(tb testing.TB) *redis.Options {
	tb.Helper()
	opts, err := redis.ParseURL(URL())
	if err != nil {
		tb.Fatalf("redistest: parse %s=%q: %v", EnvURL, URL(), err)
	}
	return opts
}

// Client returns a client to the test Redis and a fresh key prefix of the
// form "quorumkv-test:<random>:". It fails the test if Redis does not answer
// PING within 5s. At cleanup it deletes every key under the prefix and closes
// the client; cleanups registered after Client (a Store using the client,
// say) run before that.
func Client(tb testing.TB) (*redis.Client, string) {
	tb.Helper()
	c := redis.NewClient(Options(tb))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		tb.Fatalf("redistest: Redis at %s is unreachable (start redis-server there, or set %s to a redis:// URL): %v",
			URL(), EnvURL, err)
	}
	prefix := "quorumkv-test:" + rand.Text() + ":"
	tb.Cleanup(func() {
		defer c.Close()
		if err := DeletePrefix(context.Background(), c, prefix); err != nil {
			tb.Errorf("redistest: clean up prefix %q: %v", prefix, err)
		}
	})
	return c, prefix
}

// DeletePrefix deletes every key that starts with prefix from c's database,
// by SCAN and DEL. prefix must not contain glob characters (*?[]\); Client's
// prefixes never do.
func DeletePrefix(ctx context.Context, c *redis.Client, prefix string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var cursor uint64
	for {
		keys, next, err := c.Scan(ctx, cursor, prefix+"*", 500).Result()
		if err != nil {
			return fmt.Errorf("scan %q: %w", prefix+"*", err)
		}
		if len(keys) > 0 {
			if err := c.Del(ctx, keys...).Err(); err != nil {
				return fmt.Errorf("del %d keys under %q: %w", len(keys), prefix, err)
			}
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}
