package wire_test

// Fuzz targets for the request decoders: whatever arrives on a subject,
// wire.Unmarshal must not panic and must answer a 400 (*Error of kind
// invalid) when it cannot decode. What it accepts must re-encode to bytes
// that decode to the same encoding again.
//
// Run one for a while with, for example:
//
//	go test ./internal/wire -run '^$' -fuzz '^FuzzUnmarshalRequest$' -fuzztime 20s
//
// The seed corpus is the f.Add calls below plus testdata/fuzz/<target>/.

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// recoveredPrefix starts the message wire.Unmarshal gives a decoder
// panic it recovered from: a bug the fuzzer must report, not a 400.
const recoveredPrefix = "malformed request: "

// checkDecode decodes data into v and checks the contract. fresh returns a
// new zero value of v's type for the re-decode.
func checkDecode(t *testing.T, isJSON bool, data []byte, v any, fresh func() any) {
	t.Helper()
	err := wire.Unmarshal(isJSON, data, v)
	if err != nil {
		var e *subjects.Error
		if !errors.As(err, &e) {
			t.Fatalf("error is %T, not *subjects.Error: %v", err, err)
		}
		if e.Code != subjects.CodeInvalid || e.Kind != subjects.KindInvalid {
			t.Fatalf("error is %d %s, want 400 invalid: %v", e.Code, e.Kind, err)
		}
		if strings.HasPrefix(e.Message, recoveredPrefix) {
			t.Fatalf("the decoder panicked on %q: %v", data, err)
		}
		return
	}
	once, err := wire.Marshal(isJSON, v)
	if err != nil {
		t.Fatalf("accepted %q but cannot encode the result %+v: %v", data, v, err)
	}
	again := fresh()
	if err := wire.Unmarshal(isJSON, once, again); err != nil {
		t.Fatalf("cannot decode its own encoding %q of %+v: %v", once, v, err)
	}
	twice, err := wire.Marshal(isJSON, again)
	if err != nil {
		t.Fatalf("encode %+v: %v", again, err)
	}
	if !bytes.Equal(once, twice) {
		t.Fatalf("encoding is not stable:\n%q\n%q", once, twice)
	}
}

func mustMsgpack(f *testing.F, v any) []byte {
	f.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// garbage is hostile input every target starts from.
var garbage = [][]byte{
	nil,
	{},
	{0xc1},                         // never-used msgpack code
	{0xdd, 0xff, 0xff, 0xff, 0xff}, // array32 claiming 4 billion items
	{0xdf, 0x7f, 0xff, 0xff, 0xff}, // map32 claiming 2 billion pairs
	{0xc6, 0xff, 0xff, 0xff, 0xf0}, // bin32 claiming 4 GiB
	{0x81, 0xa3, 'k', 'e', 'y', 0xcf, 1, 2, 3, 4, 5, 6, 7, 8}, // key as uint64
	{0x92, 0x01}, // truncated array
	{0x81, 0xa5, 'v', 'a', 'l', 'u', 'e', 0xd9}, // truncated str8
	[]byte(`{"key":`),
	[]byte(`{"key":"k","value":"v","value_base64":"dg=="}`),
	[]byte(`{"key_base64":"!!!"}`),
	[]byte(`{"key":1e999}`),
	[]byte(`[1,2,3]`),
	[]byte(`{"key":"k"} trailing`),
	[]byte("\xff\xfe\x00"),
	// What encoding/json and the library take but must be refused:
	[]byte(`{"key":"\ud800","value":"v"}`),                                    // lone surrogate
	[]byte("{\"key\":\"a\xffb\"}"),                                            // invalid UTF-8
	[]byte(`{"KEY":"k","Tenant_ID":"t","NODE_ID":"n"}`),                       // field name case
	[]byte(`{"key":"a","k\u0065y":"b"}`),                                      // duplicate field
	[]byte(`{"key":"\ud83d\ude00"}`),                                          // a valid surrogate pair
	{0x81, 0xa3, 'k', 'e', 'y', 0xa1, 'k', 0xc0},                              // trailing byte after a map
	{0x82, 0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa3, 'k', 'e', 'y', 0xc4, 1, 'b'}, // duplicate key, str then bin
	{0x81, 0xa3, 'k', 'e', 'y', 0xc4, 2, 0x00, 0xff},                          // binary key as bin
}

func FuzzUnmarshalRequest(f *testing.F) {
	for _, g := range garbage {
		f.Add(g, false)
		f.Add(g, true)
	}
	req := subjects.Request{Key: "greeting", Value: []byte("hello"), Consistency: subjects.Quorum, Context: "c", IdempotencyKey: "i", TimeoutMS: 500}
	f.Add(mustMsgpack(f, &req), false)
	f.Add(mustMsgpack(f, &subjects.Request{Key: "\x00\xff", Value: []byte{}}), false)
	j, err := req.MarshalJSON()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(j, true)
	f.Add([]byte(`{"key_base64":"AP8=","value_base64":"AAEC"}`), true)
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool) {
		checkDecode(t, isJSON, data, &subjects.Request{}, func() any { return &subjects.Request{} })
	})
}

func FuzzUnmarshalAdminRequest(f *testing.F) {
	rf, level, policy := 3, subjects.Quorum, subjects.PolicyLWW
	seeds := [][]byte{
		mustMsgpack(f, &subjects.TenantRequest{TenantID: "acme", ReplicationFactor: &rf, DefaultConsistency: &level, ConflictPolicy: &policy, Version: 2, Force: true}),
		mustMsgpack(f, &subjects.NodeRequest{NodeID: "node-1", VirtualNodes: 128, Epoch: 7}),
		mustMsgpack(f, &subjects.DumpRequest{Tenant: "acme", After: "k", Limit: 10}),
	}
	for kind := range uint8(3) {
		for _, g := range garbage {
			f.Add(g, false, kind)
			f.Add(g, true, kind)
		}
		for _, s := range seeds {
			f.Add(s, false, kind)
		}
	}
	f.Add([]byte(`{"tenant_id":"acme","replication_factor":3,"default_consistency":"one"}`), true, uint8(0))
	f.Add([]byte(`{"tenant_id":"acme","replication_factor":"3"}`), true, uint8(0))
	f.Add([]byte(`{"node_id":"node-1","virtual_nodes":-1}`), true, uint8(1))
	f.Add([]byte(`{"tenant":"acme","limit":1e3}`), true, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool, kind uint8) {
		switch kind % 3 {
		case 0:
			checkDecode(t, isJSON, data, &subjects.TenantRequest{}, func() any { return &subjects.TenantRequest{} })
		case 1:
			checkDecode(t, isJSON, data, &subjects.NodeRequest{}, func() any { return &subjects.NodeRequest{} })
		default:
			checkDecode(t, isJSON, data, &subjects.DumpRequest{}, func() any { return &subjects.DumpRequest{} })
		}
	})
}

// FuzzUnmarshalNodeMessage covers the storage-node batches and replies
// (msgpack arrays), which carry versions.
func FuzzUnmarshalNodeMessage(f *testing.F) {
	v := &vclock.Version{Dot: vclock.Dot{Actor: "c1", Counter: 1 << 40}, Value: []byte("v")}
	seeds := [][]byte{
		mustMsgpack(f, &subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: []subjects.NodeWrite{{ID: 1, Tenant: "acme", Key: "k", LWW: v}, {ID: 2, Tenant: "acme", Key: "t", LWW: &vclock.Version{Dot: v.Dot, Tombstone: true}}}}),
		mustMsgpack(f, &subjects.NodeReadBatch{Proto: subjects.NodeProtocolVersion, Items: []subjects.NodeRead{{ID: 1, Tenant: "acme", Key: "k"}}}),
		mustMsgpack(f, &subjects.NodeWriteReply{Results: []subjects.NodeWriteResult{{ID: 1}, {ID: 2, Err: "boom", LWW: v}}, More: true}),
		mustMsgpack(f, &subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: 1, LWW: v}, {ID: 2}}}),
		// Node protocol 1 batches (2 elements) and 2 (with a map version).
		wire.MarshalNodeWriteBatch(nil, &subjects.NodeWriteBatch{Proto: 1, Items: []subjects.NodeWrite{{ID: 1, Tenant: "acme", Key: "k", LWW: v}}}),
		wire.MarshalNodeWriteBatch(nil, &subjects.NodeWriteBatch{Proto: 2, MapVersion: 1 << 33, Items: []subjects.NodeWrite{{ID: 1, Tenant: "acme", Key: "k", LWW: v}}}),
		wire.MarshalNodeReadBatch(nil, &subjects.NodeReadBatch{Proto: 1, Items: []subjects.NodeRead{{ID: 1, Tenant: "acme", Key: "k"}}}),
		wire.MarshalNodeReadBatch(nil, &subjects.NodeReadBatch{Proto: 2, MapVersion: 7, Items: []subjects.NodeRead{{ID: 1, Tenant: "acme", Key: "k"}}}),
		mustScan(f, &subjects.PartitionScan{Proto: 1, Partitions: 1024, Partition: 3, Cursor: []byte("acme\x00k"), Limit: 100}),
		mustScan(f, &subjects.PartitionScan{Proto: 2, Partitions: 1024, Partition: 3, MapVersion: 12}),
		mustScan(f, &subjects.PartitionScan{Proto: 2, Partitions: 1024, Partition: 3, Cursor: []byte("acme\x00k"), MapVersion: 12, Tenants: []string{"acme", "beta"}}),
		mustScan(f, &subjects.PartitionScan{Proto: 3, Partitions: 1024, Partition: 3, MapVersion: 12, Rebuild: true}),
	}
	for kind := range uint8(5) {
		for _, g := range garbage {
			f.Add(g, kind)
		}
		for _, s := range seeds {
			f.Add(s, kind)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, kind uint8) {
		switch kind % 5 {
		case 0:
			checkDecode(t, false, data, &subjects.NodeWriteBatch{}, func() any { return &subjects.NodeWriteBatch{} })
		case 1:
			checkDecode(t, false, data, &subjects.NodeReadBatch{}, func() any { return &subjects.NodeReadBatch{} })
		case 2:
			checkDecode(t, false, data, &subjects.NodeWriteReply{}, func() any { return &subjects.NodeWriteReply{} })
		case 3:
			checkDecode(t, false, data, &subjects.NodeReadReply{}, func() any { return &subjects.NodeReadReply{} })
		default:
			checkDecode(t, false, data, &subjects.PartitionScan{}, func() any { return &subjects.PartitionScan{} })
		}
	})
}

func FuzzUnmarshalRepairRequest(f *testing.F) {
	for _, g := range garbage {
		f.Add(g)
	}
	f.Add(mustMsgpack(f, &subjects.RepairRequest{
		Tenant: "acme", Key: "k", Targets: []string{"node-1", "node-2"}, Reason: subjects.RepairReasonHint, Coordinator: "c1",
		LWW: &vclock.Version{Dot: vclock.Dot{Actor: "c1", Counter: 42}, Value: []byte("v")},
	}))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkDecode(t, false, data, &subjects.RepairRequest{}, func() any { return &subjects.RepairRequest{} })
	})
}

func mustScan(f *testing.F, s *subjects.PartitionScan) []byte {
	f.Helper()
	b, err := wire.MarshalPartitionScan(nil, s)
	if err != nil {
		f.Fatal(err)
	}
	return b
}
