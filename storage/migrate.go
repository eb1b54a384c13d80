package storage

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Migration from the layout before partitions ('d' tenant 0x00 key) to the
// partitioned one ('p' partition tenant 0x00 key): see migrateLayout.
const (
	migrateBatch      = 4096    // records per batch (one Pebble batch, one fsync)
	migrateBatchBytes = 8 << 20 // and at most about this many bytes of values
	migrateLogEvery   = 5 * time.Second
)

// migrateHook, when set (by tests), runs after each committed migration
// batch with the records migrated so far by this run; an error stops the
// migration there, as a crash would.
var migrateHook func(done int) error

// migrateLayout moves every record of the old namespace into the
// partitioned layout, in batches of at most batch records. Each batch
// writes the new keys and deletes the old ones (one DeleteRange over the
// keys it read) in one Pebble batch committed with fsync, so a crash at any
// point leaves every record in exactly one of the two namespaces and the
// next open continues where this one stopped. It runs at open, before the
// node serves, so nothing reads or writes meanwhile; progress is logged at
// most every migrateLogEvery.
//
// A record whose key the new layout already holds (only possible if a
// binary from before partitions wrote to the directory after a migration)
// is merged into it, as a replica merges any version it is sent, so no
// version is lost either way.
func (e *engine) migrateLayout(log *slog.Logger, batch int) error {
	lower, upper := []byte{nsOldData}, []byte{nsOldData + 1}
	total, err := countRange(e, lower, upper)
	if err != nil || total == 0 {
		return err
	}
	log.Warn("data directory is in the layout from before partitions: migrating it before serving", "records", total, "partitions", e.q)
	start := time.Now()
	lastLog, done := start, 0
	for {
		n, next, err := e.migrateOne(lower, upper, batch)
		if err != nil {
			return fmt.Errorf("after %d of %d records: %w", done, total, err)
		}
		if n == 0 {
			break
		}
		done, lower = done+n, next
		if migrateHook != nil {
			if err := migrateHook(done); err != nil {
				return err
			}
		}
		if now := time.Now(); now.Sub(lastLog) >= migrateLogEvery {
			lastLog = now
			log.Info("migrating to the partitioned layout", "done", done, "total", total,
				"records_per_second", int(float64(done)/now.Sub(start).Seconds()))
		}
	}
	left, err := countRange(e, []byte{nsOldData}, upper)
	if err != nil {
		return err
	}
	if left != 0 {
		return fmt.Errorf("%d records left in the old layout after migrating", left)
	}
	took := time.Since(start)
	log.Info("migrated to the partitioned layout", "records", done, "took", took.Round(time.Millisecond),
		"records_per_second", int(float64(done)/max(took.Seconds(), 1e-9)))
	return nil
}

// migrateOne migrates up to batch records of the old namespace from lower
// and returns how many it did and where the next batch starts.
func (e *engine) migrateOne(lower, upper []byte, batch int) (int, []byte, error) {
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return 0, nil, err
	}
	defer it.Close()
	r, err := e.newReader()
	if err != nil {
		return 0, nil, err
	}
	defer r.close()
	b := e.db.NewBatch()
	defer b.Close()
	var (
		first, last []byte
		kbuf, enc   []byte
		n, size     int
	)
	for ok := it.First(); ok && n < batch && size < migrateBatchBytes; ok = it.Next() {
		k := it.Key()
		sep := bytes.IndexByte(k[1:], 0)
		if sep < 0 {
			return 0, nil, fmt.Errorf("malformed key %q in the old layout", k)
		}
		tenant, key := string(k[1:1+sep]), string(k[2+sep:])
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, nil, err
		}
		kbuf = appendDataKey(kbuf[:0], ring.Partition(tenant, key, e.q), tenant, key)
		if enc, err = e.mergeStored(r, kbuf, v, enc[:0]); err != nil {
			return 0, nil, fmt.Errorf("%s/%q: %w", tenant, key, err)
		}
		if err := b.Set(kbuf, enc, nil); err != nil {
			return 0, nil, err
		}
		if first == nil {
			first = bytes.Clone(k)
		}
		last = append(last[:0], k...)
		n, size = n+1, size+len(v)
	}
	if err := it.Error(); err != nil {
		return 0, nil, err
	}
	if n == 0 {
		return 0, nil, nil
	}
	next := append(last, 0) // the smallest key after last
	if err := b.DeleteRange(first, next, nil); err != nil {
		return 0, nil, err
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, nil, err
	}
	return n, next, nil
}

// mergeStored appends to dst the record to store under the new-layout key
// k for the old record data: data itself, unless k already holds a record,
// then the merge of both. A record of the other conflict policy than the
// one stored keeps the stored one (a write would be refused the same way).
func (e *engine) mergeStored(r *reader, k, data, dst []byte) ([]byte, error) {
	cur, err := r.record(k, true)
	if err != nil {
		return nil, err
	}
	if cur.LWW == nil && cur.DVV == nil {
		return append(dst, data...), nil
	}
	old, err := decodeRecord(data)
	if err != nil {
		return nil, fmt.Errorf("decode stored record: %w", err)
	}
	var res subjects.NodeWriteResult
	switch {
	case old.LWW != nil:
		e.mergeLWW(&cur, old.LWW, &res)
	case old.DVV != nil:
		e.mergeDVV(&cur, old.DVV, &res)
	}
	return encodeRecord(dst, &cur)
}

// countRange counts the keys in [lower, upper).
func countRange(r iterOpener, lower, upper []byte) (int, error) {
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return 0, err
	}
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		n++
	}
	return n, errors.Join(it.Error(), it.Close())
}
