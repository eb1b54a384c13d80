package vclock

import (
	"bytes"
	"slices"
	"testing"
)

func TestDotCompare(t *testing.T) {
	tests := []struct {
		name string
		a, b Dot
		want int
	}{
		{"zero equal", Dot{}, Dot{}, 0},
		{"equal", Dot{Counter: 5, Actor: "a"}, Dot{Counter: 5, Actor: "a"}, 0},
		{"counter first", Dot{Counter: 1, Actor: "z"}, Dot{Counter: 2, Actor: "a"}, -1},
		{"zero before everything", Dot{}, Dot{Counter: 0, Actor: "a"}, -1},
		{"zero before counter", Dot{}, Dot{Counter: 1}, -1},
		{"actor breaks tie", Dot{Counter: 7, Actor: "a"}, Dot{Counter: 7, Actor: "b"}, -1},
		{"actor prefix shorter first", Dot{Counter: 7, Actor: "a"}, Dot{Counter: 7, Actor: "ab"}, -1},
		{"actor bytewise upper before lower", Dot{Counter: 7, Actor: "Z"}, Dot{Counter: 7, Actor: "a"}, -1},
		{"actor bytewise high byte last", Dot{Counter: 7, Actor: "\xff"}, Dot{Counter: 7, Actor: "z"}, 1},
		{"max counter", Dot{Counter: ^uint64(0)}, Dot{Counter: ^uint64(0) - 1, Actor: "zzz"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Compare(tt.b); got != tt.want {
				t.Errorf("%+v.Compare(%+v) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
			if got := tt.b.Compare(tt.a); got != -tt.want {
				t.Errorf("%+v.Compare(%+v) = %d, want %d", tt.b, tt.a, got, -tt.want)
			}
		})
	}
}

func TestDotIsZero(t *testing.T) {
	tests := []struct {
		d    Dot
		want bool
	}{
		{Dot{}, true},
		{Dot{Actor: "a"}, false},
		{Dot{Counter: 1}, false},
		{Dot{Counter: 1, Actor: "a"}, false},
	}
	for _, tt := range tests {
		if got := tt.d.IsZero(); got != tt.want {
			t.Errorf("%+v.IsZero() = %v, want %v", tt.d, got, tt.want)
		}
	}
}

func TestCompare(t *testing.T) {
	tests := []struct {
		name string
		a, b Version
		want int
	}{
		{"zero equal", Version{}, Version{}, 0},
		{"same write", ver(5, "a", "x", false), ver(5, "a", "x", false), 0},
		{"nil equals empty value", Version{Dot: Dot{Counter: 5}, Value: nil}, Version{Dot: Dot{Counter: 5}, Value: []byte{}}, 0},
		{"counter beats tombstone", ver(6, "a", "", false), ver(5, "a", "", true), 1},
		{"counter beats value bytes", ver(6, "a", "a", false), ver(5, "a", "zzz", false), 1},
		{"actor beats tombstone", ver(5, "b", "", false), ver(5, "a", "", true), 1},
		{"tombstone beats value at same dot", ver(5, "a", "", true), ver(5, "a", "zzz", false), 1},
		{"bytes break full tie", ver(5, "a", "abc", false), ver(5, "a", "abd", false), -1},
		{"bytes break tie between tombstones", ver(5, "a", "b", true), ver(5, "a", "a", true), 1},
		{"empty value before non-empty", ver(5, "a", "", false), ver(5, "a", "\x00", false), -1},
		{"zero version before any write", Version{}, ver(1, "", "", false), -1},
		{"zero version before zero-dot tombstone", Version{}, Version{Tombstone: true}, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Compare(tt.a, tt.b); got != tt.want {
				t.Errorf("Compare(a, b) = %d, want %d", got, tt.want)
			}
			if got := Compare(tt.b, tt.a); got != -tt.want {
				t.Errorf("Compare(b, a) = %d, want %d", got, -tt.want)
			}
		})
	}
}

// smallVersions returns every Version over a small domain, including ones
// with equal dots and different payloads, to check order laws exhaustively.
func smallVersions() []Version {
	var vs []Version
	for _, c := range []uint64{0, 1, 2} {
		for _, a := range []string{"", "a", "b"} {
			for _, val := range [][]byte{nil, {}, []byte("x"), []byte("y")} {
				for _, tomb := range []bool{false, true} {
					for _, exp := range []int64{0, 5} {
						vs = append(vs, Version{Dot: Dot{Counter: c, Actor: a}, Value: val, Tombstone: tomb, Expires: exp})
					}
				}
			}
		}
	}
	return vs
}

func sameVersion(a, b Version) bool {
	return a.Dot == b.Dot && a.Tombstone == b.Tombstone && a.Expires == b.Expires && bytes.Equal(a.Value, b.Value)
}

func TestCompareIsTotalOrder(t *testing.T) {
	vs := smallVersions()
	for _, a := range vs {
		for _, b := range vs {
			ab := Compare(a, b)
			if ab != -Compare(b, a) {
				t.Fatalf("not antisymmetric: %+v %+v", a, b)
			}
			if (ab == 0) != sameVersion(a, b) {
				t.Fatalf("Compare(%+v, %+v) = %d, but sameVersion = %v", a, b, ab, sameVersion(a, b))
			}
			for _, c := range vs {
				if ab <= 0 && Compare(b, c) <= 0 && Compare(a, c) > 0 {
					t.Fatalf("not transitive: %+v <= %+v <= %+v but a > c", a, b, c)
				}
			}
		}
	}
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name string
		a, b Version
		want Version
	}{
		{"zero and zero", Version{}, Version{}, Version{}},
		{"write beats absent", Version{}, ver(1, "a", "v", false), ver(1, "a", "v", false)},
		{"later write wins", ver(2, "a", "new", false), ver(1, "b", "old", false), ver(2, "a", "new", false)},
		{"later delete wins", ver(1, "a", "old", false), ver(2, "b", "", true), ver(2, "b", "", true)},
		{"later write beats delete", ver(3, "a", "again", false), ver(2, "b", "", true), ver(3, "a", "again", false)},
		{"actor tie-break", ver(2, "a", "x", false), ver(2, "b", "y", false), ver(2, "b", "y", false)},
		{"malformed equal dots: tombstone", ver(2, "a", "x", false), ver(2, "a", "", true), ver(2, "a", "", true)},
		{"malformed equal dots: bytes", ver(2, "a", "x", false), ver(2, "a", "y", false), ver(2, "a", "y", false)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, got := range []Version{Merge(tt.a, tt.b), Merge(tt.b, tt.a)} {
				if !sameVersion(got, tt.want) {
					t.Errorf("got %+v, want %+v", got, tt.want)
				}
			}
		})
	}
}

func TestMergeReturnsFirstOfEquals(t *testing.T) {
	a := Version{Dot: Dot{Counter: 1}, Value: nil}
	b := Version{Dot: Dot{Counter: 1}, Value: []byte{}}
	if got := Merge(a, b); got.Value != nil {
		t.Errorf("Merge(a, b) returned b for equal versions")
	}
	if got := Merge(b, a); got.Value == nil {
		t.Errorf("Merge(b, a) returned a for equal versions")
	}
}

func TestMergeOrderLaws(t *testing.T) {
	vs := smallVersions()
	for _, a := range vs {
		if !sameVersion(Merge(a, a), a) {
			t.Fatalf("Merge(a, a) != a for %+v", a)
		}
		for _, b := range vs {
			ab := Merge(a, b)
			if Compare(ab, Merge(b, a)) != 0 {
				t.Fatalf("not commutative: %+v %+v", a, b)
			}
			if Compare(ab, a) < 0 || Compare(ab, b) < 0 {
				t.Fatalf("Merge(%+v, %+v) = %+v is not an upper bound", a, b, ab)
			}
			for _, c := range vs {
				if Compare(Merge(ab, c), Merge(a, Merge(b, c))) != 0 {
					t.Fatalf("not associative: %+v %+v %+v", a, b, c)
				}
			}
		}
	}
}

func TestMergeAll(t *testing.T) {
	tests := []struct {
		name   string
		vs     []Version
		want   Version
		wantOK bool
	}{
		{"nil", nil, Version{}, false},
		{"empty", []Version{}, Version{}, false},
		{"one", []Version{ver(1, "a", "x", false)}, ver(1, "a", "x", false), true},
		{"one zero", []Version{{}}, Version{}, true},
		{"greatest first", []Version{ver(3, "a", "", false), ver(1, "b", "", false), ver(2, "c", "", false)}, ver(3, "a", "", false), true},
		{"greatest middle", []Version{ver(1, "a", "", false), ver(3, "b", "", true), ver(2, "c", "", false)}, ver(3, "b", "", true), true},
		{"greatest last", []Version{ver(1, "a", "", false), ver(2, "b", "", false), ver(3, "c", "v", false)}, ver(3, "c", "v", false), true},
		{"with absent", []Version{{}, ver(2, "b", "v", false), {}}, ver(2, "b", "v", false), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := slices.Clone(tt.vs)
			got, ok := MergeAll(tt.vs)
			if ok != tt.wantOK || !sameVersion(got, tt.want) {
				t.Errorf("MergeAll = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
			if !slices.EqualFunc(before, tt.vs, sameVersion) {
				t.Errorf("MergeAll modified its input")
			}
			// MergeAll agrees with folding Merge in any order.
			if len(tt.vs) > 0 {
				fold := tt.vs[len(tt.vs)-1]
				for i := len(tt.vs) - 2; i >= 0; i-- {
					fold = Merge(tt.vs[i], fold)
				}
				if Compare(fold, got) != 0 {
					t.Errorf("reverse fold = %+v, MergeAll = %+v", fold, got)
				}
			}
		})
	}
}

func TestMergeAllReturnsFirstOfEquals(t *testing.T) {
	vs := []Version{
		{Dot: Dot{Counter: 1}, Value: []byte{}},
		{Dot: Dot{Counter: 1}, Value: nil},
	}
	got, _ := MergeAll(vs)
	if got.Value == nil {
		t.Errorf("MergeAll returned the second of two equal versions")
	}
}

func TestLive(t *testing.T) {
	tests := []struct {
		name string
		v    Version
		want bool
	}{
		{"zero", Version{}, false},
		{"value", ver(1, "a", "x", false), true},
		{"empty value", ver(1, "a", "", false), true},
		{"tombstone", ver(1, "a", "", true), false},
		{"zero-dot value", Version{Value: []byte("x")}, false},
		{"actor-only dot", ver(0, "a", "x", false), true},
	}
	for _, tt := range tests {
		if got := tt.v.Live(); got != tt.want {
			t.Errorf("%s: Live() = %v, want %v", tt.name, got, tt.want)
		}
	}
}
