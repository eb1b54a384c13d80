package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
)

// startDev runs a throwaway quorumkv (what `quorumkv dev` runs) for the
// examples; in real use you connect to your own NATS.
func startDev() (*devcluster.Cluster, func()) {
	dir, err := os.MkdirTemp("", "quorumkv-example-")
	if err != nil {
		log.Fatal(err)
	}
	c, err := devcluster.Start(context.Background(), devcluster.Config{Listen: "127.0.0.1:0", DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	return c, func() { c.Close(); os.RemoveAll(dir) }
}

func Example() {
	dev, stop := startDev()
	defer stop()

	nc, err := nats.Connect(dev.URL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	kv, err := client.New(nc, "default")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	if _, err := kv.Put(ctx, "greeting", []byte("hello")); err != nil {
		log.Fatal(err)
	}
	got, err := kv.Get(ctx, "greeting")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (read from %d replicas at %s)\n", got.Value, got.ReplicaCount, got.Consistency)

	// Write back with the read's context: this write supersedes exactly
	// the version that was read.
	if _, err := kv.Put(ctx, "greeting", []byte("hello again"), client.WithContext(got.Context)); err != nil {
		log.Fatal(err)
	}
	got, _ = kv.Get(ctx, "greeting", client.WithConsistency("all"))
	fmt.Printf("%s\n", got.Value)

	_, err = kv.Get(ctx, "no-such-key")
	fmt.Println(errors.Is(err, client.ErrNotFound))
	// Output:
	// hello (read from 2 replicas at quorum)
	// hello again
	// true
}

func ExampleClient_Put_idempotent() {
	dev, stop := startDev()
	defer stop()
	nc, _ := nats.Connect(dev.URL)
	defer nc.Close()
	kv, _ := client.New(nc, "default")
	ctx := context.Background()

	// A retry with the same idempotency key is answered with the first
	// response and writes nothing.
	first, _ := kv.Put(ctx, "order/42", []byte("paid"), client.WithIdempotencyKey("payment-7"))
	retry, _ := kv.Put(ctx, "order/42", []byte("paid"), client.WithIdempotencyKey("payment-7"))
	fmt.Println(first.IsDuplicate, retry.IsDuplicate, first.Context == retry.Context)

	// The key is bound to its request: another value (or a delete) with it
	// is refused.
	_, err := kv.Put(ctx, "order/42", []byte("refunded"), client.WithIdempotencyKey("payment-7"))
	fmt.Println(errors.Is(err, client.ErrIdempotencyMismatch))
	// Output:
	// false true true
	// true
}

func ExampleAdmin_CreateTenant() {
	dev, stop := startDev()
	defer stop()
	nc, _ := nats.Connect(dev.URL)
	defer nc.Close()
	admin := client.NewAdmin(nc)

	rf, level := 2, "all"
	t, err := admin.CreateTenant(context.Background(), "acme", client.TenantSpec{ReplicationFactor: &rf, DefaultConsistency: &level})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(t.ID, t.ReplicationFactor, t.DefaultConsistency, t.ConflictPolicy, t.Version)

	_, err = admin.CreateTenant(context.Background(), "acme", client.TenantSpec{})
	fmt.Println(errors.Is(err, client.ErrExists), errors.Is(err, client.ErrConflict))
	// Output:
	// acme 2 all lww 1
	// true true
}

func ExampleWithTTL() {
	dev, stop := startDev()
	defer stop()
	nc, _ := nats.Connect(dev.URL)
	defer nc.Close()
	kv, _ := client.New(nc, "default")
	ctx := context.Background()

	// The value expires 300ms after the coordinator accepts the put, on
	// every replica at once; then it reads as a deleted key does.
	_, _ = kv.Put(ctx, "session", []byte("token"), client.WithTTL(300*time.Millisecond))
	got, err := kv.Get(ctx, "session")
	fmt.Println(string(got.Value), err)
	time.Sleep(400 * time.Millisecond)
	_, err = kv.Get(ctx, "session")
	fmt.Println(errors.Is(err, client.ErrNotFound))
	// Output:
	// token <nil>
	// true
}
