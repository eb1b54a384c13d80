package vclock

import (
	"errors"
	"math"
	"testing"
)

// fuzzVersion builds a Version from fuzz inputs. Its Expires (0, 1 or 2)
// comes from the actor's length, so two versions that sameDotAs gives one
// dot may still differ in Expires alone, and the Expires tie-break is
// reached.
func fuzzVersion(counter uint64, actor string, value []byte, tomb bool) Version {
	return Version{Dot: Dot{Counter: counter, Actor: actor}, Value: value, Tombstone: tomb, Expires: int64(len(actor) % 3)}
}

// sameDotAs makes b share a's dot when same is set, so the fuzzer reaches
// the Tombstone and Value tie-breaks, which random dots almost never do.
func sameDotAs(a, b Version, same bool) Version {
	if same {
		b.Dot = a.Dot
	}
	return b
}

// isUpperBoundOf reports whether m is (by Compare) one of vs and not below
// any of them.
func isUpperBoundOf(m Version, vs ...Version) bool {
	found := false
	for _, v := range vs {
		c := Compare(m, v)
		if c < 0 {
			return false
		}
		if c == 0 {
			found = true
		}
	}
	return found
}

func FuzzMergeCommutative(f *testing.F) {
	f.Add(uint64(1), "a", []byte("x"), false, uint64(2), "b", []byte("y"), false, false)
	f.Add(uint64(5), "a", []byte("x"), false, uint64(5), "a", []byte(nil), true, true)
	f.Add(uint64(5), "a", []byte("x"), false, uint64(5), "a", []byte("y"), false, true)
	f.Add(uint64(5), "a", []byte(nil), false, uint64(5), "a", []byte{}, false, true)
	f.Add(uint64(0), "", []byte(nil), false, uint64(0), "", []byte(nil), false, false)
	f.Add(uint64(math.MaxUint64), "\xff", []byte{0}, true, uint64(math.MaxUint64), "", []byte{}, true, false)
	f.Fuzz(func(t *testing.T,
		c1 uint64, a1 string, v1 []byte, t1 bool,
		c2 uint64, a2 string, v2 []byte, t2 bool, sameDot bool,
	) {
		a := fuzzVersion(c1, a1, v1, t1)
		b := sameDotAs(a, fuzzVersion(c2, a2, v2, t2), sameDot)
		ab, ba := Merge(a, b), Merge(b, a)
		if Compare(ab, ba) != 0 || !sameVersion(ab, ba) {
			t.Fatalf("Merge(a, b) = %+v, Merge(b, a) = %+v", ab, ba)
		}
		if !isUpperBoundOf(ab, a, b) {
			t.Fatalf("Merge(%+v, %+v) = %+v is not the greater argument", a, b, ab)
		}
		if sign(Compare(a, b)) != -sign(Compare(b, a)) {
			t.Fatalf("Compare not antisymmetric on %+v, %+v", a, b)
		}
	})
}

func FuzzMergeAssociative(f *testing.F) {
	f.Add(uint64(1), "a", []byte("x"), false, uint64(2), "b", []byte("y"), false, uint64(3), "c", []byte("z"), true, false, false)
	f.Add(uint64(5), "a", []byte("x"), false, uint64(5), "a", []byte("y"), false, uint64(5), "a", []byte(nil), true, true, true)
	f.Add(uint64(3), "b", []byte(nil), true, uint64(3), "a", []byte("y"), false, uint64(1), "c", []byte("z"), false, false, true)
	f.Add(uint64(0), "", []byte(nil), false, uint64(0), "", []byte{}, false, uint64(0), "", []byte(nil), true, true, true)
	f.Fuzz(func(t *testing.T,
		c1 uint64, a1 string, v1 []byte, t1 bool,
		c2 uint64, a2 string, v2 []byte, t2 bool,
		c3 uint64, a3 string, v3 []byte, t3 bool,
		sameAB, sameAC bool,
	) {
		a := fuzzVersion(c1, a1, v1, t1)
		b := sameDotAs(a, fuzzVersion(c2, a2, v2, t2), sameAB)
		c := sameDotAs(a, fuzzVersion(c3, a3, v3, t3), sameAC)
		left := Merge(Merge(a, b), c)
		right := Merge(a, Merge(b, c))
		if !sameVersion(left, right) {
			t.Fatalf("(a∨b)∨c = %+v, a∨(b∨c) = %+v", left, right)
		}
		all, ok := MergeAll([]Version{c, a, b})
		if !ok || !sameVersion(all, left) {
			t.Fatalf("MergeAll = %+v, %v; want %+v", all, ok, left)
		}
		if !isUpperBoundOf(left, a, b, c) {
			t.Fatalf("merge %+v is not the greatest of %+v, %+v, %+v", left, a, b, c)
		}
	})
}

func FuzzMergeIdempotent(f *testing.F) {
	f.Add(uint64(1), "a", []byte("x"), false, uint64(2), "b", []byte("y"), true, false)
	f.Add(uint64(5), "a", []byte("x"), false, uint64(5), "a", []byte("y"), true, true)
	f.Add(uint64(0), "", []byte(nil), false, uint64(0), "", []byte{}, false, true)
	f.Fuzz(func(t *testing.T,
		c1 uint64, a1 string, v1 []byte, t1 bool,
		c2 uint64, a2 string, v2 []byte, t2 bool, sameDot bool,
	) {
		a := fuzzVersion(c1, a1, v1, t1)
		b := sameDotAs(a, fuzzVersion(c2, a2, v2, t2), sameDot)
		if got := Merge(a, a); !sameVersion(got, a) {
			t.Fatalf("Merge(a, a) = %+v, want %+v", got, a)
		}
		ab := Merge(a, b)
		// Receiving the same version again changes nothing.
		for _, again := range []Version{Merge(ab, a), Merge(ab, b), Merge(a, ab), Merge(ab, ab)} {
			if !sameVersion(again, ab) {
				t.Fatalf("re-merging changed %+v to %+v", ab, again)
			}
		}
		if got, _ := MergeAll([]Version{a, b, a, b}); !sameVersion(got, ab) {
			t.Fatalf("MergeAll with duplicates = %+v, want %+v", got, ab)
		}
	})
}

func FuzzContextWins(f *testing.F) {
	wall := uint64(wallMs) << 16
	f.Add(wall+5, "n2", []byte("read"), false, uint64(0), int64(wallMs), "n1", false)
	f.Add(wall+5<<16, "zz", []byte("read"), false, uint64(0), int64(wallMs), "a", true)
	f.Add(wall, "n1", []byte(nil), true, wall+100, int64(wallMs-1000), "n1", false)
	f.Add(uint64(0), "", []byte(nil), false, uint64(0), int64(0), "", false)
	f.Add(uint64(0), "", []byte(nil), false, uint64(0), int64(-1), "", true)
	f.Add(uint64(math.MaxUint64-1), "n2", []byte("x"), false, uint64(0), int64(wallMs), "n1", false)
	f.Add(uint64(math.MaxUint64), "n2", []byte("x"), false, uint64(0), int64(wallMs), "n1", false)
	f.Add(wall, "n2", []byte("x"), false, uint64(math.MaxUint64), int64(wallMs), "n1", false)
	f.Add(uint64(1), "n2", []byte("x"), false, uint64(0), int64(math.MaxInt64), "n1", false)
	f.Fuzz(func(t *testing.T,
		counter uint64, actor string, value []byte, tomb bool, // the version read
		state uint64, nowMs int64, writer string, writeTomb bool, // the coordinator
	) {
		read := fuzzVersion(counter, actor, value, tomb)
		s := EncodeContext(read.Dot)
		ctx, err := DecodeContext(s)
		if err != nil || ctx != read.Dot {
			t.Fatalf("context %q of %+v decoded to %+v, %v", s, read.Dot, ctx, err)
		}

		h := NewHLC(fixedNow(nowMs))
		h.Observe(state)
		d, err := h.TryStamp(writer, ctx)
		if ctx.Counter == math.MaxUint64 || state == math.MaxUint64 {
			if !errors.Is(err, ErrClockExhausted) {
				t.Fatalf("TryStamp with exhausted clock = %+v, %v; want ErrClockExhausted", d, err)
			}
			mustPanicExhausted(t, func() { h.Stamp(writer, ctx) })
			return
		}
		if err != nil {
			t.Fatalf("TryStamp: %v", err)
		}
		if d.Actor != writer || d.Counter <= ctx.Counter || d.Counter <= state {
			t.Fatalf("TryStamp(%q, %+v) after Observe(%d) = %+v", writer, ctx, state, d)
		}
		if d.Counter < CounterAt(fixedNow(nowMs)()) {
			t.Fatalf("stamp %d below wall counter at %d ms", d.Counter, nowMs)
		}
		write := Version{Dot: d, Tombstone: writeTomb}
		if !writeTomb {
			write.Value = value
		}
		if Compare(write, read) <= 0 {
			t.Fatalf("write %+v does not beat the version it read %+v", write, read)
		}
		if got := Merge(read, write); !sameVersion(got, write) {
			t.Fatalf("Merge(read, write) = %+v, want the write", got)
		}
	})
}

func FuzzDecodeContext(f *testing.F) {
	for _, s := range []string{
		"",
		"l1.AAAAAAAAAAFuMQ",
		"l1.AYvP5WgAAAdub2RlLWE",
		"l1.____________",
		"l1.AAAAAAAAAAE",
		"l1.AAAAAAAAAAA",
		"l1.AAAAAAAAAAF",
		"l1.AAAAAAAAAAE=",
		"l1.AAAAAAAAAAFu\nMQ",
		"l1.",
		"l1",
		"d1.AAAAAAAAAAFuMQ",
		"l1.AAAA",
		"l1.\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := DecodeContext(s)
		if err != nil {
			if !errors.Is(err, ErrBadContext) {
				t.Fatalf("DecodeContext(%q) error %v does not wrap ErrBadContext", s, err)
			}
			if !d.IsZero() {
				t.Fatalf("DecodeContext(%q) = %+v with error %v; want zero Dot", s, d, err)
			}
			return
		}
		if got := EncodeContext(d); got != s {
			t.Fatalf("EncodeContext(DecodeContext(%q)) = %q", s, got)
		}
		if again, err := DecodeContext(EncodeContext(d)); err != nil || again != d {
			t.Fatalf("second round trip of %+v: %+v, %v", d, again, err)
		}
	})
}
