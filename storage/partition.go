package storage

import (
	"bytes"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Per-partition operations: the building blocks of streamed ownership
// transfer and per-partition hash trees (issue 14). A partition is one
// contiguous Pebble range (see the layout at the top of engine.go).
//
// They bypass the write loop: a caller that stores scanned records on
// another node must merge them through applyWrites there (whose lww read
// skip relies on e.bound knowing every counter it stored), and a caller
// that drops a partition must stop writes to it first.

// partEntry is one record of a partition scan.
type partEntry struct {
	Tenant, Key string
	Record      []byte // the stored record as encodeRecord writes it; a copy
}

// partitionBounds returns the key range [lo, hi) of partition p.
func partitionBounds(p uint32) (lo, hi []byte) {
	lo = appendPartitionPrefix(nil, p)
	if p == 0xffff {
		return lo, []byte{nsData + 1}
	}
	return lo, appendPartitionPrefix(nil, p+1)
}

func (e *engine) checkPartition(p uint32) error {
	if int64(p) >= int64(e.q) {
		return fmt.Errorf("partition %d out of range 0..%d", p, e.q-1)
	}
	return nil
}

// scanPartition returns up to limit records of partition p in (tenant, key)
// order, from after cursor (nil: from the start of the partition), and the
// cursor to pass next, nil once the partition has no more records. A cursor
// is opaque; it stays valid across writes and restarts. A limit below 1
// means 1000.
func (e *engine) scanPartition(p uint32, cursor []byte, limit int) ([]partEntry, []byte, error) {
	if err := e.checkPartition(p); err != nil {
		return nil, nil, err
	}
	return scanPartition(e, p, cursor, limit, 0, nil)
}

// scanPartition is engine.scanPartition over any iterator opener. With
// maxBytes above 0 it also stops before the records would exceed maxBytes
// (keys, values and scanRecordOverhead each), though it always returns at
// least one record. With tenants (sorted, distinct) it returns only their
// records: each tenant is one contiguous range of the partition ('p'
// partition tenant 0x00 key), so it seeks from one to the next rather than
// read the others; the cursor is the same tenant 0x00 key.
func scanPartition(r iterOpener, p uint32, cursor []byte, limit, maxBytes int, tenants []string) ([]partEntry, []byte, error) {
	var out []partEntry
	_, next, err := scanPartitionEach(r, p, cursor, limit, maxBytes, tenants, func(tenant, key, value []byte) {
		out = append(out, partEntry{Tenant: string(tenant), Key: string(key), Record: bytes.Clone(value)})
	})
	if err != nil {
		return nil, nil, err
	}
	return out, next, nil
}

// scanPartitionEach is scanPartition calling f with each record instead
// of collecting copies: tenant, key and value alias the iterator and are
// valid only during the call (handleScan encodes them straight into its
// reply). It returns how many records it passed to f.
func scanPartitionEach(r iterOpener, p uint32, cursor []byte, limit, maxBytes int, tenants []string, f func(tenant, key, value []byte)) (int, []byte, error) {
	if limit < 1 {
		limit = 1000
	}
	lo, hi := partitionBounds(p)
	if cursor != nil {
		lo = append(append(lo, cursor...), 0) // strictly after
	}
	spans := [][2][]byte{{lo, hi}}
	if len(tenants) > 0 {
		spans = spans[:0]
		for _, t := range tenants {
			tlo := append(append(appendPartitionPrefix(nil, p), t...), 0)
			thi := append(append(appendPartitionPrefix(nil, p), t...), 1)
			if bytes.Compare(thi, lo) <= 0 {
				continue // wholly before the cursor
			}
			if bytes.Compare(tlo, lo) < 0 {
				tlo = lo
			}
			spans = append(spans, [2][]byte{tlo, thi})
		}
		if len(spans) == 0 {
			return 0, nil, nil
		}
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, nil, fmt.Errorf("scan partition %d: %w", p, err)
	}
	defer it.Close()
	var last []byte // tenant 0x00 key of the last record passed to f: the cursor
	size, n, more := 0, 0, false
scan:
	for _, sp := range spans {
		for ok := it.SeekGE(sp[0]); ok && bytes.Compare(it.Key(), sp[1]) < 0; ok = it.Next() {
			if n >= limit {
				more = true
				break scan
			}
			rest := it.Key()[partitionPrefixLen:]
			sep := bytes.IndexByte(rest, 0)
			if sep < 0 {
				return 0, nil, fmt.Errorf("scan partition %d: malformed key %q", p, it.Key())
			}
			v, err := it.ValueAndErr()
			if err != nil {
				return 0, nil, fmt.Errorf("scan partition %d: %w", p, err)
			}
			if size += len(rest) + len(v) + scanRecordOverhead; maxBytes > 0 && size > maxBytes && n > 0 {
				more = true
				break scan
			}
			f(rest[:sep], rest[sep+1:], v)
			n++
			last = append(last[:0], rest...)
		}
		if err := it.Error(); err != nil {
			return 0, nil, fmt.Errorf("scan partition %d: %w", p, err)
		}
	}
	if !more || n == 0 {
		return n, nil, nil
	}
	return n, last, nil
}

// scanRecordOverhead bounds what a record adds to a scan reply beyond its
// tenant, key and stored bytes: msgpack headers of its array and fields.
const scanRecordOverhead = 16

// dropPartition deletes every record of partition p with one range
// deletion, committed with fsync.
func (e *engine) dropPartition(p uint32) error {
	if err := e.checkPartition(p); err != nil {
		return err
	}
	lo, hi := partitionBounds(p)
	err := e.db.DeleteRange(lo, hi, pebble.Sync)
	e.bumpGen(p)
	if err != nil {
		return fmt.Errorf("drop partition %d: %w", p, err)
	}
	return nil
}

// partitionStats counts the records of partition p (a scan of its keys)
// and estimates the disk bytes its range takes (from table metadata: data
// still in memtables counts as 0 until flushed).
func (e *engine) partitionStats(p uint32) (records int, diskBytes uint64, err error) {
	if err := e.checkPartition(p); err != nil {
		return 0, 0, err
	}
	lo, hi := partitionBounds(p)
	if records, err = countRange(e, lo, hi); err != nil {
		return 0, 0, fmt.Errorf("count partition %d: %w", p, err)
	}
	// EstimateDiskUsage wants an inclusive end key; hi itself is never a
	// data key, so the estimate covers exactly the partition.
	if diskBytes, err = e.db.EstimateDiskUsage(lo, hi); err != nil {
		return 0, 0, fmt.Errorf("estimate partition %d: %w", p, err)
	}
	return records, diskBytes, nil
}
