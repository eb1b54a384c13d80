package storage

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// TestRecordEncoding holds the record codec to msgpack's encoding of
// record: what encodeRecord writes decodes to the same record, and so does
// the library's own encoding (lww records also in the one-field form
// written before the siblings policy existed).
func TestRecordEncoding(t *testing.T) {
	tomb := version(7, "b", "")
	tomb.Tombstone = true
	st, _, _ := vclock.Update(vclock.DVVSet{}, nil, "n.1", vclock.Value{Data: []byte("a")})
	st, _, _ = vclock.Update(st, nil, "n.2", vclock.Value{Tombstone: true})
	ttlState, _, _ := vclock.Update(st, nil, "n.1", vclock.Value{Data: []byte("b"), Expires: 1_700_000_600_000})
	ttl := version(1<<50, "a", "expiring")
	ttl.Expires = 1_700_000_600_000
	deleted := version(1<<50, "a", "")
	deleted.Tombstone, deleted.Expires = true, 1_700_000_000_000
	recs := []record{{DVV: &st}, {}, {DVV: &ttlState}}
	for _, v := range []*vclock.Version{version(1<<50, "a", "value"), tomb, {}, version(3, "c", string(bytes.Repeat([]byte{0}, 300))), ttl, deleted} {
		recs = append(recs, record{LWW: v})
	}
	for _, rec := range recs {
		enc, err := encodeRecord(nil, &rec)
		if err != nil {
			t.Fatal(err)
		}
		lib, err := msgpack.Marshal(&rec)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"encodeRecord": enc, "library": lib} {
			got, err := decodeRecord(data)
			if err != nil {
				t.Fatalf("%s form of %+v: %v", name, rec, err)
			}
			if !reflect.DeepEqual(got, rec) && !(rec.LWW == nil && rec.DVV == nil && got.LWW == nil && got.DVV == nil) {
				t.Errorf("%s form: decoded %+v, want %+v", name, got, rec)
			}
		}
	}
}

// TestRecordEncodingWithoutExpiresUnchanged: records without Expires are
// stored byte for byte as before Expires existed (so stored data and the
// version hashes anti-entropy compares are unchanged), and Expires adds
// one element to the version (lww) or to the value (siblings).
func TestRecordEncodingWithoutExpiresUnchanged(t *testing.T) {
	v := version(5, "a", "x")
	enc, err := encodeRecord(nil, &record{LWW: v})
	if err != nil {
		t.Fatal(err)
	}
	// [ [ [5, "a"], bin "x", false ] ]
	if want := []byte{0x91, 0x93, 0x92, 5, 0xa1, 'a', 0xc4, 1, 'x', 0xc2}; !bytes.Equal(enc, want) {
		t.Fatalf("lww record encodes as % x, want % x", enc, want)
	}
	v.Expires = 300
	enc, err = encodeRecord(nil, &record{LWW: v})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x91, 0x94, 0x92, 5, 0xa1, 'a', 0xc4, 1, 'x', 0xc2, 0xcd, 0x01, 0x2c}; !bytes.Equal(enc, want) {
		t.Fatalf("lww record with Expires encodes as % x, want % x", enc, want)
	}
	st := vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "a", Counter: 1, Values: []vclock.Value{{Data: []byte("x")}}}}}
	enc, err = encodeRecord(nil, &record{DVV: &st})
	if err != nil {
		t.Fatal(err)
	}
	// [ nil, [ [ ["a", 1, [ [bin "x", false] ]] ] ] ]
	if want := []byte{0x92, 0xc0, 0x91, 0x91, 0x93, 0xa1, 'a', 1, 0x91, 0x92, 0xc4, 1, 'x', 0xc2}; !bytes.Equal(enc, want) {
		t.Fatalf("siblings record encodes as % x, want % x", enc, want)
	}
	st.Entries[0].Values[0].Expires = 300
	enc, err = encodeRecord(nil, &record{DVV: &st})
	if err != nil {
		t.Fatal(err)
	}
	if want := []byte{0x92, 0xc0, 0x91, 0x91, 0x93, 0xa1, 'a', 1, 0x91, 0x93, 0xc4, 1, 'x', 0xc2, 0xcd, 0x01, 0x2c}; !bytes.Equal(enc, want) {
		t.Fatalf("siblings record with Expires encodes as % x, want % x", enc, want)
	}
}

// TestApplyWritesRepeatedKeys: a key written several times in one batch,
// between other keys, keeps the greatest version, and each write learns
// what the key held after it.
func TestApplyWritesRepeatedKeys(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	var writes []subjects.NodeWrite
	for i := range 50 {
		writes = append(writes, subjects.NodeWrite{ID: uint64(i), Tenant: "t", Key: fmt.Sprintf("k%d", i%7), LWW: version(uint64(100+(i*37)%50), "x", fmt.Sprint(i))})
	}
	res := n.eng.applyWrites(writes)
	best := map[string]vclock.Version{}
	for i, w := range writes {
		cur, ok := best[w.Key]
		merged := *w.LWW
		if ok {
			merged = vclock.Merge(cur, merged)
		}
		best[w.Key] = merged
		wantReport := vclock.Compare(merged, *w.LWW) != 0
		if res[i].Err != "" || (res[i].LWW != nil) != wantReport || (wantReport && vclock.Compare(*res[i].LWW, merged) != 0) {
			t.Fatalf("write %d (%s): result %+v, want kept %+v reported=%v", i, w.Key, res[i], merged, wantReport)
		}
	}
	for k, want := range best {
		rec, err := n.eng.read("t", k)
		got := rec.LWW
		if err != nil || got == nil || vclock.Compare(*got, want) != 0 {
			t.Fatalf("read %s: %+v %v, want %+v", k, got, err, want)
		}
	}
}

// BenchmarkApplyWrites group-commits batches of 64 writes of 256-byte
// values (no fsync) over 10k keys: the merge reads, the encoding and the
// Pebble batch.
func BenchmarkApplyWrites(b *testing.B) {
	n, err := Open(Config{NodeID: "bench", DataDir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Stop()
	value := bytes.Repeat([]byte("v"), 256)
	const keys, batch = 100_000, 64
	names := make([]string, keys)
	for i := range names {
		names[i] = fmt.Sprintf("user%012d", i)
	}
	writes := make([]subjects.NodeWrite, batch)
	counter := uint64(1 << 40)
	next := 0
	fill := func() {
		for i := range writes {
			counter++
			writes[i] = subjects.NodeWrite{ID: counter, Tenant: "bench", Key: names[next%keys],
				LWW: &vclock.Version{Dot: vclock.Dot{Counter: counter, Actor: "c0ffee01"}, Value: value}}
			next += 7919 // a prime: spreads the keys
		}
	}
	for range keys / batch {
		fill()
		n.eng.applyWrites(writes)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		fill()
		b.StartTimer()
		n.eng.applyWrites(writes)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/write")
}

// BenchmarkRead reads single keys as a node's read loop does.
func BenchmarkRead(b *testing.B) {
	n, err := Open(Config{NodeID: "bench", DataDir: b.TempDir(), Logger: quiet()})
	if err != nil {
		b.Fatal(err)
	}
	defer n.Stop()
	value := bytes.Repeat([]byte("v"), 256)
	const keys = 10_000
	var writes []subjects.NodeWrite
	for i := range keys {
		writes = append(writes, subjects.NodeWrite{ID: uint64(i), Tenant: "bench", Key: fmt.Sprintf("user%012d", i),
			LWW: &vclock.Version{Dot: vclock.Dot{Counter: uint64(i + 1), Actor: "a"}, Value: value}})
	}
	n.eng.applyWrites(writes)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := n.eng.read("bench", writes[i%keys].Key); err != nil {
			b.Fatal(err)
		}
		i += 7919
	}
}

// TestBoundSkipsOnlyWhatCannotLose: once the writer knows a key's counter,
// newer lww writes skip the read; older ones and writes to a key holding
// siblings still see what is stored.
func TestBoundSkipsOnlyWhatCannotLose(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	apply := func(ws ...subjects.NodeWrite) []subjects.NodeWriteResult { return n.eng.applyWrites(ws) }
	apply(subjects.NodeWrite{ID: 1, Tenant: "t", Key: "a", LWW: version(10, "x", "ten")})
	if len(n.eng.bound) != 1 {
		t.Fatalf("bound has %d keys after one write", len(n.eng.bound))
	}
	// Newer: takes the fast path and wins.
	if res := apply(subjects.NodeWrite{ID: 2, Tenant: "t", Key: "a", LWW: version(20, "x", "twenty")}); res[0].Err != "" || res[0].LWW != nil {
		t.Fatalf("newer write: %+v", res[0])
	}
	// Older and equal-counter writes read the key and learn what it holds.
	res := apply(
		subjects.NodeWrite{ID: 3, Tenant: "t", Key: "a", LWW: version(15, "x", "fifteen")},
		subjects.NodeWrite{ID: 4, Tenant: "t", Key: "a", LWW: version(20, "a", "same counter, smaller actor")},
	)
	for _, r := range res {
		if r.Err != "" || r.LWW == nil || string(r.LWW.Value) != "twenty" {
			t.Fatalf("older write must report the kept version: %+v", r)
		}
	}
	got, err := n.eng.read("t", "a")
	if err != nil || got.LWW == nil || string(got.LWW.Value) != "twenty" {
		t.Fatalf("read: %+v %v", got, err)
	}
	// A key holding siblings refuses lww writes whatever their counter.
	apply(subjects.NodeWrite{ID: 5, Tenant: "s", Key: "k", Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("v")}}})
	if res := apply(subjects.NodeWrite{ID: 6, Tenant: "s", Key: "k", LWW: version(1<<62, "x", "lww")}); res[0].Err != errPolicy {
		t.Fatalf("lww write on a siblings key: %+v", res[0])
	}
}

// BenchmarkReadOnDisk compares data block sizes (dataBlockBytes) side by
// side on a store larger than the block cache: point reads of random keys
// (what reads and the merges of writes do) and a scan of one partition in
// 64 (what a transfer's pull, its reconcile and anti-entropy do). 400k
// keys of 256 random bytes are written and compacted into tables first.
func BenchmarkReadOnDisk(b *testing.B) {
	const keys = 400_000
	for _, kib := range []int{4, 16, 32} {
		b.Run(fmt.Sprintf("block=%dKiB", kib), func(b *testing.B) {
			was := dataBlockBytes
			dataBlockBytes = kib << 10
			defer func() { dataBlockBytes = was }()
			n, err := Open(Config{NodeID: "bench", DataDir: b.TempDir(), Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Stop()
			rng := rand.New(rand.NewPCG(1, 2))
			key := func(i int) string { return fmt.Sprintf("user%012d", i) }
			for lo := 0; lo < keys; lo += 1000 {
				writes := make([]subjects.NodeWrite, 0, 1000)
				for i := lo; i < lo+1000; i++ {
					v := make([]byte, 256)
					for j := range v {
						v[j] = byte(rng.Uint32())
					}
					writes = append(writes, subjects.NodeWrite{ID: uint64(i), Tenant: "bench", Key: key(i),
						LWW: &vclock.Version{Dot: vclock.Dot{Counter: uint64(i + 1), Actor: "a"}, Value: v}})
				}
				n.eng.applyWrites(writes)
			}
			if err := n.eng.db.Compact(context.Background(), []byte{0}, []byte{0xff, 0xff, 0xff, 0xff, 0xff}, false); err != nil {
				b.Fatal(err)
			}
			b.Run("point", func(b *testing.B) {
				i := 0
				for b.Loop() {
					if _, err := n.eng.read("bench", key(i%keys)); err != nil {
						b.Fatal(err)
					}
					i += 7919
				}
			})
			b.Run("scan", func(b *testing.B) {
				var bytes int64
				p := uint32(0)
				for b.Loop() {
					bytes = 0
					err := n.scanTenants(context.Background(), p%uint32(n.eng.q), []string{"bench"}, true, func(_ string, k, v []byte) bool {
						bytes += int64(len(k) + len(v))
						return true
					})
					if err != nil {
						b.Fatal(err)
					}
					p += 64
				}
				b.SetBytes(bytes)
			})
		})
	}
}
