package storage

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Pebble key layout. Every key starts with a one-byte namespace so data and
// the node's own metadata never collide:
//
//	'd' tenant 0x00 key  → record (msgpack array)
//	'm' name             → node metadata (node id, epoch)
//
// Tenant ids never contain 0x00, so the data layout is unambiguous.
const (
	nsData = 'd'
	nsMeta = 'm'
)

var (
	metaNodeID = []byte{nsMeta, 'n', 'o', 'd', 'e'}
	metaEpoch  = []byte{nsMeta, 'e', 'p', 'o', 'c', 'h'}
)

// record is what a replica stores for one key. Exactly one policy field is
// set. Fields are only ever appended (the siblings policy adds its state).
type record struct {
	_msgpack struct{} `msgpack:",as_array"`
	LWW      *vclock.Version
}

// engine is a node's local store on Pebble. Safe for concurrent use; writes
// are serialised by the caller (one writer goroutine per node).
type engine struct {
	db    *pebble.DB
	sync  bool
	epoch uint64
}

// openEngine opens (creating if needed) the Pebble store in dir for nodeID.
// A directory that belongs to another node id, or that another process or
// node holds open, is refused.
func openEngine(dir, nodeID string, fsync bool, log *slog.Logger) (*engine, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("storage: create data dir %s: %w", dir, err)
	}
	db, err := pebble.Open(dir, &pebble.Options{Logger: pebbleLogger{log}})
	if err != nil {
		return nil, fmt.Errorf("storage: open %s (is another storage node using it?): %w", dir, err)
	}
	e := &engine{db: db, sync: fsync}
	if err := e.initMeta(nodeID); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: %s: %w", dir, err)
	}
	return e, nil
}

// initMeta binds the directory to nodeID and loads or mints its epoch. A new
// epoch is minted exactly when the directory holds no epoch: when it was just
// created or wiped.
func (e *engine) initMeta(nodeID string) error {
	owner, err := e.getMeta(metaNodeID)
	if err != nil {
		return err
	}
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
	for e.epoch == 0 {
		if _, err := rand.Read(buf[:]); err != nil {
			return fmt.Errorf("mint epoch: %w", err)
		}
		e.epoch = binary.BigEndian.Uint64(buf[:])
	}
	b := e.db.NewBatch()
	defer b.Close()
	_ = b.Set(metaNodeID, []byte(nodeID), nil)
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

// dataKey returns the Pebble key of (tenant, key), appended to dst.
func dataKey(dst []byte, tenant, key string) []byte {
	dst = append(dst, nsData)
	dst = append(dst, tenant...)
	dst = append(dst, 0)
	return append(dst, key...)
}

// applyWrites merges every write into the store as one atomic batch, synced
// when the engine was opened with fsync, and returns one result per write
// in order. Writes to the same key within the batch see each other.
func (e *engine) applyWrites(writes []subjects.NodeWrite) []subjects.NodeWriteResult {
	results := make([]subjects.NodeWriteResult, len(writes))
	b := e.db.NewIndexedBatch()
	defer b.Close()
	var kbuf []byte
	for i, w := range writes {
		results[i].ID = w.ID
		if w.LWW == nil {
			results[i].Err = "write carries no version"
			continue
		}
		kbuf = dataKey(kbuf[:0], w.Tenant, w.Key)
		cur, err := getRecord(b, kbuf)
		if err != nil {
			results[i].Err = err.Error()
			continue
		}
		merged := *w.LWW
		if cur.LWW != nil {
			merged = vclock.Merge(*cur.LWW, merged)
			if vclock.Compare(merged, *cur.LWW) == 0 {
				// Nothing new: the stored version already wins.
				if vclock.Compare(merged, *w.LWW) != 0 {
					v := merged
					results[i].LWW = &v
				}
				continue
			}
		}
		enc, err := msgpack.Marshal(&record{LWW: &merged})
		if err != nil {
			results[i].Err = fmt.Sprintf("encode: %v", err)
			continue
		}
		if err := b.Set(kbuf, enc, nil); err != nil {
			results[i].Err = fmt.Sprintf("batch: %v", err)
		}
	}
	opts := pebble.NoSync
	if e.sync {
		opts = pebble.Sync
	}
	if err := b.Commit(opts); err != nil {
		for i := range results {
			if results[i].Err == "" {
				results[i].Err = fmt.Sprintf("commit: %v", err)
			}
		}
	}
	return results
}

// getRecord reads the record at k from r (the DB or an indexed batch); a
// missing key is the zero record.
func getRecord(r pebble.Reader, k []byte) (record, error) {
	v, closer, err := r.Get(k)
	if errors.Is(err, pebble.ErrNotFound) {
		return record{}, nil
	}
	if err != nil {
		return record{}, fmt.Errorf("read: %w", err)
	}
	defer closer.Close()
	var rec record
	if err := msgpack.Unmarshal(v, &rec); err != nil {
		return record{}, fmt.Errorf("decode stored record: %w", err)
	}
	return rec, nil
}

// read returns the version stored for (tenant, key), or nil.
func (e *engine) read(tenant, key string) (*vclock.Version, error) {
	rec, err := getRecord(e.db, dataKey(nil, tenant, key))
	if err != nil {
		return nil, err
	}
	return rec.LWW, nil
}

// dump lists up to limit keys of tenant after the key after, in key order.
func (e *engine) dump(tenant, after string, limit int) ([]subjects.DumpEntry, bool, error) {
	lower := dataKey(nil, tenant, after)
	if after != "" {
		lower = append(lower, 0) // strictly after
	}
	upper := append([]byte{nsData}, tenant...)
	upper = append(upper, 1)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, false, fmt.Errorf("dump: %w", err)
	}
	defer it.Close()
	prefixLen := 1 + len(tenant) + 1
	var out []subjects.DumpEntry
	for ok := it.First(); ok; ok = it.Next() {
		if len(out) == limit {
			return out, true, nil
		}
		var rec record
		if err := msgpack.Unmarshal(it.Value(), &rec); err != nil {
			return nil, false, fmt.Errorf("dump: decode %q: %w", it.Key()[prefixLen:], err)
		}
		ent := subjects.DumpEntry{Key: string(it.Key()[prefixLen:])}
		if v := rec.LWW; v != nil {
			ent.Value, ent.Tombstone = v.Value, v.Tombstone
			ent.Context = vclock.EncodeContext(v.Dot)
			ent.Counter, ent.Actor = v.Dot.Counter, v.Dot.Actor
		}
		out = append(out, ent)
	}
	return out, false, it.Error()
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
