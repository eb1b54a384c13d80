package storage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"os"
	"path/filepath"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
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

// stagedRec is one record of a pulled page, waiting in the stage. It holds
// no decoded form: a stage of 64 MiB is some 200k records, and their
// versions kept as objects made the garbage collector trace all of them
// on every cycle while most go into tables as sent. A merge decodes its
// records again (write).
type stagedRec struct {
	key   []byte // its Pebble data key
	state []byte // the stored form, as the source sent it; checked to decode when its page came in
	bound uint64 // boundOf its lww version (the largest for a siblings state)
}

// write decodes r into the merge it stands for. Its values alias r.state.
// Its state decoded when its page came in, so an error here is a bug.
func (r *stagedRec) write() (subjects.NodeWrite, error) {
	rest := r.key[partitionPrefixLen:]
	sep := bytes.IndexByte(rest, 0)
	if sep < 0 {
		return subjects.NodeWrite{}, fmt.Errorf("staged key %q names no tenant", r.key)
	}
	w := subjects.NodeWrite{Tenant: string(rest[:sep]), Key: string(rest[sep+1:])}
	rec, err := decodeRecordCopy(r.state, false)
	if err != nil {
		return w, fmt.Errorf("staged record %s/%q: %w", w.Tenant, w.Key, err)
	}
	w.LWW, w.DVV = rec.LWW, rec.DVV
	return w, nil
}

// ingestDir is where mergeStaged writes its sstables before ingesting
// them: inside the data directory, so Pebble links them in rather than
// copies. Whatever a crash left there is removed at open.
func (e *engine) ingestDir() string { return filepath.Join(e.dir, "ingest") }

// mergeStaged merges recs (sorted by key) into the store and returns the
// records not merged because their key holds the other conflict
// policy's versions (errPolicy, as applyWrites leaves them). It must run
// on the write loop: it reads what the store holds where recs go and
// writes tables from that, which no write can change between the two
// since every write goes through that loop. recs is overwritten. On
// error some records may be merged and others not (merges are
// idempotent: the caller pulls again).
//
// Where recs' partitions and the empty partitions between them make a
// run of at least exciseMinBytes of records, and the run's span holds
// not much more than that (fewHeld), the span is replaced (replaceSpan):
// what it holds, merged with recs, is written as tables that take the
// span's place below every level, so nothing compacts them again. The
// rest goes through mergeFresh.
func (e *engine) mergeStaged(recs []stagedRec) (skipped []subjects.NodeWrite, err error) {
	if len(recs) == 0 {
		return nil, nil
	}
	spans, err := e.stagedSpans(recs)
	if err != nil {
		return nil, err
	}
	var rest []stagedRec
	for _, sp := range spans {
		if sp.bytes < exciseMinBytes || !e.fewHeld(sp) {
			rest = append(rest, recs[sp.i:sp.j]...)
			continue
		}
		sk, err := e.replaceSpan(sp, recs[sp.i:sp.j])
		skipped = append(skipped, sk...)
		if err != nil {
			return skipped, err
		}
	}
	sk, err := e.mergeFresh(rest)
	return append(skipped, sk...), err
}

// mergeFresh merges recs (sorted by key) into the store: records of keys
// the store does not hold go in as ingested tables, the rest through
// applyWritesChanged. It must run on the write loop: it reads which keys
// the store holds, and ingests only records of keys it does not hold,
// which no write can add between the two. An ingested table takes a
// sequence number above every write before it, so it shadows nothing; a
// key pulled twice (from two sources), or held already, is merged
// through applyWritesChanged. recs is overwritten.
func (e *engine) mergeFresh(recs []stagedRec) (skipped []subjects.NodeWrite, err error) {
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
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: recs[0].key, UpperBound: upper})
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
				w, err := r.write()
				if err != nil {
					return nil, nil, errors.Join(err, it.Close())
				}
				merge = append(merge, w)
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
	t, err := e.newTables()
	if err != nil {
		return err
	}
	defer t.remove()
	for _, r := range recs {
		if err := t.add(r.key, r.state); err != nil {
			return err
		}
	}
	paths, err := t.finish()
	if err != nil {
		return err
	}
	if err := e.db.Ingest(context.Background(), paths); err != nil {
		return fmt.Errorf("ingest %d pulled tables: %w", len(paths), err)
	}
	return nil
}

// tables writes records, added in key order, into sstables of whole
// partitions, ingestTableBytes or a little more each, in the ingest
// directory; remove deletes them (once ingested they are linked into
// the store already).
type tables struct {
	e     *engine
	paths []string
	w     *sstable.Writer
	size  int
	last  []byte // the last key added
}

func (e *engine) newTables() (*tables, error) {
	if err := os.MkdirAll(e.ingestDir(), 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", e.ingestDir(), err)
	}
	e.ingests++
	return &tables{e: e}, nil
}

// add appends the record (k, v); k sorts after every key added before.
func (t *tables) add(k, v []byte) error {
	if t.w != nil && t.size >= ingestTableBytes && keyPartition(k) != keyPartition(t.last) {
		if err := t.closeTable(); err != nil {
			return err
		}
	}
	if t.w == nil {
		path := filepath.Join(t.e.ingestDir(), fmt.Sprintf("%d-%d.sst", t.e.ingests, len(t.paths)))
		f, err := vfs.Default.Create(path, vfs.WriteCategoryUnspecified)
		if err != nil {
			return fmt.Errorf("create %s: %w", path, err)
		}
		t.paths = append(t.paths, path)
		t.w, t.size = sstable.NewWriter(newTableFile(f, tableBufferBytes), t.e.tableOpts), 0
	}
	if err := t.w.Set(k, v); err != nil {
		return fmt.Errorf("write %s: %w", t.paths[len(t.paths)-1], err)
	}
	t.size += len(k) + len(v)
	t.last = append(t.last[:0], k...)
	return nil
}

func (t *tables) closeTable() error {
	w := t.w
	t.w = nil
	if err := w.Close(); err != nil { // closes the file
		return fmt.Errorf("write %s: %w", t.paths[len(t.paths)-1], err)
	}
	return nil
}

// tableBufferBytes is how much of a table tables buffers per write
// call. Pebble's own writable buffers 4 KiB, so each 16 KiB block went
// out in a call of its own: a 4 MiB table of 256-byte records took 19.6
// ms against 13.2 with 1 MiB, its sync included (BenchmarkWriteTable,
// side by side). A variable so that benchmark can compare.
var tableBufferBytes = 1 << 20

// newTableFile is Pebble's file writable with a buffer of size bytes.
func newTableFile(f vfs.File, size int) objstorage.Writable {
	if size <= 4096 {
		return objstorageprovider.NewFileWritable(f)
	}
	return &tableFile{f: f, bw: bufio.NewWriterSize(f, size)}
}

type tableFile struct {
	f  vfs.File
	bw *bufio.Writer
}

func (w *tableFile) Write(p []byte) error {
	_, err := w.bw.Write(p) // an error when fewer than len(p) were written
	return err
}

// Finish writes what is buffered and syncs and closes the file.
func (w *tableFile) Finish() error {
	err := w.bw.Flush()
	if err == nil {
		err = w.f.Sync()
	}
	return errors.Join(err, w.f.Close())
}

func (w *tableFile) Abort() { _ = w.f.Close() }

// finish closes the last table and returns the tables' paths.
func (t *tables) finish() ([]string, error) {
	if t.w != nil {
		if err := t.closeTable(); err != nil {
			return nil, err
		}
	}
	return t.paths, nil
}

// remove closes what is open and deletes the tables' files.
func (t *tables) remove() {
	if t.w != nil {
		_ = t.w.Close()
		t.w = nil
	}
	for _, p := range t.paths {
		_ = os.Remove(p)
	}
}

// exciseMinBytes is the fewest bytes of records (keys and states) a run
// of staged partitions needs for mergeStaged to replace its span: each
// replacement is an ingest of its own, which flushes a memtable that
// overlaps it, so a stage of short runs (a receiver that holds the
// partitions around those it pulls) goes through mergeFresh in one.
var exciseMinBytes = ingestTableBytes

// exciseSlackBytes is how much more than its staged records a span may
// hold on disk and still be replaced: replaceSpan reads and writes back
// all of it, on the write loop (a tenant's pull into partitions full of
// other tenants' records would hold every write for the rewrite).
const exciseSlackBytes = 4 << 20

// fewHeld reports whether sp's span holds, by Pebble's estimate of its
// tables, at most exciseSlackBytes more than sp's records.
func (e *engine) fewHeld(sp stagedSpan) bool {
	held, err := e.db.EstimateDiskUsage(sp.lo, sp.hi)
	return err == nil && held <= uint64(sp.bytes)+exciseSlackBytes
}

// stagedSpan is a run of staged records, recs[i:j], and its span: from
// the start of their first partition to the end of their last, where
// every partition between that holds a key is one of theirs.
type stagedSpan struct {
	i, j   int
	lo, hi []byte
	bytes  int // of the records' keys and states
}

// stagedSpans splits sorted recs into runs whose spans hold no partition
// without records in recs but empty ones.
func (e *engine) stagedSpans(recs []stagedRec) (spans []stagedSpan, err error) {
	lo, _ := partitionBounds(keyPartition(recs[0].key))
	_, hi := partitionBounds(keyPartition(recs[len(recs)-1].key))
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("read the partitions pulled records go to: %w", err)
	}
	defer func() {
		if cerr := it.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("read the partitions pulled records go to: %w", cerr)
		}
	}()
	sp := stagedSpan{lo: lo}
	for i := 0; i < len(recs); {
		p := keyPartition(recs[i].key)
		for i < len(recs) && keyPartition(recs[i].key) == p {
			sp.bytes += len(recs[i].key) + len(recs[i].state)
			i++
		}
		sp.j = i
		if i == len(recs) {
			break
		}
		next := keyPartition(recs[i].key)
		if next == p+1 {
			continue
		}
		glo, _ := partitionBounds(p + 1)
		ghi, _ := partitionBounds(next)
		held := it.SeekGE(glo) && bytes.Compare(it.Key(), ghi) < 0
		if err := it.Error(); err != nil {
			return nil, fmt.Errorf("read the partitions pulled records go to: %w", err)
		}
		if held { // a partition between holds keys: the run ends at p
			_, sp.hi = partitionBounds(p)
			spans = append(spans, sp)
			sp = stagedSpan{i: i, lo: ghi} // next's start
		}
	}
	sp.hi = hi
	return append(spans, sp), nil
}

// replaceSpan replaces sp's span with what it holds merged with recs
// (sorted, in the span), as tables ingested with the span excised: they
// go to the last level, below everything, so no compaction rewrites
// them until writes come down onto them. It returns the records not
// merged (errPolicy). It must run on the write loop (see mergeStaged).
func (e *engine) replaceSpan(sp stagedSpan, recs []stagedRec) (skipped []subjects.NodeWrite, err error) {
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: sp.lo, UpperBound: sp.hi})
	if err != nil {
		return nil, fmt.Errorf("read the span pulled records go to: %w", err)
	}
	defer func() {
		if it != nil {
			_ = it.Close()
		}
	}()
	t, err := e.newTables()
	if err != nil {
		return nil, err
	}
	defer t.remove()
	var enc []byte
	valid := it.First()
	for i := 0; valid || i < len(recs); {
		c := 1 // held key (-1), pulled key (1), or both (0) next
		switch {
		case !valid:
		case i == len(recs):
			c = -1
		default:
			c = bytes.Compare(it.Key(), recs[i].key)
		}
		if c < 0 {
			v, err := it.ValueAndErr()
			if err != nil {
				return skipped, fmt.Errorf("read %q: %w", it.Key(), err)
			}
			if err := t.add(it.Key(), v); err != nil {
				return skipped, err
			}
			valid = it.Next()
			continue
		}
		k := recs[i].key
		j := i + 1
		for j < len(recs) && bytes.Equal(recs[j].key, k) {
			j++
		}
		if c > 0 && j == i+1 { // fresh: as the source sent it
			e.raiseBound(k, recs[i].bound)
			if err := t.add(k, recs[i].state); err != nil {
				return skipped, err
			}
			i = j
			continue
		}
		var cur record
		if c == 0 {
			v, err := it.ValueAndErr()
			if err == nil {
				cur, err = decodeRecordCopy(v, false) // aliases the iterator until Next
			}
			if err != nil {
				return skipped, fmt.Errorf("read %q: %w", k, err)
			}
		}
		for _, r := range recs[i:j] {
			w, err := r.write()
			if err != nil {
				return skipped, err
			}
			var res subjects.NodeWriteResult
			e.merge(&cur, &w, &res)
			switch res.Err {
			case "":
			case errPolicy:
				skipped = append(skipped, w)
			default:
				return skipped, fmt.Errorf("merge %s/%q: %s", w.Tenant, w.Key, res.Err)
			}
		}
		if enc, err = encodeRecord(enc[:0], &cur); err != nil {
			return skipped, fmt.Errorf("encode %q: %w", k, err)
		}
		e.raiseBound(k, boundOf(cur.LWW))
		if err := t.add(k, enc); err != nil {
			return skipped, err
		}
		if c == 0 {
			valid = it.Next()
		}
		i = j
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		it = nil
		return skipped, fmt.Errorf("read the span pulled records go to: %w", err)
	}
	it = nil // the tables hold what the span held: the iterator must not pin it past the excise
	paths, err := t.finish()
	if err != nil {
		return skipped, err
	}
	e.excising.Lock() // no iterator opens until the tables are visible
	_, err = e.db.IngestAndExcise(context.Background(), paths, nil, nil, pebble.KeyRange{Start: sp.lo, End: sp.hi})
	e.excising.Unlock()
	if err != nil {
		return skipped, fmt.Errorf("ingest %d pulled tables in place of partitions %d to %d: %w", len(paths), keyPartition(sp.lo), keyPartition(recs[len(recs)-1].key), err)
	}
	e.replaced++
	for i := range recs {
		if p := keyPartition(recs[i].key); i == 0 || p != keyPartition(recs[i-1].key) {
			e.bumpGen(p)
		}
	}
	return skipped, nil
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
		e.raiseBound(recs[i].key, recs[i].bound)
	}
}

// raiseBound raises e.bound for data key k, if it knows k, to at least
// b (see raiseBounds).
func (e *engine) raiseBound(k []byte, b uint64) {
	if len(e.bound) == 0 {
		return
	}
	fp := [2]uint64{maphash.Bytes(keySeed, k), maphash.Bytes(fpSeed, k)}
	if old, ok := e.bound[fp]; ok {
		e.bound[fp] = max(old, b)
	}
}

// boundOf is the bound of a key holding v: its counter, or the largest
// for a siblings state (v nil).
func boundOf(v *vclock.Version) uint64 {
	if v == nil {
		return math.MaxUint64
	}
	return v.Dot.Counter
}

// holdsMany reports whether the store holds at least k keys in
// [lo, hi] (true also when it cannot tell).
func (e *engine) holdsMany(lo, hi []byte, k int) bool {
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: append(bytes.Clone(hi), 0)})
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
