package wire

import (
	"bytes"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func ver(counter uint64, actor, value string, tomb bool) *vclock.Version {
	v := &vclock.Version{Dot: vclock.Dot{Counter: counter, Actor: actor}, Tombstone: tomb}
	if value != "-" {
		v.Value = []byte(value)
	}
	return v
}

// codecCases are values of every hand-coded type, with the edge cases of
// their encodings: nil and empty slices, nil versions, every integer and
// string width.
func codecCases() []any {
	big := bytes.Repeat([]byte("v"), 70_000)
	long := strings.Repeat("k", 300)
	return []any{
		&subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion, Items: []subjects.NodeWrite{
			{ID: 1, Tenant: "default", Key: "user000000000001", LWW: ver(1<<62|7, "c0ffee01", strings.Repeat("x", 256), false)},
			{ID: 200, Tenant: "t", Key: long, LWW: ver(300, "a", "", false)},
			{ID: 70_000, Tenant: "t", Key: "k", LWW: ver(1<<33, strings.Repeat("a", 40), "-", true)},
			{ID: 1 << 40, Tenant: "", Key: "", LWW: nil},
			{ID: 0, Tenant: "t", Key: "big", LWW: &vclock.Version{Value: big}},
		}},
		&subjects.NodeWriteBatch{Proto: 1},
		&subjects.NodeWriteBatch{Proto: 1, Items: []subjects.NodeWrite{{ID: 3, Tenant: "t", Key: "k", LWW: ver(1, "a", "v", false)}}},
		&subjects.NodeWriteBatch{Proto: 2, MapVersion: 42, Items: []subjects.NodeWrite{{ID: 3, Tenant: "t", Key: "k", LWW: ver(1, "a", "v", false)}}},
		&subjects.NodeWriteBatch{Proto: 2, MapVersion: 1<<64 - 1},
		&subjects.NodeWriteBatch{Proto: -3, Items: []subjects.NodeWrite{}},
		&subjects.NodeWriteBatch{},
		&subjects.NodeWriteReply{Results: []subjects.NodeWriteResult{{ID: 1}, {ID: 2, Err: "commit: disk full", LWW: ver(9, "z", "newer", false)}}, More: true},
		&subjects.NodeWriteReply{},
		&subjects.NodeWriteReply{Results: []subjects.NodeWriteResult{}},
		&subjects.NodeReadBatch{Proto: 1, Items: []subjects.NodeRead{{ID: 5, Tenant: "t", Key: "a"}, {ID: 1 << 20, Tenant: long, Key: long}}},
		&subjects.NodeReadBatch{Proto: 1},
		&subjects.NodeReadBatch{Proto: 2, MapVersion: 300, Items: []subjects.NodeRead{{ID: 5, Tenant: "t", Key: "a"}}},
		&subjects.NodeReadBatch{Proto: 2, MapVersion: 1 << 40},
		&subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: 5, LWW: ver(1, "a", "v", false)}, {ID: 6}, {ID: 7, Err: "read: boom"}}},
		&subjects.NodeReadReply{More: true},
		&subjects.Request{Key: "k"},
		&subjects.Request{Key: long, Value: big, Consistency: subjects.Quorum, Context: "l1.AAAA", IdempotencyKey: "idem", TimeoutMS: 2000},
		&subjects.Request{Key: "k", Value: []byte{}, TimeoutMS: -5},
		&subjects.Request{Key: "k", Value: []byte("v"), TTLMs: 600_000},
		&subjects.Request{Key: "k", TTLMs: -1},
		&subjects.NodeWriteBatch{Proto: 3, MapVersion: 7, Items: []subjects.NodeWrite{
			{ID: 1, Tenant: "t", Key: "ttl", LWW: &vclock.Version{Dot: vclock.Dot{Counter: 1 << 50, Actor: "c1"}, Value: []byte("v"), Expires: 1_700_000_600_000}},
			{ID: 2, Tenant: "t", Key: "del", LWW: &vclock.Version{Dot: vclock.Dot{Counter: 1 << 50, Actor: "c1"}, Tombstone: true, Expires: 1_700_000_000_000}},
			{ID: 3, Tenant: "t", Key: "neg", LWW: &vclock.Version{Dot: vclock.Dot{Counter: 1, Actor: "c1"}, Expires: -1}},
			{ID: 4, Tenant: "t", Key: "dvv", DVV: &vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "n1.1", Counter: 1, Values: []vclock.Value{{Data: []byte("v"), Expires: 1_700_000_600_000}}}}}},
			{ID: 5, Tenant: "t", Key: "coord", Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("v"), Expires: 99}, Deadline: 5}},
		}},
		&subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: 5, LWW: &vclock.Version{Dot: vclock.Dot{Counter: 9, Actor: "a"}, Value: []byte("v"), Expires: 1 << 42}}}},
		&subjects.WriteReply{Success: true, Key: "k", Context: "l1.x", IdempotencyKey: "abc", ReplicaCount: 3, Consistency: subjects.Quorum},
		&subjects.WriteReply{IsDuplicate: true, ReplicaCount: 1 << 20},
		&subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte("hello"), Context: "l1.x", ReplicaCount: 2, Consistency: subjects.One},
		&subjects.GetReply{Success: true, Key: "k", Value: []byte{}},
		&subjects.GetReply{Key: "k", Siblings: [][]byte{[]byte("a"), nil, {}}},
		&subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte("v"), ExpiresAtMs: 1_800_000_000_000, ReplicaCount: 3},
		&subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte("v"), Siblings: [][]byte{[]byte("v"), []byte("w")}, ExpiresAtMs: 1 << 42},
	}
}

func fresh(v any) any { return reflect.New(reflect.TypeOf(v).Elem()).Interface() }

// The batches of node protocol 1: two elements, no MapVersion. The
// library reads them only into structs of their shape.
type (
	nodeWriteBatchV1 struct {
		_msgpack struct{} `msgpack:",as_array"`
		Proto    int
		Items    []subjects.NodeWrite
	}
	nodeReadBatchV1 struct {
		_msgpack struct{} `msgpack:",as_array"`
		Proto    int
		Items    []subjects.NodeRead
	}
)

// libUnmarshal is msgpack.Unmarshal, except that a batch in the 2-element
// form of node protocol 1 is read through its shape and given MapVersion
// 0, as the hand-written decoders read it.
func libUnmarshal(data []byte, v any) error {
	err := msgpack.Unmarshal(data, v)
	if err == nil || len(data) == 0 || data[0] != 0x92 {
		return err
	}
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		var old nodeWriteBatchV1
		if err := msgpack.Unmarshal(data, &old); err != nil {
			return err
		}
		*m = subjects.NodeWriteBatch{Proto: old.Proto, Items: old.Items}
		return nil
	case *subjects.NodeReadBatch:
		var old nodeReadBatchV1
		if err := msgpack.Unmarshal(data, &old); err != nil {
			return err
		}
		*m = subjects.NodeReadBatch{Proto: old.Proto, Items: old.Items}
		return nil
	}
	return err
}

func fastMarshal(t *testing.T, v any) []byte {
	t.Helper()
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		return MarshalNodeWriteBatch(nil, m)
	case *subjects.NodeWriteReply:
		return MarshalNodeWriteReply(nil, m)
	case *subjects.NodeReadBatch:
		return MarshalNodeReadBatch(nil, m)
	case *subjects.NodeReadReply:
		return MarshalNodeReadReply(nil, m)
	}
	b, ok := marshalFast(v)
	if !ok {
		t.Fatalf("%T has no fast encoder", v)
	}
	return b
}

// fastDecode runs only the hand-written decoder of v's type.
func fastDecode(data []byte, v any) bool {
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		return decodeNodeWriteBatch(data, m)
	case *subjects.NodeWriteReply:
		return decodeNodeWriteReply(data, m)
	case *subjects.NodeReadBatch:
		return decodeNodeReadBatch(data, m)
	case *subjects.NodeReadReply:
		return decodeNodeReadReply(data, m)
	}
	return unmarshalFast(data, v)
}

// libRoundTrip is v after msgpack encodes and decodes it: what a receiver
// sees today (omitempty drops empty values, for one).
func libRoundTrip(t *testing.T, v any) any {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out := fresh(v)
	if err := msgpack.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFastEncodersDecodeWithTheLibrary: what the hand-written encoders
// write, msgpack decodes to what it decodes from its own encoding.
func TestFastEncodersDecodeWithTheLibrary(t *testing.T) {
	for _, v := range codecCases() {
		b := fastMarshal(t, v)
		got := fresh(v)
		if err := libUnmarshal(b, got); err != nil {
			t.Fatalf("%T: library cannot decode the fast encoding: %v", v, err)
		}
		if want := libRoundTrip(t, v); !reflect.DeepEqual(got, want) {
			t.Errorf("%T: library decoded %+v, want %+v", v, got, want)
		}
	}
}

// TestFastDecodersReadTheLibrary: what msgpack writes, the hand-written
// decoders read to the same value, and so do the exported entry points.
func TestFastDecodersReadTheLibrary(t *testing.T) {
	for _, v := range codecCases() {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		want := libRoundTrip(t, v)
		got := fresh(v)
		if !fastDecode(b, got) {
			t.Fatalf("%T: fast decoder refused the library's encoding", v)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%T: fast decoded %+v, want %+v", v, got, want)
		}
		// Round trip through the fast encoder too.
		got2 := fresh(v)
		if !fastDecode(fastMarshal(t, v), got2) || !reflect.DeepEqual(got2, want) {
			t.Errorf("%T: fast round trip gave %+v", v, got2)
		}
	}
}

// TestFallbackKeepsLibraryBehaviour: input the fast path does not take is
// decoded (or refused) exactly as the checked library path does.
func TestFallbackKeepsLibraryBehaviour(t *testing.T) {
	asMap, _ := msgpack.Marshal(map[string]any{"Proto": 1, "Items": []any{}}) // an as_array struct sent as a map
	floatTimeout, _ := msgpack.Marshal(map[string]any{"key": "k", "timeout_ms": 1500.0})
	wrongCount, _ := msgpack.Marshal([]any{1, []any{}, "extra"})
	for name, tc := range map[string]struct {
		data []byte
		v    any
	}{
		"map for array struct": {asMap, &subjects.NodeWriteBatch{}},
		"float timeout":        {floatTimeout, &subjects.Request{}},
		"field count changed":  {wrongCount, &subjects.NodeReadBatch{}},
		"garbage":              {[]byte{0xc1, 0x00}, &subjects.NodeWriteReply{}},
		"array for map":        {[]byte{0x93, 1, 2, 3}, &subjects.Request{}},
		"truncated":            {[]byte{0x92, 0x01, 0x91}, &subjects.NodeWriteBatch{}},
	} {
		lib := fresh(tc.v)
		libErr := DecodeMsgpack(tc.data, lib)
		got := fresh(tc.v)
		var err error
		switch m := got.(type) {
		case *subjects.NodeWriteBatch:
			err = UnmarshalNodeWriteBatch(tc.data, m)
		case *subjects.NodeWriteReply:
			err = UnmarshalNodeWriteReply(tc.data, m)
		case *subjects.NodeReadBatch:
			err = UnmarshalNodeReadBatch(tc.data, m)
		default:
			err = Unmarshal(false, tc.data, got)
			if libErr != nil {
				libErr = subjects.Errorf(subjects.KindInvalid, "malformed msgpack: %v", libErr)
			}
		}
		if (err == nil) != (libErr == nil) || (err != nil && err.Error() != libErr.Error()) {
			t.Errorf("%s: error %v, library %v", name, err, libErr)
		}
		if err == nil && !reflect.DeepEqual(got, lib) {
			t.Errorf("%s: decoded %+v, library %+v", name, got, lib)
		}
	}
}

func TestDecodeVersion(t *testing.T) {
	for _, v := range []*vclock.Version{nil, ver(5, "a", "x", false), ver(1<<50, "actor", "-", true), {},
		{Dot: vclock.Dot{Counter: 5, Actor: "a"}, Value: []byte("x"), Expires: 1_700_000_000_000},
		{Dot: vclock.Dot{Counter: 5, Actor: "a"}, Tombstone: true, Expires: 3}} {
		b := AppendVersion(nil, v)
		b = append(b, 0x2a) // what follows is returned
		got, rest, ok := DecodeVersion(b)
		if !ok || !reflect.DeepEqual(got, v) || !bytes.Equal(rest, []byte{0x2a}) {
			t.Errorf("DecodeVersion(%+v) = %+v, %x, %v", v, got, rest, ok)
		}
	}
	if _, _, ok := DecodeVersion([]byte{0x92, 1, 2}); ok {
		t.Error("a 2-element array is not a Version")
	}
}

func TestMarshalUnmarshalUseFastPath(t *testing.T) {
	req := &subjects.Request{Key: "k", Value: []byte("v"), Consistency: subjects.Quorum}
	b, err := Marshal(false, req)
	if err != nil {
		t.Fatal(err)
	}
	var got subjects.Request
	if err := Unmarshal(false, b, &got); err != nil || !reflect.DeepEqual(&got, req) {
		t.Fatalf("round trip %+v %v", got, err)
	}
	// Allocation counts are deterministic: more than these three means the
	// request decode left its fast path (a bug on every client request),
	// not that it became slower.
	allocs := testing.AllocsPerRun(100, func() {
		var r subjects.Request
		_ = Unmarshal(false, b, &r)
	})
	if allocs > 3 { // key, consistency and the interface conversion at most
		t.Errorf("Unmarshal of a Request allocates %.0f times", allocs)
	}
}

// FuzzFastDecodersAgreeWithLibrary: whenever a hand-written decoder
// accepts input, the library accepts it too and decodes the same value.
func FuzzFastDecodersAgreeWithLibrary(f *testing.F) {
	for _, v := range codecCases() {
		b, _ := msgpack.Marshal(v)
		f.Add(b)
		if len(b) < 4096 {
			f.Add(fastMarshalNoT(v))
		}
	}
	f.Add([]byte{0x81, 0xa3, 'k', 'e', 'y', 0x92, 0x91, 0x90, 0xc0})
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, proto := range []any{&subjects.NodeWriteBatch{}, &subjects.NodeWriteReply{}, &subjects.NodeReadBatch{}, &subjects.NodeReadReply{}, &subjects.Request{}, &subjects.WriteReply{}, &subjects.GetReply{}} {
			got := fresh(proto)
			if !fastDecode(data, got) {
				continue
			}
			lib := fresh(proto)
			if err := libUnmarshal(data, lib); err != nil {
				t.Fatalf("%T: fast accepted %x, library refused: %v", proto, data, err)
			}
			if !reflect.DeepEqual(got, lib) {
				t.Fatalf("%T: fast %+v, library %+v for %x", proto, got, lib, data)
			}
		}
	})
}

func fastMarshalNoT(v any) []byte {
	switch m := v.(type) {
	case *subjects.NodeWriteBatch:
		return MarshalNodeWriteBatch(nil, m)
	case *subjects.NodeWriteReply:
		return MarshalNodeWriteReply(nil, m)
	case *subjects.NodeReadBatch:
		return MarshalNodeReadBatch(nil, m)
	case *subjects.NodeReadReply:
		return MarshalNodeReadReply(nil, m)
	}
	b, _ := marshalFast(v)
	return b
}

func benchBatch(n int) *subjects.NodeWriteBatch {
	b := &subjects.NodeWriteBatch{Proto: subjects.NodeProtocolVersion}
	for i := range n {
		b.Items = append(b.Items, subjects.NodeWrite{ID: uint64(1000 + i), Tenant: "bench", Key: "user000000012345",
			LWW: ver(1<<40+uint64(i), "c0ffee01", strings.Repeat("v", 256), false)})
	}
	return b
}

// BenchmarkNodeWriteBatchRoundTrip encodes and decodes a batch of 16
// writes of 256-byte values, hand-written codec against msgpack's
// reflection.
func BenchmarkNodeWriteBatchRoundTrip(b *testing.B) {
	batch := benchBatch(16)
	b.Run("fast", func(b *testing.B) {
		var buf []byte
		var out subjects.NodeWriteBatch
		b.ReportAllocs()
		for b.Loop() {
			buf = MarshalNodeWriteBatch(buf[:0], batch)
			if err := UnmarshalNodeWriteBatch(buf, &out); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(len(buf)), "bytes/msg")
	})
	b.Run("reflection", func(b *testing.B) {
		var out subjects.NodeWriteBatch
		b.ReportAllocs()
		for b.Loop() {
			buf, err := msgpack.Marshal(batch)
			if err != nil {
				b.Fatal(err)
			}
			if err := msgpack.Unmarshal(buf, &out); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkRequestRoundTrip(b *testing.B) {
	req := &subjects.Request{Key: "user000000012345", Value: bytes.Repeat([]byte("v"), 256), Consistency: subjects.Quorum, TimeoutMS: 5000}
	b.ReportAllocs()
	for b.Loop() {
		data, err := Marshal(false, req)
		if err != nil {
			b.Fatal(err)
		}
		var out subjects.Request
		if err := Unmarshal(false, data, &out); err != nil {
			b.Fatal(err)
		}
	}
}

// A write acknowledgement says whether an lww write won, and what beat it,
// after the trip through both codecs.
func TestNodeWriteResultLost(t *testing.T) {
	in := subjects.NodeWriteReply{Results: []subjects.NodeWriteResult{
		{ID: 1}, // won
		{ID: 2, LWW: ver(1<<40|3, "x", "newer", false)}, // lost to 1<<40|3@x
		{ID: 3, Err: "commit: disk full"},               // failed: not applied, not lost
		{ID: 4, LWW: ver(5, "y", "", true)},             // lost to a tombstone
	}}
	want := []struct {
		lost bool
		by   vclock.Dot
	}{{false, vclock.Dot{}}, {true, vclock.Dot{Counter: 1<<40 | 3, Actor: "x"}}, {false, vclock.Dot{}}, {true, vclock.Dot{Counter: 5, Actor: "y"}}}
	data := MarshalNodeWriteReply(nil, &in)
	var fast, lib subjects.NodeWriteReply
	if err := UnmarshalNodeWriteReply(data, &fast); err != nil {
		t.Fatal(err)
	}
	if err := msgpack.Unmarshal(data, &lib); err != nil {
		t.Fatal(err)
	}
	for _, got := range []subjects.NodeWriteReply{fast, lib} {
		for i, w := range want {
			by, lost := got.Results[i].Lost()
			if lost != w.lost || by != w.by {
				t.Errorf("result %d: Lost() = %v, %v; want %v, %v", i, by, lost, w.by, w.lost)
			}
		}
	}
}
