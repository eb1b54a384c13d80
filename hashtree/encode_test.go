package hashtree

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func TestEncodeRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(20, 21))
	for _, c := range configs {
		for _, n := range []int{0, 1, 100, 5000} {
			tr := mustBuild(t, c, randomSet(r, n))
			tr.Insert("t", "dirty", Hash{5}) // encoding flushes dirty nodes
			b, err := tr.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("%+v n=%d: %v", c, n, err)
			}
			equalTrees(t, tr, got)
			if got.Config() != c {
				t.Fatalf("config %+v, want %+v", got.Config(), c)
			}
		}
	}
}

func TestEncodeSize(t *testing.T) {
	tr := mustNew(t, DefaultConfig())
	b, _ := tr.MarshalBinary()
	if len(b) != 7+1+512+16 {
		t.Fatalf("empty default tree: %d bytes, want 536", len(b))
	}
	full := mustBuild(t, DefaultConfig(), randomSet(rand.New(rand.NewPCG(1, 2)), 100000))
	b, _ = full.MarshalBinary()
	if len(b) > 536+4096*18+4 {
		t.Fatalf("full default tree: %d bytes", len(b))
	}
}

// Every single-byte change and every truncation of a valid encoding is
// refused: the root check covers the leaf hashes, the counts must add up.
func TestDecodeRefusesCorruption(t *testing.T) {
	tr := mustBuild(t, Config{FanOut: 4, Depth: 2}, randomSet(rand.New(rand.NewPCG(3, 3)), 40))
	b, _ := tr.MarshalBinary()
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x01
		if _, err := Decode(c); err == nil {
			t.Errorf("flip of bit 0 of byte %d accepted", i)
		}
	}
	for n := range len(b) {
		if _, err := Decode(b[:n]); err == nil {
			t.Errorf("truncation to %d bytes accepted", n)
		}
	}
	if _, err := Decode(append(b, 0)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("trailing byte: %v", err)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range []Config{{FanOut: 2, Depth: 1}, {FanOut: 4, Depth: 2}, DefaultConfig()} {
		for _, n := range []int{0, 3, 30} {
			tr := mustBuild(f, c, randomSet(rand.New(rand.NewPCG(uint64(n), 1)), n))
			b, _ := tr.MarshalBinary()
			f.Add(b)
		}
	}
	f.Add([]byte("QKHT\x01\x08\x02\x00"))
	f.Add([]byte("QKHT\x01\x01\x14\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tr, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrConfig) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrConfig", err)
			}
			return
		}
		// What decodes re-encodes to the same bytes.
		again, err := tr.MarshalBinary()
		if err != nil || string(again) != string(b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

// A count in a non-canonical uvarint (0x81 0x00 for 1) is refused, so an
// accepted encoding re-encodes to itself.
func TestDecodeRefusesNonCanonicalVarint(t *testing.T) {
	tr := mustNew(t, Config{FanOut: 2, Depth: 1})
	tr.Insert("t", "k", Hash{1})
	b, _ := tr.MarshalBinary()
	// header 7 | n=1 | bitmap 1 | count=1 | hash 16 | root 16
	c := append(append(append([]byte(nil), b[:9]...), 0x81, 0x00), b[10:]...)
	if _, err := Decode(c); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("non-canonical count: %v", err)
	}
}
