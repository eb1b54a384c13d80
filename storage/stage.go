package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
)

// The stage: pages a transfer's pulls handed the write loop, merged in
// bulk (ingest.go) when due (below), before the transfer reports
// partitions done or reconciles one, and before a drop or a reap of a
// partition it holds records of. Each page's cursor is staged after its records and
// persisted only by the flush that merges them, so a persisted cursor
// never runs ahead of the records it covers, as without the stage.
//
// A flush that fails loses what it held: the partitions it held records
// of are marked lost (the transfer does not report them, and pulls them
// again in its next round), and the stage's generation moves on, so a
// pull still running under the old one fails at its next page instead of
// reporting a partition whose first pages are gone.

// While a transfer's pulls run, the stage is flushed once it holds
// stageFlushBytes (records and their bookkeeping: about 64 MiB of 256-byte
// records) or its first page is stageMaxAge old (stageDue), and
// when they end. Each flush ingests tables into L0 above a memtable it
// has flushed, so a flush a second kept L0 deep enough to stall writes
// at the default rate (docs/PERFORMANCE.md, "Pulled records go in as
// tables"); a partition pulled waits for it to be reported.
const (
	stageFlushBytes = 128 << 20
	stageMaxAge     = 5 * time.Second
)

// stageMaxBytes caps the records a stage holds; pages beyond it are merged
// at once, the way pages of a pull without the stage are.
const stageMaxBytes = 512 << 20

// stagedRecOverhead is about what a staged record holds besides its key
// and state: the stagedRec and its share of the page's record list (the
// page's decoded form, whose strings and slices alias the message). The
// stage counts it in its bytes.
const stagedRecOverhead = 160

// errStageLost fails a staged page of a pull begun before a flush failed.
var errStageLost = errors.New("storage: the records staged before this page were lost (a bulk merge failed); pull the partition again")

// stage is only used by the write loop, but for the generation's mirror
// (Node.stageGen) and the lost partitions.
type stage struct {
	pages [][]stagedRec // each sorted by key, of one partition
	metas []metaOp      // in the order staged
	parts map[uint32]bool
	bytes int
	gen   uint64
}

// metaOp sets key to value, or deletes it when value is nil.
type metaOp struct{ key, value []byte }

// lostParts is the set of partitions whose staged records a failed flush
// lost; the transfer checks it before reporting and clears a partition's
// mark when it starts receiving it again.
type lostParts struct {
	mu    sync.Mutex
	parts map[uint32]bool
}

// stageWrite stages j's records and cursor, or, past stageMaxBytes or for
// a page of keys the store mostly holds, merges its records at once and
// stages only the cursor. A page of a pull begun under an earlier
// generation fails with errStageLost.
func (n *Node) stageWrite(j *localWrite) {
	s := &n.stg
	if j.stageAt-1 != s.gen {
		j.stageErr = errStageLost
		return
	}
	// Past the cap, and for a page whose keys the store mostly holds (a
	// receiver pulling again after a restart: each would be merged, with
	// a read, in one long flush holding the loop), the records are
	// merged at once, between other writes, as without the stage.
	if s.bytes >= stageMaxBytes || (len(j.staged) > 0 && n.eng.holdsMany(j.staged[0].key, j.staged[len(j.staged)-1].key, len(j.staged)/4+1)) {
		j.results = n.eng.applyWritesChanged(j.items, j.changed)
		for i := range j.results {
			if err := j.results[i].Err; err != "" && err != errPolicy {
				return // the cursor stays where it was
			}
		}
	} else {
		j.results = make([]subjects.NodeWriteResult, len(j.items))
		for i := range j.items {
			j.results[i].ID = j.items[i].ID
		}
		if s.parts == nil {
			s.parts = map[uint32]bool{}
		}
		if len(j.staged) > 0 {
			s.parts[keyPartition(j.staged[0].key)] = true // a page is of one partition
		}
		for i := range j.staged {
			s.bytes += len(j.staged[i].key) + len(j.staged[i].state) + stagedRecOverhead
		}
		s.pages = append(s.pages, j.staged)
		if n.stagedSince.Load() == 0 {
			n.stagedSince.Store(time.Now().UnixNano())
		}
		n.stagedBytes.Store(int64(s.bytes))
	}
	if j.metaKey != nil {
		s.metas = append(s.metas, metaOp{j.metaKey, j.metaValue})
	}
}

// forgetStagedMeta drops the staged cursor updates of keys drop accepts:
// a write of such a key outside the stage supersedes them.
func (s *stage) forgetStagedMeta(drop func(k []byte) bool) {
	s.metas = slices.DeleteFunc(s.metas, func(m metaOp) bool { return drop(m.key) })
}

// flushStage merges the stage into the store, then persists its cursors.
// It runs on the write loop. On error it loses the stage (see above).
func (n *Node) flushStage() error {
	s := &n.stg
	if len(s.pages) == 0 && len(s.metas) == 0 {
		return nil
	}
	recs := s.sorted()
	skipped, err := n.eng.mergeStaged(recs)
	for _, w := range skipped {
		n.log.Warn("transfer: record not merged", "tenant", w.Tenant, "key", w.Key, "err", errPolicy)
	}
	if err == nil {
		err = n.eng.applyMetas(s.metas)
	}
	if err != nil {
		err = fmt.Errorf("storage: merge %d pulled records of %d partitions: %w", len(recs), len(s.parts), err)
		n.log.Error("transfer: bulk merge failed; its partitions are pulled again", "err", err)
		n.lost.mu.Lock()
		if n.lost.parts == nil {
			n.lost.parts = map[uint32]bool{}
		}
		for p := range s.parts {
			n.lost.parts[p] = true
		}
		n.lost.mu.Unlock()
		s.gen++
		n.stageGen.Store(s.gen)
	}
	*s = stage{gen: s.gen}
	n.stagedBytes.Store(0)
	n.stagedSince.Store(0)
	return err
}

// stageDue reports whether the stage is empty or due to be flushed.
func (n *Node) stageDue(now time.Time) bool {
	b := n.stagedBytes.Load()
	return b == 0 || b >= stageFlushBytes || now.Sub(time.Unix(0, n.stagedSince.Load())) >= stageMaxAge
}

// sorted returns the staged records sorted by key, in one slice. Pages
// come sorted, and a partition's pages from one pull in order, so the
// pages ordered by their first keys are usually the records in order.
func (s *stage) sorted() []stagedRec {
	pages := slices.DeleteFunc(s.pages, func(pg []stagedRec) bool { return len(pg) == 0 })
	slices.SortFunc(pages, func(a, b []stagedRec) int { return bytes.Compare(a[0].key, b[0].key) })
	total := 0
	for _, pg := range pages {
		total += len(pg)
	}
	recs := make([]stagedRec, 0, total)
	for _, pg := range pages {
		recs = append(recs, pg...)
	}
	if !slices.IsSortedFunc(recs, compareStaged) { // pages that overlap: two sources, or tenants pulled apart
		slices.SortFunc(recs, compareStaged)
	}
	return recs
}

func compareStaged(a, b stagedRec) int { return bytes.Compare(a.key, b.key) }

// applyMetas applies ops (transfer cursors: sets and deletes) in order as
// one batch.
func (e *engine) applyMetas(ops []metaOp) error {
	if len(ops) == 0 {
		return nil
	}
	b := e.db.NewBatch()
	defer b.Close()
	for _, op := range ops {
		var err error
		if op.value == nil {
			err = b.Delete(op.key, nil)
		} else {
			err = b.Set(op.key, op.value, nil)
		}
		if err != nil {
			return fmt.Errorf("write transfer cursors: %w", err)
		}
	}
	opts := e.writeOpts()
	if err := b.Commit(opts); err != nil {
		return fmt.Errorf("write transfer cursors: %w", err)
	}
	return nil
}

// flushStaged has the write loop flush the stage and waits for it.
func (n *Node) flushStaged(ctx context.Context) error {
	j := &localWrite{flush: true}
	if err := n.submit(ctx, j); err != nil {
		return err
	}
	return j.stageErr
}

// takeLost removes from ps the partitions a failed flush lost, marks them
// not received, and returns the rest.
func (n *Node) takeLost(ps []uint32) []uint32 {
	n.lost.mu.Lock()
	defer n.lost.mu.Unlock()
	if len(n.lost.parts) == 0 {
		return ps
	}
	out := ps[:0]
	for _, p := range ps {
		if n.lost.parts[p] {
			n.unmarkReceived(p)
			continue
		}
		out = append(out, p)
	}
	return out
}

// clearLost forgets that a flush lost p's records: a new pull of p
// starts from the cursor persisted with what was merged.
func (n *Node) clearLost(p uint32) {
	n.lost.mu.Lock()
	delete(n.lost.parts, p)
	n.lost.mu.Unlock()
}
