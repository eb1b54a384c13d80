package storage

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// partitionOrder sorts keys of tenant as dump lists them: by (partition,
// key) for q partitions.
func partitionOrder(q int, tenant string, keys ...string) []string {
	out := slices.Clone(keys)
	slices.SortFunc(out, func(a, b string) int {
		return cmp.Or(cmp.Compare(ring.Partition(tenant, a, q), ring.Partition(tenant, b, q)), strings.Compare(a, b))
	})
	return out
}

func openQ(t *testing.T, dir string, q int) *Node {
	t.Helper()
	n, err := Open(Config{NodeID: "node-1", DataDir: dir, Partitions: q, Logger: quiet()})
	if err != nil {
		t.Fatalf("open with %d partitions: %v", q, err)
	}
	return n
}

// oldRecord is one record written in the layout from before partitions.
type oldRecord struct {
	tenant, key string
	rec         record
}

// oldRecords makes n records over three tenants, lww and siblings.
func oldRecords(n int) []oldRecord {
	var out []oldRecord
	for i := range n {
		r := oldRecord{tenant: []string{"a", "b-c", "default"}[i%3], key: fmt.Sprintf("key\x00%06d", i)}
		if i%5 == 0 {
			st, _, _ := vclock.Update(vclock.DVVSet{}, nil, "n.1", vclock.Value{Data: []byte(fmt.Sprint("dvv", i))})
			r.rec.DVV = &st
		} else {
			r.rec.LWW = version(uint64(1000+i), "c", fmt.Sprint("v", i))
		}
		out = append(out, r)
	}
	return out
}

// writeOldLayout writes recs into dir as a binary from before partitions
// stored them: 'd' tenant 0x00 key → record, and no partition count. dir
// must hold a closed node's store (its node id and epoch).
func writeOldLayout(t *testing.T, dir string, recs []oldRecord) {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{quiet()}})
	if err != nil {
		t.Fatal(err)
	}
	b := db.NewBatch()
	for _, r := range recs {
		k := append(append(append([]byte{nsOldData}, r.tenant...), 0), r.key...)
		v, err := encodeRecord(nil, &r.rec)
		if err != nil {
			t.Fatal(err)
		}
		_ = b.Set(k, v, nil)
	}
	// A binary from before partitions never wrote the partition count, and
	// stored the bare node id.
	_ = b.Delete(metaPartitions, nil)
	if owner, closer, err := db.Get(metaNodeID); err == nil {
		_ = b.Set(metaNodeID, bytes.TrimSuffix(bytes.Clone(owner), []byte(ownerLayoutTag)), nil)
		_ = closer.Close()
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// namespaceCount counts the keys of namespace ns in a closed node's dir.
func namespaceCount(t *testing.T, dir string, ns byte) int {
	t.Helper()
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{quiet()}})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n, err := countRange(db, []byte{ns}, []byte{ns + 1})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func checkRecords(t *testing.T, e *engine, recs []oldRecord) {
	t.Helper()
	for _, r := range recs {
		got, err := e.read(r.tenant, r.key)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := encodeRecord(nil, &got)
		b, _ := encodeRecord(nil, &r.rec)
		if !bytes.Equal(a, b) {
			t.Fatalf("%s/%q: read %+v, want %+v", r.tenant, r.key, got, r.rec)
		}
	}
}

// TestMigrateOldLayout: a directory written before partitions is migrated
// at open: every record reads back, the old namespace is empty, the node
// keeps its epoch and the partition count is recorded.
func TestMigrateOldLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := openQ(t, dir, 64)
	epoch := n.Epoch()
	_ = n.Stop()
	recs := oldRecords(2*migrateBatch + 123)
	writeOldLayout(t, dir, recs)

	n = openQ(t, dir, 64)
	if n.Epoch() != epoch {
		t.Fatal("migration changed the epoch")
	}
	checkRecords(t, n.eng, recs)
	_ = n.Stop()
	if got := namespaceCount(t, dir, nsOldData); got != 0 {
		t.Fatalf("%d keys left in the old namespace", got)
	}
	if got := namespaceCount(t, dir, nsData); got != len(recs) {
		t.Fatalf("%d keys in the new namespace, want %d", got, len(recs))
	}
	// A binary from before partitions compares the whole owner value with
	// its node id, so it refuses the migrated directory.
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{quiet()}})
	if err != nil {
		t.Fatal(err)
	}
	owner, closer, err := db.Get(metaNodeID)
	if err != nil || string(owner) == "node-1" || !strings.HasPrefix(string(owner), "node-1 [partitioned layout") {
		t.Fatalf("owner after migration: %q %v", owner, err)
	}
	_ = closer.Close()
	_ = db.Close()
	// The count was recorded: another one is refused now.
	if _, err := Open(Config{NodeID: "node-1", DataDir: dir, Partitions: 128, Logger: quiet()}); err == nil {
		t.Fatal("a migrated dir opened with another partition count")
	}
}

// TestMigrateResumesAfterCrash: a migration stopped after its first batch
// leaves every record in exactly one namespace; the next open completes it.
func TestMigrateResumesAfterCrash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	_ = openQ(t, dir, 16).Stop()
	recs := oldRecords(2*migrateBatch + 7)
	writeOldLayout(t, dir, recs)

	crash := errors.New("simulated crash")
	migrateHook = func(done int) error { return crash }
	_, err := Open(Config{NodeID: "node-1", DataDir: dir, Partitions: 16, Logger: quiet()})
	migrateHook = nil
	if !errors.Is(err, crash) {
		t.Fatalf("open with a crashing migration: %v", err)
	}
	oldLeft, moved := namespaceCount(t, dir, nsOldData), namespaceCount(t, dir, nsData)
	if moved != migrateBatch || oldLeft+moved != len(recs) {
		t.Fatalf("after one batch: %d old + %d new keys, want %d + %d", oldLeft, moved, len(recs)-migrateBatch, migrateBatch)
	}
	// Resuming with another partition count is refused: the moved keys
	// sit in partitions of 16.
	if _, err := Open(Config{NodeID: "node-1", DataDir: dir, Partitions: 32, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "--partitions 16") {
		t.Fatalf("resume with another partition count: %v", err)
	}
	n := openQ(t, dir, 16)
	checkRecords(t, n.eng, recs)
	_ = n.Stop()
	if got := namespaceCount(t, dir, nsOldData); got != 0 {
		t.Fatalf("%d keys left in the old namespace", got)
	}
}

// TestMigrateMergesWithNewLayout: a record in the old namespace whose key
// the new layout already holds is merged, never overwrites a newer one.
func TestMigrateMergesWithNewLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := openQ(t, dir, 16)
	n.eng.applyWrites([]subjects.NodeWrite{
		{ID: 1, Tenant: "t", Key: "newer-here", LWW: version(50, "x", "new layout")},
		{ID: 2, Tenant: "t", Key: "older-here", LWW: version(5, "x", "new layout")},
	})
	_ = n.Stop()
	writeOldLayout(t, dir, []oldRecord{
		{tenant: "t", key: "newer-here", rec: record{LWW: version(40, "x", "old layout")}},
		{tenant: "t", key: "older-here", rec: record{LWW: version(9, "x", "old layout")}},
	})
	n = openQ(t, dir, 16)
	defer n.Stop()
	for key, want := range map[string]string{"newer-here": "new layout", "older-here": "old layout"} {
		rec, err := n.eng.read("t", key)
		if err != nil || rec.LWW == nil || string(rec.LWW.Value) != want {
			t.Fatalf("%s: %+v %v, want %q", key, rec.LWW, err, want)
		}
	}
}

// TestPartitionCountMismatchRefused: a directory remembers the partition
// count it was written with and refuses another, saying how to fix it.
func TestPartitionCountMismatchRefused(t *testing.T) {
	dir := t.TempDir()
	n := openQ(t, dir, 256)
	n.eng.applyWrites([]subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k", LWW: version(1, "x", "v")}})
	_ = n.Stop()
	_, err := Open(Config{NodeID: "node-1", DataDir: dir, Logger: quiet()}) // default 1024
	if err == nil || !strings.Contains(err.Error(), "written with 256 partitions, not 1024") || !strings.Contains(err.Error(), "--partitions 256") {
		t.Fatalf("open with the default count: %v", err)
	}
	n = openQ(t, dir, 256)
	defer n.Stop()
	if rec, _ := n.eng.read("t", "k"); rec.LWW == nil {
		t.Fatal("the record is gone after a refused open")
	}
}

// TestScanAndDropPartition pages through every partition, then drops one.
func TestScanAndDropPartition(t *testing.T) {
	const q = 8
	n := openQ(t, t.TempDir(), q)
	defer n.Stop()
	e := n.eng
	want := map[uint32][]string{} // partition → "tenant/key" in scan order
	var writes []subjects.NodeWrite
	for i := range 2000 {
		tenant, key := []string{"a", "ab", "b"}[i%3], fmt.Sprintf("k%d", i)
		writes = append(writes, subjects.NodeWrite{ID: uint64(i), Tenant: tenant, Key: key, LWW: version(uint64(i+1), "x", key)})
		p := ring.Partition(tenant, key, q)
		want[p] = append(want[p], tenant+"\x00"+key)
	}
	for _, res := range e.applyWrites(writes) {
		if res.Err != "" {
			t.Fatal(res.Err)
		}
	}
	for p := range uint32(q) {
		slices.Sort(want[p])
		var got []string
		var cursor []byte
		for pages := 0; ; pages++ {
			es, next, err := e.scanPartition(p, cursor, 37)
			if err != nil {
				t.Fatal(err)
			}
			for _, en := range es {
				rec, err := decodeRecord(en.Record)
				if err != nil || rec.LWW == nil || string(rec.LWW.Value) != en.Key {
					t.Fatalf("partition %d: %s/%s holds %+v %v", p, en.Tenant, en.Key, rec, err)
				}
				got = append(got, en.Tenant+"\x00"+en.Key)
			}
			if next == nil {
				break
			}
			if pages > 1000 {
				t.Fatal("scan does not end")
			}
			cursor = next
		}
		if !slices.Equal(got, want[p]) {
			t.Fatalf("partition %d: scanned %d records, want %d in (tenant, key) order", p, len(got), len(want[p]))
		}
		if records, _, err := e.partitionStats(p); err != nil || records != len(want[p]) {
			t.Fatalf("partition %d stats: %d records, %v; want %d", p, records, err, len(want[p]))
		}
	}
	if err := e.dropPartition(3); err != nil {
		t.Fatal(err)
	}
	if es, next, err := e.scanPartition(3, nil, 10); err != nil || len(es) != 0 || next != nil {
		t.Fatalf("scan of a dropped partition: %d records, next %q, %v", len(es), next, err)
	}
	for _, w := range writes {
		rec, err := e.read(w.Tenant, w.Key)
		if err != nil {
			t.Fatal(err)
		}
		if dropped := ring.Partition(w.Tenant, w.Key, q) == 3; (rec.LWW == nil) != dropped {
			t.Fatalf("%s/%s after dropping partition 3: %+v", w.Tenant, w.Key, rec.LWW)
		}
	}
	if records, _, _ := e.partitionStats(4); records != len(want[4]) {
		t.Fatalf("partition 4 after dropping 3: %d records", records)
	}
	if _, _, err := e.scanPartition(q, nil, 1); err == nil {
		t.Fatal("scan of a partition out of range")
	}
	if err := e.dropPartition(q); err == nil {
		t.Fatal("drop of a partition out of range")
	}
}

// TestDumpAcrossPartitions pages through many keys of two interleaved
// tenants with small pages: every key once, in (partition, key) order.
func TestDumpAcrossPartitions(t *testing.T) {
	for _, q := range []int{1, 16, ring.DefaultPartitions} {
		t.Run(fmt.Sprint(q), func(t *testing.T) {
			n := openQ(t, t.TempDir(), q)
			defer n.Stop()
			var writes []subjects.NodeWrite
			var keys []string
			for i := range 500 {
				key := fmt.Sprintf("k%d", i)
				keys = append(keys, key)
				for _, tenant := range []string{"t", "t-other", "s"} {
					writes = append(writes, subjects.NodeWrite{ID: uint64(len(writes)), Tenant: tenant, Key: key, LWW: version(1, "x", tenant)})
				}
			}
			n.eng.applyWrites(writes)
			var got []string
			after := ""
			for {
				es, more, err := n.eng.dump("t", after, 7)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range es {
					if string(e.Value) != "t" {
						t.Fatalf("dump of t listed %q of another tenant", e.Key)
					}
					got = append(got, e.Key)
				}
				if !more {
					break
				}
				after = es[len(es)-1].Key
			}
			if want := partitionOrder(q, "t", keys...); !slices.Equal(got, want) {
				t.Fatalf("dumped %d keys, want %d in (partition, key) order", len(got), len(want))
			}
		})
	}
}

// BenchmarkDataKey builds the Pebble key of a point read or write: the
// partition (xxhash of tenant 0x00 key) and the key bytes.
func BenchmarkDataKey(b *testing.B) {
	e := &engine{q: ring.DefaultPartitions}
	buf := make([]byte, 0, 64)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.dataKey(buf[:0], "bench", "user000000001234")
	}
}
