package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestRebuildReplacedDisk (issue 15, D7; separate processes): storage
// node-3 is SIGKILLed and comes back on a new, empty directory under the
// same id, which the placement map still names as an owner. From its first
// answer on it must never answer a read of a key with less than the key's
// value: until it pulled its partitions back from the other owners it
// answers `rebuilding`, which the coordinators count as no answer. At the
// end it holds every key, and reads at one with the other two stopped find
// all of them.
func TestRebuildReplacedDisk(t *testing.T) {
	c := startCluster(t, clusterConfig{storageNodes: 3, coordinators: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rf := 3
	if _, err := c.admin.CreateTenant(ctx, "disk", client.TenantSpec{ReplicationFactor: &rf}); err != nil {
		t.Fatal(err)
	}
	kv, err := client.New(c.nc, "disk")
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	key := func(i int) string { return fmt.Sprintf("key-%03d", i) }
	for i := range n {
		if _, err := kv.Put(ctx, key(i), []byte("v-"+key(i)), client.WithConsistency(subjects.All)); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	node3 := c.storage[2]
	c.kill(node3)
	if err := os.RemoveAll(filepath.Join(c.dir, "node-3")); err != nil {
		t.Fatal(err)
	}
	c.start(node3) // serving: it answers a dump
	m, err := c.admin.Placement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	read := func(k string) subjects.NodeReadResult {
		data, _ := msgpack.Marshal(&subjects.NodeReadBatch{Proto: subjects.NodeProtocolVersion, MapVersion: m.Version(),
			Items: []subjects.NodeRead{{ID: 1, Tenant: "disk", Key: k}}})
		msg, err := c.nc.RequestWithContext(ctx, subjects.StorageNode("node-3", subjects.NodeOpRead), data)
		if err != nil {
			t.Fatalf("read %q from node-3: %v", k, err)
		}
		var rep subjects.NodeReadReply
		if err := wire.UnmarshalNodeReadReply(msg.Data, &rep); err != nil || len(rep.Results) != 1 {
			t.Fatalf("read reply: %+v %v", rep, err)
		}
		return rep.Results[0]
	}
	refused, served := 0, map[string]bool{}
	deadline := time.Now().Add(90 * time.Second)
	for len(served) < n {
		if time.Now().After(deadline) {
			t.Fatalf("node-3 serves %d of %d keys after 90s (%d reads refused rebuilding)\n%s", len(served), n, refused, node3.p.Output())
		}
		for i := range n {
			r := read(key(i))
			switch {
			case strings.HasPrefix(r.Err, subjects.KindRebuilding+": "):
				refused++
			case r.Err == "" && r.LWW != nil && string(r.LWW.Value) == "v-"+key(i):
				served[key(i)] = true
			case r.Err != "" && strings.HasPrefix(r.Err, subjects.KindNotOwner+": "):
				// no map yet: refused as not_owner, never answered
			default:
				t.Fatalf("node-3 answered %q with %+v before holding it", key(i), r)
			}
		}
	}
	t.Logf("node-3 refused %d reads while rebuilding", refused)
	c.kill(c.storage[0])
	c.kill(c.storage[1])
	for i := range n {
		got, err := kv.Get(ctx, key(i), client.WithConsistency(subjects.One))
		if err != nil || string(got.Value) != "v-"+key(i) {
			t.Fatalf("read of %q at one from node-3 alone: %+v %v", key(i), got, err)
		}
	}
}
