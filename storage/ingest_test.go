package storage

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// openTestEngine opens an engine of xferQ partitions in a new directory.
func openTestEngine(t *testing.T) *engine {
	t.Helper()
	e, err := openEngine(t.TempDir(), "n", xferQ, false, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.close() })
	return e
}

// pulledChunk is what a pull of partition xferPart would bring: n lww keys
// (every tenth a tombstone) and n/4 siblings states, in key order, as
// transferWrites makes them.
func pulledChunk(t *testing.T, n int) []subjects.NodeWrite {
	t.Helper()
	src := openTestEngine(t)
	var ws []subjects.NodeWrite
	for i, k := range keysIn("lww", xferPart, xferQ, n) {
		v := version(uint64(100+i), "src", fmt.Sprintf("pulled %d", i))
		if i%10 == 0 {
			v.Value, v.Tombstone = nil, true
		}
		ws = append(ws, subjects.NodeWrite{Tenant: "lww", Key: k, LWW: v})
	}
	for i, k := range keysIn("sib", xferPart, xferQ, n/4) {
		for range 1 + i%2 {
			ws = append(ws, subjects.NodeWrite{Tenant: "sib", Key: k, Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("pulled sibling")}}})
		}
	}
	apply(t, src, ws)
	entries, cursor, err := src.scanPartition(xferPart, nil, 100_000)
	if err != nil || cursor != nil {
		t.Fatalf("scan: %v (cursor %q)", err, cursor)
	}
	items := make([]subjects.NodeWrite, len(entries))
	for i, e := range entries {
		rec, err := decodeRecord(e.Record)
		if err != nil {
			t.Fatal(err)
		}
		items[i] = subjects.NodeWrite{ID: uint64(i), Tenant: e.Tenant, Key: e.Key, LWW: rec.LWW, DVV: rec.DVV}
	}
	return items
}

// ingestChunk applies a chunk as PullPartition and the write loop do:
// tables ingested, the rest (and what the write loop refused) merged. It
// returns the job, or nil when no table was made.
func ingestChunk(t *testing.T, e *engine, items []subjects.NodeWrite, between func()) *ingestJob {
	t.Helper()
	tables, merge := e.prepareIngest(xferPart, items)
	var j *ingestJob
	if len(tables) > 0 {
		j = &ingestJob{p: xferPart, tables: tables}
		if between != nil {
			between()
		}
		e.applyIngest(j)
		if j.err != nil {
			t.Fatalf("ingest: %v", j.err)
		}
		merge = append(merge, j.refused...)
	}
	apply(t, e, merge)
	return j
}

// holdSome gives e, before the pull, some of the chunk's keys: lww keys
// with a newer and with an older version than the pull's, and siblings
// keys with a sibling of their own; plus keys in the chunk's span that
// the pull lacks. It returns how many of the chunk's keys it wrote.
func holdSome(t *testing.T, e *engine, items []subjects.NodeWrite) int {
	t.Helper()
	var ws []subjects.NodeWrite
	held := 0
	for i, it := range items {
		if i%97 != 3 {
			continue
		}
		held++
		switch {
		case it.LWW != nil && i%2 == 0:
			ws = append(ws, subjects.NodeWrite{Tenant: it.Tenant, Key: it.Key, LWW: version(it.LWW.Dot.Counter+1, "here", "newer here")})
		case it.LWW != nil:
			ws = append(ws, subjects.NodeWrite{Tenant: it.Tenant, Key: it.Key, LWW: version(1, "here", "older here")})
		default:
			ws = append(ws, subjects.NodeWrite{Tenant: it.Tenant, Key: it.Key, Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("sibling here")}}})
		}
	}
	for _, k := range keysIn("own", xferPart, xferQ, 5) {
		ws = append(ws, subjects.NodeWrite{Tenant: "own", Key: k, LWW: version(7, "here", "only here")})
	}
	apply(t, e, ws)
	return held
}

// TestIngestMergesAsTheWritePathDoes: a chunk applied as tables (around
// the keys the node holds) leaves exactly what merging every record
// through the write path leaves, for lww versions newer and older than
// the node's, tombstones, and siblings states.
func TestIngestMergesAsTheWritePathDoes(t *testing.T) {
	items := pulledChunk(t, 2000)
	viaIngest, viaMerge := openTestEngine(t), openTestEngine(t)
	held := holdSome(t, viaIngest, items)
	var same []subjects.NodeWrite // what viaIngest holds, merged into viaMerge (its siblings' dots name viaIngest's actor)
	for k, rec := range partRecords(t, viaIngest, xferPart) {
		tenant, key, _ := strings.Cut(k, "\x00")
		same = append(same, subjects.NodeWrite{Tenant: tenant, Key: key, LWW: rec.LWW, DVV: rec.DVV})
	}
	apply(t, viaMerge, same)

	j := ingestChunk(t, viaIngest, items, nil)
	apply(t, viaMerge, items)

	if j == nil || len(j.tables) < 2 || j.ingested < len(items)-held-len(j.tables)*ingestMinRecords || len(j.refused) != 0 {
		t.Fatalf("ingest of %d records around %d held: job %+v", len(items), held, j)
	}
	got, want := partRecords(t, viaIngest, xferPart), partRecords(t, viaMerge, xferPart)
	if len(got) != len(want) {
		t.Fatalf("ingest path holds %d records, merge path %d", len(got), len(want))
	}
	for k, w := range want {
		if !sameRecord(got[k], w) {
			t.Fatalf("%q: ingest path holds %+v, merge path %+v", k, got[k], w)
		}
	}
	if left, _ := os.ReadDir(ingestDir(viaIngest.dir)); len(left) != 0 {
		t.Fatalf("%d files left in the ingest directory", len(left))
	}
}

// TestIngestRefusesATableWrittenInto: a write that lands in a table's span
// between the snapshot the tables were cut at and the ingest (a forwarded
// write to the pending owner) sends that table to the merge: the newer
// write is kept, not shadowed by the pulled record. A write into one
// table's span spares the others.
func TestIngestRefusesATableWrittenInto(t *testing.T) {
	items := pulledChunk(t, 2000)
	e := openTestEngine(t)
	holdSome(t, e, items) // cuts the chunk into several tables
	target := items[len(items)/2]
	if target.LWW == nil {
		target = items[len(items)/2+1]
	}
	newer := version(target.LWW.Dot.Counter+1000, "forwarded", "forwarded write")
	j := ingestChunk(t, e, items, func() {
		apply(t, e, []subjects.NodeWrite{{Tenant: target.Tenant, Key: target.Key, LWW: newer}})
	})
	if j == nil || len(j.refused) == 0 || j.ingested == 0 {
		t.Fatalf("job %+v: want one table refused and the others ingested", j)
	}
	got, err := e.read(target.Tenant, target.Key)
	if err != nil || got.LWW == nil || !bytes.Equal(got.LWW.Value, newer.Value) {
		t.Fatalf("%q holds %+v (%v) after the ingest; the forwarded write was %+v", target.Key, got, err, newer)
	}
}

// TestIngestKeepsTheBound (and the generation): a key the write path once held (its bound
// remembered, its record dropped with its partition) comes back by
// ingest with a larger counter; an lww write between the two counters
// must not pass as newer than what is stored.
func TestIngestKeepsTheBound(t *testing.T) {
	items := pulledChunk(t, 500)
	e := openTestEngine(t)
	k := items[len(items)/2]
	if k.LWW == nil {
		t.Fatalf("item %+v is not an lww record", k)
	}
	apply(t, e, []subjects.NodeWrite{{Tenant: k.Tenant, Key: k.Key, LWW: version(1, "old", "old")}})
	if err := e.dropPartition(xferPart); err != nil {
		t.Fatal(err)
	}
	gen := e.gen(xferPart)
	if j := ingestChunk(t, e, items, nil); j == nil || j.ingested != len(items) {
		t.Fatalf("want all %d records ingested: %+v", len(items), j)
	}
	if e.gen(xferPart) == gen { // nothing was merged: only the ingest moves it
		t.Fatal("the partition's generation did not move: a hash tree built before the ingest would pass as current")
	}
	between := version(k.LWW.Dot.Counter-1, "zzz", "older than the ingested record")
	if k.LWW.Dot.Counter < 3 {
		t.Fatalf("counter %d leaves no room below it", k.LWW.Dot.Counter)
	}
	apply(t, e, []subjects.NodeWrite{{Tenant: k.Tenant, Key: k.Key, LWW: between}})
	got, err := e.read(k.Tenant, k.Key)
	if err != nil || got.LWW == nil || got.LWW.Dot != k.LWW.Dot {
		t.Fatalf("%q holds %+v (%v); want the ingested %+v", k.Key, got, err, k.LWW)
	}
}

// TestIngestOnlyInKeyOrder: records out of key order (not a scan's) are
// all merged, no table made.
func TestIngestOnlyInKeyOrder(t *testing.T) {
	items := pulledChunk(t, 300)
	items[10], items[11] = items[11], items[10]
	e := openTestEngine(t)
	if tables, merge := e.prepareIngest(xferPart, items); len(tables) != 0 || len(merge) != len(items) {
		t.Fatalf("%d tables, %d to merge, of %d records out of order", len(tables), len(merge), len(items))
	}
	if ring.Partition(items[0].Tenant, items[0].Key, xferQ) != xferPart {
		t.Fatal("the chunk is not of the partition")
	}
}
