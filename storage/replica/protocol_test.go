package replica_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// seenBatch is what a fake node saw of one write batch.
type seenBatch struct {
	legacy     bool // the 2-element form of node protocol 1
	proto      int
	mapVersion uint64
	ids        []uint64
}

// recordingNode answers every write batch with success and records it.
func recordingNode(t *testing.T, nc *nats.Conn, node string, delay time.Duration) func() []seenBatch {
	var mu sync.Mutex
	var seen []seenBatch
	sub, err := nc.Subscribe(subjects.StorageNode(node, subjects.NodeOpWrite), func(m *nats.Msg) {
		var b subjects.NodeWriteBatch
		if err := wire.UnmarshalNodeWriteBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		s := seenBatch{legacy: m.Data[0] == 0x92, proto: b.Proto, mapVersion: b.MapVersion}
		rep := subjects.NodeWriteReply{}
		for _, it := range b.Items {
			s.ids = append(s.ids, it.ID)
			rep.Results = append(rep.Results, subjects.NodeWriteResult{ID: it.ID})
		}
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
		time.Sleep(delay)
		_ = m.Respond(wire.MarshalNodeWriteReply(nil, &rep))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() []seenBatch {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// TestClientSendsMapVersionAndProtocol: a call's map version travels with
// its batch in node protocol 2 (0 for NewCall), and protocol 1 sends the
// old 2-element form with no map version.
func TestClientSendsMapVersionAndProtocol(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	seen := recordingNode(t, nc, "n1", 0)
	c := newClient(t, nc, replica.Config{})
	if c.Protocol() != subjects.NodeProtocolBatch {
		t.Fatalf("default protocol %d, want %d: the batch form nodes one protocol behind still read", c.Protocol(), subjects.NodeProtocolBatch)
	}
	deadline := time.Now().Add(5 * time.Second)
	send := func(call *replica.Call) {
		t.Helper()
		c.Write(call, "n1", deadline, writes(1)...)
		if o := outcomes(t, call, 1); len(o) != 1 {
			t.Fatal("no outcome")
		}
	}
	send(replica.NewCallAt(1, 42))
	send(replica.NewCall(1))
	if err := c.SetProtocol(1); err != nil {
		t.Fatal(err)
	}
	send(replica.NewCallAt(1, 43))
	for _, bad := range []int{0, subjects.NodeProtocolVersion + 1, -1} {
		if err := c.SetProtocol(bad); err == nil || c.Protocol() != 1 {
			t.Fatalf("SetProtocol(%d) = %v, protocol now %d", bad, err, c.Protocol())
		}
	}
	want := []seenBatch{
		{proto: 2, mapVersion: 42},
		{proto: 2, mapVersion: 0},
		{legacy: true, proto: 1, mapVersion: 0},
	}
	got := seen()
	if len(got) != len(want) {
		t.Fatalf("%d batches, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].legacy != want[i].legacy || got[i].proto != want[i].proto || got[i].mapVersion != want[i].mapVersion {
			t.Errorf("batch %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestBatchesKeepOneMapVersion: items queued behind a busy slot leave in
// batches of one map version each, in order, so no item is sent with a
// version other than its call's.
func TestBatchesKeepOneMapVersion(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	seen := recordingNode(t, nc, "n1", 20*time.Millisecond)
	c := newClient(t, nc, replica.Config{MaxInflight: 1})
	deadline := time.Now().Add(5 * time.Second)
	version := map[uint64]uint64{} // item id → its call's map version
	var calls []*replica.Call
	for _, v := range []uint64{5, 5, 6, 6, 5, 0, 0, 7} {
		call := replica.NewCallAt(2, v)
		ws := writes(2)
		c.Write(call, "n1", deadline, ws...)
		for _, w := range ws {
			version[w.ID] = v
		}
		calls = append(calls, call)
	}
	for _, call := range calls {
		for _, o := range outcomes(t, call, 2) {
			if o.Err != nil {
				t.Fatalf("item %d: %v", o.ID, o.Err)
			}
		}
	}
	got := seen()
	total := 0
	for _, b := range got {
		for _, id := range b.ids {
			if version[id] != b.mapVersion {
				t.Fatalf("item %d of map version %d sent in a batch of version %d", id, version[id], b.mapVersion)
			}
		}
		total += len(b.ids)
	}
	if total != len(version) {
		t.Fatalf("%d items sent, want %d", total, len(version))
	}
	// The first call leaves alone; the rest queue behind it and leave as
	// runs of one version: 5 | 5 | 6,6 | 5 | 0,0 | 7.
	if len(got) >= 2*len(calls) {
		t.Fatalf("%d batches for %d calls: queued calls were not batched", len(got), len(calls))
	}
}

// TestNotOwnerOutcome: a not_owner refusal matches ErrNotOwner, whether
// the node sets Kind (writes) or only the Err text (reads).
func TestNotOwnerOutcome(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	refusal := subjects.NotOwnerError(17, 42, 40)
	fakeNode(t, nc, "n1", func(b *subjects.NodeWriteBatch) ([]subjects.NodeWriteReply, *subjects.Error) {
		return []subjects.NodeWriteReply{{Results: []subjects.NodeWriteResult{
			{ID: b.Items[0].ID, Err: refusal, Kind: subjects.KindNotOwner},
			{ID: b.Items[1].ID, Err: "commit: disk full"},
		}}}, nil
	})
	sub, err := nc.Subscribe(subjects.StorageNode("n1", subjects.NodeOpRead), func(m *nats.Msg) {
		var b subjects.NodeReadBatch
		if err := wire.UnmarshalNodeReadBatch(m.Data, &b); err != nil {
			t.Errorf("bad batch: %v", err)
			return
		}
		r := subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: b.Items[0].ID, Err: refusal}}}
		_ = m.Respond(wire.MarshalNodeReadReply(nil, &r))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c := newClient(t, nc, replica.Config{})
	deadline := time.Now().Add(5 * time.Second)
	call := replica.NewCallAt(3, 40)
	ws := writes(2)
	c.Write(call, "n1", deadline, ws...)
	rid := c.Read(call, "n1", deadline, subjects.NodeRead{Tenant: "t", Key: "k"})
	got := outcomes(t, call, 3)
	if o := got[ws[0].ID]; !errors.Is(o.Err, replica.ErrNotOwner) || o.Err.Error() != refusal {
		t.Fatalf("refused write: %v", o.Err)
	}
	if o := got[ws[1].ID]; o.Err == nil || errors.Is(o.Err, replica.ErrNotOwner) {
		t.Fatalf("failed write: %v", o.Err)
	}
	if o := got[rid]; !errors.Is(o.Err, replica.ErrNotOwner) {
		t.Fatalf("refused read: %v", o.Err)
	}
}

// TestScanPartitionProtocol: ScanPartition writes the scan in the
// client's protocol, with the request's map version in protocol 2.
func TestScanPartitionProtocol(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	var mu sync.Mutex
	var seen []subjects.PartitionScan
	var sizes []byte
	sub, err := nc.Subscribe(subjects.StorageNode("n1", subjects.NodeOpScan), func(m *nats.Msg) {
		var req subjects.PartitionScan
		if err := wire.UnmarshalPartitionScan(m.Data, &req); err != nil {
			t.Errorf("bad scan: %v", err)
			return
		}
		mu.Lock()
		seen, sizes = append(seen, req), append(sizes, m.Data[0])
		mu.Unlock()
		b, _ := msgpackReply()
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	c := newClient(t, nc, replica.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := c.ScanPartition(ctx, "n1", subjects.PartitionScan{Partitions: 16, Partition: 3, MapVersion: 9}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetProtocol(1); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.ScanPartition(ctx, "n1", subjects.PartitionScan{Partitions: 16, Partition: 3, MapVersion: 9}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || seen[0].Proto != 2 || seen[0].MapVersion != 9 || sizes[0] != 0x97 ||
		seen[1].Proto != 1 || seen[1].MapVersion != 0 || sizes[1] != 0x96 {
		t.Fatalf("scans seen %+v, array headers %x", seen, sizes)
	}
}

func msgpackReply() ([]byte, error) {
	// An empty PartitionScanReply: [records, cursor] = [[], nil].
	return []byte{0x92, 0x90, 0xc0}, nil
}
