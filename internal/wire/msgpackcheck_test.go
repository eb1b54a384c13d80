package wire

import (
	"bytes"
	"runtime"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func TestCheckMsgpackAcceptsRealMessages(t *testing.T) {
	v := &vclock.Version{Dot: vclock.Dot{Counter: 1 << 60, Actor: "abc"}, Value: bytes.Repeat([]byte{1}, 70000)}
	msgs := []any{
		&subjects.NodeWriteBatch{Proto: 1, Items: []subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k", LWW: v}, {ID: 2, Tenant: "t", Key: strings.Repeat("k", 300)}}},
		&subjects.NodeReadReply{Results: []subjects.NodeReadResult{{ID: 9, LWW: v}, {ID: 10, Err: "x"}}, More: true},
		map[string]any{"key": "k", "value": []byte("v"), "timeout_ms": 5, "f": 1.5, "neg": -100000, "big": uint64(1 << 63), "nil": nil, "arr": []any{true, false, int8(-3), float32(2)}},
		&subjects.GetReply{Success: true, Siblings: [][]byte{{1}, {2}}},
		&subjects.TenantList{Tenants: []subjects.Tenant{{ID: "a"}, {ID: "b"}}}, // times are msgpack extensions
	}
	for _, m := range msgs {
		b, err := msgpack.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := CheckMsgpack(b); err != nil {
			t.Errorf("%T: %v", m, err)
		}
	}
}

func TestCheckMsgpackRejectsHostileInput(t *testing.T) {
	deep := bytes.Repeat([]byte{0x91}, 1000)
	deep = append(deep, 0x01)
	cases := map[string][]byte{
		"array32 of 4G elements": {0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff},
		"map32 of 4G pairs":      {0xdf, 0xff, 0xff, 0xff, 0xff, 0x01},
		"array16 past the end":   {0xdc, 0x00, 0x10, 0x01},
		"bin32 past the end":     {0xc6, 0x00, 0x00, 0x10, 0x00, 0x01},
		"str8 past the end":      {0xd9, 0x05, 'a'},
		"truncated length":       {0xdd, 0x00},
		"deep nesting":           deep,
		"0xc1":                   {0xc1},
		"empty":                  {},
		"fixarray missing items": {0x93, 0x01},
	}
	for name, b := range cases {
		if err := CheckMsgpack(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
		var batch subjects.NodeWriteBatch
		if err := DecodeMsgpack(b, &batch); err == nil {
			t.Errorf("%s: DecodeMsgpack accepted", name)
		}
	}
}

func FuzzCheckMsgpack(f *testing.F) {
	b, _ := msgpack.Marshal(&subjects.NodeWriteBatch{Proto: 1, Items: []subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k"}}})
	f.Add(b)
	f.Add([]byte{0x92, 0x01, 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0x81, 0xa3, 'k', 'e', 'y', 0xa1, 'k'})
	f.Fuzz(func(t *testing.T, data []byte) {
		if CheckMsgpack(data) != nil {
			return
		}
		// Whatever passes the check decodes without panicking and without
		// allocating far beyond the input's size: the bound is the input
		// times a per-byte factor for decoded structures, plus the 1 to 2
		// MiB msgpack's own (bounded) string decoding may allocate ahead.
		// Bytes allocated for one input are deterministic, so a breach is
		// a hostile message inflating a node's memory, not noise.
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var batch subjects.NodeWriteBatch
		_ = msgpack.Unmarshal(data, &batch)
		var req subjects.Request
		_ = msgpack.Unmarshal(data, &req)
		runtime.ReadMemStats(&after)
		if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(4<<20+256*len(data)); got > limit {
			t.Errorf("decoding % x allocated %d bytes, more than %d", data, got, limit)
		}
	})
}
