package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quorumkv/quorumkv/subjects"
)

// Bulk merge of pulled records (docs/ARCHITECTURE.md, "Pulled records go
// in as tables"). A receiver merging a pulled record the way every write
// is merged pays for it five times: a read of what the key holds, the
// WAL, the memtable, the flush, and the compactions that carry it down the
// levels; on a joining node nearly every such read finds nothing. So the
// pulls of a transfer hand their pages to the write loop, which keeps them
// (the stage, stage.go) and merges them in bulk: records whose key the
// store does not hold are written into sstables of whole partitions and
// ingested; the others are merged through applyWrites.

// stagedRec is one record of a pulled page, waiting in the stage.
type stagedRec struct {
	key   []byte             // its Pebble data key
	state []byte             // the stored form, as the source sent it; it decodes to w
	w     subjects.NodeWrite // the record as a merge
}

// ingestDir is where mergeStaged writes its sstables before ingesting
// them: inside the data directory, so Pebble links them in rather than
// copies. Whatever a crash left there is removed at open.
func (e *engine) ingestDir() string { return filepath.Join(e.dir, "ingest") }

// mergeStaged merges recs (sorted by key) into the store and returns the
// records not merged because their key holds the other conflict
// policy's versions (errPolicy, as applyWrites leaves them). It must run
// on the write loop: it reads which keys the store holds, and ingests
// only records of keys it does not hold, which no write can add between
// the two since every write goes through that loop. An ingested table
// takes a sequence number above every write before it, so it shadows
// nothing; a key pulled twice (from two sources), or held already, is
// merged through applyWritesChanged. recs is overwritten. On error some
// records may be merged and others not (merges are idempotent: the
// caller pulls again).
func (e *engine) mergeStaged(recs []stagedRec) (skipped []subjects.NodeWrite, err error) {
	if len(recs) == 0 {
		return nil, nil
	}
	fresh, merge, err := e.splitHeld(recs)
	if err != nil {
		return nil, err
	}
	if len(merge) > 0 {
		for i, r := range e.applyWritesChanged(merge, nil) {
			switch r.Err {
			case "":
			case errPolicy:
				skipped = append(skipped, merge[i])
			default:
				return skipped, fmt.Errorf("merge %s/%q: %s", merge[i].Tenant, merge[i].Key, r.Err)
			}
		}
	}
	if len(fresh) == 0 {
		return skipped, nil
	}
	e.raiseBounds(fresh) // first: a bound too high only costs a read, one too low loses a write
	if err := e.ingestFresh(fresh); err != nil {
		return skipped, err
	}
	for i := range fresh {
		if p := keyPartition(fresh[i].key); i == 0 || p != keyPartition(fresh[i-1].key) {
			e.bumpGen(p)
		}
	}
	return skipped, nil
}

// splitHeld splits sorted recs into the records of keys the store does not
// hold, each key once (fresh, sorted, reusing recs), and the writes for
// the rest.
func (e *engine) splitHeld(recs []stagedRec) (fresh []stagedRec, merge []subjects.NodeWrite, err error) {
	upper := append(bytes.Clone(recs[len(recs)-1].key), 0)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: recs[0].key, UpperBound: upper})
	if err != nil {
		return nil, nil, fmt.Errorf("read the keys pulled records go to: %w", err)
	}
	fresh = recs[:0]
	valid := it.First()
	for i := 0; i < len(recs); {
		k := recs[i].key
		j := i + 1
		for j < len(recs) && bytes.Equal(recs[j].key, k) {
			j++
		}
		if valid && bytes.Compare(it.Key(), k) < 0 {
			valid = it.SeekGE(k)
		}
		if j == i+1 && !(valid && bytes.Equal(it.Key(), k)) {
			fresh = append(fresh, recs[i]) // fresh[len] is at most i: nothing unread is overwritten
		} else {
			for _, r := range recs[i:j] {
				merge = append(merge, r.w)
			}
		}
		i = j
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return nil, nil, fmt.Errorf("read the keys pulled records go to: %w", err)
	}
	return fresh, merge, nil
}

// ingestTableBytes is about the size of the sstables ingestFresh writes:
// each holds whole partitions, so a partition's records are in one.
const ingestTableBytes = 4 << 20

// ingestFresh writes recs (sorted, distinct keys the store does not hold)
// into sstables of whole partitions and ingests them together.
func (e *engine) ingestFresh(recs []stagedRec) error {
	dir := e.ingestDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var paths []string
	defer func() {
		for _, p := range paths {
			_ = os.Remove(p) // ingested: linked into the store already
		}
	}()
	e.ingests++
	for i := 0; i < len(recs); {
		// Whole partitions, ingestTableBytes or a little more.
		j, size := i, 0
		for j < len(recs) && (size < ingestTableBytes || keyPartition(recs[j].key) == keyPartition(recs[j-1].key)) {
			size += len(recs[j].key) + len(recs[j].state)
			j++
		}
		path := filepath.Join(dir, fmt.Sprintf("%d-%d.sst", e.ingests, len(paths)))
		paths = append(paths, path)
		if err := e.writeTable(path, recs[i:j]); err != nil {
			return err
		}
		i = j
	}
	if err := e.db.Ingest(context.Background(), paths); err != nil {
		return fmt.Errorf("ingest %d pulled tables: %w", len(paths), err)
	}
	return nil
}

// writeTable writes recs (sorted, distinct keys) as the sstable path.
func (e *engine) writeTable(path string, recs []stagedRec) error {
	f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), e.tableOpts)
	for _, r := range recs {
		if err := w.Set(r.key, r.state); err != nil {
			_ = w.Close()
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	if err := w.Close(); err != nil { // closes f
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// raiseBounds keeps e.bound a bound for keys just ingested: a key it
// remembers from before (written, then dropped or reaped) may now hold a
// larger counter. Keys it does not know it does not learn: a write to
// one reads first, as after a restart.
func (e *engine) raiseBounds(recs []stagedRec) {
	if len(e.bound) == 0 {
		return
	}
	for i := range recs {
		k := recs[i].key
		fp := [2]uint64{maphash.Bytes(keySeed, k), maphash.Bytes(fpSeed, k)}
		b, ok := e.bound[fp]
		if !ok {
			continue
		}
		nb := uint64(math.MaxUint64)
		if v := recs[i].w.LWW; v != nil {
			nb = v.Dot.Counter
		}
		e.bound[fp] = max(b, nb)
	}
}

// holdsMany reports whether the store holds at least k keys in
// [lo, hi] (true also when it cannot tell).
func (e *engine) holdsMany(lo, hi []byte, k int) bool {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: append(bytes.Clone(hi), 0)})
	if err != nil {
		return true
	}
	n := 0
	for ok := it.First(); ok && n < k; ok = it.Next() {
		n++
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return true
	}
	return n >= k
}

// removeIngestDir removes what an ingest interrupted by a crash left.
func removeIngestDir(dataDir string) error {
	if err := os.RemoveAll(filepath.Join(dataDir, "ingest")); err != nil {
		return fmt.Errorf("remove unfinished ingest files: %w", err)
	}
	return nil
}
