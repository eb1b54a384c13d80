package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// Partition transfer (issue 14): a node pulls one partition from another
// in pages over kv.node.<id>.scan and merges every record through its own
// write loop, like a repair. The source side (handleScan) is stateless: a
// page is one Pebble iterator over the live store. The receiver side
// (PullPartition) keeps its cursor in its own store after every page, so
// a transfer stopped by a failure of either node, or by its caller,
// resumes where it stopped. Which partitions to pull, and when, is the
// transfer loop's (receive.go); the map flips are the coordinators'.

// DefaultTransferRate is the bytes per second a node's transfers pull at
// most unless Config.TransferRate says otherwise. It protects the
// foreground first, as Cassandra's stream throughput cap (24 MiB/s) does:
// on the 2-core reference machine a join under a 64-client YCSB A load
// kept 0.71x of the foreground's throughput at 16 MiB/s, against 0.57x at
// 24 and 0.35x uncapped (~40 MB/s) (docs/PERFORMANCE.md, "Membership").
// Raise it (storage --transfer-rate; 0 = unlimited) where the machines
// have cores to spare or the cluster is idle.
const DefaultTransferRate = 16 << 20

// Unlimited as Config.TransferRate or TransferOptions.Rate lifts the cap.
const Unlimited = -1

// Scan page limits (subjects.PartitionScan): records per page by default
// and at most.
const (
	scanDefaultRecords = 1000
	scanMaxRecords     = 10_000
)

// handleScan answers one page of a partition (subjects.PartitionScan).
func (n *Node) handleScan(m *nats.Msg) {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return // unsubscribed: the receiver sees no answer and retries later
	}
	var req subjects.PartitionScan
	if err := wire.UnmarshalPartitionScan(m.Data, &req); err != nil || !subjects.NodeProtocolSupported(req.Proto) {
		n.respondError(m, fmt.Sprintf("bad scan request (proto %d, accepted %d..%d): %v", req.Proto, subjects.NodeProtocolMin, subjects.NodeProtocolVersion, err))
		return
	}
	if have := n.mapVersion(); req.MapVersion > have {
		// The receiver started from a map this node has not installed:
		// writes fenced by the older one may still be on their way to the
		// write loop, so this page could miss them. Load it first.
		n.kickMap()
		n.respondKind(m, subjects.KindMapBehind, fmt.Sprintf("scan names map version %d; node %s has %d: retry shortly", req.MapVersion, n.cfg.NodeID, have))
		return
	}
	if req.Partitions != n.eng.q {
		n.respondError(m, fmt.Sprintf("scan asks with %d partitions; node %s is laid out in %d", req.Partitions, n.cfg.NodeID, n.eng.q))
		return
	}
	if err := n.eng.checkPartition(req.Partition); err != nil {
		n.respondError(m, err.Error())
		return
	}
	if err := checkCursor(req.Cursor, req.Partition, n.eng.q); err != nil {
		n.respondError(m, err.Error())
		return
	}
	if err := checkTenantFilter(req.Tenants); err != nil {
		n.respondError(m, err.Error())
		return
	}
	if !req.Rebuild && n.rebuildingPartition(req.Partition) {
		// This node lost its copy and has not pulled it back: a receiver
		// must not count it as a source (only another rebuild may take
		// what it holds so far).
		n.respondKind(m, subjects.KindRebuilding, fmt.Sprintf("node %s is rebuilding partition %d: ask its other owners", n.cfg.NodeID, req.Partition))
		return
	}
	limit := req.Limit
	switch {
	case limit <= 0:
		limit = scanDefaultRecords
	case limit > scanMaxRecords:
		limit = scanMaxRecords
	}
	maxBytes := n.replyLimit
	if req.MaxBytes > 0 && req.MaxBytes < maxBytes {
		maxBytes = req.MaxBytes
	}
	// The reply (subjects.PartitionScanReply) is encoded straight from
	// the iterator into a pooled buffer, after room for its header, which
	// needs the record count and goes in last, right before the records.
	// A page is up to a megabyte; nothing of it is copied but into the
	// buffer (and by NATS, which copies what Respond sends).
	bp := scanBufs.Get().(*[]byte)
	b := append((*bp)[:0], make([]byte, scanHeaderRoom)...)
	var firstTenant, firstKey string // of the page's first record, for a too-large error
	firstLen := 0
	count, next, err := scanPartitionEach(n.eng, req.Partition, req.Cursor, limit, maxBytes, req.Tenants, func(tenant, key, value []byte) {
		if len(b) == scanHeaderRoom {
			firstTenant, firstKey, firstLen = string(tenant), string(key), len(value)
		}
		b = wire.AppendPartitionRecordBytes(b, tenant, key, value)
	})
	defer func() {
		if cap(b) <= scanBufMax {
			*bp = b[:0]
			scanBufs.Put(bp)
		}
	}()
	if err != nil {
		n.respondKind(m, subjects.KindInternal, err.Error())
		return
	}
	b = wire.AppendPartitionScanReplyEnd(b, next)
	hdr := wire.AppendPartitionScanReplyHeader(make([]byte, 0, scanHeaderRoom), count)
	start := scanHeaderRoom - len(hdr)
	copy(b[start:], hdr)
	data := b[start:]
	if limit := n.nc.MaxPayload(); int64(len(data)) > limit {
		// A page is sized below the reply limit, so only a single record
		// past it gets here (a siblings state grown by repair merges):
		// say which, rather than let the receiver time out.
		desc := fmt.Sprintf("a page of %d records of partition %d is %d bytes, more than one message carries (%d)", count, req.Partition, len(data), limit)
		if count == 1 {
			desc = fmt.Sprintf("record %s/%q of partition %d is %d bytes, more than one message carries (%d): delete it without a context", firstTenant, firstKey, req.Partition, firstLen, limit)
		}
		n.respondKind(m, subjects.KindTooLarge, desc)
		return
	}
	if err := m.Respond(data); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		n.log.Warn("scan reply failed", "err", err)
	}
}

func (n *Node) respondKind(m *nats.Msg, kind, desc string) {
	n.log.Warn("node request failed", "subject", m.Subject, "err", desc)
	if m.Reply == "" {
		return
	}
	e := subjects.Errorf(kind, "%s", desc)
	_ = m.RespondMsg(&nats.Msg{Subject: m.Reply, Header: e.Headers()})
}

// Scan replies are encoded into pooled buffers (handleScan): scanHeaderRoom
// bytes are left before the records for the reply's header (0x92 and an
// array header of at most 5 bytes); a buffer grown past scanBufMax (a
// page far above the default 1 MiB) is not kept.
const (
	scanHeaderRoom = 6
	scanBufMax     = 4 << 20
)

var scanBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// checkTenantFilter reports why tenants cannot filter a scan: they must
// be valid tenant ids, sorted and distinct (the order their ranges come in).
func checkTenantFilter(tenants []string) error {
	for i, t := range tenants {
		if err := subjects.ValidateTenantID(t); err != nil {
			return fmt.Errorf("scan tenant filter: %w", err)
		}
		if i > 0 && tenants[i-1] >= t {
			return fmt.Errorf("scan tenant filter: %q after %q: tenants must be sorted and distinct", t, tenants[i-1])
		}
	}
	return nil
}

// checkCursor reports why cursor cannot resume a scan of partition p: it
// must be nil or tenant 0x00 key of a key in p.
func checkCursor(cursor []byte, p uint32, q int) error {
	if cursor == nil {
		return nil
	}
	sep := bytes.IndexByte(cursor, 0)
	if sep < 0 {
		return fmt.Errorf("malformed cursor %q: not a cursor of a scan reply", cursor)
	}
	tenant, key := string(cursor[:sep]), string(cursor[sep+1:])
	if err := subjects.ValidateTenantID(tenant); err != nil {
		return fmt.Errorf("malformed cursor %q: %w", cursor, err)
	}
	if len(key) == 0 || len(key) > subjects.MaxKeyBytes {
		return fmt.Errorf("malformed cursor %q: key of %d bytes", cursor, len(key))
	}
	if got := ring.Partition(tenant, key, q); got != p {
		return fmt.Errorf("malformed cursor %q: it is in partition %d, not %d", cursor, got, p)
	}
	return nil
}

// TransferOptions tunes PullPartition. Zero fields take the defaults.
type TransferOptions struct {
	// Records and Bytes bound one page (1000 records, 1 MiB; the source
	// caps the bytes at its reply limit).
	Records, Bytes int
	// Rate caps the bytes per second pulled: 0 is Config.TransferRate,
	// Unlimited none.
	Rate int64
	// Timeout bounds each page's round trip (10s). A page that times out
	// fails the call; call again to resume.
	Timeout time.Duration
	// Restart forgets the cursor persisted for this (partition, source)
	// and pulls the whole partition again.
	Restart bool
	// Progress, when set, is called after each page is merged and
	// persisted, on the caller's goroutine.
	Progress func(TransferProgress)
	// MapVersion is sent in each scan: the source answers only once its
	// own map is at least this version (else map_behind, retried here
	// until Timeout). 0: unfenced.
	MapVersion uint64
	// Tenants, when not empty, pulls only these tenants' records
	// (PartitionScan.Tenants; sorted and made distinct here). The cursor
	// is persisted per filter: a cursor made under one filter would skip,
	// under a larger one, the added tenants' records before it.
	Tenants []string
	// Rebuild marks the scans as a rebuild's (PartitionScan.Rebuild): a
	// source rebuilding the partition too answers them.
	Rebuild bool
	// stage hands the pages to the stage (stage.go) instead of merging
	// each at once: the records are in the store only after the stage's
	// next flush, which the transfer does before it reports the
	// partition. Only for a partition this node does not serve yet.
	stage bool
}

// TransferProgress reports a PullPartition call.
type TransferProgress struct {
	Partition uint32
	From      string
	Resumed   bool   // the call began from a persisted cursor
	Cursor    []byte // persisted: a later call resumes after it; nil once Done
	Pages     int
	Records   int64 // merged by this call
	Bytes     int64 // received by this call: the pages' size on the wire
	// Skipped counts records not merged because the key holds the other
	// conflict policy's versions here (a tenant deleted with force and
	// recreated under the other policy); they are logged.
	Skipped   int64
	Elapsed   time.Duration
	Throttled time.Duration // of Elapsed, how long the rate cap held pages back
	Rate      float64       // Bytes per second of Elapsed
	Done      bool          // the partition was pulled to its end
}

// localWrite is a batch of merges that PullPartition hands to the write
// loop, with the transfer cursor to persist once they are applied (nil
// value: delete it).
type localWrite struct {
	install   *ring.Map // set: install this map (placement.go), nothing else
	drop      *dropJob  // set: drop a partition (handoff.go), nothing else
	regen     *regenJob // set: forget a partition's cursors (receive.go), nothing else
	reap      *reapJob  // set: conditional deletes (reap.go), nothing else
	flush     bool      // set: flush the stage (stage.go), nothing else
	items     []subjects.NodeWrite
	changed   []bool // set: applyWritesChanged fills it
	metaKey   []byte
	metaValue []byte
	// stageAt, when not 0, stages the items (as staged, the same records)
	// and the cursor under the stage's generation stageAt-1 (stage.go).
	stageAt    uint64
	staged     []stagedRec
	results    []subjects.NodeWriteResult
	persistErr error
	stageErr   error // of a staged page or a flush
	done       chan struct{}
}

// applyLocal runs on the write loop: the merges through applyWrites, the
// same path as every write (so e.bound learns each key), then the cursor,
// unless a merge failed. One WAL orders the two commits, so a persisted
// cursor never runs ahead of the records it covers.
func (n *Node) applyLocal(j *localWrite) {
	defer close(j.done)
	switch {
	case j.install != nil:
		n.install(j.install)
		return
	case j.flush:
		j.stageErr = n.flushStage()
		return
	case j.drop != nil:
		if n.stg.parts[j.drop.p] {
			_ = n.flushStage() // a staged record of the partition must not come back after it
		}
		n.applyDrop(j.drop)
		if j.drop.dropped { // its persisted cursors are gone: so are its staged ones
			n.stg.forgetStagedMeta(func(k []byte) bool { return cursorPartition(k) == int64(j.drop.p) })
		}
		return
	case j.regen != nil:
		n.stg.forgetStagedMeta(func(k []byte) bool { return cursorPartition(k) == int64(j.regen.p) })
		j.regen.err = n.eng.forgetCursors(func(p uint32) bool { return p == j.regen.p })
		return
	case j.stageAt != 0:
		n.stageWrite(j)
		return
	case j.reap != nil:
		if slices.ContainsFunc(j.reap.items, func(it subjects.ReapItem) bool {
			return n.stg.parts[ring.Partition(it.Tenant, it.Key, n.eng.q)]
		}) {
			_ = n.flushStage() // a staged record must not come back after its key is reaped
		}
		j.reap.results, j.reap.err = n.eng.reapIf(j.reap.items)
		for i, r := range j.reap.results {
			if r.Reaped {
				n.reapCounts.add(ring.Partition(j.reap.items[i].Tenant, j.reap.items[i].Key, n.eng.q), 1)
			}
		}
		return
	}
	j.results = n.eng.applyWritesChanged(j.items, j.changed)
	for i := range j.results {
		if err := j.results[i].Err; err != "" && err != errPolicy {
			return
		}
	}
	if j.metaKey == nil {
		return
	}
	n.stg.forgetStagedMeta(func(k []byte) bool { return bytes.Equal(k, j.metaKey) })
	opts := n.eng.writeOpts()
	if j.metaValue == nil {
		j.persistErr = n.eng.db.Delete(j.metaKey, opts)
	} else {
		j.persistErr = n.eng.db.Set(j.metaKey, j.metaValue, opts)
	}
}

// errStopping fails a transfer of a node that is stopping.
var errStopping = errors.New("storage: node is stopping")

// submit hands j to the write loop and waits until it is applied. It
// fails only when the node stops or ctx ends before the loop took j; once
// taken, j is always applied and waited for.
func (n *Node) submit(ctx context.Context, j *localWrite) error {
	j.done = make(chan struct{})
	select {
	case n.local <- j:
	case <-n.stopping:
		return errStopping
	case <-ctx.Done():
		return ctx.Err()
	}
	<-j.done
	return nil
}

// transferKey is where the cursor of pulling partition p from node from
// is kept: 'm' "xfer" partition(2 bytes) from, and with a tenant filter
// 0x00 and the xxhash64 of the tenants joined by 0x00 (node ids hold no
// 0x00), so that each filter resumes only its own cursor.
func transferKey(p uint32, from string, tenants ...[]string) []byte {
	k := append([]byte{nsMeta, 'x', 'f', 'e', 'r', byte(p >> 8), byte(p)}, from...)
	if len(tenants) == 0 || len(tenants[0]) == 0 {
		return k
	}
	return binary.BigEndian.AppendUint64(append(k, 0), xxhash.Sum64String(strings.Join(tenants[0], "\x00")))
}

// cursorPartition returns the partition of transfer cursor key k
// (transferKey), or -1 when k is not one.
func cursorPartition(k []byte) int64 {
	prefix := []byte{nsMeta, 'x', 'f', 'e', 'r'}
	if len(k) < len(prefix)+2 || !bytes.HasPrefix(k, prefix) {
		return -1
	}
	return int64(k[len(prefix)])<<8 | int64(k[len(prefix)+1])
}

// forgetCursors deletes the persisted transfer cursors of the partitions
// for which drop is true. Few cursors exist at a time (one per partition
// and source being pulled), so it reads them all.
func (e *engine) forgetCursors(drop func(p uint32) bool) error {
	lo := []byte{nsMeta, 'x', 'f', 'e', 'r'}
	hi := []byte{nsMeta, 'x', 'f', 'e', 's'}
	it, err := e.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("list transfer cursors: %w", err)
	}
	var del [][]byte
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		if p := cursorPartition(k); p >= 0 && drop(uint32(p)) {
			del = append(del, bytes.Clone(k))
		}
	}
	if err := errors.Join(it.Error(), it.Close()); err != nil {
		return fmt.Errorf("list transfer cursors: %w", err)
	}
	ops := make([]metaOp, len(del))
	for i, k := range del {
		ops[i] = metaOp{key: k} // no value: delete
	}
	return e.applyMetas(ops)
}

// TransferCursor returns the cursor persisted for pulling partition p from
// node from: where the next PullPartition resumes; nil when none (never
// started, or finished).
func (n *Node) TransferCursor(p uint32, from string) ([]byte, error) {
	return n.transferCursor(p, from, nil)
}

// transferCursor is TransferCursor for a pull with a tenant filter.
func (n *Node) transferCursor(p uint32, from string, tenants []string) ([]byte, error) {
	n.readMu.RLock()
	defer n.readMu.RUnlock()
	if n.readsClosed {
		return nil, errStopping
	}
	return n.eng.getMeta(transferKey(p, from, tenants))
}

// client returns the node's replica client, created on first use.
func (n *Node) client() (*replica.Client, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case n.closed:
		return nil, errStopping
	case n.nc == nil:
		return nil, errors.New("storage: node is not serving (opened without a connection)")
	case n.rc == nil:
		rc, err := replica.New(n.nc, replica.DefaultConfig())
		if err != nil {
			return nil, err
		}
		n.rc = rc
	}
	return n.rc, nil
}

// PullPartition copies partition p from storage node from into this node:
// it asks for pages of records (subjects.PartitionScan, one request in
// flight, the next asked while the current one is merged), merges each
// record through the write loop like a repair (a version this node holds
// that is newer stays; siblings are synced), and persists the cursor after
// each page in the node's metadata, so a call that fails (either node
// stopped, a timeout, ctx ended) resumes from the last page merged, also
// after a restart of the node (but the transfer loop does not resume
// cursors of an earlier run: receive.go, forgetGenerations). It returns
// once the partition was pulled to its end (Done, and the persisted
// cursor is cleared) or with the error that
// stopped it and the progress so far. Records written to the source after
// their part of the range was sent are not pulled: a transfer is complete
// only if such writes reach this node too (pending owners).
func (n *Node) PullPartition(ctx context.Context, from string, p uint32, opts TransferOptions) (TransferProgress, error) {
	prog := TransferProgress{Partition: p, From: from}
	if err := n.eng.checkPartition(p); err != nil {
		return prog, fmt.Errorf("storage: pull: %w", err)
	}
	if err := subjects.ValidateNodeID(from); err != nil {
		return prog, fmt.Errorf("storage: pull: %w", err)
	}
	if from == n.cfg.NodeID {
		return prog, fmt.Errorf("storage: pull: node %s cannot pull from itself", from)
	}
	rc, err := n.client()
	if err != nil {
		return prog, err
	}
	if opts.Records <= 0 {
		opts.Records = scanDefaultRecords
	}
	if opts.Bytes <= 0 {
		opts.Bytes = 1 << 20
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	// An explicit Rate paces this call alone; otherwise the node's shared
	// limiter paces it together with every other pull.
	lim := n.xferLimit
	if opts.Rate != 0 {
		lim = newLimiter(opts.Rate, time.Now())
	}
	var throttled time.Duration
	if len(opts.Tenants) > 0 {
		opts.Tenants = slices.Compact(slices.Sorted(slices.Values(opts.Tenants)))
		if err := checkTenantFilter(opts.Tenants); err != nil {
			return prog, fmt.Errorf("storage: pull: %w", err)
		}
	}
	key := transferKey(p, from, opts.Tenants)
	var cursor []byte
	if opts.Restart {
		if err := n.submit(ctx, &localWrite{metaKey: key}); err != nil {
			return prog, err
		}
	} else if cursor, err = n.transferCursor(p, from, opts.Tenants); err != nil {
		return prog, err
	}
	if err := checkCursor(cursor, p, n.eng.q); err != nil {
		return prog, fmt.Errorf("storage: persisted transfer cursor of partition %d from %s: %w (pull with Restart)", p, from, err)
	}
	prog.Resumed, prog.Cursor = cursor != nil, cursor
	var stageAt uint64
	if opts.stage {
		stageAt = n.stageGen.Load() + 1
	}

	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends a page still in flight
	type page struct {
		rep  *subjects.PartitionScanReply
		size int
		err  error
	}
	ask := func(cursor []byte) <-chan page {
		ch := make(chan page, 1)
		go func() {
			rctx, cancel := context.WithTimeout(ctx, opts.Timeout)
			defer cancel()
			rebuild := opts.Rebuild
			for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
				rep, size, err := rc.ScanPartition(rctx, from, subjects.PartitionScan{
					Partitions: n.eng.q, Partition: p, Cursor: cursor, Limit: opts.Records, MaxBytes: opts.Bytes,
					MapVersion: opts.MapVersion, Tenants: opts.Tenants, Rebuild: rebuild,
				})
				if rebuild && errors.Is(err, &subjects.Error{Kind: subjects.KindInvalid}) {
					// A source of a build from before rebuilds cannot read
					// the nine-element form; it has no rebuild state, so the
					// plain scan means the same to it.
					rebuild = false
					continue
				}
				if !errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) {
					ch <- page{rep, size, err}
					return
				}
				select { // the source is loading the map: ask again
				case <-time.After(wait):
				case <-rctx.Done():
					ch <- page{nil, 0, err}
					return
				}
			}
		}()
		return ch
	}
	report := func() {
		prog.Elapsed = time.Since(start)
		prog.Throttled = throttled
		if s := prog.Elapsed.Seconds(); s > 0 {
			prog.Rate = float64(prog.Bytes) / s
		}
	}
	next := ask(cursor)
	for {
		var pg page
		select {
		case pg = <-next:
		case <-ctx.Done():
			report()
			return prog, ctx.Err()
		case <-n.stopping:
			report()
			return prog, errStopping
		}
		if pg.err != nil {
			report()
			return prog, fmt.Errorf("storage: pull partition %d from %s (resume from the persisted cursor): %w", p, from, pg.err)
		}
		items, err := n.transferWrites(pg.rep, p, from, opts.Tenants)
		if err != nil {
			report()
			return prog, err
		}
		// Ask for the next page while this one is merged, once the rate
		// cap allows the bytes just received. The last page is accounted
		// too: with the shared limiter the node's next pull waits for it.
		d, err := lim.wait(ctx, pg.size)
		throttled += d
		if err != nil {
			report()
			return prog, err
		}
		if pg.rep.Cursor != nil {
			next = ask(pg.rep.Cursor)
		}
		j := &localWrite{items: items, metaKey: key, metaValue: pg.rep.Cursor}
		if stageAt != 0 {
			j.stageAt, j.staged = stageAt, stagedRecs(p, items, pg.rep)
		}
		if err := n.submit(ctx, j); err != nil {
			report()
			return prog, err
		}
		if j.stageErr != nil {
			report()
			return prog, fmt.Errorf("storage: pull partition %d from %s: %w", p, from, j.stageErr)
		}
		skipped := 0
		for i := range j.results {
			switch r := &j.results[i]; r.Err {
			case "":
			case errPolicy:
				skipped++
				n.log.Warn("transfer: record not merged", "partition", p, "from", from, "tenant", items[i].Tenant, "key", items[i].Key, "err", r.Err)
			default:
				report()
				return prog, fmt.Errorf("storage: pull partition %d from %s: merge %s/%q: %s", p, from, items[i].Tenant, items[i].Key, r.Err)
			}
		}
		if j.persistErr != nil {
			report()
			return prog, fmt.Errorf("storage: pull partition %d from %s: persist cursor: %w", p, from, j.persistErr)
		}
		prog.Pages++
		prog.Records += int64(len(items) - skipped)
		prog.Skipped += int64(skipped)
		prog.Bytes += int64(pg.size)
		prog.Cursor = pg.rep.Cursor
		prog.Done = pg.rep.Cursor == nil
		report()
		if opts.Progress != nil {
			opts.Progress(prog)
		}
		if prog.Done {
			return prog, nil
		}
	}
}

// transferWrites turns a page into merges, refusing records that are not
// of partition p or whose state does not decode.
func (n *Node) transferWrites(rep *subjects.PartitionScanReply, p uint32, from string, tenants []string) ([]subjects.NodeWrite, error) {
	items := make([]subjects.NodeWrite, len(rep.Records))
	for i, r := range rep.Records {
		if ring.Partition(r.Tenant, r.Key, n.eng.q) != p || subjects.ValidateTenantID(r.Tenant) != nil || r.Key == "" {
			return nil, fmt.Errorf("storage: pull partition %d from %s: it sent %q/%q, not a key of the partition", p, from, r.Tenant, r.Key)
		}
		if _, asked := slices.BinarySearch(tenants, r.Tenant); len(tenants) > 0 && !asked {
			return nil, fmt.Errorf("storage: pull partition %d from %s: it sent %q/%q, of a tenant not asked for", p, from, r.Tenant, r.Key)
		}
		rec, err := decodeRecordCopy(r.State, false) // values alias the page, kept until merged
		if err != nil || (rec.LWW == nil) == (rec.DVV == nil) {
			return nil, fmt.Errorf("storage: pull partition %d from %s: bad state of %s/%q: %v", p, from, r.Tenant, r.Key, err)
		}
		items[i] = subjects.NodeWrite{ID: uint64(i), Tenant: r.Tenant, Key: r.Key, LWW: rec.LWW, DVV: rec.DVV}
	}
	if rep.Cursor != nil {
		if err := checkCursor(rep.Cursor, p, n.eng.q); err != nil {
			return nil, fmt.Errorf("storage: pull partition %d from %s: %w", p, from, err)
		}
	}
	return items, nil
}

// stagedRecs pairs each of a page's records with its Pebble key (in one
// buffer) and its state as sent; items are the page's records decoded.
func stagedRecs(p uint32, items []subjects.NodeWrite, rep *subjects.PartitionScanReply) []stagedRec {
	size := 0
	for i := range items {
		size += partitionPrefixLen + len(items[i].Tenant) + 1 + len(items[i].Key)
	}
	buf := make([]byte, 0, size)
	recs := make([]stagedRec, len(items))
	for i := range items {
		start := len(buf)
		buf = appendDataKey(buf, p, items[i].Tenant, items[i].Key)
		recs[i] = stagedRec{key: buf[start:len(buf):len(buf)], state: rep.Records[i].State, bound: boundOf(items[i].LWW)}
	}
	return recs
}

// limiter paces transfers to rate bytes per second: after b more bytes
// the next request waits until every byte so far fits the rate since the
// start, so B bytes take at least (B - the last page)/rate -
// limiterCredit. Time spent slower than the rate earns credit up to
// limiterCredit, so a pause (the receiver's write loop flushing its
// stage, a partition's setup) is made up by a burst of at most
// limiterCredit × rate: without it, a transfer capped at 52 MiB/s
// averaged 45–47 MB/s (docs/PERFORMANCE.md, "Pulled records go in as
// tables"). It is safe for concurrent use: a node shares one among all its pulls
// (Config.TransferRate caps them together), so the cap holds also for
// many small pulls, each of one page, that would never wait on a limiter
// of their own.
type limiter struct {
	rate float64 // bytes per second; <= 0: none
	mu   sync.Mutex
	next time.Time // guarded by mu
}

// limiterCredit is the most time a limiter makes up after its pulls were
// slower than its rate.
const limiterCredit = 250 * time.Millisecond

func newLimiter(rate int64, now time.Time) *limiter {
	return &limiter{rate: float64(rate), next: now}
}

// wait accounts b bytes just received and blocks until they fit the rate;
// it returns how long it held the caller back.
func (l *limiter) wait(ctx context.Context, b int) (time.Duration, error) {
	if l == nil || l.rate <= 0 {
		return 0, nil
	}
	now := time.Now()
	l.mu.Lock()
	if floor := now.Add(-limiterCredit); l.next.Before(floor) {
		l.next = floor
	}
	l.next = l.next.Add(time.Duration(float64(b) / l.rate * float64(time.Second)))
	d := l.next.Sub(now)
	l.mu.Unlock()
	if d <= 0 {
		return 0, nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return d, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}
