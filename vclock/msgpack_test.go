package vclock

import (
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestVersionMsgpackRoundTrip(t *testing.T) {
	vs := []Version{
		{},
		ver(1, "n1", "hello", false),
		ver(uint64(wallMs)<<16|3, "node-a", "", true),
		{Dot: Dot{Counter: ^uint64(0), Actor: "\xff"}, Value: []byte{0, 1, 2}},
	}
	for _, v := range vs {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", v, err)
		}
		// as_array: fixarray(3) of [fixarray(2) Dot, Value, Tombstone].
		if len(b) < 2 || b[0] != 0x93 || b[1] != 0x92 {
			t.Fatalf("Marshal(%+v) = % x, want a 3-array starting with a 2-array", v, b)
		}
		var got Version
		if err := msgpack.Unmarshal(b, &got); err != nil {
			t.Fatalf("Unmarshal(% x): %v", b, err)
		}
		if !reflect.DeepEqual(got, v) {
			t.Errorf("round trip of %+v gave %+v", v, got)
		}
	}
}

func TestZeroVersionMsgpack(t *testing.T) {
	b, err := msgpack.Marshal(Version{})
	if err != nil {
		t.Fatal(err)
	}
	// The wire shape is [[0, ""], nil, false], whatever integer width the
	// encoder picks.
	var generic []any
	if err := msgpack.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	if len(generic) != 3 {
		t.Fatalf("Version{} encodes as %#v, want 3 elements", generic)
	}
	dot, ok := generic[0].([]any)
	if !ok || len(dot) != 2 || !isZeroInt(dot[0]) || dot[1] != "" {
		t.Errorf("zero Dot encodes as %#v, want [0, \"\"]", generic[0])
	}
	if generic[1] != nil || generic[2] != false {
		t.Errorf("Version{} encodes as %#v, want [[0, \"\"], nil, false]", generic)
	}
	got := Version{Dot: Dot{Counter: 9, Actor: "x"}, Value: []byte("stale"), Tombstone: true}
	if err := msgpack.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, Version{}) {
		t.Errorf("zero Version decoded into a used Version = %+v, want zero", got)
	}
}

// isZeroInt reports whether x is a msgpack-decoded integer equal to 0.
func isZeroInt(x any) bool {
	switch n := x.(type) {
	case int8, int16, int32, int64, uint8, uint16, uint32, uint64:
		return reflect.ValueOf(n).IsZero()
	}
	return false
}
