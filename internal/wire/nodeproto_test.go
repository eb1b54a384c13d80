package wire

import (
	"bytes"
	"reflect"
	"slices"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
)

// TestNodeBatchProtocolForms: a proto 1 batch is byte for byte what
// protocol 1 builds sent and read (so an old node reads it), a proto 2
// batch carries the map version, and the decoders read both.
func TestNodeBatchProtocolForms(t *testing.T) {
	items := []subjects.NodeWrite{{ID: 7, Tenant: "t", Key: "k", LWW: ver(3, "a", "v", false)}}
	reads := []subjects.NodeRead{{ID: 8, Tenant: "t", Key: "k"}}

	// What protocol 1 builds wrote: [1, items], with this package's item
	// encoders.
	old := appendItems(appendInt([]byte{0x92}, 1), items, AppendNodeWrite)
	w1 := MarshalNodeWriteBatch(nil, &subjects.NodeWriteBatch{Proto: 1, Items: items, MapVersion: 99})
	if !bytes.Equal(w1, old) {
		t.Fatalf("proto 1 write batch %x, protocol 1 wrote %x", w1, old)
	}
	oldRead := appendItems(appendInt([]byte{0x92}, 1), reads, AppendNodeRead)
	if r1 := MarshalNodeReadBatch(nil, &subjects.NodeReadBatch{Proto: 1, Items: reads, MapVersion: 99}); !bytes.Equal(r1, oldRead) {
		t.Fatalf("proto 1 read batch %x, protocol 1 wrote %x", r1, oldRead)
	}
	// And what the library writes for the protocol 1 shape.
	libOld, _ := msgpack.Marshal(&nodeWriteBatchV1{Proto: 1, Items: items})
	var wb subjects.NodeWriteBatch
	if err := UnmarshalNodeWriteBatch(libOld, &wb); err != nil || wb.MapVersion != 0 || wb.Items[0].LWW.Dot.Counter != 3 {
		t.Fatalf("library-written proto 1 batch decoded as %+v, %v", wb, err)
	}
	if err := UnmarshalNodeWriteBatch(old, &wb); err != nil || wb.Proto != 1 || wb.MapVersion != 0 || len(wb.Items) != 1 || wb.Items[0].Key != "k" {
		t.Fatalf("proto 1 write batch decoded as %+v, %v", wb, err)
	}
	var rb subjects.NodeReadBatch
	if err := UnmarshalNodeReadBatch(oldRead, &rb); err != nil || rb.Proto != 1 || rb.MapVersion != 0 || len(rb.Items) != 1 {
		t.Fatalf("proto 1 read batch decoded as %+v, %v", rb, err)
	}

	for _, v := range []uint64{0, 1, 42, 1 << 40, 1<<64 - 1} {
		in := subjects.NodeWriteBatch{Proto: 2, Items: items, MapVersion: v}
		b := MarshalNodeWriteBatch(nil, &in)
		var lib subjects.NodeWriteBatch
		if err := msgpack.Unmarshal(b, &lib); err != nil || lib.MapVersion != v {
			t.Fatalf("the library reads proto 2 batch %x as %+v, %v", b, lib, err)
		}
		// The streaming form the replica client uses writes the same.
		s := AppendNodeWriteBatchHeader(nil, 2, len(items))
		s = AppendNodeWrite(s, &items[0])
		if s = AppendNodeBatchEnd(s, 2, v); !bytes.Equal(s, b) {
			t.Fatalf("header+items+end %x, MarshalNodeWriteBatch %x", s, b)
		}
		var out subjects.NodeWriteBatch
		if err := UnmarshalNodeWriteBatch(b, &out); err != nil || out.MapVersion != v || out.Proto != 2 {
			t.Fatalf("map version %d decoded as %+v, %v", v, out, err)
		}
		rin := subjects.NodeReadBatch{Proto: 2, Items: reads, MapVersion: v}
		rbs := AppendNodeBatchEnd(AppendNodeRead(AppendNodeReadBatchHeader(nil, 2, 1), &reads[0]), 2, v)
		var rout subjects.NodeReadBatch
		if err := UnmarshalNodeReadBatch(rbs, &rout); err != nil || !reflect.DeepEqual(rout, rin) {
			t.Fatalf("read batch at %d decoded as %+v, %v", v, rout, err)
		}
	}
	s := AppendNodeBatchEnd(AppendNodeWrite(AppendNodeWriteBatchHeader(nil, 1, 1), &items[0]), 1, 5)
	if !bytes.Equal(s, old) {
		t.Fatalf("proto 1 header+items+end %x, want %x", s, old)
	}

	// Neither more elements nor a map version on a reply.
	for name, data := range map[string][]byte{
		"4 elements":  {0x94, 0x02, 0x90, 0x00, 0x00},
		"1 element":   {0x91, 0x02},
		"bad version": {0x93, 0x02, 0x90, 0xa1, 'x'},
	} {
		if decodeNodeWriteBatch(data, &wb) || decodeNodeReadBatch(data, &rb) {
			t.Errorf("%s: decoded", name)
		}
		if UnmarshalNodeWriteBatch(data, &wb) == nil {
			t.Errorf("%s: UnmarshalNodeWriteBatch accepted it", name)
		}
	}
	var rep subjects.NodeWriteReply
	if decodeNodeWriteReply([]byte{0x93, 0x90, 0xc2, 0x00}, &rep) {
		t.Error("a 3-element reply decoded")
	}
}

// TestPartitionScanProtocolForms: the scan request in both node protocol
// forms.
func TestPartitionScanProtocolForms(t *testing.T) {
	v1 := subjects.PartitionScan{Proto: 1, Partitions: 1024, Partition: 17, Cursor: []byte("t\x00k"), Limit: 10, MaxBytes: 1 << 20}
	old, _ := msgpack.Marshal(&partitionScanV1{Proto: 1, Partitions: 1024, Partition: 17, Cursor: []byte("t\x00k"), Limit: 10, MaxBytes: 1 << 20})
	withV := v1
	withV.MapVersion = 9
	b, err := MarshalPartitionScan(nil, &withV)
	if err != nil || !bytes.Equal(b, old) {
		t.Fatalf("proto 1 scan %x (%v), protocol 1 wrote %x", b, err, old)
	}
	var got subjects.PartitionScan
	if err := UnmarshalPartitionScan(old, &got); err != nil || !reflect.DeepEqual(got, v1) {
		t.Fatalf("proto 1 scan decoded as %+v, %v", got, err)
	}
	v2 := v1
	v2.Proto, v2.MapVersion = 2, 1<<50
	b, err = MarshalPartitionScan([]byte("x"), &v2)
	if err != nil || b[0] != 'x' || b[1] != 0x97 {
		t.Fatalf("proto 2 scan %x, %v", b, err)
	}
	if err := UnmarshalPartitionScan(b[1:], &got); err != nil || !reflect.DeepEqual(got, v2) {
		t.Fatalf("proto 2 scan decoded as %+v, %v", got, err)
	}
	// A tenant filter adds an eighth element; without one the seven-element
	// form is kept (what the first protocol 2 nodes decode).
	v3 := v2
	v3.Tenants = []string{"acme", "zeta"}
	b, err = MarshalPartitionScan(nil, &v3)
	if err != nil || b[0] != 0x98 {
		t.Fatalf("scan with tenants %x, %v", b, err)
	}
	if err := UnmarshalPartitionScan(b, &got); err != nil || !reflect.DeepEqual(got, v3) {
		t.Fatalf("scan with tenants decoded as %+v, %v", got, err)
	}
	if err := Unmarshal(false, b, &got); err != nil || !reflect.DeepEqual(got, v3) {
		t.Fatalf("Unmarshal of a scan with tenants: %+v, %v", got, err)
	}
	v3.Tenants = []string{}
	if b, err = MarshalPartitionScan(nil, &v3); err != nil || b[0] != 0x97 {
		t.Fatalf("scan with an empty tenant filter %x, %v: want the seven-element form", b, err)
	}
	// A rebuild's scan is sent in the full form, tenants or not.
	v4 := v2
	v4.Rebuild = true
	if b, err = MarshalPartitionScan(nil, &v4); err != nil || b[0] != 0x99 {
		t.Fatalf("a rebuild's scan %x, %v: want the nine-element form", b, err)
	}
	if err := UnmarshalPartitionScan(b, &got); err != nil || !got.Rebuild || got.MapVersion != v4.MapVersion || len(got.Tenants) != 0 {
		t.Fatalf("a rebuild's scan decoded as %+v, %v", got, err)
	}
	// The generic entry points take the same path.
	if err := Unmarshal(false, old, &got); err != nil || !reflect.DeepEqual(got, v1) {
		t.Fatalf("Unmarshal of a proto 1 scan: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {0x95, 1, 2, 3, 4, 5}, {0x96, 0xc1}, {0x98, 1, 1, 1, 1, 1, 1, 1, 1}, {0x98, 1, 1, 1, 0xc0, 1, 1, 1, 0x91, 1}, {0x99, 1, 1, 1, 0xc0, 1, 1, 1, 0x90, 1}, append(slices.Clone(old), 0)} {
		if err := UnmarshalPartitionScan(bad, &got); err == nil {
			t.Errorf("%x: decoded", bad)
		}
	}
}
