package ring

import (
	"strconv"
	"testing"
)

func BenchmarkKeyHash(b *testing.B) {
	b.ReportAllocs()
	var sink uint64
	for b.Loop() {
		sink += KeyHash("default", "user:1234567")
	}
	_ = sink
}

func BenchmarkMapPreferenceList(b *testing.B) {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	m, err := Claim(nil, claimNodes(seq(1, 64)...), DefaultPartitions)
	if err != nil {
		b.Fatal(err)
	}
	dst := make([]string, 0, 3)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst = m.PreferenceList("default", keys[i&1023], 3, dst)
		i++
	}
}

func BenchmarkClaim(b *testing.B) {
	q := DefaultPartitions
	base, err := Claim(nil, claimNodes(seq(1, 63)...), q)
	if err != nil {
		b.Fatal(err)
	}
	full, _ := Claim(nil, claimNodes(seq(1, 64)...), q)
	for _, bc := range []struct {
		name string
		prev *Map
		ids  []int
	}{
		{"new/N=64", nil, seq(1, 64)},
		{"join/N=63+1", base, seq(1, 64)},
		{"leave/N=64-1", full, seq(2, 64)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ns := claimNodes(bc.ids...)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Claim(bc.prev, ns, q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMapWriteSet is the write path's lookup while partitions move:
// 64 nodes, a 65th joining.
func BenchmarkMapWriteSet(b *testing.B) {
	m, err := Claim(nil, claimNodes(seq(1, 64)...), DefaultPartitions)
	if err != nil {
		b.Fatal(err)
	}
	t, _ := Claim(m, claimNodes(seq(1, 65)...), DefaultPartitions)
	m, err = m.Retarget(t, 2)
	if err != nil {
		b.Fatal(err)
	}
	hs := make([]uint64, 1024)
	for i := range hs {
		hs[i] = KeyHash("default", "key-"+strconv.Itoa(i))
	}
	dst := make([]string, 0, 6)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		dst, _ = m.WriteSetHash(hs[i&1023], 3, dst)
		i++
	}
}

// BenchmarkTransitions: what a reconcile and a transfer report cost under
// the metadata store's optimistic lock (64 nodes, a 65th joining), and
// decoding the map every node and coordinator loads on each change.
func BenchmarkTransitions(b *testing.B) {
	m, err := Claim(nil, claimNodes(seq(1, 64)...), DefaultPartitions)
	if err != nil {
		b.Fatal(err)
	}
	t, _ := Claim(m.TargetMap(), claimNodes(seq(1, 65)...), DefaultPartitions)
	moving, err := m.Retarget(t, 2)
	if err != nil {
		b.Fatal(err)
	}
	recv := moving.Receiving("node-65", nil)
	data, _ := moving.MarshalBinary()
	b.Run("Retarget", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Retarget(t, 2); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("MarkDone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := moving.MarkDone("node-65", recv[:64], 3); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Decode", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			if _, err := Decode(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
