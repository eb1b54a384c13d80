package storage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/hashtree"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
)

// The transfer loop (issue 14, spec §5): a node that is a receiver of a
// moving partition (ring.Map.Receiving) pulls it from every reachable
// current owner (only the tenants it needs, each from the owners within
// the tenant's RF: tenants.go), merging, then reports it done on
// kv.v1.admin.node.transfer;
// when every receiver of a partition is done the coordinators flip it. The
// loop is one goroutine owned by the Node: it runs a plan for the map it
// has, restarts the plan when a new map changes what it must pull (the
// persisted cursors make a restart cheap), and stops with the node.

const (
	// xferWorkers is how many partitions are pulled at once. A pull of a
	// small partition is a few round trips, so more than two keep the
	// link busy; the rate cap (the node's one limiter) is shared by all.
	xferWorkers = 4
	// xferTries is how many times a source is asked before it is skipped
	// as down for this round.
	xferTries = 3
	// Done partitions are reported every reportEvery or reportBatch of
	// them, whichever comes first.
	reportEvery = time.Second
	reportBatch = 64
	// rateWindow is the span TransferStatus.RateBytes is measured over.
	rateWindow = 10 * time.Second
)

// xferState is what the transfer loop shares with the heartbeat and
// install: progress, and the partitions pulled to their end but not yet
// acknowledged by a map that no longer lists them as receiving.
type xferState struct {
	mu      sync.Mutex
	status  *subjects.TransferStatus // last figures; nil before any transfer
	samples []rateSample             // bytes received over the last rateWindow
	// done holds the partitions this node pulled to their end from every
	// reachable source, with their since in the map pulled under; install
	// forgets those the node stops owning. A later plan reports one
	// without pulling while its since is unchanged (ring.Map.StillCurrent:
	// a report speaks only for rows that did not change after its map).
	done map[uint32]uint64
	// reconciled counts the (partition, source) pairs reconciled by a
	// hash-tree exchange instead of pulled (pullOrReconcile).
	reconciled atomic.Int64
}

type rateSample struct {
	at    time.Time
	bytes int64
}

// TransferStatus returns a copy of the node's progress receiving
// partitions, with HandoffDone once its handoff finished (handoffLoop);
// nil when it never received any and its handoff is not done. The
// heartbeat carries it.
func (n *Node) TransferStatus() *subjects.TransferStatus {
	total, done := n.rebuildStatus()
	hd := n.handoffDone.Load()
	s := &n.xfer
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		if hd == 0 && total == 0 {
			return nil
		}
		return &subjects.TransferStatus{HandoffDone: hd, RebuildTotal: total, RebuildDone: done, Updated: time.Now()}
	}
	st := *s.status
	st.RateBytes = s.rateLocked(time.Now())
	st.HandoffDone = hd
	st.RebuildTotal, st.RebuildDone = total, done
	return &st
}

// rateLocked is the bytes per second received over the last rateWindow,
// counted over at least rateMinSpan: the first page of a transfer, a few
// milliseconds after its start, is not a rate (it read as hundreds of
// MB/s in node list).
func (s *xferState) rateLocked(now time.Time) float64 {
	s.trimLocked(now)
	if len(s.samples) < 2 {
		return 0
	}
	first, last := s.samples[0], s.samples[len(s.samples)-1]
	d := max(now.Sub(first.at), rateMinSpan).Seconds()
	return float64(last.bytes-first.bytes) / d
}

// rateMinSpan is the shortest span a transfer rate is counted over.
const rateMinSpan = time.Second

// begin starts the figures of a new transition at now; the rate counts
// from now, so the first page received counts too.
func (s *xferState) begin(now time.Time) {
	s.status = &subjects.TransferStatus{}
	s.samples = []rateSample{{at: now}}
}

// record adds bytes and keys received at now.
func (s *xferState) record(now time.Time, bytes, keys int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		return
	}
	s.status.Bytes += bytes
	s.status.Keys += keys
	s.status.Updated = now
	s.samples = append(s.samples, rateSample{at: now, bytes: s.status.Bytes})
	s.trimLocked(now)
}

func (s *xferState) trimLocked(now time.Time) {
	i := 0
	for i < len(s.samples)-1 && now.Sub(s.samples[i].at) > rateWindow {
		i++
	}
	s.samples = s.samples[i:]
}

// forgetDone drops the done marks of the partitions the node no longer
// owns: it misses their writes from now on, so a later transfer of one
// must pull it again. Called by install, on the write loop.
func (s *xferState) forgetDone(owned func(p uint32) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.done {
		if !owned(p) {
			delete(s.done, p)
		}
	}
}

func (s *xferState) isDone(p uint32, since uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	at, ok := s.done[p]
	return ok && at == since
}

// plan is one run of the transfer loop over one map.
type plan struct {
	m     *ring.Map
	parts []uint32 // m.Receiving(self)
	// down holds the sources that nobody served (replica.ErrNodeDown)
	// through xferTries tries: skipped for the rest of the plan, asked
	// again by the next one.
	down    sync.Map
	tenants planTenants // tenants.go
	// barrierMu holds a *sync.Mutex per source: one barrier scan per
	// source and plan (barrier).
	barrierMu sync.Map
}

// transferLoop runs plans until ctx ends: one for each map that changes
// what to pull, and again after a plan that did not finish (a second
// later, doubling while it keeps failing).
func (n *Node) transferLoop(ctx context.Context) {
	backoff := time.Second // before retrying a plan that did not finish; doubles to 30s
	for {
		var retry <-chan time.Time
		if m := n.pmap.Load(); m != nil {
			pl := &plan{m: m, parts: m.Receiving(n.cfg.NodeID, nil)}
			switch n.runPlanUntilChanged(ctx, pl) {
			case planStopped:
				return
			case planChanged:
				backoff = time.Second
				continue
			case planIncomplete:
				retry = time.After(backoff)
				backoff = min(2*backoff, 30*time.Second)
			case planComplete:
				backoff = time.Second
				if cur := n.pmap.Load(); len(cur.Receiving(n.cfg.NodeID, nil)) > 0 {
					// The coordinators did not mark everything reported
					// (its rows changed after the map it was pulled under):
					// look again, in case no newer map arrives to say so.
					retry = time.After(5 * time.Second)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-n.xferKick:
		case <-retry:
		}
	}
}

type planEnd int

const (
	planComplete   planEnd = iota // every partition pulled and reported
	planIncomplete                // some partition had no source, or a report failed
	planChanged                   // a new map changed what to pull
	planStopped                   // the node is stopping
)

// runPlanUntilChanged runs pl until it ends, a map arrives that changes
// it, or ctx ends.
func (n *Node) runPlanUntilChanged(ctx context.Context, pl *plan) planEnd {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	finished := make(chan bool, 1)
	go func() { finished <- n.runPlan(pctx, pl) }()
	for {
		select {
		case ok := <-finished:
			switch {
			case ctx.Err() != nil:
				return planStopped
			case ok:
				return planComplete
			}
			return planIncomplete
		case <-ctx.Done():
			cancel()
			<-finished
			return planStopped
		case <-n.xferKick:
			if m := n.pmap.Load(); m != nil && n.samePlan(pl, m) {
				continue // nothing to pull changed: keep going
			}
			cancel()
			<-finished
			if ctx.Err() != nil {
				return planStopped
			}
			return planChanged
		}
	}
}

// samePlan reports whether the plan for map next would pull nothing that
// pl does not already pull, from the same sources: every partition next
// has the node receive is done here or in pl with the same since and
// current owners.
func (n *Node) samePlan(pl *plan, next *ring.Map) bool {
	var a, b []string
	for _, p := range next.Receiving(n.cfg.NodeID, nil) {
		if n.xfer.isDone(p, next.Since(p)) {
			continue
		}
		if _, ok := slices.BinarySearch(pl.parts, p); !ok || next.Since(p) != pl.m.Since(p) {
			return false
		}
		a, b = pl.m.Owners(p, a[:0]), next.Owners(p, b[:0])
		if !slices.Equal(a, b) {
			return false
		}
	}
	return true
}

// runPlan pulls pl's partitions, xferWorkers at a time, and reports them
// done in batches. It returns true once every one is pulled and reported.
func (n *Node) runPlan(ctx context.Context, pl *plan) bool {
	n.startStatus(pl)
	if len(pl.parts) == 0 {
		return true
	}
	// Pages of partitions left unfinished are merged too, so the cursors
	// persisted with them spare the next round their pull.
	defer func() { _ = n.flushStaged(context.Background()) }()
	n.refreshTenants(ctx) // each plan starts from the tenants as they are now
	// Partitions that need no tenant go last: by then the sources have
	// answered other partitions' scans, and the list they are checked
	// against was asked for after that (planTenants).
	order := n.needyFirst(pl)
	n.log.Info("receiving partitions", "map_version", pl.m.Version(), "partitions", len(pl.parts))
	todo := make(chan uint32)
	doneCh := make(chan uint32, len(pl.parts))
	var wg sync.WaitGroup
	for range xferWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range todo {
				if n.receivePartition(ctx, pl, p) {
					doneCh <- p
				}
			}
		}()
	}
	go func() {
		defer close(todo)
		for _, p := range order {
			select {
			case todo <- p:
			case <-ctx.Done():
				return
			}
		}
	}()
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()

	// Report as partitions finish; the reporter is this goroutine.
	var pending []uint32
	reported := 0
	tick := time.NewTicker(reportEvery)
	defer tick.Stop()
	flush := func() {
		// The partitions' records are in the store before the report
		// says so; those a failed bulk merge lost are pulled again.
		// While pulls run, the stage is flushed once it is due
		// (stageDue), also with nothing to report, so the cursors of
		// long pulls persist as they go.
		err := n.flushStaged(ctx)
		pending = n.takeLost(pending)
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("transfer: merging pulled records failed; retrying", "err", err)
			}
			return
		}
		if len(pending) == 0 {
			return
		}
		if err := n.reportDone(ctx, pl.m, pending); err != nil {
			if ctx.Err() == nil {
				n.log.Warn("transfer report failed; retrying", "partitions", len(pending), "err", err)
			}
			return
		}
		reported += len(pending)
		pending = pending[:0]
	}
	working := true
	for working || len(doneCh) > 0 {
		select {
		case p := <-doneCh:
			pending = append(pending, p)
			if len(pending) >= reportBatch && n.stageDue(time.Now()) {
				flush()
			}
		case <-tick.C:
			if n.stageDue(time.Now()) {
				flush()
			}
		case <-workersDone:
			working = false
			workersDone = nil
		}
	}
	for len(pending) > 0 && ctx.Err() == nil {
		flush()
		if len(pending) > 0 {
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}
	return ctx.Err() == nil && reported == len(pl.parts)
}

// receivePartition pulls p from the current owners of m but this node:
// for each tenant it needs (pullPlan), from every current owner within the
// tenant's RF; every tenant when the replication factors are unknown. A
// source that fails xferTries times in a row is skipped. When a source
// answered for the first time, the tenant list is asked for again and the
// tenants it adds are pulled too (planTenants). It reports whether every
// needed tenant was pulled to the end from coverage(RF) of its current
// owners (the node counts when it is one: it holds its own writes; with
// no tenant list, coverage(r) of the first r owners for every r up to
// the row's length);
// otherwise the partition is retried next round. A partition that needs
// no tenant is done once each of its current owners (but those known
// down) answered a barrier scan at m's version and the tenant list asked
// for after that still names no tenant it needs.
func (n *Node) receivePartition(ctx context.Context, pl *plan, p uint32) bool {
	m := pl.m
	if n.xfer.isDone(p, m.Since(p)) {
		return true
	}
	n.clearLost(p) // pulls of p from here on are staged anew
	var owners []string
	for _, o := range m.Owners(p, nil) {
		if o != n.cfg.NodeID {
			owners = append(owners, o)
		}
	}
	pulled := map[string]map[string]bool{} // source → tenants pulled to the end; "" = all
	failed := map[string]bool{}            // sources skipped after their tries
	var (
		needed []string
		rf     map[string]int // the tenant list of the last round; nil: unknown
		// settled: every owner was down or confirmed before rf was asked for
		settled bool
	)
	genDone := false
	const maxRounds = 4 // a round per newer tenant list; more only under a storm of tenant changes
	for round := 0; round < maxRounds; round++ {
		rf, settled = n.tenantRF(ctx, pl, owners)
		var sources []pullSource
		sources, needed = pullPlan(m, p, n.cfg.NodeID, rf)
		if rf != nil && len(needed) == 0 {
			if settled {
				break // and rf names no tenant it needs
			}
			// Nothing to pull under this list; but a tenant created
			// meanwhile may be on a source that has not installed m. A
			// barrier scan confirms each source, and the next round's
			// list (asked after it) re-plans the partition.
			if err := n.barriers(ctx, pl, owners, p); err != nil {
				if ctx.Err() == nil {
					n.log.Warn("transfer: barrier scan failed; retrying next round", "partition", p, "err", err)
				}
				return false
			}
			continue
		}
		// A tenant whose leavers all gave it whole needs nothing of its
		// other owners but the fence: those are confirmed by a barrier
		// scan instead of a reconcile (a tree of each side). While a
		// leaver is down or failed, the tenant is taken from the others
		// to coverage, as a tenant without leavers is.
		lv := leavers(m, p, rf, needed)
		work := false
		for _, src := range leaversFirst(sources, lv) {
			ts, ok := notPulled(src.tenants, pulled[src.node])
			if _, down := pl.down.Load(src.node); !ok || down || failed[src.node] {
				continue
			}
			if lv != nil { // then ts names tenants (nil ts: all, lv nil)
				ts = slices.DeleteFunc(ts, func(t string) bool { return fromLeavers(t, lv, pulled) })
			}
			if lv != nil && len(ts) == 0 {
				if err := n.barrier(ctx, pl, src.node, p); err != nil {
					if ctx.Err() == nil {
						n.log.Warn("transfer: barrier scan failed; retrying next round", "partition", p, "from", src.node, "err", err)
					}
					return false
				}
				continue
			}
			if !genDone {
				if err := n.transferGeneration(ctx, p, m.Since(p)); err != nil {
					if ctx.Err() == nil {
						n.log.Warn("transfer: partition generation", "partition", p, "err", err)
					}
					return false
				}
				genDone = true
			}
			work = true
			err := n.pullOrReconcile(ctx, src.node, p, m.Version(), ts, pulled, false)
			if ctx.Err() != nil {
				return false
			}
			if err != nil {
				down := errors.Is(err, replica.ErrNodeDown)
				if down {
					pl.down.Store(src.node, true)
				}
				failed[src.node] = true
				n.log.Warn("transfer: skipping a source after retries", "partition", p, "from", src.node, "down", down, "err", err)
				continue
			}
			pl.confirm(src.node)
			if pulled[src.node] == nil {
				pulled[src.node] = map[string]bool{}
			}
			if ts == nil {
				pulled[src.node][""] = true
			}
			for _, t := range ts {
				pulled[src.node][t] = true
			}
		}
		if !work {
			break
		}
	}
	if rf != nil && len(needed) == 0 && !settled {
		return false // the rounds ran out before the list after the barriers: next round
	}
	// Covered: pulled to the end from enough of the tenant's current
	// owners that every write quorum among them meets them (coverage).
	cur := m.Owners(p, nil)
	have := func(t string, members []string) int {
		k := 0
		for _, o := range members {
			if got := pulled[o]; o == n.cfg.NodeID || got[""] || got[t] {
				k++ // this node holds its own writes
			}
		}
		return k
	}
	if rf == nil {
		// Any tenant may have any RF up to the row's length: cover the
		// first r owners for every r, so a tenant of RF 1 (on cur[0]
		// alone) or 2 is covered too, not only one of RF R.
		for r := 1; r <= len(cur); r++ {
			if need := coverage(r, r); have("", cur[:r]) < need {
				n.log.Info("transfer: partition lacks sources; retrying next round", "partition", p, "pulled", have("", cur[:r]), "need", need, "of", cur[:r])
				return false
			}
		}
	}
	lv := leavers(m, p, rf, needed)
	for _, t := range needed {
		if fromLeavers(t, lv, pulled) {
			continue // leavers: every write the target owners would lack
		}
		members := cur[:min(rf[t], len(cur))]
		if need := coverage(rf[t], len(members)); have(t, members) < need {
			n.log.Info("transfer: tenant lacks sources; retrying next round", "partition", p, "tenant", t, "pulled", have(t, members), "need", need, "of", members)
			return false
		}
	}
	n.markReceived(p, m.Since(p))
	return true
}

// coverage is how many of a tenant's current owners (members of them, at
// most) a receiver must pull it from, to the end, before the partition
// counts as received: rf - quorum(rf) + 1, so that every quorum of rf
// owners that acknowledged a write includes one of them. It assumes
// writes at consistency quorum (or all): a write acknowledged at one by a
// single owner is guaranteed only when every owner answered. With rf 3
// a receiver needs 2 owners: replace, or remove --force, with one current
// owner dead still finishes; with 2 of 3 dead the partition waits. A row
// shorter than rf needs all of them up to that count, 2 of 2 for rf 3:
// fewer would do for a row that only grew (each of its quorum writes had
// quorum(rf) acks among its members), but a row that shrank (remove
// --force of a third owner) may hold a quorum write on one member only.
// Without a tenant list every RF up to the row's length R is possible:
// receivePartition then asks coverage(r, r) of the first r owners for
// every r in 1..R (current[0] itself for r = 1), not only ceil(R/2) of R.
func coverage(rf, members int) int {
	return min(rf-(rf/2+1)+1, members)
}

// barriers confirms each of owners (other than this node) that pl has
// not confirmed and that is not known down with one barrier scan at pl's
// map version, once per source per plan. It fails when a source answered
// none of its tries for a reason other than being down.
func (n *Node) barriers(ctx context.Context, pl *plan, owners []string, p uint32) error {
	for _, o := range owners {
		if err := n.barrier(ctx, pl, o, p); err != nil {
			return err
		}
	}
	return nil
}

// barrier confirms src with a scan of partition p at pl's map version,
// asking for one record: the source answers only once it installed the
// map (map_behind is retried), and from then on every write it accepts
// comes from a coordinator that also sends it to this node.
func (n *Node) barrier(ctx context.Context, pl *plan, src string, p uint32) error {
	if src == n.cfg.NodeID {
		return nil
	}
	mu, _ := pl.barrierMu.LoadOrStore(src, &sync.Mutex{})
	mu.(*sync.Mutex).Lock() // one barrier per source: workers wait for it
	defer mu.(*sync.Mutex).Unlock()
	if _, down := pl.down.Load(src); down || pl.isConfirmed(src) {
		return nil
	}
	rc, err := n.client()
	if err != nil {
		return err
	}
	for try := range xferTries {
		err = n.barrierScan(ctx, rc, src, p, pl.m.Version())
		if err == nil {
			pl.confirm(src)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if try < xferTries-1 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(200*(try+1)) * time.Millisecond):
			}
		}
	}
	if errors.Is(err, replica.ErrNodeDown) {
		pl.down.Store(src, true)
		n.log.Warn("transfer: skipping a source that is down", "from", src, "err", err)
		return nil
	}
	return fmt.Errorf("storage: barrier scan of %s at map version %d: %w", src, pl.m.Version(), err)
}

// barrierScan asks src for one record of p at map version v, retrying
// map_behind for up to 10s.
func (n *Node) barrierScan(ctx context.Context, rc *replica.Client, src string, p uint32, v uint64) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		_, _, err := rc.ScanPartition(rctx, src, subjects.PartitionScan{Partitions: n.eng.q, Partition: p, Limit: 1, MapVersion: v})
		if !errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) {
			return err
		}
		select {
		case <-time.After(wait):
		case <-rctx.Done():
			return err
		}
	}
}

// notPulled returns the tenants of want not in got (nil want: all, unless
// got has all) and whether anything is left to pull.
func notPulled(want []string, got map[string]bool) ([]string, bool) {
	if got[""] {
		return nil, false
	}
	if want == nil {
		return nil, true
	}
	var left []string
	for _, t := range want {
		if !got[t] {
			left = append(left, t)
		}
	}
	return left, len(left) > 0
}

// pullOrReconcile makes this node hold every record of p's tenants
// (nil: all) that src holds, as pulling them to the end would. The
// tenants another source already gave this node (pulled: source →
// tenants, "" = all) are reconciled with src by a hash-tree exchange
// (reconcile): a tree of each side and only the records that differ,
// instead of the whole partition again; the others, and every tenant
// when the list is unknown (ts nil: an exchange names its tenants), are
// pulled. A reconcile that fails for any reason falls back to pulling
// those tenants, also when nobody answered it: a source of a release
// without the ae op has no responder there, yet answers scans (a source
// that is down fails the pull too, which marks it down).
func (n *Node) pullOrReconcile(ctx context.Context, src string, p uint32, version uint64, ts []string, pulled map[string]map[string]bool, rebuild bool) error {
	var full, recon []string
	for _, t := range ts {
		based := false
		for o, got := range pulled {
			if o != src && (got[""] || got[t]) {
				based = true
				break
			}
		}
		if based {
			recon = append(recon, t)
		} else {
			full = append(full, t)
		}
	}
	if len(recon) > 0 {
		err := n.reconcileTries(ctx, src, p, version, recon)
		switch {
		case err == nil:
			n.xfer.reconciled.Add(1)
		case ctx.Err() != nil:
			return err
		default:
			lvl := slog.LevelInfo
			if errors.Is(err, replica.ErrNodeDown) {
				lvl = slog.LevelDebug // no responder: an older source, or one down (the pull tells)
			}
			n.log.Log(ctx, lvl, "transfer: reconcile failed; pulling the partition instead", "partition", p, "from", src, "err", err)
			full = append(full, recon...)
			slices.Sort(full)
		}
	}
	if ts != nil && len(full) == 0 {
		return nil
	}
	return n.pullTries(ctx, src, p, version, full, rebuild)
}

// reconcileTries is reconcile, tried again (up to xferTries times) when
// src no longer holds the tree it answered the roots with (it changed
// meanwhile: KindConflict).
func (n *Node) reconcileTries(ctx context.Context, src string, p uint32, version uint64, tenants []string) error {
	var err error
	for range xferTries {
		err = n.reconcile(ctx, src, p, version, tenants)
		if !errors.Is(err, &subjects.Error{Kind: subjects.KindConflict}) {
			return err
		}
	}
	return err
}

// reconcile fetches from src, a current owner of p at map version
// version, every record of p's tenants (sorted, not empty) that src
// holds and this node does not hold identically, and merges them (LWW
// max, DVV sync: never overwritten), by the anti-entropy exchange
// (subjects.AERequest with Transfer): this node's tree, src's root at
// version (fenced as a scan is: map_behind is retried), and when the
// roots differ the differing buckets, their keys and the records. Once
// it returns nil this node holds every record src held when it answered
// the roots, or a merge of it with newer versions; writes src accepts
// after that come from coordinators that also send them here (the fence).
// It fetches only: src needs nothing of a receiver.
func (n *Node) reconcile(ctx context.Context, src string, p uint32, version uint64, tenants []string) error {
	// This side's tree is built for the exchange and dropped after it:
	// not cached, as anti-entropy's are, since a receiver has no use for
	// it once the partition is in (the source's is cached: the exchange
	// descends it by its root).
	// Records pulled from another source wait in the stage: merged
	// first, they are not asked of src again.
	if err := n.flushStaged(ctx); err != nil {
		return fmt.Errorf("storage: reconcile partition %d with %s: %w", p, src, err)
	}
	cfg := aeConfig(0)
	t, err := n.buildTree(ctx, p, tenants, cfg, true)
	if err == nil && t.Len() >= aeDeepKeys {
		cfg = aeConfig(t.Len())
		t, err = n.buildTree(ctx, p, tenants, cfg, true)
	}
	if err != nil {
		return fmt.Errorf("storage: reconcile partition %d with %s: %w", p, src, err)
	}
	local := &aeTree{t: t}
	base := subjects.AERequest{
		Partitions: n.eng.q, MapVersion: version, Tenants: tenants, Transfer: true,
		Config: subjects.AEConfig{FanOut: cfg.FanOut, Depth: cfg.Depth},
	}
	roots := base
	roots.Op, roots.Parts = subjects.AEOpRoots, []uint32{p}
	var rep *subjects.AEReply
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		rep, err = n.aeCall(rctx, src, &roots)
		if !errors.Is(err, &subjects.Error{Kind: subjects.KindMapBehind}) {
			break
		}
		select { // src is loading the map: ask again
		case <-time.After(wait):
		case <-rctx.Done():
			return fmt.Errorf("storage: reconcile partition %d with %s: %w", p, src, err)
		}
	}
	if err != nil {
		return fmt.Errorf("storage: reconcile partition %d with %s: %w", p, src, err)
	}
	if len(rep.Hashes) != 1 {
		return fmt.Errorf("storage: reconcile partition %d with %s: %d roots for 1 partition", p, src, len(rep.Hashes))
	}
	remote := hashtree.Hash(rep.Hashes[0])
	if remote == local.root() {
		return nil
	}
	req := base
	req.Partition = p
	task := &aeTask{p: p, peer: src, tenants: tenants, cfg: cfg, local: local, xfer: true}
	if _, err := n.aeExchange(ctx, task, req, remote); err != nil {
		return fmt.Errorf("storage: reconcile partition %d with %s: %w", p, src, err)
	}
	return nil
}

// pullTries pulls p from src (tenants: nil for all), trying xferTries
// times.
func (n *Node) pullTries(ctx context.Context, src string, p uint32, version uint64, tenants []string, rebuild bool) error {
	var err error
	for try := range xferTries {
		var last TransferProgress
		_, err = n.PullPartition(ctx, src, p, TransferOptions{
			MapVersion: version, Tenants: tenants, Rebuild: rebuild, // Rate 0: the node's shared cap
			stage: !rebuild, // a rebuilding node serves the partition: its records go in at once
			Progress: func(pr TransferProgress) {
				n.addProgress(pr.Bytes-last.Bytes, pr.Records-last.Records)
				last = pr
			},
		})
		if err == nil || ctx.Err() != nil || try == xferTries-1 {
			return err
		}
		n.log.Debug("transfer: pull failed", "partition", p, "from", src, "try", try+1, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(200*(try+1)) * time.Millisecond):
		}
	}
	return err
}

// markReceived records p as pulled to its end under since.
func (n *Node) markReceived(p uint32, since uint64) {
	n.xfer.mu.Lock()
	if n.xfer.done == nil {
		n.xfer.done = map[uint32]uint64{}
	}
	n.xfer.done[p] = since
	n.xfer.mu.Unlock()
	n.metrics.TransferPartition()
}

// unmarkReceived forgets that p was pulled to its end (its records were
// lost: stage.go).
func (n *Node) unmarkReceived(p uint32) {
	n.xfer.mu.Lock()
	delete(n.xfer.done, p)
	n.xfer.mu.Unlock()
}

// startStatus sets the figures for a new plan: the counts cover the
// partitions pl's map has this node receive, done or not; bytes and keys
// carry over while a transition goes on and start again with one that
// follows a finished one.
func (n *Node) startStatus(pl *plan) {
	total := 0
	var rs []string
	for p := range uint32(pl.m.Partitions()) {
		if !pl.m.Moving(p) {
			continue
		}
		if rs = pl.m.Receivers(p, rs[:0]); slices.Contains(rs, n.cfg.NodeID) {
			total++
		}
	}
	s := &n.xfer
	s.mu.Lock()
	defer s.mu.Unlock()
	if total == 0 {
		return // nothing to receive: the last transition's figures stay
	}
	if s.status == nil || s.status.PartitionsDone >= s.status.PartitionsTotal {
		// A new transition (the last one, if any, had finished).
		s.begin(time.Now())
	}
	s.status.MapVersion = pl.m.Version()
	s.status.PartitionsTotal = total
	s.status.PartitionsDone = total - len(pl.parts)
	s.status.Updated = time.Now()
}

func (n *Node) addProgress(bytes, keys int64) {
	n.xfer.record(time.Now(), bytes, keys)
	n.metrics.Transferred(bytes, keys)
}

// reportDone tells the coordinators that this node holds ps (pulled under
// map m) and installs the map they answer with.
func (n *Node) reportDone(ctx context.Context, m *ring.Map, ps []uint32) error {
	n.xfer.mu.Lock()
	if st := n.xfer.status; st != nil {
		st.PartitionsDone = min(st.PartitionsDone+len(ps), st.PartitionsTotal)
		st.Updated = time.Now()
	}
	n.xfer.mu.Unlock()
	rep := subjects.TransferReport{NodeID: n.cfg.NodeID, MapVersion: m.Version(), Done: slices.Clone(ps), Status: n.TransferStatus()}
	data, err := msgpack.Marshal(&rep)
	if err != nil {
		return fmt.Errorf("storage: encode transfer report: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msg, err := n.nc.RequestWithContext(rctx, subjects.AdminNodeTransfer, data)
	if err != nil {
		n.undoDone(len(ps))
		return fmt.Errorf("storage: %s: %w", subjects.AdminNodeTransfer, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		n.undoDone(len(ps))
		return fmt.Errorf("storage: %s: %w", subjects.AdminNodeTransfer, e)
	}
	var pr subjects.PlacementReply
	if err := msgpack.Unmarshal(msg.Data, &pr); err != nil {
		return fmt.Errorf("storage: decode transfer answer: %w", err)
	}
	next, err := decodePlacement(&pr)
	if err != nil {
		return nil // reported; the map loop catches up
	}
	// Installed on the write loop; this is the loop's own goroutine, not
	// the write loop, so waiting is fine.
	if err := n.offerMap(ctx, next); err != nil && ctx.Err() == nil {
		return fmt.Errorf("storage: install the map after a transfer report: %w", err)
	}
	return nil
}

func (n *Node) undoDone(k int) {
	n.xfer.mu.Lock()
	if st := n.xfer.status; st != nil {
		st.PartitionsDone = max(st.PartitionsDone-k, 0)
	}
	n.xfer.mu.Unlock()
}

// generationKey keeps, per partition, the since of the map the
// partition's persisted transfer cursors were made under: 'm' "xgen"
// partition(2 bytes).
func generationKey(p uint32) []byte {
	return []byte{nsMeta, 'x', 'g', 'e', 'n', byte(p >> 8), byte(p)}
}

// transferGeneration makes the persisted cursors of p ones made under
// since in this run of the node: when they were made under another (the
// rows changed since, and the node may have missed writes in between,
// for instance while it skipped a map that did not name it) or before the
// node last started (forgetGenerations: it missed writes while down), it
// forgets them before recording since, so the pulls start over.
func (n *Node) transferGeneration(ctx context.Context, p uint32, since uint64) error {
	n.readMu.RLock()
	if n.readsClosed {
		n.readMu.RUnlock()
		return errStopping
	}
	cur, err := n.eng.getMeta(generationKey(p))
	n.readMu.RUnlock()
	if err != nil {
		return err
	}
	want := binary.BigEndian.AppendUint64(nil, since)
	if bytes.Equal(cur, want) {
		return nil
	}
	rj := &localWrite{regen: &regenJob{p: p}}
	if err := n.submit(ctx, rj); err != nil {
		return err
	}
	if rj.regen.err != nil {
		return rj.regen.err
	}
	j := &localWrite{metaKey: generationKey(p), metaValue: want}
	if err := n.submit(ctx, j); err != nil {
		return err
	}
	return j.persistErr
}

// forgetGenerations deletes every partition's generation, so that the
// transfer loop forgets a partition's persisted cursors before its first
// pull in this run (transferGeneration). Called by start, before the
// loop runs: while the node was down the writes sent to it as a pending
// owner failed, also those to keys behind its cursors, so a restarted
// receiver pulls each partition again from its start (merges are
// idempotent). Within one run the cursors still resume a pull that a
// source failure, or a new plan, interrupted. PullPartition called
// directly keeps its cursors across restarts.
func (e *engine) forgetGenerations() error {
	lo := []byte{nsMeta, 'x', 'g', 'e', 'n'}
	hi := []byte{nsMeta, 'x', 'g', 'e', 'o'}
	opts := e.writeOpts()
	if err := e.db.DeleteRange(lo, hi, opts); err != nil {
		return fmt.Errorf("forget transfer generations: %w", err)
	}
	return nil
}

// regenJob asks the write loop to forget partition p's transfer cursors.
type regenJob struct {
	p   uint32
	err error
}
