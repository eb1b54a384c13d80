package ring

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"testing"
)

func TestMapLookups(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3, 4, 5), 64)
	if m.Version() != 1 || m.Partitions() != 64 || m.Replicas() != 5 {
		t.Fatalf("version %d, Q %d, R %d", m.Version(), m.Partitions(), m.Replicas())
	}
	if !m.HasNode("node-3") || m.HasNode("node-9") {
		t.Fatal("HasNode")
	}
	for i := range 200 {
		key := "key-" + strconv.Itoa(i)
		p := m.Partition("default", key)
		all := m.Owners(p, nil)
		for rf := -1; rf <= 9; rf++ {
			got := m.PreferenceList("default", key, rf, nil)
			want := all[:max(0, min(rf, len(all)))]
			if !slices.Equal(got, want) {
				t.Fatalf("%s rf=%d: %v, want %v", key, rf, got, want)
			}
			if h := m.PreferenceListHash(KeyHash("default", key), rf, nil); !slices.Equal(h, want) {
				t.Fatalf("%s rf=%d: hash form %v, want %v", key, rf, h, want)
			}
		}
	}
	if got := m.Owners(64, []string{"stale"}); len(got) != 0 {
		t.Fatalf("Owners(out of range) = %v", got)
	}
	var zero Map
	if got := zero.PreferenceList("default", "k", 3, nil); len(got) != 0 {
		t.Fatalf("zero map: %v", got)
	}
}

// TestMapLookupNoAlloc: PreferenceList runs on every request; with a
// caller's buffer of capacity rf an allocation would be per-request
// garbage, so it would be a bug.
func TestMapLookupNoAlloc(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(seq(1, 10)...), DefaultPartitions)
	buf := make([]string, 0, MaxReplicas)
	if a := testing.AllocsPerRun(100, func() { buf = m.PreferenceList("default", "user:1234567", 3, buf) }); a != 0 {
		t.Fatalf("PreferenceList allocates %.1f times per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { buf = m.Owners(17, buf) }); a != 0 {
		t.Fatalf("Owners allocates %.1f times per call", a)
	}
}

// TestMapConcurrentReads is for -race: a Map is read by many request
// goroutines at once.
func TestMapConcurrentReads(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(seq(1, 8)...), 256)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]string, 0, 3)
			for i := range 500 {
				buf = m.PreferenceList("default", strconv.Itoa(g*1000+i), 3, buf)
				_ = m.Load(2)
			}
		}()
	}
	wg.Wait()
}

func TestMapEncodingRoundTrip(t *testing.T) {
	for _, n := range []int{1, 2, 7, 64, 200} {
		for _, q := range []int{1, 64, 1024} {
			m := mustClaim(t, nil, claimNodes(seq(1, n)...), q)
			m = mustClaim(t, m, claimNodes(seq(2, n+1)...), q) // version 2
			b, err := m.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("N=%d Q=%d: %v", n, q, err)
			}
			if !got.Equal(m) || got.Version() != m.Version() {
				t.Fatalf("N=%d Q=%d: round trip differs", n, q)
			}
			b2, _ := got.AppendBinary([]byte("prefix"))
			if !bytes.Equal(b2[len("prefix"):], b) {
				t.Fatalf("N=%d Q=%d: encoding not deterministic", n, q)
			}
			if n == 64 && q == 1024 {
				t.Logf("N=64 Q=1024: %d bytes", len(b))
			}
		}
	}
}

// appendFormat1 writes m (without moving partitions) in format 1, as maps
// were stored before transitions.
func appendFormat1(m *Map) []byte {
	b := append([]byte(mapMagic), mapFormat1)
	b = binary.AppendUvarint(b, m.version)
	b = append(b, byte(bits.TrailingZeros(uint(m.q))), byte(m.r))
	b = binary.AppendUvarint(b, uint64(len(m.nodes)))
	for _, id := range m.nodes {
		b = binary.AppendUvarint(b, uint64(len(id)))
		b = append(b, id...)
	}
	for _, o := range m.owners {
		b = binary.AppendUvarint(b, uint64(o))
	}
	return b
}

// TestDecodeFormat1: a map stored before transitions reads back with the
// same rows and since = version everywhere (its history is unknown, so
// every older sender is fenced).
func TestDecodeFormat1(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3, 4), 64)
	m = mustClaim(t, m, claimNodes(1, 2, 3, 4, 5), 64).WithVersion(9)
	got, err := Decode(appendFormat1(m))
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(m) || got.Version() != 9 {
		t.Fatal("format 1 does not read back as the map")
	}
	for p := range uint32(64) {
		if got.Since(p) != 9 {
			t.Fatalf("since(%d) = %d, want 9", p, got.Since(p))
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	m := mustClaim(t, nil, claimNodes(1, 2, 3), 4)
	good1 := appendFormat1(m)
	// good1 is: "qkpm" 1 | version 1 | log2Q 2 | R 3 | N 3 | 3 ids of 6
	// bytes ("node-1"...) | 12 owner indexes.
	good2, _ := m.MarshalBinary()
	// good2 is: "qkpm" 2 | version 1 | log2Q 2 | W 3 | N 3 | 3 ids of 6
	// bytes | T 3 | 0 1 2 | moving 0 | 12 owner entries (index+1) | 4
	// since distances.
	ownersAt1, ownersAt2, sinceAt := len(good1)-12, len(good2)-16, len(good2)-4
	mut := func(good []byte, f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	for name, b := range map[string][]byte{
		"empty":         nil,
		"magic":         mut(good2, func(b []byte) []byte { b[0] = 'x'; return b }),
		"format":        mut(good2, func(b []byte) []byte { b[4] = 3; return b }),
		"1/log2Q":       mut(good1, func(b []byte) []byte { b[6] = 17; return b }),
		"1/R":           mut(good1, func(b []byte) []byte { b[7] = 2; return b }),
		"1/no nodes":    mut(good1, func(b []byte) []byte { b[8] = 0; return b }),
		"1/id order":    mut(good1, func(b []byte) []byte { b[15] = '9'; return b }), // node-1 → node-9
		"1/owner range": mut(good1, func(b []byte) []byte { b[ownersAt1] = 3; return b }),
		"1/repeat":      mut(good1, func(b []byte) []byte { b[ownersAt1+1] = b[ownersAt1]; return b }),
		"1/truncated":   good1[:len(good1)-1],
		"1/trailing":    append(slices.Clone(good1), 0),
		"2/log2Q":       mut(good2, func(b []byte) []byte { b[6] = 17; return b }),
		"2/W":           mut(good2, func(b []byte) []byte { b[7] = 2; return b }),
		"2/W 0":         mut(good2, func(b []byte) []byte { b[7] = 0; return b }),
		"2/no nodes":    mut(good2, func(b []byte) []byte { b[8] = 0; return b }),
		"2/id order":    mut(good2, func(b []byte) []byte { b[15] = '9'; return b }),
		"2/no target":   mut(good2, func(b []byte) []byte { b[30] = 0; return b }),
		"2/target idx":  mut(good2, func(b []byte) []byte { b[32] = 0; return b }),
		"2/moving":      mut(good2, func(b []byte) []byte { b[34] = 2; return b }),
		"2/owner range": mut(good2, func(b []byte) []byte { b[ownersAt2] = 4; return b }),
		"2/repeat":      mut(good2, func(b []byte) []byte { b[ownersAt2+1] = b[ownersAt2]; return b }),
		"2/short row":   mut(good2, func(b []byte) []byte { b[ownersAt2+2] = 0; return b }),
		"2/gap":         mut(good2, func(b []byte) []byte { b[ownersAt2+1] = 0; return b }),
		"2/since":       mut(good2, func(b []byte) []byte { b[sinceAt] = 2; return b }),
		"2/truncated":   good2[:len(good2)-1],
		"2/trailing":    append(slices.Clone(good2), 0),
	} {
		if _, err := Decode(b); !errors.Is(err, ErrBadMap) {
			t.Errorf("%s: err = %v, want ErrBadMap", name, err)
		}
	}
	for _, good := range [][]byte{good1, good2} {
		if _, err := Decode(good); err != nil {
			t.Fatalf("good format %d: %v", good[4], err)
		}
	}
}

// FuzzDecode: the map arrives from the metadata store and the event
// subject; bad bytes must give an error, never a panic or a Map that breaks
// its invariants.
func FuzzDecode(f *testing.F) {
	for _, n := range []int{1, 3, 8} {
		b, _ := mustClaim(f, nil, claimNodes(seq(1, n)...), 8).MarshalBinary()
		f.Add(b)
	}
	f.Add([]byte("qkpm\x01"))
	f.Add(appendFormat1(mustClaim(f, nil, claimNodes(1, 2), 4)))
	for _, m := range sampleMovingMaps(f) {
		b, _ := m.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		if err := m.Check(); err != nil {
			t.Fatalf("Decode accepted a map that fails Check: %v", err)
		}
		if !m.moving() {
			checkMap(t, m, nodesOf(m))
		}
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(b)
		if err != nil || !m2.Equal(m) || m2.Version() != m.Version() || !slices.Equal(m2.since, m.since) {
			t.Fatalf("re-encoding does not round-trip: %v", err)
		}
		if data[4] == mapFormat && !bytes.Equal(b, data) {
			t.Fatal("format 2 is not canonical: two encodings of one map")
		}
	})
}

func nodesOf(m *Map) []Node {
	var ns []Node
	for _, id := range m.Nodes() {
		ns = append(ns, Node{ID: id})
	}
	return ns
}

func TestWithVersion(t *testing.T) {
	m, err := Claim(nil, []Node{{ID: "a"}, {ID: "b"}, {ID: "c"}}, 64)
	if err != nil {
		t.Fatal(err)
	}
	v := m.WithVersion(42)
	if v.Version() != 42 || m.Version() != 1 || !v.Equal(m) {
		t.Fatalf("WithVersion(42) = version %d (original %d), equal %v", v.Version(), m.Version(), v.Equal(m))
	}
	next, err := Claim(v, []Node{{ID: "a"}, {ID: "b"}}, 64)
	if err != nil || next.Version() != 43 {
		t.Fatalf("Claim after WithVersion(42) = version %d, %v; want 43", next.Version(), err)
	}
}
