package coordinator_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// coordinateOn makes node the coordinating replica of one client write of
// value to key, bypassing the coordinator: the value lands on that node
// only, as a write at consistency one whose first primary was unreachable
// leaves it.
func coordinateOn(t *testing.T, nc *nats.Conn, node, tenant, key string, value vclock.Value) *vclock.DVVSet {
	t.Helper()
	b, err := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion,
		Items: []subjects.NodeWrite{{ID: 1, Tenant: tenant, Key: key, Coordinate: &subjects.Coordinate{Value: value}}}})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := nc.Request(subjects.StorageNode(node, subjects.NodeOpWrite), b, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var r subjects.NodeWriteReply
	if err := msgpack.Unmarshal(msg.Data, &r); err != nil || len(r.Results) != 1 || r.Results[0].Err != "" || r.Results[0].DVV == nil {
		t.Fatalf("coordinate on %s: %v %+v", node, err, r)
	}
	return r.Results[0].DVV
}

// coordinatingNode returns the node whose actor minted the key's values:
// the key's first primary, which coordinates every write while it is up.
func coordinatingNode(t *testing.T, c *devcluster.Cluster, tenant, key string) string {
	t.Helper()
	entries := dumpKey(t, c, tenant, key, 3)
	if len(entries) == 0 {
		t.Fatalf("no replica holds %s/%s", tenant, key)
	}
	node, _, _ := strings.Cut(entries[0].Actor, ".")
	return node
}

// TestSiblingsDeleteWithoutContext: on a siblings tenant, a delete without
// a context (what `quorumkv delete KEY` sends) supersedes every value the
// coordinating replica holds, so the key reads as not found; a value
// written concurrently on a replica the coordinating one had not seen is
// kept beside the tombstone, as DVVSet semantics require.
func TestSiblingsDeleteWithoutContext(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "del")
	ctx := ctxT(t)
	for _, v := range []string{"a", "b"} {
		if _, err := kv.Put(ctx, "k", []byte(v), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || !slices.Equal(values(got), []string{"a", "b"}) {
		t.Fatalf("before the delete: %v %q", err, values(got))
	}
	del, err := kv.Delete(ctx, "k", client.WithConsistency(subjects.Quorum))
	if err != nil {
		t.Fatal(err)
	}
	if del.ReplicaCount < 2 {
		t.Fatalf("delete acknowledged by %d replicas", del.ReplicaCount)
	}
	gone, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("after a delete without context: %v, values %q; want not found", err, values(gone))
	}
	if gone.Context == "" {
		t.Fatal("a deleted key reads without a context")
	}
	for _, e := range dumpKey(t, c, "del", "k", 3) {
		if !e.Tombstone || e.Siblings != 1 {
			t.Fatalf("replica holds %d values (tombstone %v) after the delete; want only the tombstone", e.Siblings, e.Tombstone)
		}
	}

	// A value the coordinating replica has not seen survives the delete.
	for _, v := range []string{"a", "b"} {
		if _, err := kv.Put(ctx, "k2", []byte(v), client.WithConsistency(subjects.All), client.WithTimeout(20*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	coord := coordinatingNode(t, c, "del", "k2")
	other := devcluster.NodeID(1)
	if other == coord {
		other = devcluster.NodeID(2)
	}
	coordinateOn(t, connect(t, c), other, "del", "k2", vclock.Value{Data: []byte("unseen")})
	// A long timeout keeps the first primary the coordinating one even on
	// a loaded machine (the next takes over after half of it).
	if _, err := kv.Delete(ctx, "k2", client.WithConsistency(subjects.All), client.WithTimeout(20*time.Second)); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "k2", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != 0 || string(got.Value) != "unseen" {
		t.Fatalf("after the delete: %v %q; want only the value the coordinating replica %s had not seen", err, values(got), coord)
	}
	// Deleting a key that holds nothing still succeeds.
	if _, err := kv.Delete(ctx, "never-written"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(ctx, "never-written"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("never written: %v", err)
	}
}

// TestSiblingsPutWithoutContextAddsSibling: a put without a context keeps
// every value the key holds beside the new one (the documented DVVSet
// behaviour: a blind write is concurrent with everything), also after a
// delete without context.
func TestSiblingsPutWithoutContextAddsSibling(t *testing.T) {
	c := startCluster(t, 3)
	kv := siblingsTenant(t, c, "blind")
	ctx := ctxT(t)
	for _, v := range []string{"a", "b"} {
		if _, err := kv.Put(ctx, "k", []byte(v), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || !slices.Equal(values(got), []string{"a", "b"}) {
		t.Fatalf("two blind puts: %v %q, want both", err, values(got))
	}
	if _, err := kv.Delete(ctx, "k", client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("c"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != 0 || string(got.Value) != "c" {
		t.Fatalf("a blind put after a delete: %v %q, want only c", err, values(got))
	}
}
