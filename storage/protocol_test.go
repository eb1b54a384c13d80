package storage

import (
	"context"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// TestNodeAcceptsBothProtocols: during a rolling upgrade a node serves
// coordinators of node protocol 1 (2-element batches, 6-element scans)
// and 2 (with a map version) alike.
func TestNodeAcceptsBothProtocols(t *testing.T) {
	s := natstest.RunServer(t)
	startNode(t, s, Config{})
	rc, err := replica.New(natstest.Connect(t, s), replica.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, proto := range []int{subjects.NodeProtocolMin, subjects.NodeProtocolVersion} {
		if err := rc.SetProtocol(proto); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		key := "k" + string(rune('0'+proto))
		call := replica.NewCallAt(2, 0)
		rc.Write(call, "node-1", deadline, subjects.NodeWrite{Tenant: "t", Key: key,
			LWW: &vclock.Version{Dot: vclock.Dot{Counter: uint64(proto), Actor: "a"}, Value: []byte("v")}})
		if o := <-call.Outcomes(); o.Err != nil {
			t.Fatalf("proto %d write: %v", proto, o.Err)
		}
		rc.Read(call, "node-1", deadline, subjects.NodeRead{Tenant: "t", Key: key})
		if o := <-call.Outcomes(); o.Err != nil || o.Read == nil || o.Read.LWW == nil || o.Read.LWW.Dot.Counter != uint64(proto) {
			t.Fatalf("proto %d read: %+v", proto, o)
		}
		p := ring.Partition("t", key, ring.DefaultPartitions)
		rep, _, err := rc.ScanPartition(ctx, "node-1", subjects.PartitionScan{Partitions: ring.DefaultPartitions, Partition: p})
		if err != nil {
			t.Fatalf("proto %d scan: %v", proto, err)
		}
		if len(rep.Records) != 1 || rep.Records[0].Key != key {
			t.Fatalf("proto %d scan of partition %d: %+v", proto, p, rep.Records)
		}
	}
}
