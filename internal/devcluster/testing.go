package devcluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// StartForTest starts a cluster for a test in another package: on a free
// port, under tb.TempDir(), with logs discarded unless cfg.Logger is set,
// and a client connection to it. Both are closed by tb.Cleanup; any error
// fails the test. Fields of cfg left zero take their usual defaults.
func StartForTest(tb testing.TB, cfg Config) (*Cluster, *nats.Conn) {
	tb.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = tb.TempDir()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("devcluster: start: %v", err)
	}
	tb.Cleanup(c.Close)
	nc, err := nats.Connect(c.URL)
	if err != nil {
		tb.Fatalf("devcluster: connect to %s: %v", c.URL, err)
	}
	tb.Cleanup(nc.Close)
	return c, nc
}
