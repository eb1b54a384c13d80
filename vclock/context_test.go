package vclock

import (
	"errors"
	"math"
	"strings"
	"testing"
)

func TestContextRoundTrip(t *testing.T) {
	dots := []Dot{
		{Counter: 1},
		{Actor: "a"},
		{Counter: 1, Actor: "n1"},
		{Counter: uint64(wallMs)<<16 | 7, Actor: "node-a"},
		{Counter: math.MaxUint64, Actor: "\xff\x00\x01"},
		{Counter: 42, Actor: "nœud-ü"},
		{Counter: 42, Actor: strings.Repeat("long-actor-", 20)},
	}
	for _, d := range dots {
		s := EncodeContext(d)
		if !strings.HasPrefix(s, LWWContextPrefix) {
			t.Errorf("EncodeContext(%+v) = %q lacks prefix %q", d, s, LWWContextPrefix)
		}
		if i := strings.IndexFunc(s, func(r rune) bool {
			return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
		}); i >= 0 {
			t.Errorf("EncodeContext(%+v) = %q has a character outside the URL-safe set at %d", d, s, i)
		}
		got, err := DecodeContext(s)
		if err != nil {
			t.Errorf("DecodeContext(%q): %v", s, err)
			continue
		}
		if got != d {
			t.Errorf("DecodeContext(EncodeContext(%+v)) = %+v", d, got)
		}
		if again := EncodeContext(got); again != s {
			t.Errorf("re-encoding %q gave %q", s, again)
		}
	}
}

func TestContextZero(t *testing.T) {
	if s := EncodeContext(Dot{}); s != "" {
		t.Errorf("EncodeContext(zero) = %q, want \"\"", s)
	}
	d, err := DecodeContext("")
	if err != nil || !d.IsZero() {
		t.Errorf("DecodeContext(\"\") = %+v, %v; want zero Dot, nil", d, err)
	}
}

// TestContextGolden pins the wire format: contexts outlive releases.
func TestContextGolden(t *testing.T) {
	tests := []struct {
		d    Dot
		want string
	}{
		{Dot{Counter: 1, Actor: "n1"}, "l1.AAAAAAAAAAFuMQ"},
		{Dot{Counter: uint64(wallMs)<<16 | 7, Actor: "node-a"}, "l1.AYvP5WgAAAdub2RlLWE"},
		{Dot{Counter: math.MaxUint64, Actor: "\xff"}, "l1.____________"},
		{Dot{Counter: 1}, "l1.AAAAAAAAAAE"},
	}
	for _, tt := range tests {
		if got := EncodeContext(tt.d); got != tt.want {
			t.Errorf("EncodeContext(%+v) = %q, want %q", tt.d, got, tt.want)
		}
		if got, err := DecodeContext(tt.want); err != nil || got != tt.d {
			t.Errorf("DecodeContext(%q) = %+v, %v; want %+v", tt.want, got, err, tt.d)
		}
	}
}

func TestDecodeContextMalformed(t *testing.T) {
	bad := []struct{ name, s string }{
		{"no prefix", "AAAAAAAAAAFuMQ"},
		{"prefix only", "l1."},
		{"prefix without dot", "l1AAAAAAAAAAFuMQ"},
		{"upper-case prefix", "L1.AAAAAAAAAAFuMQ"},
		{"other version", "l2.AAAAAAAAAAFuMQ"},
		{"other policy", "d1.AAAAAAAAAAFuMQ"},
		{"short payload", "l1.AAAA"},
		{"seven bytes", "l1.AAAAAAAAAA"},
		{"impossible length", "l1.AAAAAAAAAAAAA"},
		{"padding", "l1.AAAAAAAAAAE="},
		{"standard alphabet", "l1.AAAAAAAAAAF+MQ"},
		{"slash", "l1.AAAAAAAAAAF/MQ"},
		{"non-zero trailing bits", "l1.AAAAAAAAAAF"},
		{"newline", "l1.AAAAAAAAAAFu\nMQ"},
		{"carriage return", "l1.AAAAAAAAAAFuMQ\r"},
		{"space", "l1.AAAAAAAAAAFuMQ "},
		{"zero dot spelled out", "l1.AAAAAAAAAAA"},
		{"nul", "l1.\x00"},
		{"invalid utf-8", "l1.\xff\xfe"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			d, err := DecodeContext(tt.s)
			if !errors.Is(err, ErrBadContext) {
				t.Fatalf("DecodeContext(%q) = %+v, %v; want ErrBadContext", tt.s, d, err)
			}
			if !d.IsZero() {
				t.Errorf("DecodeContext(%q) returned non-zero Dot %+v with an error", tt.s, d)
			}
		})
	}
}
