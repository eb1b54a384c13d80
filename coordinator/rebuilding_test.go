package coordinator_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// rebuildingNode stops storage node id and answers every read item in its
// place with the item error kind `rebuilding`, as a node with a new or
// wiped directory does until it pulled its partitions back (storage
// rebuild.go); it holds nothing, so any other answer would be "not found".
func rebuildingNode(t *testing.T, nc *nats.Conn, stop func(string) error, id string) {
	t.Helper()
	if err := stop(id); err != nil {
		t.Fatal(err)
	}
	if _, err := nc.Subscribe(subjects.StorageNode(id, subjects.NodeOpRead), func(m *nats.Msg) {
		var b subjects.NodeReadBatch
		if err := wire.UnmarshalNodeReadBatch(m.Data, &b); err != nil {
			return
		}
		var r subjects.NodeReadReply
		for _, it := range b.Items {
			r.Results = append(r.Results, subjects.NodeReadResult{ID: it.ID, Err: subjects.KindRebuilding + ": rebuilding the partition"})
		}
		data, _ := msgpack.Marshal(&r)
		_ = m.Respond(data)
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// TestRebuildingCountsAsNoAnswer: a replica answering `rebuilding` is
// counted as not answering, exactly like a node that is down: a read it
// alone answers is unavailable, never "not found", and a read of a level
// the other replicas meet finds the value.
func TestRebuildingCountsAsNoAnswer(t *testing.T) {
	c := startCluster(t, 3)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "k", []byte("v"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	nc := connect(t, c)
	rebuildingNode(t, nc, c.StopNode, "node-3")
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.Quorum))
	if err != nil || !got.Found || string(got.Value) != "v" {
		t.Fatalf("quorum read with one replica rebuilding: %+v %v", got, err)
	}
	if _, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All)); !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "rebuilding") {
		t.Fatalf("all read with one replica rebuilding: %v, want unavailable naming rebuilding", err)
	}
	for _, id := range []string{"node-1", "node-2"} {
		if err := c.StopNode(id); err != nil {
			t.Fatal(err)
		}
	}
	// Only the rebuilding replica answers: it must not count as "not found".
	if got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.One)); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("one read answered only by a rebuilding replica: %+v %v, want unavailable", got, err)
	}
}
