package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// stagePage hands ws to n's write loop as a staged page of generation gen,
// with the cursor update (metaKey, metaValue), and returns the job.
func stagePage(t *testing.T, n *Node, gen uint64, metaKey, metaValue []byte, ws ...subjects.NodeWrite) *localWrite {
	t.Helper()
	recs := make([]stagedRec, len(ws))
	for i, w := range ws {
		recs[i] = stagedRecOf(t, n, w)
	}
	slices.SortStableFunc(recs, compareStaged) // as a pull sends them
	j := &localWrite{items: ws, staged: recs, stageAt: gen + 1, metaKey: metaKey, metaValue: metaValue}
	if err := n.submit(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	return j
}

// stagedRecOf is w as a pulled record staged on n.
func stagedRecOf(t *testing.T, n *Node, w subjects.NodeWrite) stagedRec {
	t.Helper()
	state, err := encodeRecord(nil, &record{LWW: w.LWW, DVV: w.DVV})
	if err != nil {
		t.Fatal(err)
	}
	return stagedRec{key: n.eng.dataKey(nil, w.Tenant, w.Key), state: state, bound: boundOf(w.LWW)}
}

// write applies ws through n's write loop, as a repair is.
func write(t *testing.T, n *Node, ws ...subjects.NodeWrite) {
	t.Helper()
	j := &localWrite{items: ws}
	if err := n.submit(context.Background(), j); err != nil {
		t.Fatal(err)
	}
	for _, r := range j.results {
		if r.Err != "" {
			t.Fatal(r.Err)
		}
	}
}

func lww(key string, counter uint64, value string) subjects.NodeWrite {
	return subjects.NodeWrite{Tenant: "t", Key: key, LWW: version(counter, "c1", value)}
}

// holds fails unless n's key holds the lww value want.
func holds(t *testing.T, n *Node, key, want string) {
	t.Helper()
	rec, err := n.eng.read("t", key)
	if err != nil {
		t.Fatal(err)
	}
	if got := ""; rec.LWW != nil {
		got = string(rec.LWW.Value)
		if got != want {
			t.Fatalf("%s holds %q, want %q", key, got, want)
		}
		return
	}
	if want != "" {
		t.Fatalf("%s holds nothing, want %q", key, want)
	}
}

// TestStageMergesLikeWrites: a flush leaves every key as merging each
// staged record as a write would, whatever the store held, whatever was
// written between the staging and the flush, and with a key staged twice;
// records of keys the store did not hold go in as ingested tables. A key
// the write path remembers (e.bound) from before it was deleted does not
// let a later, older write overwrite the ingested record.
//
// The same holds when the flush replaces the records' spans
// (replaceSpan) instead of ingesting fresh keys beside held ones.
func TestStageMergesLikeWrites(t *testing.T) {
	t.Run("fresh", testStageMergesLikeWrites)
	t.Run("spans", func(t *testing.T) {
		withSpans(t)
		testStageMergesLikeWrites(t)
	})
}

func testStageMergesLikeWrites(t *testing.T) {
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	write(t, n, lww("held-newer", 10, "held 10"), lww("held-older", 1, "held 1"), lww("deleted", 20, "deleted 20"), lww("policy", 1, "held lww"))
	// Deleted under the write path (as a drop or a reap does): e.bound
	// still says 20 for it.
	if err := n.eng.db.Delete(n.eng.dataKey(nil, "t", "deleted"), nil); err != nil {
		t.Fatal(err)
	}
	dvv, _, err := vclock.Update(vclock.DVVSet{}, vclock.DVVContext{}, "c1", vclock.Value{Data: []byte("sibling")})
	if err != nil {
		t.Fatal(err)
	}
	stagePage(t, n, 0, nil, nil,
		lww("held-newer", 5, "staged 5"), lww("held-older", 5, "staged 5"),
		lww("fresh", 3, "staged 3"), lww("twice", 4, "staged 4"), lww("twice", 6, "staged 6"),
		lww("late-older", 9, "staged 9"), lww("late-newer", 1, "staged 1"),
		lww("deleted", 30, "staged 30"),
		subjects.NodeWrite{Tenant: "t", Key: "siblings", DVV: &dvv},
		subjects.NodeWrite{Tenant: "t", Key: "policy", DVV: &dvv}, // the other policy: skipped
		// Mostly keys the store lacks, so the page is staged (stageWrite).
		lww("fresh-1", 1, "f"), lww("fresh-2", 1, "f"), lww("fresh-3", 1, "f"), lww("fresh-4", 1, "f"), lww("fresh-5", 1, "f"),
	)
	holds(t, n, "fresh", "") // staged: not in the store yet
	write(t, n, lww("late-older", 2, "written 2"), lww("late-newer", 8, "written 8"))
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"held-newer": "held 10", "held-older": "staged 5", "fresh": "staged 3", "twice": "staged 6",
		"late-older": "staged 9", "late-newer": "written 8", "deleted": "staged 30",
		"policy": "held lww",
	} {
		holds(t, n, key, want)
	}
	if rec, err := n.eng.read("t", "siblings"); err != nil || rec.DVV == nil || rec.DVV.Size() != 1 {
		t.Fatalf("siblings: %+v %v", rec, err)
	}
	if n.eng.ingests == 0 {
		t.Fatal("no table ingested")
	}
	if spans := exciseMinBytes == 0; spans != (n.eng.replaced > 0) {
		t.Fatalf("%d spans replaced with spans %v", n.eng.replaced, spans)
	}
	// Older than the ingested 30, newer than what e.bound knew.
	write(t, n, lww("deleted", 25, "written 25"))
	holds(t, n, "deleted", "staged 30")
}

// TestStageCursorFollowsRecords: a staged cursor is persisted by the flush
// that merges the records before it, not sooner; forgetting a partition's
// cursors (a new generation) or writing one outside the stage drops the
// staged updates of it.
func TestStageCursorFollowsRecords(t *testing.T) {
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	p := ring.Partition("t", "k", n.eng.q)
	key := transferKey(p, "src")
	cursor := func() string {
		t.Helper()
		v, err := n.eng.getMeta(key)
		if err != nil {
			t.Fatal(err)
		}
		return string(v)
	}
	stagePage(t, n, 0, key, []byte("c1"), lww("k", 1, "v"))
	if got := cursor(); got != "" {
		t.Fatalf("cursor %q persisted before its records", got)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := cursor(); got != "c1" {
		t.Fatalf("cursor after the flush: %q", got)
	}
	holds(t, n, "k", "v")

	stagePage(t, n, 0, key, []byte("c2"))
	rj := &localWrite{regen: &regenJob{p: p}}
	if err := n.submit(context.Background(), rj); err != nil || rj.regen.err != nil {
		t.Fatal(err, rj.regen.err)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := cursor(); got != "" {
		t.Fatalf("cursor after its partition's were forgotten: %q", got)
	}

	stagePage(t, n, 0, key, []byte("c3"))
	if err := n.submit(context.Background(), &localWrite{metaKey: key, metaValue: []byte("direct")}); err != nil {
		t.Fatal(err)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := cursor(); got != "direct" {
		t.Fatalf("cursor after a write outside the stage: %q", got)
	}

	// A map that names the node nowhere: its staged cursors go with its
	// persisted ones.
	stagePage(t, n, 0, key, []byte("c4"))
	if err := n.submit(context.Background(), &localWrite{install: claim(t, nil, "b")}); err != nil {
		t.Fatal(err)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := cursor(); got != "" {
		t.Fatalf("cursor of a partition the node no longer owns: %q", got)
	}
}

// TestStageMergesHeldPagesAtOnce: a page whose keys the store mostly
// holds (a receiver pulling again) is merged at once, between other
// writes, not in one long flush; a page of keys it lacks waits.
func TestStageMergesHeldPagesAtOnce(t *testing.T) {
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	keys := keysIn("t", 3, n.eng.q, 8)
	slices.Sort(keys) // a page is in key order
	var held, fresh []subjects.NodeWrite
	for i, k := range keys {
		if i < 4 {
			write(t, n, lww(k, 1, "old"))
			held = append(held, lww(k, 2, "new"))
		} else {
			fresh = append(fresh, lww(k, 2, "new"))
		}
	}
	stagePage(t, n, 0, nil, nil, held...)
	stagePage(t, n, 0, nil, nil, fresh...)
	holds(t, n, keys[0], "new")
	holds(t, n, keys[4], "")
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	holds(t, n, keys[4], "new")
}

// TestStageLostOnFailedFlush: when a flush fails, its partitions are
// marked lost (not reported, and no longer received) and a page of a pull
// begun before fails, while a pull begun after stages and flushes.
func TestStageLostOnFailedFlush(t *testing.T) {
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	p := ring.Partition("t", "k", n.eng.q)
	other := (p + 1) % uint32(n.eng.q)
	// A file where the tables are written: the ingest fails.
	if err := os.WriteFile(n.eng.ingestDir(), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	stagePage(t, n, 0, nil, nil, lww("k", 1, "v"))
	n.markReceived(p, 1)
	n.markReceived(other, 1)
	if err := n.flushStaged(context.Background()); err == nil {
		t.Fatal("the flush did not fail")
	}
	holds(t, n, "k", "")
	if got := n.takeLost([]uint32{p, other}); len(got) != 1 || got[0] != other {
		t.Fatalf("reportable after the failure: %v, want [%d]", got, other)
	}
	if n.xfer.isDone(p, 1) || !n.xfer.isDone(other, 1) {
		t.Fatal("the lost partition must be received again, the other not")
	}
	if j := stagePage(t, n, 0, nil, nil, lww("k", 2, "v2")); !errors.Is(j.stageErr, errStageLost) {
		t.Fatalf("a page of the old generation: %v", j.stageErr)
	}
	if err := os.Remove(n.eng.ingestDir()); err != nil {
		t.Fatal(err)
	}
	n.clearLost(p)
	if j := stagePage(t, n, n.stageGen.Load(), nil, nil, lww("k", 3, "v3")); j.stageErr != nil {
		t.Fatal(j.stageErr)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	holds(t, n, "k", "v3")
	if got := n.takeLost([]uint32{p}); len(got) != 1 {
		t.Fatal("a partition received again is still lost")
	}
}

// TestStageMergedBeforeDropAndReap: a drop of a partition the stage
// holds records of, or a reap of such a partition's keys, merges the
// stage first, so a staged record cannot come back after its partition
// was dropped or its key reaped; one of another partition leaves the
// stage as it is.
func TestStageMergedBeforeDropAndReap(t *testing.T) {
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	part := func(key string) uint32 { return ring.Partition("t", key, n.eng.q) }
	for _, c := range []struct {
		key  string
		job  func(key string) *localWrite
		what string
	}{
		{"dropped", func(k string) *localWrite { return &localWrite{drop: &dropJob{p: part(k)}} }, "drop"},
		{"reaped", func(k string) *localWrite {
			return &localWrite{reap: &reapJob{items: []subjects.ReapItem{{Tenant: "t", Key: k}}}} // a hash it does not hold: kept
		}, "reap"},
	} {
		stagePage(t, n, 0, nil, nil, lww(c.key, 1, "v"))
		other := keysIn("t", (part(c.key)+1)%uint32(n.eng.q), n.eng.q, 1)[0] // a key of another partition
		if err := n.submit(context.Background(), c.job(other)); err != nil {
			t.Fatal(err)
		}
		holds(t, n, c.key, "") // another partition's: still staged
		if err := n.submit(context.Background(), c.job(c.key)); err != nil {
			t.Fatal(err)
		}
		holds(t, n, c.key, "v")
	}
}

// TestStageReplacesSpans: a flush replaces the span of each run of staged
// partitions that holds no other partition's keys. A partition between
// that holds keys ends a run and keeps them; an empty one does not end
// it. A replaced span holds what the store held merged with the staged
// records, and its tables go in below every level, although writes to
// the span sat in the memtable (an ingest beside them goes to L0). All
// of it holds after a restart.
func TestStageReplacesSpans(t *testing.T) {
	withSpans(t)
	dir := t.TempDir()
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: dir}, nil)
	const p = 3
	key := func(part uint32, i int) string { return keysIn("t", part, xferQ, i+1)[i] }
	write(t, n, lww(key(p+1, 0), 1, "between"), lww(key(p, 0), 9, "held 9"))
	pages := [][]subjects.NodeWrite{
		// mostly keys the store lacks, so the page is staged (stageWrite)
		{lww(key(p, 0), 5, "staged 5"), lww(key(p, 1), 1, "staged p"), lww(key(p, 2), 1, "staged p"), lww(key(p, 3), 1, "staged p"), lww(key(p, 4), 1, "staged p")},
		{lww(key(p+2, 0), 1, "staged p+2")},
		{lww(key(p+4, 0), 1, "staged p+4")},
	}
	var recs []stagedRec
	for _, pg := range pages {
		for _, w := range pg {
			recs = append(recs, stagedRecOf(t, n, w))
		}
	}
	slices.SortFunc(recs, compareStaged)
	spans, err := n.eng.stagedSpans(recs)
	if err != nil {
		t.Fatal(err)
	}
	lo := func(q uint32) []byte { l, _ := partitionBounds(q); return l }
	hi := func(q uint32) []byte { _, h := partitionBounds(q); return h }
	want := []stagedSpan{{i: 0, j: 5, lo: lo(p), hi: hi(p)}, {i: 5, j: 7, lo: lo(p + 2), hi: hi(p + 4)}}
	if len(spans) != len(want) {
		t.Fatalf("%d spans, want %d: %+v", len(spans), len(want), spans)
	}
	for i, sp := range spans {
		w := want[i]
		if sp.i != w.i || sp.j != w.j || !bytes.Equal(sp.lo, w.lo) || !bytes.Equal(sp.hi, w.hi) || sp.bytes == 0 {
			t.Fatalf("span %d is %+v, want %+v", i, sp, w)
		}
	}

	for _, pg := range pages {
		stagePage(t, n, 0, nil, nil, pg...)
	}
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n.eng.replaced != uint64(len(want)) {
		t.Fatalf("%d spans replaced, want %d", n.eng.replaced, len(want))
	}
	// Then a restart: the ingests and their excises are in the store's
	// log or its tables, whichever Pebble had reached.
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	e, err := openEngine(dir, "a", xferQ, false, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	for k, v := range map[string]string{
		key(p, 0): "held 9", key(p, 1): "staged p", key(p+1, 0): "between",
		key(p+2, 0): "staged p+2", key(p+4, 0): "staged p+4",
	} {
		rec, err := e.read("t", k)
		if err != nil {
			t.Fatal(err)
		}
		if rec.LWW == nil || string(rec.LWW.Value) != v {
			t.Fatalf("%s holds %+v after a restart, want %q", k, rec.LWW, v)
		}
	}
	if err := e.db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := e.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	for level, tables := range levels[:6] {
		for _, tb := range tables {
			for _, sp := range want {
				if bytes.Compare(tb.Smallest.UserKey, sp.hi) < 0 && bytes.Compare(tb.Largest.UserKey, sp.lo) >= 0 {
					t.Fatalf("L%d table %s-%s overlaps the replaced span %x-%x", level, tb.Smallest.UserKey, tb.Largest.UserKey, sp.lo, sp.hi)
				}
			}
		}
	}
	if len(levels[6]) == 0 {
		t.Fatal("no table in L6")
	}
}

// TestReplaceSpanHidesNothing: Pebble installs an excising ingest's
// version (the span emptied, its tables at sequence numbers not yet
// visible) before it publishes those numbers; a read that opened its
// iterator in between would find the span empty. A read begun at that
// moment (from Pebble's hook on each new version) finds the key held
// there, once the ingest lets it open.
func TestReplaceSpanHidesNothing(t *testing.T) {
	withSpans(t)
	var (
		eng            atomic.Pointer[engine]
		armed          atomic.Bool
		readers        sync.WaitGroup
		reads, missing atomic.Int64
	)
	const p = 3
	key := func(i int) string { return keysIn("t", p, xferQ, i+1)[i] }
	was := pebbleDebugCheck
	pebbleDebugCheck = func(*pebble.DB) error {
		e := eng.Load()
		if e == nil || !armed.Load() {
			return nil
		}
		done := make(chan struct{})
		readers.Add(1)
		go func() {
			defer readers.Done()
			defer close(done)
			rec, err := e.read("t", key(0))
			reads.Add(1)
			if err != nil || rec.LWW == nil {
				missing.Add(1)
			}
		}()
		select { // a read held back by the ingest is let go after it
		case <-done:
		case <-time.After(200 * time.Millisecond):
		}
		return nil
	}
	t.Cleanup(func() { pebbleDebugCheck = was })
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	eng.Store(n.eng)
	write(t, n, lww(key(0), 1, "held"))
	// Out of the memtable: an ingest overlapping none applies at once.
	if err := n.eng.db.Flush(); err != nil {
		t.Fatal(err)
	}
	stagePage(t, n, 0, nil, nil, lww(key(1), 1, "staged"), lww(key(2), 1, "staged"), lww(key(3), 1, "staged"), lww(key(4), 1, "staged"))
	armed.Store(true)
	err := n.flushStaged(context.Background())
	armed.Store(false)
	readers.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if reads.Load() == 0 {
		t.Fatal("no version was installed while the stage was flushed")
	}
	if m := missing.Load(); m > 0 {
		t.Fatalf("%d of %d reads during the flush found the held key missing", m, reads.Load())
	}
	holds(t, n, key(0), "held")
	holds(t, n, key(1), "staged")
}

// TestStageSparesFullSpans: a run whose span holds far more than its
// staged records (a tenant pulled into partitions full of another's) is
// not rewritten on the write loop; its records are merged beside what
// the span holds.
func TestStageSparesFullSpans(t *testing.T) {
	withSpans(t)
	n := startXfer(t, natstest.RunServer(t), Config{NodeID: "a", DataDir: t.TempDir()}, nil)
	const p = 3
	other := keysIn("u", p, xferQ, 24000) // ~6.5 MiB of tenant u in p
	rnd := rand.New(rand.NewPCG(1, 2))
	value := func() string { // incompressible, so that much is on disk
		b := make([]byte, 256)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return string(b)
	}
	for i := 0; i < len(other); i += 1000 {
		ws := make([]subjects.NodeWrite, 0, 1000)
		for _, k := range other[i:min(i+1000, len(other))] {
			ws = append(ws, subjects.NodeWrite{Tenant: "u", Key: k, LWW: version(1, "c1", value())})
		}
		write(t, n, ws...)
	}
	if err := n.eng.db.Flush(); err != nil { // on disk, where the estimate sees it
		t.Fatal(err)
	}
	staged := keysIn("t", p, xferQ, 4)
	var ws []subjects.NodeWrite
	for _, k := range staged {
		ws = append(ws, lww(k, 1, "staged"))
	}
	stagePage(t, n, 0, nil, nil, ws...)
	if err := n.flushStaged(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n.eng.replaced != 0 {
		t.Fatalf("%d spans replaced, want none", n.eng.replaced)
	}
	for _, k := range staged {
		holds(t, n, k, "staged")
	}
	if got := len(partRecords(t, n.eng, p)); got != len(other)+len(staged) {
		t.Fatalf("partition %d holds %d records, want %d", p, got, len(other)+len(staged))
	}
}

// BenchmarkWriteTable writes a 4 MiB table of 256-byte records as a
// stage flush does, with Pebble's writable (4 KiB buffered: a write
// call per 16 KiB block) and with tableBufferBytes of buffer.
func BenchmarkWriteTable(b *testing.B) {
	e, err := openEngine(b.TempDir(), "a", xferQ, false, quiet())
	if err != nil {
		b.Fatal(err)
	}
	defer e.close()
	rnd := rand.New(rand.NewPCG(1, 2))
	var recs [][2][]byte
	for i := 0; len(recs)*300 < 4<<20; i++ {
		v := make([]byte, 256)
		for j := range v {
			v[j] = byte(rnd.Uint32())
		}
		recs = append(recs, [2][]byte{appendDataKey(nil, 3, "t", fmt.Sprintf("key-%08d", i)), v})
	}
	for _, size := range []int{4 << 10, tableBufferBytes} {
		b.Run(fmt.Sprintf("buffer=%dKiB", size>>10), func(b *testing.B) {
			was := tableBufferBytes
			tableBufferBytes = size
			defer func() { tableBufferBytes = was }()
			b.SetBytes(int64(len(recs) * 256))
			for b.Loop() {
				t, err := e.newTables()
				if err != nil {
					b.Fatal(err)
				}
				for _, r := range recs {
					if err := t.add(r[0], r[1]); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := t.finish(); err != nil {
					b.Fatal(err)
				}
				t.remove()
			}
		})
	}
}
