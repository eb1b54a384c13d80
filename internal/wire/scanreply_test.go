package wire

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
)

// TestPartitionScanReplyMatchesLibrary: the hand-written scan reply
// writes exactly the library's bytes (so old and new nodes read each
// other), and reads what the library writes back to the same value; a
// reply built record by record (header, records, end) is the same bytes.
func TestPartitionScanReplyMatchesLibrary(t *testing.T) {
	big := bytes.Repeat([]byte{7}, 70_000)
	cases := []subjects.PartitionScanReply{
		{},
		{Records: []subjects.PartitionRecord{}},
		{Records: []subjects.PartitionRecord{{Tenant: "acme", Key: "k", State: []byte{0x91, 0xc0}}}, Cursor: []byte("acme\x00k")},
		{Records: []subjects.PartitionRecord{
			{Tenant: "acme", Key: strings.Repeat("k", 40), State: bytes.Repeat([]byte{1}, 300)},
			{Tenant: "acme", Key: "b", State: big},
			{Tenant: "beta", Key: "c", State: []byte{}},
		}},
	}
	for i := 0; i < 20; i++ { // more than 15 records: a 16-bit array header
		cases[3].Records = append(cases[3].Records, subjects.PartitionRecord{Tenant: "t", Key: strings.Repeat("x", i+1), State: []byte{0x91, byte(i)}})
	}
	for i, c := range cases {
		want, err := msgpack.Marshal(&c)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendPartitionScanReply(nil, &c); !bytes.Equal(got, want) {
			t.Errorf("case %d: wrote %x, the library %x", i, got, want)
		}
		parts := AppendPartitionScanReplyHeader(nil, len(c.Records))
		fromBytes := AppendPartitionScanReplyHeader(nil, len(c.Records))
		for _, r := range c.Records {
			parts = AppendPartitionRecord(parts, r.Tenant, r.Key, r.State)
			fromBytes = AppendPartitionRecordBytes(fromBytes, []byte(r.Tenant), []byte(r.Key), r.State)
		}
		if parts = AppendPartitionScanReplyEnd(parts, c.Cursor); c.Records != nil && !bytes.Equal(parts, want) {
			t.Errorf("case %d: built in parts %x, the library %x", i, parts, want)
		}
		if fromBytes = AppendPartitionScanReplyEnd(fromBytes, c.Cursor); c.Records != nil && !bytes.Equal(fromBytes, want) {
			t.Errorf("case %d: built from bytes %x, the library %x", i, fromBytes, want)
		}
		var got, lib subjects.PartitionScanReply
		if !decodePartitionScanReply(want, &got) {
			t.Errorf("case %d: the fast path refused the library's bytes", i)
		}
		if err := msgpack.Unmarshal(want, &lib); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, lib) {
			t.Errorf("case %d: read %+v, the library %+v", i, got, lib)
		}
	}
}

// TestPartitionScanReplyBadInput: truncated and mistyped input
// is refused (by the fast path, then by the library), never a panic.
func TestPartitionScanReplyBadInput(t *testing.T) {
	good := AppendPartitionScanReply(nil, &subjects.PartitionScanReply{Records: []subjects.PartitionRecord{{Tenant: "acme", Key: "k", State: []byte{0x91, 0xc0}}}, Cursor: []byte("acme\x00k")})
	for i := 0; i < len(good); i++ {
		var rep subjects.PartitionScanReply
		if err := UnmarshalPartitionScanReply(good[:i], &rep); err == nil {
			t.Errorf("a reply cut at %d of %d bytes decoded: %+v", i, len(good), rep)
		}
	}
	for _, bad := range [][]byte{
		{0x92, 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0},      // a count beyond the input
		{0x92, 0x91, 0x93, 0x01, 0xa1, 'k', 0xc0, 0xc0}, // a tenant that is a number
	} {
		var rep subjects.PartitionScanReply
		if err := UnmarshalPartitionScanReply(bad, &rep); err == nil {
			t.Errorf("%x decoded: %+v", bad, rep)
		}
	}
}

// FuzzPartitionScanReply: whatever the fast path accepts, the library
// reads to the same value, and both write the same bytes for it; the
// public decoder never panics.
func FuzzPartitionScanReply(f *testing.F) {
	f.Add(AppendPartitionScanReply(nil, &subjects.PartitionScanReply{Records: []subjects.PartitionRecord{{Tenant: "acme", Key: "k", State: []byte{0x91, 0xc0}}}, Cursor: []byte("acme\x00k")}))
	f.Add(AppendPartitionScanReply(nil, &subjects.PartitionScanReply{Records: []subjects.PartitionRecord{}}))
	f.Add([]byte{0x92, 0xc0, 0xc0})
	f.Add([]byte{0x90})
	f.Fuzz(func(t *testing.T, data []byte) {
		var rep subjects.PartitionScanReply
		_ = UnmarshalPartitionScanReply(data, &rep)
		var fast, lib subjects.PartitionScanReply
		if !decodePartitionScanReply(data, &fast) {
			return
		}
		if err := msgpack.Unmarshal(data, &lib); err != nil {
			t.Fatalf("the fast path accepted %x, the library refuses it: %v", data, err)
		}
		if !reflect.DeepEqual(fast, lib) {
			t.Fatalf("%x: fast %+v, library %+v", data, fast, lib)
		}
		want, err := msgpack.Marshal(&lib)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendPartitionScanReply(nil, &fast); !bytes.Equal(got, want) {
			t.Fatalf("%x: writes %x, the library %x", data, got, want)
		}
	})
}
