package vclock

import "testing"

func BenchmarkMergeAll3(b *testing.B) {
	vs := []Version{
		ver(uint64(wallMs)<<16|1, "node-a", "value-a", false),
		ver(uint64(wallMs)<<16|3, "node-b", "value-b", false),
		ver(uint64(wallMs)<<16|2, "node-c", "", true),
	}
	b.ReportAllocs()
	for b.Loop() {
		sinkVersion, sinkOK = MergeAll(vs)
	}
}

func BenchmarkHLCNext(b *testing.B) {
	h := NewHLC(nil)
	b.ReportAllocs()
	for b.Loop() {
		sinkUint = h.Next()
	}
}

func BenchmarkHLCNextParallel(b *testing.B) {
	h := NewHLC(nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var c uint64
		for pb.Next() {
			c = h.Next()
		}
		_ = c
	})
}

var sinkString string

func BenchmarkEncodeContext(b *testing.B) {
	d := Dot{Counter: uint64(wallMs)<<16 | 7, Actor: "node-a"}
	b.ReportAllocs()
	for b.Loop() {
		sinkString = EncodeContext(d)
	}
}

func BenchmarkDecodeContext(b *testing.B) {
	s := EncodeContext(Dot{Counter: uint64(wallMs)<<16 | 7, Actor: "node-a"})
	b.ReportAllocs()
	for b.Loop() {
		var err error
		sinkDot, err = DecodeContext(s)
		if err != nil {
			b.Fatal(err)
		}
	}
}
