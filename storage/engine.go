package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Pebble key layout. Every key starts with a one-byte namespace so data and
// the node's own metadata never collide:
//
//	'p' partition tenant 0x00 key → record (msgpack array)
//	'm' name                      → node metadata (node id, epoch, partitions)
//	'd' tenant 0x00 key           → record, the layout before partitions;
//	                                 only migrateLayout reads it
//
// partition is ring.Partition(tenant, key, Q) as 2 bytes big-endian (Q ≤
// 65536), so each partition is one contiguous key range: a range scan
// streams it, a DeleteRange drops it. Within a partition keys sort by
// (tenant, key). Tenant ids never contain 0x00, so the layout is
// unambiguous. Q is recorded under 'm' "partitions" and a directory written
// with another Q is refused; a directory still holding 'd' keys is migrated
// at open, before the node serves (migrate.go), so no read ever looks at
// the old namespace.
const (
	nsData    = 'p'
	nsMeta    = 'm'
	nsOldData = 'd'
)

var (
	metaNodeID     = []byte{nsMeta, 'n', 'o', 'd', 'e'}
	metaEpoch      = []byte{nsMeta, 'e', 'p', 'o', 'c', 'h'}
	metaPartitions = []byte{nsMeta, 'p', 'a', 'r', 't', 'i', 't', 'i', 'o', 'n', 's'}
	// D7 (rebuild.go): when the node was last known alive (Unix ms), the
	// smallest tombstone grace it knows (ms), and the mark of a directory
	// that is new or wiped and must be rebuilt from the other owners.
	metaLastAlive  = []byte{nsMeta, 'l', 'a', 's', 't', 'A', 'l', 'i', 'v', 'e'}
	metaGraceFloor = []byte{nsMeta, 'g', 'r', 'a', 'c', 'e', 'F', 'l', 'o', 'o', 'r'}
	metaRebuild    = []byte{nsMeta, 'r', 'e', 'b', 'u', 'i', 'l', 'd'}
	// The version of the last placement map the node installed, and, while
	// a directory found stale at open waits for its first map, the version
	// it had installed before it went down (rebuild.go, settleStale).
	metaMapVersion = []byte{nsMeta, 'm', 'a', 'p', 'V', 'e', 'r', 's', 'i', 'o', 'n'}
	metaStale      = []byte{nsMeta, 's', 't', 'a', 'l', 'e'}
)

// ownerLayoutTag follows the node id stored under metaNodeID once a
// directory is in the partitioned layout. Binaries from before partitions
// compare the whole value with their node id, so they refuse such a
// directory ("data dir belongs to node ...") instead of serving it as empty.
// Node ids are subject tokens and never contain a space.
const ownerLayoutTag = " [partitioned layout: binaries from before partitions cannot read it]"

// record is what a replica stores for one key. Exactly one policy field is
// set. Fields are only ever appended (the siblings policy adds its state).
type record struct {
	_msgpack struct{} `msgpack:",as_array"`
	LWW      *vclock.Version
	DVV      *vclock.DVVSet
}

// engine is a node's local store on Pebble. Safe for concurrent use; writes
// are serialised by the caller (one writer goroutine per node), which is
// what makes a siblings Coordinate write atomic per key.
type engine struct {
	db    *pebble.DB
	dir   string // the data directory
	sync  bool
	q     int // partitions (ring.Partition), recorded in the directory
	epoch uint64
	// minted: the epoch was minted at this open (the directory was new or
	// had been wiped).
	minted bool
	// stale, when set, is the map version a directory found stale at open
	// had installed before it went down; its partitions are settled at the
	// first map the node installs (settleStale), then it is cleared. Only
	// the goroutine that installs maps uses it.
	stale *uint64
	actor string // this incarnation's actor in DVVSet dots: node id + epoch

	// bound lets an lww write skip the read of what its key holds. Per
	// 128-bit fingerprint of a data key it keeps a counter no smaller than
	// the dot counter stored under that key (math.MaxUint64 once the key
	// holds a siblings state). A write whose counter exceeds the bound
	// wins the merge whatever is stored, as coordinators' hybrid clocks
	// make nearly every write do. It starts empty, learns each key as it
	// is written, and stops learning at maxBound keys. Only applyWrites
	// uses it, from the node's one writer goroutine.
	bound map[[2]uint64]uint64

	// stateCap is the default cap on a siblings state a put may grow
	// (subjects.MaxStateBytes of the connection's max payload), and
	// replyLimit the most a coordinating write's reply may carry; both
	// set by Start before the write loop runs, 0 = none.
	stateCap, replyLimit int

	// gens[p] is partition p's generation: bumped after every commit
	// that changed a record of p (applyWrites, dropPartition, reaping),
	// so a hash tree built from a scan that began at generation g is
	// current while gens[p] is still g (ae.go). Bumped only after the
	// commit, so a tree never claims a generation whose writes it lacks.
	gens []atomic.Uint64

	// tableOpts writes the sstables of pulled records (ingest.go), as
	// the store would write them; ingests numbers their files, replaced
	// counts the spans replaced. Only the write loop uses them.
	tableOpts sstable.WriterOptions
	ingests   uint64
	replaced  uint64

	// excising is held by replaceSpan (ingest.go) around an ingest that
	// excises a span, and for a moment by each opening of an iterator
	// (NewIter). Pebble installs such an ingest's version, the span
	// emptied and its tables at sequence numbers not yet visible, before
	// it publishes them: an iterator opened between the two would find
	// the span empty.
	excising sync.RWMutex
}

// NewIter opens an iterator on the store, never one that sees a span
// excised but not yet refilled (see excising). Every iterator of the
// store's data opens through it.
func (e *engine) NewIter(o *pebble.IterOptions) (*pebble.Iterator, error) {
	e.excising.RLock()
	defer e.excising.RUnlock()
	return e.db.NewIter(o)
}

// iterOpener opens iterators: the engine, or a Pebble reader.
type iterOpener interface {
	NewIter(o *pebble.IterOptions) (*pebble.Iterator, error)
}

// gen returns partition p's generation.
func (e *engine) gen(p uint32) uint64 { return e.gens[p].Load() }

// bumpGen marks partition p changed; call it after the change commits.
func (e *engine) bumpGen(p uint32) {
	if int64(p) < int64(len(e.gens)) {
		e.gens[p].Add(1)
	}
}

// maxBound caps the keys the write path remembers (about 30 bytes each).
const maxBound = 4 << 20

// openEngine opens (creating if needed) the Pebble store in dir for nodeID,
// laid out in q partitions. A directory that belongs to another node id,
// that was written with another partition count, or that another process or
// node holds open, is refused. A directory in the layout from before
// partitions is migrated first (see migrateLayout).
func openEngine(dir, nodeID string, q int, fsync bool, log *slog.Logger) (*engine, error) {
	if err := ring.ValidatePartitions(q); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("storage: create data dir %s: %w", dir, err)
	}
	opts := pebbleOptions(log)
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("storage: open %s (is another storage node using it?): %w", dir, err)
	}
	if err := removeIngestDir(dir); err != nil { // the store is ours now: nobody else ingests
		_ = db.Close()
		return nil, fmt.Errorf("storage: %s: %w", dir, err)
	}
	opts = opts.Clone()
	opts.EnsureDefaults()
	e := &engine{
		db: db, dir: dir, sync: fsync, q: q, bound: make(map[[2]uint64]uint64), gens: make([]atomic.Uint64, q),
		tableOpts: opts.MakeWriterOptions(0, db.FormatMajorVersion().MaxTableFormat()),
	}
	if err := e.initMeta(nodeID); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: %s: %w", dir, err)
	}
	if err := e.initLayout(nodeID); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: %s: %w", dir, err)
	}
	if err := e.migrateLayout(log, migrateBatch); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: %s: migrate to the partitioned layout (start again to resume): %w", dir, err)
	}
	e.actor = vclock.ReplicaActor(nodeID, e.epoch)
	return e, nil
}

// initLayout records e.q in a directory that has no partition count yet
// (new, or in the layout from before partitions), with the owner tagged so
// older binaries refuse it, and refuses one written with another count: its
// keys would sit in the wrong partitions.
func (e *engine) initLayout(nodeID string) error {
	v, err := e.getMeta(metaPartitions)
	if err != nil {
		return err
	}
	if v != nil {
		if len(v) != 4 {
			return fmt.Errorf("partition count recorded as %x, not 4 bytes", v)
		}
		if got := int(binary.BigEndian.Uint32(v)); got != e.q {
			return fmt.Errorf("data dir was written with %d partitions, not %d: start the node with --partitions %d, or wipe the directory and let the node rebuild from its replicas", got, e.q, got)
		}
		return nil
	}
	var buf [4]byte
	binary.BigEndian.PutUint32(buf[:], uint32(e.q))
	b := e.db.NewBatch()
	defer b.Close()
	_ = b.Set(metaPartitions, buf[:], nil)
	_ = b.Set(metaNodeID, []byte(nodeID+ownerLayoutTag), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("record the partition count: %w", err)
	}
	return nil
}

// initMeta binds the directory to nodeID and loads or mints its epoch. A new
// epoch is minted exactly when the directory holds no epoch: when it was just
// created or wiped.
func (e *engine) initMeta(nodeID string) error {
	owner, err := e.getMeta(metaNodeID)
	if err != nil {
		return err
	}
	owner = bytes.TrimSuffix(owner, []byte(ownerLayoutTag))
	if owner != nil && string(owner) != nodeID {
		return fmt.Errorf("data dir belongs to node %q, not %q", owner, nodeID)
	}
	epoch, err := e.getMeta(metaEpoch)
	if err != nil {
		return err
	}
	if len(epoch) == 8 {
		e.epoch = binary.BigEndian.Uint64(epoch)
		return nil
	}
	var buf [8]byte
	e.minted = true
	for e.epoch == 0 {
		if _, err := rand.Read(buf[:]); err != nil {
			return fmt.Errorf("mint epoch: %w", err)
		}
		e.epoch = binary.BigEndian.Uint64(buf[:])
	}
	b := e.db.NewBatch()
	defer b.Close()
	_ = b.Set(metaNodeID, []byte(nodeID+ownerLayoutTag), nil)
	_ = b.Set(metaEpoch, buf[:], nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("write node metadata: %w", err)
	}
	return nil
}

func (e *engine) getMeta(k []byte) ([]byte, error) {
	v, closer, err := e.db.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %q: %w", k[1:], err)
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

func (e *engine) close() error { return e.db.Close() }

// writeOpts is how the store commits: synced when opened with fsync.
func (e *engine) writeOpts() *pebble.WriteOptions {
	if e.sync {
		return pebble.Sync
	}
	return pebble.NoSync
}

// dataKey returns the Pebble key of (tenant, key), appended to dst.
func (e *engine) dataKey(dst []byte, tenant, key string) []byte {
	return appendDataKey(dst, ring.Partition(tenant, key, e.q), tenant, key)
}

// appendDataKey appends the Pebble key of (tenant, key) in partition p.
func appendDataKey(dst []byte, p uint32, tenant, key string) []byte {
	dst = slices.Grow(dst, partitionPrefixLen+len(tenant)+1+len(key)) // one allocation at most
	dst = appendPartitionPrefix(dst, p)
	dst = append(dst, tenant...)
	dst = append(dst, 0)
	return append(dst, key...)
}

// appendPartitionPrefix appends the 3-byte prefix every key of partition p
// starts with.
func appendPartitionPrefix(dst []byte, p uint32) []byte {
	return append(dst, nsData, byte(p>>8), byte(p))
}

// partitionPrefixLen is the length of a partition prefix.
const partitionPrefixLen = 3

// applyWrites merges every write into the store as one atomic batch, synced
// when the engine was opened with fsync, and returns one result per write
// in order. Writes to the same key within the batch see each other.
//
// The batch is write-only: the current version of a key comes from an
// earlier write of the same batch, found through a hash of the Pebble key
// (an indexed batch would cost a skiplist per batch and a merged iterator
// per read), or from the DB, unless e.bound shows that an lww write wins
// whatever the key holds.
func (e *engine) applyWrites(writes []subjects.NodeWrite) []subjects.NodeWriteResult {
	return e.applyWritesChanged(writes, nil)
}

// applyWritesChanged is applyWrites that also sets changed[i] (when
// didChange is not nil; len(writes) long) for each write i that changed
// what its key stores, once the batch committed: a repair counts those.
// Every partition such a write belongs to has its generation bumped.
func (e *engine) applyWritesChanged(writes []subjects.NodeWrite, didChange []bool) []subjects.NodeWriteResult {
	results := make([]subjects.NodeWriteResult, len(writes))
	clear(didChange)
	var touched []uint32 // partitions changed, maybe repeated
	b := e.db.NewBatch()
	defer b.Close()
	r, err := e.newReader()
	if err != nil {
		for i := range results {
			results[i] = subjects.NodeWriteResult{ID: writes[i].ID, Err: err.Error()}
		}
		return results
	}
	defer r.close()
	var (
		kbuf, enc []byte
		kept      []record // kept[i]: what key i holds after write i; valid when set[i]
		set       []bool
		last      map[uint64]int // hash of a Pebble key → the last write to it in this batch
	)
	if len(writes) > 1 {
		kept, set = make([]record, len(writes)), make([]bool, len(writes))
		last = make(map[uint64]int, len(writes))
	}
	for i, w := range writes {
		results[i].ID = w.ID
		kbuf = e.dataKey(kbuf[:0], w.Tenant, w.Key)
		var (
			cur   record
			found bool
		)
		h := maphash.Bytes(keySeed, kbuf)
		fp := [2]uint64{h, maphash.Bytes(fpSeed, kbuf)}
		if last != nil {
			if j, ok := last[h]; ok {
				j = sameKeyBefore(writes, i, j)
				if j >= 0 && set[j] {
					cur, found = kept[j], true
				}
			}
		}
		if !found && w.LWW != nil {
			if b, ok := e.bound[fp]; ok && w.LWW.Dot.Counter > b {
				found = true // it beats whatever is stored: as good as absent
			}
		}
		if !found {
			// cur.Value aliases the iterator's buffer until its next seek.
			rec, err := r.record(kbuf, false)
			if err != nil {
				results[i].Err = err.Error()
				continue
			}
			cur = rec
		}
		next := cur
		changed := e.merge(&next, &w, &results[i])
		if results[i].Err != "" {
			continue
		}
		if last != nil {
			kept[i], set[i], last[h] = next, true, i
		}
		e.learn(fp, &next)
		if !changed {
			continue
		}
		var err error
		if enc, err = encodeRecord(enc[:0], &next); err != nil {
			results[i].Err = fmt.Sprintf("encode: %v", err)
			continue
		}
		if err := b.Set(kbuf, enc, nil); err != nil {
			results[i].Err = fmt.Sprintf("batch: %v", err)
			continue
		}
		if p := keyPartition(kbuf); len(touched) == 0 || touched[len(touched)-1] != p {
			touched = append(touched, p)
		}
		if didChange != nil {
			didChange[i] = true
		}
	}
	opts := e.writeOpts()
	if err := b.Commit(opts); err != nil {
		for i := range results {
			if results[i].Err == "" {
				results[i].Err = fmt.Sprintf("commit: %v", err)
			}
		}
		clear(didChange)
	}
	// After the commit (see gens); also after a failed one, which may
	// have applied: a needless rebuild costs only a scan.
	for _, p := range touched {
		e.bumpGen(p)
	}
	return results
}

// keySeed seeds the hashes that find repeated keys within a batch; with
// fpSeed it makes the 128-bit fingerprints of e.bound.
var keySeed, fpSeed = maphash.MakeSeed(), maphash.MakeSeed()

// learn records in e.bound what key fp holds after a write (merges only
// grow an lww counter, so the new value is a bound whether or not the
// batch commits).
func (e *engine) learn(fp [2]uint64, rec *record) {
	var b uint64
	switch {
	case rec.DVV != nil:
		b = math.MaxUint64
	case rec.LWW != nil:
		b = rec.LWW.Dot.Counter
	default:
		return
	}
	if _, ok := e.bound[fp]; ok || len(e.bound) < maxBound {
		e.bound[fp] = b
	}
}

// sameKeyBefore returns the last write before i to the same key as write
// i, given that write j's key hashed alike, or -1. A hash collision (j's key
// differs) falls back to a scan, so a batch is right whatever the hashes.
func sameKeyBefore(writes []subjects.NodeWrite, i, j int) int {
	same := func(a, b *subjects.NodeWrite) bool { return a.Tenant == b.Tenant && a.Key == b.Key }
	if same(&writes[j], &writes[i]) {
		return j
	}
	for k := i - 1; k >= 0; k-- {
		if same(&writes[k], &writes[i]) {
			return k
		}
	}
	return -1
}

// encodeRecord appends the stored form of rec to dst. An lww record is
// written as a one-element array [version] without reflection (the format
// from before the siblings policy existed, so older data stays readable
// both ways); a siblings record is the library's encoding of record,
// [nil, state]. TestRecordEncoding holds both to the library.
func encodeRecord(dst []byte, rec *record) ([]byte, error) {
	if rec.DVV == nil {
		return wire.AppendVersion(append(dst, 0x91), rec.LWW), nil
	}
	b, err := msgpack.Marshal(rec)
	return append(dst, b...), err
}

// decodeRecord decodes a stored record; Value is copied out of data.
func decodeRecord(data []byte) (record, error) { return decodeRecordCopy(data, true) }

// decodeRecordCopy decodes a stored record; with copyValue false, Value
// aliases data.
func decodeRecordCopy(data []byte, copyValue bool) (record, error) {
	if len(data) > 0 && data[0] == 0x91 {
		if v, rest, ok := wire.DecodeVersion(data[1:]); ok && len(rest) == 0 {
			if copyValue && v != nil && v.Value != nil {
				v.Value = bytes.Clone(v.Value)
			}
			return record{LWW: v}, nil
		}
	}
	var rec record
	if err := msgpack.Unmarshal(data, &rec); err != nil {
		return record{}, err
	}
	return rec, nil
}

// errPolicy is the answer to a write of one policy on a key that holds the
// other's versions (possible only when a tenant was deleted with force and
// recreated under the other policy).
const errPolicy = "key holds versions of the other conflict policy"

// merge applies w to rec, as every path that stores a write does: an lww
// or dvv state merges in, a coordinating write is coordinated. It reports
// whether rec changed; a write refused sets res.Err (errPolicy for one of
// the other conflict policy) and leaves rec as it was.
func (e *engine) merge(rec *record, w *subjects.NodeWrite, res *subjects.NodeWriteResult) bool {
	switch {
	case w.LWW != nil:
		return e.mergeLWW(rec, w.LWW, res)
	case w.DVV != nil:
		return e.mergeDVV(rec, w.DVV, res)
	case w.Coordinate != nil:
		return e.coordinate(rec, w.Coordinate, res)
	}
	res.Err = "write carries no version"
	return false
}

// mergeLWW merges v into rec (max) and reports whether rec changed; when
// the stored version wins, res says which it is.
func (e *engine) mergeLWW(rec *record, v *vclock.Version, res *subjects.NodeWriteResult) bool {
	if rec.DVV != nil {
		res.Err = errPolicy
		return false
	}
	if rec.LWW == nil {
		rec.LWW = v
		return true
	}
	merged := vclock.Merge(*rec.LWW, *v)
	if vclock.Compare(merged, *rec.LWW) == 0 {
		// Nothing new: the stored version already wins. It may alias the
		// batch's iterator, so keep a copy.
		merged.Value = bytes.Clone(merged.Value)
		rec.LWW = &merged
		if vclock.Compare(merged, *v) != 0 {
			res.LWW = &merged
		}
		return false
	}
	rec.LWW = &merged
	return true
}

// mergeDVV syncs s into rec's state. Merges are never refused for their
// sibling count: repair must always be able to converge replicas.
func (e *engine) mergeDVV(rec *record, s *vclock.DVVSet, res *subjects.NodeWriteResult) bool {
	if rec.LWW != nil {
		res.Err = errPolicy
		return false
	}
	if err := s.Validate(); err != nil {
		res.Err = fmt.Sprintf("invalid state: %v", err)
		return false
	}
	cur := vclock.DVVSet{}
	if rec.DVV != nil {
		cur = *rec.DVV
	}
	merged := vclock.Sync(cur, *s)
	if merged.Equal(cur) {
		return false
	}
	rec.DVV = &merged
	return true
}

// coordinate is the coordinating replica's write under siblings: mint a
// dot from this incarnation's actor and the key's own state, drop what the
// client's context covers, and answer the complete state.
func (e *engine) coordinate(rec *record, w *subjects.Coordinate, res *subjects.NodeWriteResult) bool {
	if rec.LWW != nil {
		res.Err = errPolicy
		return false
	}
	if w.Deadline > 0 && time.Now().UnixMilli() > w.Deadline {
		res.Err = "the coordinating write arrived after its deadline; the coordinator has handed it to the next primary"
		res.Kind = subjects.KindTimeout
		return false
	}
	cur := vclock.DVVSet{}
	if rec.DVV != nil {
		cur = *rec.DVV
	}
	ctx := w.Context
	if len(ctx) == 0 && w.Value.Tombstone {
		// A delete without a context deletes what this replica holds: its
		// own state is the context, so the tombstone supersedes every
		// sibling here. Values written concurrently on replicas this one
		// has not heard from are not covered and survive the merge beside
		// the tombstone. (A put without a context stays a blind write: it
		// is concurrent with everything and adds a sibling.)
		ctx = cur.Join()
	}
	next, _, err := vclock.Update(cur, ctx, e.actor, w.Value)
	if err != nil {
		res.Err = fmt.Sprintf("coordinate: %v", err)
		return false
	}
	// Limits refuse only a write that grows the state past them, so a key
	// over a limit (repair merges are exempt) can always be resolved with
	// the read's context or deleted.
	if n := next.Size(); n > subjects.MaxSiblings && n > cur.Size() {
		res.Err = fmt.Sprintf("the key would hold %d values, more than %d: read it and write back one value with the read's context", n, subjects.MaxSiblings)
		res.Kind = subjects.KindTooManySiblings
		return false
	}
	size := subjects.StateSize(&next)
	limit := e.stateCap
	if w.MaxBytes > 0 {
		limit = int(min(w.MaxBytes, math.MaxInt32))
	}
	if !w.Value.Tombstone && limit > 0 && size > limit && size > subjects.StateSize(&cur) {
		res.Err = fmt.Sprintf("the key's values would take %d bytes, more than the per-key limit of %d: read it and write back fewer values with the read's context, or delete it", size, limit)
		res.Kind = subjects.KindTooLarge
		return false
	}
	if e.replyLimit > 0 && size+resultOverhead > e.replyLimit {
		// Only a state grown past the cap by repair merges gets here.
		res.Err = fmt.Sprintf("the key's state would be %d bytes, more than one message carries (%d): delete it without a context", size, e.replyLimit)
		res.Kind = subjects.KindTooLarge
		return false
	}
	rec.DVV = &next
	res.DVV = &next
	return true
}

// reader reads records through one Pebble iterator: a prefix seek on an
// open iterator costs about half of a db.Get, which builds an iterator per
// key. It sees the DB as it was when created; close it promptly, as it
// pins memtables and tables. Not safe for concurrent use.
type reader struct {
	it   *pebble.Iterator
	q    int
	kbuf []byte
}

func (e *engine) newReader() (*reader, error) {
	it, err := e.NewIter(nil)
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	return &reader{it: it, q: e.q}, nil
}

func (r *reader) close() { _ = r.it.Close() }

// record returns the record at k; a missing key is the zero record. With
// copyValue false, the Value aliases the iterator until its next use.
func (r *reader) record(k []byte, copyValue bool) (record, error) {
	// The default comparer makes the whole key the prefix, so bloom filters
	// apply and only k itself can be found.
	if !r.it.SeekPrefixGE(k) || !bytes.Equal(r.it.Key(), k) {
		if err := r.it.Error(); err != nil {
			return record{}, fmt.Errorf("read: %w", err)
		}
		return record{}, nil
	}
	v, err := r.it.ValueAndErr()
	if err != nil {
		return record{}, fmt.Errorf("read: %w", err)
	}
	rec, err := decodeRecordCopy(v, copyValue)
	if err != nil {
		return record{}, fmt.Errorf("decode stored record: %w", err)
	}
	return rec, nil
}

// read returns what is stored for (tenant, key); the zero record when
// nothing is. Values are copied out of the iterator.
func (r *reader) read(tenant, key string) (record, error) {
	r.kbuf = appendDataKey(r.kbuf[:0], ring.Partition(tenant, key, r.q), tenant, key)
	return r.record(r.kbuf, true)
}

// read returns what is stored for (tenant, key); the zero record when
// nothing is.
func (e *engine) read(tenant, key string) (record, error) {
	r, err := e.newReader()
	if err != nil {
		return record{}, err
	}
	defer r.close()
	return r.read(tenant, key)
}

// dump lists up to limit keys of tenant in (partition, key) order, starting
// after the key after (the last key of the previous page; "" = from the
// start): partitions in order from after's own, and within each the
// tenant's keys in key order. more reports that keys remain.
func (e *engine) dump(tenant, after string, limit int) ([]subjects.DumpEntry, bool, error) {
	it, err := e.NewIter(&pebble.IterOptions{
		LowerBound: []byte{nsData},
		UpperBound: []byte{nsData + 1},
	})
	if err != nil {
		return nil, false, fmt.Errorf("dump: %w", err)
	}
	defer it.Close()
	var (
		out    []subjects.DumpEntry
		prefix []byte // partition prefix, tenant, 0x00
		p      uint32
	)
	if after != "" {
		p = ring.Partition(tenant, after, e.q)
	}
	for first := p; int(p) < e.q; p++ {
		prefix = append(appendPartitionPrefix(prefix[:0], p), tenant...)
		prefix = append(prefix, 0)
		var ok bool
		if after != "" && p == first {
			// Strictly after: the smallest key greater than after.
			ok = it.SeekGE(append(append(bytes.Clone(prefix), after...), 0))
		} else {
			ok = it.SeekGE(prefix)
		}
		for ; ok && bytes.HasPrefix(it.Key(), prefix); ok = it.Next() {
			if len(out) == limit {
				return out, true, nil
			}
			ent, err := dumpEntry(it.Key()[len(prefix):], it.Value())
			if err != nil {
				return nil, false, err
			}
			out = append(out, ent)
		}
		if !ok {
			break // nothing after this partition's tenant range
		}
		if next := keyPartition(it.Key()); next > p+1 {
			p = next - 1 // skip the partitions that hold no keys at all
		}
	}
	return out, false, it.Error()
}

// keyPartition is the partition of a data key.
func keyPartition(k []byte) uint32 { return uint32(k[1])<<8 | uint32(k[2]) }

// dumpEntry is what dump lists of the record data stored under key.
func dumpEntry(key, data []byte) (subjects.DumpEntry, error) {
	rec, err := decodeRecord(data)
	if err != nil {
		return subjects.DumpEntry{}, fmt.Errorf("dump: decode %q: %w", key, err)
	}
	ent := subjects.DumpEntry{Key: string(key)}
	if v := rec.LWW; v != nil {
		ent.Value, ent.Tombstone, ent.Expires = v.Value, v.Tombstone, v.Expires
		ent.Context = vclock.EncodeContext(v.Dot)
		ent.Counter, ent.Actor = v.Dot.Counter, v.Dot.Actor
	}
	if d := rec.DVV; d != nil {
		ent.DVV, ent.Siblings = d, d.Size()
		ent.Tombstone = d.Deleted()
		ent.Context = vclock.EncodeDVVContext(d.Join())
		if last, ok := d.Last(); ok {
			ent.Value, ent.Expires = last.Value.Data, last.Value.Expires
			ent.Counter, ent.Actor = last.Dot.Counter, last.Dot.Actor
		}
	}
	return ent, nil
}

// Pebble tuning of a storage node. Point reads dominate (every read and
// the writes whose merge must read): bloom filters let a read skip the
// tables that do not hold its key, single-level table indexes save a block
// seek per table, and a block cache larger than Pebble's 8 MiB default
// keeps the hot blocks decompressed. Larger memtables flush and compact
// less often under a steady write load.
const (
	blockCacheBytes = 64 << 20
	memTableBytes   = 16 << 20
	bloomBitsPerKey = 10
	// A table's index fits one block up to ~8000 data blocks, so a point
	// read seeks one index instead of two (-25% per read on 100k keys).
	indexBlockBytes = 256 << 10
)

// dataBlockBytes is the size of a table's data blocks (Pebble's default is
// 4 KiB; CockroachDB uses 32 KiB). Scans (a transfer's pull and its
// reconcile, anti-entropy's tree builds) pay per block read from disk (a
// pread, a checksum, a buffer from the cache's C allocator), so larger
// blocks cost them fewer calls; a point read that misses the cache reads
// more bytes for its key. 16 KiB keeps point reads within ~7% of 4 KiB
// and scans as cheap as 32 KiB (BenchmarkReadOnDisk, side by side; 32
// KiB made point reads ~40% slower); the membership cell's transfer went
// from 34 to 43 MB/s (docs/PERFORMANCE.md, "Data blocks of 16 KiB"). A
// variable so that benchmark can compare sizes.
var dataBlockBytes = 16 << 10

// L0 compaction thresholds, in L0 sublevels (read amplification): Pebble
// compacts L0 into the base level at 4 and stops writes at 12. A node
// receiving a partition transfer takes a stream of pulled pages plus the
// writes forwarded to it across every partition it is pending for, so
// each flush overlaps what is already below it; compacting L0 at 12
// instead of 4 merges three times as many flushes per rewrite of the base
// level (RocksDB's own defaults are 4 to compact, 36 to stop). Joining a
// 4th node under load, uncapped, the transfer went from 42–46 to 47–54
// MB/s with a quarter less CPU per foreground operation during it, and
// the before window lost nothing (docs/PERFORMANCE.md, "From the leavers
// alone, and L0 compacted later").
const (
	l0CompactionThreshold = 12
	l0StopWritesThreshold = 36
)

// storeFormat is the Pebble format a store is kept in. Ingesting tables
// in place of a span (IngestAndExcise; ingest.go, replaceSpan) needs
// FormatVirtualSSTables; from FormatFlushableIngestExcises such an ingest
// that overlaps the memtable is logged and queued behind it, instead of
// waiting, on the write loop, for the memtable's flush. A store in an
// older format is moved to it at open; Pebble's migrations between the
// two rewrite nothing.
const storeFormat = pebble.FormatFlushableIngestExcises

// pebbleDebugCheck, when set (by tests, before a store opens), runs each
// time the store installs a new version, right after readers can see it.
var pebbleDebugCheck func(*pebble.DB) error

func pebbleOptions(log *slog.Logger) *pebble.Options {
	o := &pebble.Options{
		Logger: pebbleLogger{log}, CacheSize: blockCacheBytes, MemTableSize: memTableBytes,
		L0CompactionThreshold: l0CompactionThreshold, L0StopWritesThreshold: l0StopWritesThreshold,
		FormatMajorVersion: storeFormat, DebugCheck: pebbleDebugCheck,
	}
	for i := range o.Levels {
		o.Levels[i].FilterPolicy = bloom.FilterPolicy(bloomBitsPerKey)
		o.Levels[i].IndexBlockSize = indexBlockBytes
		o.Levels[i].BlockSize = dataBlockBytes
	}
	return o
}

// pebbleLogger sends Pebble's log to slog.
type pebbleLogger struct{ log *slog.Logger }

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (l pebbleLogger) Fatalf(format string, args ...any) {
	l.log.Error(fmt.Sprintf(format, args...), "component", "pebble")
	os.Exit(1)
}

// stats reports the engine's Pebble figures for metrics.
func (e *engine) stats() metrics.PebbleStats {
	m := e.db.Metrics()
	return metrics.PebbleStats{
		DiskBytes:      m.DiskSpaceUsage(),
		ReadAmp:        m.ReadAmp(),
		Compactions:    m.Compact.Count,
		MemtableBytes:  m.MemTable.Size,
		WALBytes:       m.WAL.Size,
		CompactionDebt: m.Compact.EstimatedDebt,
	}
}
