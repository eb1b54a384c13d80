package storage

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Pulled pages as tables (issue 14's transfer rate). A receiver used to
// merge every pulled record through its write loop: a read of what the
// key holds, the WAL, the memtable, then a flush and compactions that
// rewrote the data about three times more (docs/PERFORMANCE.md, "The
// joining node's LSM during a transfer"). Most pulled keys are absent
// here, and merging a record into nothing stores it as it is, so those are
// written into sstables and ingested (Pebble Ingest, as CockroachDB and
// Cassandra stream tables): no WAL, no memtable, and a table that overlaps
// no data of the LSM lands in its lowest level, compacted never.
//
// What keeps it a merge. An ingested table shadows whatever the store
// holds for its keys, and a pending owner receives forwarded writes for
// the very partition it pulls. So:
//   - a chunk of pulled records (ingestChunkBytes) is split into runs at
//     the keys the node holds (a snapshot, prepareIngest): the records of
//     keys it holds, and runs too short to be worth a file
//     (ingestMinRecords), are merged through the write loop as before;
//     each other run becomes one table, whose key span [lo, hi] holds
//     nothing of this node's;
//   - on the write loop (the only writer of data keys), before the ingest,
//     each table's span is checked again: a key written there since the
//     snapshot sends that table's records back to the merge. Between that
//     check and the ingest no write can land, so every ingested record is
//     a merge into nothing, which is the record itself (a siblings state
//     goes through Sync with the empty state first, as the merge does);
//   - what the write path derives from a write is kept: e.bound learns
//     every ingested key (a bound must stay at or above the stored
//     counter) and the partition's generation is bumped after the ingest,
//     so no hash tree built before it is taken as current.
//
// The persisted cursor follows the ingest and the merges, as it follows a
// page's merges: a crash between them pulls the chunk again, and
// ingesting or merging a record twice is doing it once.

// ingestChunkBytes is how many bytes of pulled pages a receiver gathers
// before it writes them as tables: larger chunks make fewer, larger files
// and fewer ingests (each one a manifest sync on the write loop); the
// chunk's pages stay in memory until then.
const ingestChunkBytes = 16 << 20

// ingestMinRecords is the shortest run of pulled keys written as a table;
// shorter runs between keys the node holds are merged instead. A table
// costs a file, two syncs and a manifest edit.
const ingestMinRecords = 64

// ingestTable is one sstable of pulled records, written and synced, not yet
// ingested.
type ingestTable struct {
	path   string
	lo, hi []byte               // the first and the last key it holds
	keys   [][]byte             // the Pebble key of each item
	items  []subjects.NodeWrite // what it holds, in key order
	recs   []record             // what each item stores
}

// ingestJob is the write loop's part of ingesting a chunk: the tables to
// ingest; it fills merged with the items of tables it refused (a key
// written into their span since they were made) and ingested with the
// records the ingest stored.
type ingestJob struct {
	p        uint32
	tables   []ingestTable
	refused  []subjects.NodeWrite
	ingested int
	err      error // the ingest failed: every table's items were refused
}

// ingestSeq names the table files of a process uniquely.
var ingestSeq atomic.Uint64

// ingestDir is where a node writes tables before it ingests them: inside
// its data directory (Ingest links them, so the same filesystem), and
// emptied at open.
func ingestDir(dataDir string) string { return filepath.Join(dataDir, "ingest") }

// resetIngestDir removes what a stopped node left in its ingest
// directory: tables written and never ingested.
func resetIngestDir(dataDir string) error {
	if err := os.RemoveAll(ingestDir(dataDir)); err != nil {
		return fmt.Errorf("storage: clear %s: %w", ingestDir(dataDir), err)
	}
	return nil
}

// prepareIngest splits a chunk of pulled records of partition p (pages of
// one pull, in the order the source scanned them) into tables, written and
// synced, and the records to merge through the write loop. Any failure to
// make a table, or records out of key order, merges the whole chunk: the
// tables are an optimisation, never needed.
func (e *engine) prepareIngest(p uint32, items []subjects.NodeWrite) ([]ingestTable, []subjects.NodeWrite) {
	if e.dir == "" || len(items) < ingestMinRecords {
		return nil, items
	}
	keys := make([][]byte, len(items))
	for i := range items {
		keys[i] = appendDataKey(nil, p, items[i].Tenant, items[i].Key)
		if i > 0 && bytes.Compare(keys[i-1], keys[i]) >= 0 {
			return nil, items // not strictly ascending: not a scan's order
		}
	}
	held, err := e.heldKeys(keys[0], keys[len(keys)-1], len(items)/4)
	if err != nil || held == nil {
		return nil, items // unreadable, or the node holds much of it already
	}
	var (
		tables []ingestTable
		merge  []subjects.NodeWrite
	)
	flush := func(lo, hi int) error { // items[lo:hi] as one table, or merged
		if hi-lo < ingestMinRecords {
			merge = append(merge, items[lo:hi]...)
			return nil
		}
		t, rest, err := e.writeTable(items[lo:hi], keys[lo:hi])
		if err != nil {
			return err
		}
		merge = append(merge, rest...)
		if t != nil {
			tables = append(tables, *t)
		}
		return nil
	}
	start, h := 0, 0
	for i := range items {
		passed := false // a held key lies between keys[i-1] and keys[i]
		for h < len(held) && bytes.Compare(held[h], keys[i]) < 0 {
			h++
			passed = true
		}
		if passed && i > start {
			if err := flush(start, i); err != nil {
				e.removeTables(tables)
				return nil, items
			}
			start = i
		}
		if h < len(held) && bytes.Equal(held[h], keys[i]) {
			// Held here: merged, and the run before it ends.
			if err := flush(start, i); err != nil {
				e.removeTables(tables)
				return nil, items
			}
			merge = append(merge, items[i])
			start, h = i+1, h+1
		}
	}
	if err := flush(start, len(items)); err != nil {
		e.removeTables(tables)
		return nil, items
	}
	return tables, merge
}

// heldKeys returns the keys the node holds in [lo, hi], copied; nil (and
// no error) when there are more than limit of them.
func (e *engine) heldKeys(lo, hi []byte, limit int) ([][]byte, error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: append(bytes.Clone(hi), 0)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	held := [][]byte{}
	for ok := it.First(); ok; ok = it.Next() {
		if len(held) == limit {
			return nil, nil
		}
		held = append(held, bytes.Clone(it.Key()))
	}
	return held, it.Error()
}

// writeTable writes items (keys in ascending order) as one synced table.
// Items that a merge into nothing would not store as they are (a siblings
// state that does not validate, or that syncs to nothing) are returned to
// be merged. A nil table: nothing was left to write.
func (e *engine) writeTable(items []subjects.NodeWrite, keys [][]byte) (*ingestTable, []subjects.NodeWrite, error) {
	t := &ingestTable{}
	var rest []subjects.NodeWrite
	for i := range items {
		var rec record
		switch w := &items[i]; {
		case w.LWW != nil:
			rec.LWW = w.LWW
		case w.DVV != nil:
			if w.DVV.Validate() != nil {
				rest = append(rest, *w)
				continue
			}
			merged := vclock.Sync(vclock.DVVSet{}, *w.DVV)
			if merged.Equal(vclock.DVVSet{}) {
				rest = append(rest, *w)
				continue
			}
			rec.DVV = &merged
		default:
			rest = append(rest, *w)
			continue
		}
		t.items = append(t.items, items[i])
		t.keys = append(t.keys, keys[i])
		t.recs = append(t.recs, rec)
	}
	if len(t.items) == 0 {
		return nil, rest, nil
	}
	if err := os.MkdirAll(ingestDir(e.dir), 0o755); err != nil {
		return nil, nil, fmt.Errorf("storage: ingest dir: %w", err)
	}
	t.path = filepath.Join(ingestDir(e.dir), fmt.Sprintf("%d.sst", ingestSeq.Add(1)))
	f, err := vfs.Default.Create(t.path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, nil, fmt.Errorf("storage: create %s: %w", t.path, err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), e.tableOptions())
	var enc []byte
	for i := range t.items {
		if enc, err = encodeRecord(enc[:0], &t.recs[i]); err == nil {
			err = w.Set(t.keys[i], enc)
		}
		if err != nil {
			_ = w.Close()
			_ = os.Remove(t.path)
			return nil, nil, fmt.Errorf("storage: write %s: %w", t.path, err)
		}
	}
	if err := w.Close(); err != nil { // syncs the file
		_ = os.Remove(t.path)
		return nil, nil, fmt.Errorf("storage: write %s: %w", t.path, err)
	}
	t.lo, t.hi = t.keys[0], t.keys[len(t.keys)-1]
	return t, rest, nil
}

// tableOptions are the options tables are written with: the store's own
// (blocks, filters), in the table format it writes.
func (e *engine) tableOptions() sstable.WriterOptions {
	o := pebbleOptions(nil)
	o.EnsureDefaults()
	return o.MakeWriterOptions(0, e.db.TableFormat())
}

// removeTables deletes the files of tables that were not ingested.
func (e *engine) removeTables(ts []ingestTable) {
	for _, t := range ts {
		_ = os.Remove(t.path)
	}
}

// applyIngest runs on the write loop: it refuses each table with a key in
// its span (written since prepareIngest looked), ingests the others at
// once, and records what the write path derives from their records.
func (e *engine) applyIngest(j *ingestJob) {
	it, err := e.db.NewIter(nil)
	if err != nil {
		j.err = err
	}
	var (
		paths []string
		taken []*ingestTable
	)
	for i := range j.tables {
		t := &j.tables[i]
		if err == nil && (!it.SeekGE(t.lo) || bytes.Compare(it.Key(), t.hi) > 0) && it.Error() == nil {
			paths = append(paths, t.path)
			taken = append(taken, t)
			continue
		}
		j.refused = append(j.refused, t.items...)
		_ = os.Remove(t.path)
	}
	if it != nil {
		_ = it.Close()
	}
	if len(paths) == 0 {
		return
	}
	if _, err := e.db.IngestWithStats(context.Background(), paths); err != nil {
		// Ingest removes its inputs only on success.
		j.err = err
		for _, t := range taken {
			j.refused = append(j.refused, t.items...)
			_ = os.Remove(t.path)
		}
		return
	}
	for _, t := range taken {
		for i, k := range t.keys {
			e.learn([2]uint64{maphash.Bytes(keySeed, k), maphash.Bytes(fpSeed, k)}, &t.recs[i])
		}
		j.ingested += len(t.items)
	}
	e.bumpGen(j.p)
}
