package vclock

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

// TestVersionExpiresEncoding: Expires 0 keeps the 3-element form
// byte for byte (old data and version hashes unchanged); any other
// Expires appends a fourth element, and both forms round-trip.
func TestVersionExpiresEncoding(t *testing.T) {
	v := ver(uint64(wallMs)<<16|3, "node-a", "hello", false)
	old, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	// The form as_array tags wrote before Expires existed.
	legacy, err := msgpack.Marshal(struct {
		_msgpack  struct{} `msgpack:",as_array"`
		Dot       Dot
		Value     []byte
		Tombstone bool
	}{Dot: v.Dot, Value: v.Value})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(old, legacy) {
		t.Fatalf("Expires 0 encodes as % x, want the legacy % x", old, legacy)
	}
	for _, exp := range []int64{1, wallMs + 600_000, -1} {
		w := v
		w.Expires = exp
		b, err := msgpack.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != 0x94 {
			t.Fatalf("Expires %d encodes as % x, want a 4-array", exp, b)
		}
		var got Version
		if err := msgpack.Unmarshal(b, &got); err != nil || !reflect.DeepEqual(got, w) {
			t.Fatalf("round trip of %+v gave %+v, %v", w, got, err)
		}
		if p := new(Version); msgpack.Unmarshal(b, p) != nil || !sameVersion(*p, w) {
			t.Fatalf("pointer round trip of %+v gave %+v", w, *p)
		}
	}
	var got Version
	if err := msgpack.Unmarshal([]byte{0x95, 0x92, 1, 0xa1, 'a', 0xc0, 0xc2, 1, 2}, &got); err == nil {
		t.Fatalf("a 5-element version decoded as %+v", got)
	}
}

// TestValueExpiresEncoding: a DVVSet's values keep the 2-element form when
// Expires is 0 and append Expires otherwise; a lone Value (as in
// Coordinate and Sibling) encodes alike.
func TestValueExpiresEncoding(t *testing.T) {
	s := dstate(dentry("a", 2, "x", "y"))
	old, err := msgpack.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{0x91, 0x91, 0x93, 0xa1, 'a', 2, 0x92, 0x92, 0xc4, 1, 'x', 0xc2, 0x92, 0xc4, 1, 'y', 0xc2}
	if !bytes.Equal(old, want) {
		t.Fatalf("state without Expires encodes as % x, want % x", old, want)
	}
	s.Entries[0].Values = []Value{{Data: []byte("x"), Expires: 7}, {Tombstone: true, Expires: 9}}
	b, err := msgpack.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var got DVVSet
	if err := msgpack.Unmarshal(b, &got); err != nil || !got.Equal(s) {
		t.Fatalf("round trip of %s gave %s, %v", fmtState(s), fmtState(got), err)
	}
	for _, v := range []Value{{}, {Data: []byte("x")}, {Data: []byte("x"), Expires: 5}, {Tombstone: true, Expires: 6}} {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		wantLen := byte(0x92)
		if v.Expires != 0 {
			wantLen = 0x93
		}
		if b[0] != wantLen {
			t.Fatalf("%+v encodes as % x", v, b)
		}
		var g Value
		if err := msgpack.Unmarshal(b, &g); err != nil || !sameValue(g, v) {
			t.Fatalf("round trip of %+v gave %+v, %v", v, g, err)
		}
		sib := Sibling{Dot: Dot{Counter: 1, Actor: "a"}, Value: v}
		b, err = msgpack.Marshal(sib)
		if err != nil {
			t.Fatal(err)
		}
		var gs Sibling
		if err := msgpack.Unmarshal(b, &gs); err != nil || gs.Dot != sib.Dot || !sameValue(gs.Value, v) {
			t.Fatalf("round trip of %+v gave %+v, %v", sib, gs, err)
		}
	}
}

// TestCompareExpiresTieBreak: two versions that differ only in Expires
// compare unequal, in the same order whichever is first, and Merge picks
// the same one both ways.
func TestCompareExpiresTieBreak(t *testing.T) {
	a := ver(5, "a", "x", false)
	b := a
	b.Expires = 10
	if Compare(a, b) != -1 || Compare(b, a) != 1 {
		t.Fatalf("Compare ignores Expires: %d %d", Compare(a, b), Compare(b, a))
	}
	if m1, m2 := Merge(a, b), Merge(b, a); m1.Expires != 10 || m2.Expires != 10 {
		t.Fatalf("Merge picks %+v and %+v", m1, m2)
	}
	x := dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{{Data: []byte("v")}}})
	y := dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{{Data: []byte("v"), Expires: 3}}})
	if x.Equal(y) {
		t.Fatal("Equal ignores Expires")
	}
	if xy, yx := Sync(x, y), Sync(y, x); !xy.Equal(yx) || xy.Entries[0].Values[0].Expires != 3 {
		t.Fatalf("Sync is not deterministic on Expires: %s vs %s", fmtState(xy), fmtState(yx))
	}
}

func TestVersionDeadSince(t *testing.T) {
	wall := uint64(wallMs) << 16
	for _, tc := range []struct {
		name string
		v    Version
		ms   int64
		dead bool
	}{
		{"zero", Version{}, 0, false},
		{"value", ver(wall, "a", "x", false), 0, false},
		{"value with ttl", Version{Dot: Dot{Counter: wall, Actor: "a"}, Value: []byte("x"), Expires: wallMs + 500}, wallMs + 500, true},
		{"old tombstone", ver(wall|7, "a", "", true), wallMs, true},
		{"tombstone", Version{Dot: Dot{Counter: wall, Actor: "a"}, Tombstone: true, Expires: wallMs + 3}, wallMs + 3, true},
	} {
		ms, dead := tc.v.DeadSince()
		if ms != tc.ms || dead != tc.dead {
			t.Errorf("%s: DeadSince() = %d, %v; want %d, %v", tc.name, ms, dead, tc.ms, tc.dead)
		}
	}
	v := Version{Dot: Dot{Counter: wall, Actor: "a"}, Value: []byte("x"), Expires: wallMs + 500}
	if !v.LiveAt(wallMs+499) || v.LiveAt(wallMs+500) || !v.ExpiredAt(wallMs+500) {
		t.Errorf("LiveAt/ExpiredAt around Expires wrong")
	}
	if tomb := (Version{Dot: v.Dot, Tombstone: true, Expires: 1}); tomb.ExpiredAt(wallMs) || tomb.LiveAt(0) {
		t.Errorf("a tombstone counts as an expired value or live")
	}
}

func TestDVVSetDeadSince(t *testing.T) {
	const now = wallMs
	val := func(data string, tomb bool, exp int64) Value {
		v := Value{Tombstone: tomb, Expires: exp}
		if data != "" {
			v.Data = []byte(data)
		}
		return v
	}
	for _, tc := range []struct {
		name string
		s    DVVSet
		ms   int64
		dead bool
	}{
		{"empty", DVVSet{}, 0, true},
		{"live", dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("x", false, 0)}}), 0, false},
		{"not yet expired", dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("x", false, now+1)}}), 0, false},
		{"expired", dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("x", false, now)}}), now, true},
		{"old tombstone", dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("", true, 0)}}), 0, true},
		{"tombstone and expired", dstate(
			DVVEntry{Actor: "a", Counter: 2, Values: []Value{val("", true, now-10), val("x", false, now-20)}},
			DVVEntry{Actor: "b", Counter: 1, Values: []Value{val("", true, 0)}}), now - 10, true},
		{"tombstone beside live", dstate(
			DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("", true, now-10)}},
			DVVEntry{Actor: "b", Counter: 1, Values: []Value{val("y", false, 0)}}), 0, false},
	} {
		ms, dead := tc.s.DeadSince(now)
		if ms != tc.ms || dead != tc.dead {
			t.Errorf("%s: DeadSince = %d, %v; want %d, %v", tc.name, ms, dead, tc.ms, tc.dead)
		}
		if tc.s.DeletedAt(now) != tc.dead {
			t.Errorf("%s: DeletedAt = %v, want %v", tc.name, !tc.dead, tc.dead)
		}
		if _, ok := tc.s.LastLiveAt(now); ok == tc.dead {
			t.Errorf("%s: LastLiveAt found = %v with dead = %v", tc.name, ok, tc.dead)
		}
	}
	// LastLiveAt skips an expired sibling with a greater dot.
	s := dstate(DVVEntry{Actor: "a", Counter: 1, Values: []Value{val("old", false, 0)}},
		DVVEntry{Actor: "b", Counter: 5, Values: []Value{val("gone", false, now)}})
	if last, ok := s.LastLiveAt(now); !ok || string(last.Value.Data) != "old" {
		t.Fatalf("LastLiveAt = %+v, %v; want the unexpired sibling", last, ok)
	}
	if last, ok := s.LastLive(); !ok || string(last.Value.Data) != "gone" {
		t.Fatalf("LastLive = %+v, %v; want the greatest dot", last, ok)
	}
}
