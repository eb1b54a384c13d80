package coordinator

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// RepairPublisher takes repair requests to the repair stream;
// *repair.Publisher is the implementation. Publish must not block: it
// reports false when it had to drop the request.
type RepairPublisher interface {
	Publish(subjects.RepairRequest) bool
}

// ReplicaVersion is what one primary answered to a read: the version it
// holds, or nil when it holds nothing for the key.
type ReplicaVersion struct {
	Node string
	LWW  *vclock.Version // lww
	DVV  *vclock.DVVSet  // siblings
}

// DetectConflicts merges the replies of a read and names the replicas that
// lack the merge: those that hold nothing or a smaller version. ok is false
// when no replica holds anything, so there is nothing to repair. stale is
// in the order of replies. DetectConflicts is pure.
func DetectConflicts(replies []ReplicaVersion) (merged vclock.Version, stale []string, ok bool) {
	for _, r := range replies {
		if r.LWW != nil {
			merged, ok = vclock.Merge(merged, *r.LWW), true
		}
	}
	if !ok || merged.Dot.IsZero() {
		return vclock.Version{}, nil, false
	}
	for _, r := range replies {
		if (r.LWW == nil || vclock.Compare(*r.LWW, merged) != 0) && !slices.Contains(stale, r.Node) {
			stale = append(stale, r.Node)
		}
	}
	return merged, stale, true
}

// RepairStats counts what a coordinator asked to repair since it started.
type RepairStats struct {
	ReadRepairs uint64 // read repairs published (one per key and read)
	Hints       uint64 // hints published (one per write that missed primaries)
	Dropped     uint64 // requests the publisher refused (see its own counters for later losses)
}

// ConflictService finds replicas that need repair and asks for it: read
// repair after reads, hinted handoff after writes. It runs after the client
// has its reply and never delays it.
type ConflictService struct {
	pub   RepairPublisher
	actor string
	log   *slog.Logger

	reads, hints, dropped atomic.Uint64
}

func newConflictService(pub RepairPublisher, actor string, log *slog.Logger) *ConflictService {
	return &ConflictService{pub: pub, actor: actor, log: log}
}

// TriggerRepair publishes a request to merge v into key of tenant on
// targets. The publisher adds the Nats-Msg-Id that de-duplicates it.
func (s *ConflictService) TriggerRepair(tenant, key string, v vclock.Version, targets []string, reason string) bool {
	return s.trigger(subjects.RepairRequest{Tenant: tenant, Key: key, LWW: &v, Targets: targets, Reason: reason})
}

// TriggerRepairDVV is TriggerRepair for the siblings policy: targets merge
// the state st (DVVSet sync).
func (s *ConflictService) TriggerRepairDVV(tenant, key string, st vclock.DVVSet, targets []string, reason string) bool {
	return s.trigger(subjects.RepairRequest{Tenant: tenant, Key: key, DVV: &st, Targets: targets, Reason: reason})
}

func (s *ConflictService) trigger(req subjects.RepairRequest) bool {
	req.Coordinator = s.actor
	reason := req.Reason
	ok := s.pub.Publish(req)
	switch {
	case !ok:
		s.dropped.Add(1)
	case reason == subjects.RepairReasonHint:
		s.hints.Add(1)
	default:
		s.reads.Add(1)
	}
	return ok
}

// Stats returns the service's counters.
func (s *ConflictService) Stats() RepairStats {
	return RepairStats{ReadRepairs: s.reads.Load(), Hints: s.hints.Load(), Dropped: s.dropped.Load()}
}

// RepairStats returns the coordinator's repair counters; zero when repair
// is disabled.
func (c *Coordinator) RepairStats() RepairStats {
	if c.repair == nil {
		return RepairStats{}
	}
	return c.repair.Stats()
}

// after runs the request's tail work, if any, once the client has its
// reply.
func (r *dataRequest) runAfter() {
	if r.after != nil {
		r.after()
	}
}

// collectRest feeds each up to n more outcomes of cl, until they arrived,
// HintWindow passed, or ctx ended (the replica client drops items whose request
// gave up, so nothing arrives after that).
func (c *Coordinator) collectRest(ctx context.Context, cl *replica.Call, n int, each func(replica.Outcome)) {
	if n <= 0 {
		return
	}
	timer := time.NewTimer(c.cfg.HintWindow)
	defer timer.Stop()
	for ; n > 0; n-- {
		select {
		case o := <-cl.Outcomes():
			each(o)
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// repairRead waits for the primaries that had not answered a read, then
// asks to repair the ones that lack the merge. Replicas that failed or did
// not answer are not targets: they may hold anything, and a primary that
// missed a write is hinted by the write. Only current owners are targets:
// a receiver of a moving partition that a joint read asked gets the key
// from its pull (and the writes forwarded to it), and one still pulling
// lacks most keys.
func (c *Coordinator) repairRead(ctx context.Context, cl *replica.Call, r *dataRequest, outstanding int, replies []ReplicaVersion, current []string) {
	owner := func(stale []string) []string {
		return slices.DeleteFunc(stale, func(n string) bool { return !slices.Contains(current, n) })
	}
	c.collectRest(ctx, cl, outstanding, func(o replica.Outcome) {
		if o.Err == nil && o.Read != nil {
			replies = append(replies, ReplicaVersion{Node: o.Node, LWW: o.Read.LWW, DVV: o.Read.DVV})
		}
	})
	if r.tenant.ConflictPolicy == subjects.PolicySiblings {
		merged, stale, ok := DetectConflictsDVV(replies)
		if stale = owner(stale); ok && len(stale) > 0 {
			c.repair.TriggerRepairDVV(r.tenant.ID, r.Key, merged, stale, subjects.RepairReasonRead)
		}
		return
	}
	merged, stale, ok := DetectConflicts(replies)
	if stale = owner(stale); !ok || len(stale) == 0 {
		return
	}
	if c.racingWrite(merged.Dot.Counter) {
		return
	}
	c.repair.TriggerRepair(r.tenant.ID, r.Key, merged, stale, subjects.RepairReasonRead)
}

// racingWrite reports whether a version stamped at counter is younger
// than HintWindow. Replicas that lack so young a version are most likely
// still receiving its write, and the coordinator that made it hints every
// primary that does not acknowledge it within its window; a read repair
// would race the write (on a hot key, for nearly every read) and each
// costs a JetStream publish and a node write. A read after the window
// repairs what is still missing: a write that failed its level, whose
// coordinator leaves no hints, or one whose coordinator died inside its
// window. Siblings dots count per actor, not time, so siblings reads
// always repair.
func (c *Coordinator) racingWrite(counter uint64) bool {
	return vclock.Physical(counter).After(c.cfg.Now().Add(-c.cfg.HintWindow))
}

// hintMissing waits for the primaries that had not acknowledged a write,
// then hints the ones that still did not (hinted handoff): a repair worker
// delivers v to them once they answer.
func (c *Coordinator) hintMissing(ctx context.Context, cl *replica.Call, r *dataRequest, pref []string, outstanding int, acked []string, v vclock.Version) {
	if missed := c.missed(ctx, cl, pref, outstanding, acked); len(missed) > 0 {
		c.repair.TriggerRepair(r.tenant.ID, r.Key, v, missed, subjects.RepairReasonHint)
	}
}

// hintMissingDVV is hintMissing for the siblings policy: the primaries
// that do not hold the write's state get it.
func (c *Coordinator) hintMissingDVV(ctx context.Context, cl *replica.Call, r *dataRequest, pref []string, outstanding int, acked []string, st vclock.DVVSet) {
	if missed := c.missed(ctx, cl, pref, outstanding, acked); len(missed) > 0 {
		c.repair.TriggerRepairDVV(r.tenant.ID, r.Key, st, missed, subjects.RepairReasonHint)
	}
}

// missed waits for up to outstanding more outcomes of cl (HintWindow at
// most) and returns the primaries of pref that never acknowledged.
func (c *Coordinator) missed(ctx context.Context, cl *replica.Call, pref []string, outstanding int, acked []string) []string {
	c.collectRest(ctx, cl, outstanding, func(o replica.Outcome) {
		if o.Err == nil {
			acked = append(acked, o.Node)
		}
	})
	var missed []string
	for _, node := range pref {
		if !slices.Contains(acked, node) {
			missed = append(missed, node)
		}
	}
	return missed
}
