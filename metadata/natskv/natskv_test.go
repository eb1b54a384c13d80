package natskv_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/metadata/metadatatest"
	"github.com/quorumkv/quorumkv/metadata/natskv"
)

func newJetStream(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return js
}

func TestConformance(t *testing.T) {
	s := natstest.RunServer(t)
	js := newJetStream(t, natstest.Connect(t, s))
	var n atomic.Int64
	metadatatest.Run(t, func(t *testing.T) metadata.Store {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A fresh pair of buckets per subtest keeps them independent.
		st, err := natskv.Open(ctx, js, natskv.Options{BucketPrefix: fmt.Sprintf("conf%d", n.Add(1))})
		if err != nil {
			t.Fatalf("natskv.Open: %v", err)
		}
		t.Cleanup(func() {
			if err := st.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return st
	})
}

func TestOpenIdempotentAndDefaults(t *testing.T) {
	s := natstest.RunServer(t)
	js := newJetStream(t, natstest.Connect(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	a, err := natskv.Open(ctx, js, natskv.Options{})
	if err != nil {
		t.Fatalf("first Open: %v", err)
	}
	created, err := a.CreateTenant(ctx, metadata.Tenant{ID: "t1", ReplicationFactor: 3, DefaultConsistency: "quorum", ConflictPolicy: "lww"})
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	b, err := natskv.Open(ctx, js, natskv.Options{Replicas: 1, BucketPrefix: "quorumkv"})
	if err != nil {
		t.Fatalf("second Open: %v", err)
	}
	got, err := b.GetTenant(ctx, "t1")
	if err != nil {
		t.Fatalf("GetTenant through second Open: %v", err)
	}
	if got.Version != created.Version || !got.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("GetTenant = %+v, want %+v", got, created)
	}
	for _, name := range []string{"quorumkv_tenants", "quorumkv_nodes"} {
		kv, err := js.KeyValue(ctx, name)
		if err != nil {
			t.Fatalf("bucket %q: %v", name, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatalf("bucket %q status: %v", name, err)
		}
		if st.Bucket() != name {
			t.Errorf("bucket %q reports name %q", name, st.Bucket())
		}
	}

	if _, err := natskv.Open(ctx, js, natskv.Options{Replicas: -1}); err == nil {
		t.Error("Open with Replicas -1 succeeded")
	}
}

// TestUnavailable stops the server under an open store: calls must fail with
// ErrUnavailable instead of hanging, and succeed again once it is back.
func TestUnavailable(t *testing.T) {
	opts := natstest.Options(t)
	s := natstest.RunServerWith(t, &opts)
	nc := natstest.Connect(t, s, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js := newJetStream(t, nc)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := natskv.Open(ctx, js, natskv.Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, err := st.CreateTenant(ctx, metadata.Tenant{ID: "t1", ReplicationFactor: 1, DefaultConsistency: "one", ConflictPolicy: "lww"}); err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}

	// Restart on the same port (the client only knows that one) and store.
	opts.Port = s.Addr().(*net.TCPAddr).Port
	s.Shutdown()
	s.WaitForShutdown()

	calls := map[string]func(context.Context) error{
		"GetTenant": func(ctx context.Context) error { _, err := st.GetTenant(ctx, "t1"); return err },
		"ListTenants": func(ctx context.Context) error {
			_, err := st.ListTenants(ctx)
			return err
		},
		"RegisterNode": func(ctx context.Context) error {
			_, err := st.RegisterNode(ctx, metadata.Node{ID: "n1", VirtualNodes: 1})
			return err
		},
		"DeleteTenant": func(ctx context.Context) error { return st.DeleteTenant(ctx, "t1") },
	}
	for name, call := range calls {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		err := call(cctx)
		ccancel()
		if !errors.Is(err, metadata.ErrUnavailable) {
			t.Errorf("%s with the server down: error %v, want one wrapping %v", name, err, metadata.ErrUnavailable)
		}
	}

	// The client reconnects by itself.
	natstest.RunServerWith(t, &opts)
	deadline := time.Now().Add(15 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		_, err := st.GetTenant(cctx, "t1")
		ccancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover after the server came back: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
