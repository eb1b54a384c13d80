// Package natstest starts real, in-process nats-servers for tests.
//
// Every server listens on a random loopback port, keeps its JetStream data in
// the test's temporary directory, and is shut down by t.Cleanup. Set
// NATS_LOGGING=debug to see the server's own log.
package natstest

import (
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options returns the options RunServer uses, for tests that need to tweak
// them before calling RunServerWith.
func Options(tb testing.TB) server.Options {
	tb.Helper()
	return server.Options{
		Host:               "127.0.0.1",
		Port:               -1,
		NoLog:              os.Getenv("NATS_LOGGING") == "",
		NoSigs:             true,
		JetStream:          true,
		StoreDir:           tb.TempDir(),
		MaxPayload:         8 << 20,
		MaxPending:         64 << 20,
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  1 << 30,
	}
}

// RunServer starts a JetStream-enabled nats-server on a random port.
func RunServer(tb testing.TB) *server.Server {
	tb.Helper()
	opts := Options(tb)
	return RunServerWith(tb, &opts)
}

// RunServerWith starts a nats-server with opts and waits until it accepts
// connections.
func RunServerWith(tb testing.TB, opts *server.Options) *server.Server {
	tb.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("natstest: new server: %v", err)
	}
	if os.Getenv("NATS_LOGGING") == "debug" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		tb.Fatalf("natstest: server not ready within 10s")
	}
	tb.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect opens a client connection to s that is closed by t.Cleanup.
func Connect(tb testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		tb.Fatalf("natstest: connect %s: %v", s.ClientURL(), err)
	}
	tb.Cleanup(nc.Close)
	return nc
}
