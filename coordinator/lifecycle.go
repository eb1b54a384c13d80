package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// The node lifecycle admin handlers (DESIGN.md §3, issue 14): register,
// list, drain, join, remove, replace and the storage nodes' transfer
// reports. Every membership change ends in the stored placement map, under
// its optimistic locking (routing.update), so concurrent changes through
// any coordinators serialise there; a status change is conditional on the
// status the handler decided on (metadata.Store.ChangeNodeStatus).

// downHeartbeats is how many heartbeat intervals a node may stay silent
// before node list shows it down (and replace or remove --force accept it).
const downHeartbeats = 3

// isDown reports whether n has not been heard from for downHeartbeats
// heartbeats at now.
func (c *Coordinator) isDown(n metadata.Node, now time.Time) bool {
	return now.Sub(n.LastSeen) > downHeartbeats*c.cfg.NodeHeartbeat
}

// removeReply answers node.remove: success, and with force a warning.
type removeReply struct {
	Success bool   `json:"success" msgpack:"success"`
	Warning string `json:"warning,omitempty" msgpack:"warning,omitempty"`
}

// forceWarning is the warning remove --force answers with.
const forceWarning = "node %s was removed while down: its partitions are re-replicated from the surviving owners; " +
	"writes acknowledged only by it (a write at consistency one, or a quorum write whose other copies were lost since) are lost"

func (c *Coordinator) nodeRequest(body func(any) error) (subjects.NodeRequest, error) {
	var req subjects.NodeRequest
	if err := body(&req); err != nil {
		return req, err
	}
	if err := subjects.ValidateNodeID(req.NodeID); err != nil {
		return req, subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	return req, nil
}

// getNode returns node id, or no_such_node.
func (c *Coordinator) getNode(ctx context.Context, id string) (metadata.Node, error) {
	n, err := c.cfg.Metadata.GetNode(ctx, id)
	if errors.Is(err, metadata.ErrNotFound) {
		return n, subjects.Errorf(subjects.KindNoSuchNode, "no storage node %q", id)
	}
	return n, err
}

func (c *Coordinator) nodeRegister(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return nil, err
	}
	if req.VirtualNodes < 0 || req.VirtualNodes > MaxVirtualNodes {
		return nil, subjects.Errorf(subjects.KindInvalid, "virtual_nodes %d out of range 1..%d", req.VirtualNodes, MaxVirtualNodes)
	}
	if req.VirtualNodes == 0 {
		req.VirtualNodes = 128
	}
	if req.Protocol < 0 {
		return nil, subjects.Errorf(subjects.KindInvalid, "protocol %d is negative", req.Protocol)
	}
	if a := req.AntiEntropy; a != nil {
		if a.Exchanges < 0 || a.KeysRepaired < 0 || a.Bytes < 0 || a.Errors < 0 {
			return nil, subjects.Errorf(subjects.KindInvalid, "anti_entropy counts are negative: %+v", *a)
		}
	}
	prev, perr := c.cfg.Metadata.GetNode(ctx, req.NodeID)
	if perr == nil && req.Epoch == 0 {
		// The epoch names the node's data directory; storing 0 over a live
		// node's epoch would let its dots be mistaken for another's until
		// its next heartbeat put the real one back.
		return nil, subjects.Errorf(subjects.KindInvalid, "node %q is registered with epoch %d: a registration of an existing node must carry its epoch", req.NodeID, prev.Epoch)
	}
	n, err := c.cfg.Metadata.RegisterNode(ctx, metadata.Node{ID: req.NodeID, VirtualNodes: req.VirtualNodes, Epoch: req.Epoch,
		Protocol: req.Protocol, Hold: req.Hold, Transfer: metaTransfer(req.Transfer)})
	if err != nil {
		return nil, err
	}
	if req.AntiEntropy != nil {
		c.aeStatus.Store(n.ID, req.AntiEntropy)
	} else {
		c.aeStatus.Delete(n.ID)
	}
	if perr != nil || prev.Status != n.Status || prev.Epoch != n.Epoch || prev.Protocol != n.Protocol {
		c.log.Info("storage node registered", "node", n.ID, "status", n.Status, "epoch", n.Epoch, "protocol", n.Protocol)
	}
	// The cheap path: a heartbeat of a node whose place in the map is
	// already right (a joining or active node in the target, any other
	// out of it) and whose protocol did not change reads nothing more. A
	// new node, or one whose earlier change no map reflects yet (a failed
	// reconcile), reconciles: a new node's map, and for the first node of
	// a cluster its status (active at once), are in the answer.
	pl := c.routing.placement()
	inMap := pl.nodes > 0 && slices.Contains(pl.m.TargetNodes(), n.ID)
	if inMap != inTarget(n.Status) || (perr == nil && prev.Protocol != n.Protocol) {
		if err := c.placementChanged(ctx); err != nil {
			return nil, err
		}
		if again, err := c.cfg.Metadata.GetNode(ctx, n.ID); err == nil {
			n = again
		}
	} else if n.Status == metadata.NodeLeaving && pl.nodes > 0 && !pl.m.HasNode(n.ID) && handoffFinished(n, pl.m) {
		// The heartbeat that says a drained node's handoff finished
		// makes it left (advance), without waiting for a refresh.
		if err := c.routing.advance(ctx, pl.m, []metadata.Node{n}); err != nil {
			return nil, err
		}
		if again, err := c.cfg.Metadata.GetNode(ctx, n.ID); err == nil {
			n = again
		}
	}
	return wireNode(n), nil
}

// placementChanged is called after a node record changed: it reconciles
// the stored map with the node set (routing.reconcile) and, if a map was
// stored, tells the other coordinators and the storage nodes on
// kv.v1.events.ring. The node record is already changed when this fails:
// the request answers the error, and the periodic refresh of any
// coordinator stores the map later.
func (c *Coordinator) placementChanged(ctx context.Context) error {
	changed, err := c.routing.reconcile(ctx)
	if err != nil {
		return subjects.Errorf(subjects.KindUnavailable, "the node record changed but the placement map could not be stored (it will be at the next refresh): %v", err)
	}
	if changed {
		c.announceRing()
	}
	return nil
}

// announceRing publishes kv.v1.events.ring after this coordinator stored
// a map.
func (c *Coordinator) announceRing() {
	if err := c.nc.Publish(subjects.EventsRing, nil); err != nil {
		c.log.Warn("ring event not published; others catch up at their next refresh", "err", err)
	}
}

// checkProtocol refuses (409) a membership change of a cluster that holds
// data while some of its nodes speak node protocol 1 (routing.negotiate).
func (c *Coordinator) checkProtocol(nodes []metadata.Node) error {
	pl := c.routing.placement()
	if pl.nodes == 0 {
		return nil
	}
	if why := protocolBlock(pl.m, nodes); why != "" {
		return subjects.Errorf(subjects.KindConflict, "%s (a membership change streams partitions, which needs protocol 2 on every node)", why)
	}
	return nil
}

// lifecycleNodes reloads the placement map (a handler decides on the
// newest one) and lists the node records.
func (c *Coordinator) lifecycleNodes(ctx context.Context) ([]metadata.Node, error) {
	if err := c.routing.load(ctx); err != nil {
		return nil, storeError("metadata store", err)
	}
	return c.cfg.Metadata.ListNodes(ctx)
}

func (c *Coordinator) nodeList(ctx context.Context, _ func(any) error) (any, error) {
	ns, err := c.cfg.Metadata.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	now := c.cfg.Now()
	pl := c.routing.placement()
	l := subjects.NodeList{Nodes: make([]subjects.Node, 0, len(ns)), PlacementVersion: pl.version, Partitions: pl.q}
	for _, n := range ns {
		w := wireNode(n)
		// down is computed, never stored: a silent node keeps its status
		// and its partitions. A left node owns nothing, so it stays left.
		if n.Status != metadata.NodeLeft && c.isDown(n, now) {
			w.Status = metadata.NodeDown
		}
		share := pl.shares[n.ID] // zero for a node outside the map
		w.Share = &share
		if a, ok := c.aeStatus.Load(n.ID); ok {
			w.AntiEntropy = a.(*subjects.AEStatus)
		}
		l.Nodes = append(l.Nodes, w)
	}
	return l, nil
}

// placementGet answers kv.v1.admin.placement.get with the stored map,
// which it loads first, so the answer is at least as new as any change
// acknowledged before the request.
func (c *Coordinator) placementGet(ctx context.Context, _ func(any) error) (any, error) {
	if err := c.routing.load(ctx); err != nil {
		return nil, err
	}
	return placementReply(c.routing.placement())
}

func placementReply(pl *placement) (subjects.PlacementReply, error) {
	rep := subjects.PlacementReply{Version: pl.version, Partitions: pl.q, Replicas: pl.m.Replicas(), Shares: pl.shares}
	if pl.nodes > 0 {
		b, err := pl.m.MarshalBinary()
		if err != nil {
			return rep, err
		}
		rep.Map = b
	}
	return rep, nil
}

// nodeTransfer records a storage node's transfer report: the partitions
// it received (ring.Map.MarkDone under the map's optimistic locking; a
// partition whose rows changed after the map the node worked from is not
// marked, the node pulls it again under the new map), its progress for node
// list, and the statuses that follow. It answers the map after the report.
// While a node of the map speaks protocol 1 (protocolBlock) it marks and
// flips nothing: that node's writes are unfenced.
func (c *Coordinator) nodeTransfer(ctx context.Context, body func(any) error) (any, error) {
	var rep subjects.TransferReport
	if err := body(&rep); err != nil {
		return nil, err
	}
	if err := subjects.ValidateNodeID(rep.NodeID); err != nil {
		return nil, subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	if rep.MapVersion == 0 {
		return nil, subjects.Errorf(subjects.KindInvalid, "map_version is required: the placement map version the report is for")
	}
	q, err := c.routing.partitions(ctx)
	if err != nil {
		return nil, storeError("metadata store", err)
	}
	if len(rep.Done) > q {
		return nil, subjects.Errorf(subjects.KindInvalid, "done lists %d partitions; the cluster has %d", len(rep.Done), q)
	}
	for _, p := range rep.Done {
		if int(p) >= q {
			return nil, subjects.Errorf(subjects.KindInvalid, "partition %d out of range 0..%d", p, q-1)
		}
	}
	if _, err := c.getNode(ctx, rep.NodeID); err != nil {
		return nil, err
	}
	buf := make([]string, 0, 2*ring.MaxReplicas)
	pl, nodes, changed, err := c.routing.update(ctx, func(cur *placement, nodes []metadata.Node) (*ring.Map, error) {
		if why := protocolBlock(cur.m, nodes); why != "" {
			// A protocol-1 node takes unfenced writes (and a protocol-1
			// coordinator sends them): a receiver's scan does not cover
			// them, so flipping now could lose acknowledged writes. Mark
			// nothing; the receiver reports again, and its marks land
			// once every node speaks protocol 2.
			c.routing.warnOnce("transfer reports not recorded: flips wait for a node protocol upgrade", "node", rep.NodeID, "reason", why)
			return nil, nil
		}
		var ps []uint32
		for _, p := range rep.Done {
			if cur.m.Moving(p) && cur.m.Since(p) <= rep.MapVersion && !cur.m.Done(p, rep.NodeID) &&
				slices.Contains(cur.m.Receivers(p, buf[:0]), rep.NodeID) {
				ps = append(ps, p)
			}
		}
		if len(ps) == 0 {
			return nil, nil
		}
		next, _, err := cur.m.MarkDone(rep.NodeID, ps, cur.version+1)
		return next, err
	})
	if err != nil {
		return nil, storeError("metadata store", err)
	}
	if changed {
		c.announceRing()
	}
	if rep.Status != nil {
		if _, err := c.cfg.Metadata.SetNodeTransfer(ctx, rep.NodeID, metaTransfer(rep.Status)); err != nil && !errors.Is(err, metadata.ErrNotFound) {
			return nil, err
		}
	}
	if err := c.routing.advance(ctx, pl.m, nodes); err != nil {
		return nil, err
	}
	return placementReply(pl)
}

// nodeDrain makes an active or joining node leaving: the next target
// leaves it out, and its partitions stream to their next owners. It is
// refused (too_few_nodes) when a tenant's replication factor exceeds the
// joining and active nodes that would remain. Draining a leaving or left
// node changes nothing; a standby node, which holds nothing, is left at once.
func (c *Coordinator) nodeDrain(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return nil, err
	}
	n, err := c.getNode(ctx, req.NodeID)
	if err != nil {
		return nil, err
	}
	switch n.Status {
	case metadata.NodeLeaving, metadata.NodeLeft:
		return wireNode(n), nil
	case metadata.NodeStandby:
		n, err = c.cfg.Metadata.ChangeNodeStatus(ctx, n.ID, []string{metadata.NodeStandby}, metadata.NodeLeft)
		if err != nil {
			return nil, changedConcurrently(n.ID, err)
		}
		return wireNode(n), nil
	}
	rf, err := c.checkCanLose(ctx, n.ID)
	if err != nil {
		return nil, err
	}
	from := n.Status
	if n, err = c.cfg.Metadata.ChangeNodeStatus(ctx, n.ID, []string{from}, metadata.NodeLeaving); err != nil {
		return nil, changedConcurrently(req.NodeID, err)
	}
	c.log.Info("storage node draining", "node", n.ID, "was", from)
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	// A concurrent drain may have passed the check above too; reconcile
	// then refused to shrink the target below the replication factor, and
	// this drain takes its status change back.
	pl := c.routing.placement()
	if pl.nodes > 0 && slices.Contains(pl.m.TargetNodes(), n.ID) {
		if _, err := c.cfg.Metadata.ChangeNodeStatus(ctx, n.ID, []string{metadata.NodeLeaving}, from); err != nil &&
			!errors.Is(err, metadata.ErrStale) {
			return nil, err
		}
		c.log.Info("storage node drain refused after a concurrent change", "node", n.ID)
		return nil, subjects.Errorf(subjects.KindTooFewNodes,
			"node %q cannot leave: a concurrent change left too few nodes for a tenant's replication factor %d; its status is %s again", n.ID, rf, from)
	}
	return wireNode(n), nil
}

// checkCanLose reports whether node id may leave the target: every storage
// node speaks the protocol membership changes need (checkProtocol), and
// the joining and active nodes left keep every tenant's replication
// factor (409 too_few_nodes otherwise). It returns the largest RF.
func (c *Coordinator) checkCanLose(ctx context.Context, id string) (rf int, err error) {
	nodes, err := c.lifecycleNodes(ctx)
	if err != nil {
		return 0, err
	}
	if err := c.checkProtocol(nodes); err != nil {
		return 0, err
	}
	if rf, err = maxRF(ctx, c.cfg.Metadata); err != nil {
		return 0, err
	}
	left := slices.DeleteFunc(desiredNodes(nodes), func(n string) bool { return n == id })
	if rf > len(left) {
		return 0, tooFewNodes(rf, len(left))
	}
	return rf, nil
}

func tooFewNodes(rf, left int) error {
	return subjects.Errorf(subjects.KindTooFewNodes, "a tenant has replication_factor %d; only %d joining or active nodes would remain", rf, left)
}

// changedConcurrently maps a lost ChangeNodeStatus race to a 409.
func changedConcurrently(id string, err error) error {
	if errors.Is(err, metadata.ErrStale) {
		return subjects.Errorf(subjects.KindConflict, "node %q changed concurrently (%v); read it again and retry", id, err)
	}
	if errors.Is(err, metadata.ErrNotFound) {
		return subjects.Errorf(subjects.KindNoSuchNode, "no storage node %q", id)
	}
	return err
}

// nodeJoin brings a node into the target: a standby node (or a leaving or
// left one, which cancels its drain) becomes joining and streams its
// partitions; a joining or active node is answered as is. A removed id is
// re-admitted: its next registration makes it a new, joining node.
func (c *Coordinator) nodeJoin(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return nil, err
	}
	n, err := c.cfg.Metadata.GetNode(ctx, req.NodeID)
	if errors.Is(err, metadata.ErrNotFound) {
		err = c.cfg.Metadata.AdmitNode(ctx, req.NodeID)
		if errors.Is(err, metadata.ErrNotFound) {
			return nil, subjects.Errorf(subjects.KindNoSuchNode, "no storage node %q: start it with this --id to register it", req.NodeID)
		}
		if err != nil {
			return nil, err
		}
		c.log.Info("removed storage node re-admitted; it registers at its next heartbeat", "node", req.NodeID)
		return subjects.Success{Success: true}, nil
	}
	if err != nil {
		return nil, err
	}
	if inTarget(n.Status) {
		return wireNode(n), nil
	}
	nodes, err := c.lifecycleNodes(ctx)
	if err != nil {
		return nil, err
	}
	if err := c.checkProtocol(append(nodes, metadata.Node{ID: n.ID, Status: metadata.NodeJoining, Protocol: n.Protocol})); err != nil {
		return nil, err
	}
	was, from := n.Status, []string{n.Status}
	if n.Status == metadata.NodeLeaving || n.Status == metadata.NodeLeft {
		// A leaving node becomes left at a heartbeat (its handoff
		// finished): the join cancels the drain either way.
		from = []string{metadata.NodeLeaving, metadata.NodeLeft}
	}
	if n, err = c.cfg.Metadata.ChangeNodeStatus(ctx, n.ID, from, metadata.NodeJoining); err != nil {
		return nil, changedConcurrently(req.NodeID, err)
	}
	c.log.Info("storage node joining", "node", n.ID, "was", was)
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	if again, err := c.cfg.Metadata.GetNode(ctx, n.ID); err == nil {
		n = again
	}
	return wireNode(n), nil
}

// nodeRemove removes a left node. With force it removes a node that is
// down whatever its status: the next target leaves it out, its partitions
// are pulled from the surviving owners, and the answer warns that writes
// only it held are lost. Its id is refused until node join.
func (c *Coordinator) nodeRemove(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return nil, err
	}
	n, err := c.getNode(ctx, req.NodeID)
	if err != nil {
		return nil, err
	}
	forced := req.Force && n.Status != metadata.NodeLeft && n.Status != metadata.NodeStandby
	if !forced && n.Status != metadata.NodeLeft && n.Status != metadata.NodeStandby {
		return nil, subjects.Errorf(subjects.KindNodeActive,
			"node %q is %s: only a left node can be removed; drain it and wait until it is left (or remove --force a node that is down)", n.ID, n.Status)
	}
	if forced {
		if !c.isDown(n, c.cfg.Now()) {
			return nil, subjects.Errorf(subjects.KindNodeLive,
				"node %q was heard from %s ago: --force removes only a node that is down (silent for %d heartbeats); drain it instead",
				n.ID, c.cfg.Now().Sub(n.LastSeen).Round(time.Second), downHeartbeats)
		}
		if _, err := c.checkCanLose(ctx, n.ID); err != nil {
			return nil, err
		}
	}
	if err := c.nodeAnswers(ctx, n.ID); err != nil {
		return nil, err
	}
	if err := c.cfg.Metadata.RemoveNode(ctx, n.ID); err != nil {
		return nil, changedConcurrently(n.ID, err)
	}
	c.log.Info("storage node removed; its id is refused until node join", "node", n.ID, "status", n.Status, "force", forced)
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	rep := removeReply{Success: true}
	if forced {
		rep.Warning = fmt.Sprintf(forceWarning, n.ID)
	}
	return rep, nil
}

// nodeAnswers refuses (node_live) to remove a node whose process still
// serves its subjects: it would re-register at its next heartbeat and, if
// it could, come back holding stale data. Any answer, an error too, means a
// live process; so does a subscriber that never answers (a paused
// process). Only "no responders" proves nothing listens.
func (c *Coordinator) nodeAnswers(ctx context.Context, id string) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Limit: 1})
	_, err := c.nc.RequestWithContext(pctx, subjects.StorageNode(id, subjects.NodeOpDump), req)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil
	case err == nil:
		return subjects.Errorf(subjects.KindNodeLive, "node %q is still running (it answers on its subjects); stop its process first", id)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return subjects.Errorf(subjects.KindNodeLive, "something still subscribes to node %q's subjects but did not answer; stop its process first", id)
	default:
		return subjects.Errorf(subjects.KindUnavailable, "cannot tell whether node %q is still running: %v", id, err)
	}
}

// nodeReplace gives the partitions of a dead node to a registered node
// that holds none (standby, or joining before any map named it): the
// target becomes ring.Map.Substitute(dead, new), so exactly the dead
// node's rows move, and new streams them from the surviving owners. The
// dead node becomes leaving (left once the map names it nowhere), the new
// one joining.
func (c *Coordinator) nodeReplace(ctx context.Context, body func(any) error) (any, error) {
	var req subjects.NodeReplace
	if err := body(&req); err != nil {
		return nil, err
	}
	for _, id := range []string{req.Dead, req.New} {
		if err := subjects.ValidateNodeID(id); err != nil {
			return nil, subjects.Errorf(subjects.KindInvalid, "%v", err)
		}
	}
	if req.Dead == req.New {
		return nil, subjects.Errorf(subjects.KindInvalid, "dead_node_id and new_node_id are both %q", req.Dead)
	}
	dead, err := c.getNode(ctx, req.Dead)
	if err != nil {
		return nil, err
	}
	repl, err := c.cfg.Metadata.GetNode(ctx, req.New)
	if errors.Is(err, metadata.ErrNotFound) {
		return nil, subjects.Errorf(subjects.KindNoSuchNode, "no storage node %q: start it first with --id %s --join=false", req.New, req.New)
	}
	if err != nil {
		return nil, err
	}
	if !c.isDown(dead, c.cfg.Now()) {
		return nil, subjects.Errorf(subjects.KindNodeLive,
			"node %q was heard from %s ago: replace takes over only a node that is down (silent for %d heartbeats); drain it instead",
			dead.ID, c.cfg.Now().Sub(dead.LastSeen).Round(time.Second), downHeartbeats)
	}
	if err := c.nodeAnswers(ctx, dead.ID); err != nil {
		return nil, err
	}
	nodes, err := c.lifecycleNodes(ctx)
	if err != nil {
		return nil, err
	}
	pl := c.routing.placement()
	if repl.Status != metadata.NodeStandby && repl.Status != metadata.NodeJoining {
		return nil, subjects.Errorf(subjects.KindNodeActive, "node %q is %s: replace needs a new node registered standby (storage --join=false) that holds no partition", repl.ID, repl.Status)
	}
	if pl.nodes > 0 && pl.m.HasNode(repl.ID) {
		return nil, subjects.Errorf(subjects.KindNodeActive, "node %q already holds partitions in placement map version %d: replace needs a node that holds none", repl.ID, pl.version)
	}
	if pl.nodes == 0 || !slices.Contains(pl.m.TargetNodes(), dead.ID) {
		return nil, subjects.Errorf(subjects.KindConflict, "node %q (%s) owns no partition in the placement target: nothing to replace", dead.ID, dead.Status)
	}
	if err := c.checkProtocol(append(nodes, metadata.Node{ID: repl.ID, Status: metadata.NodeJoining, Protocol: repl.Protocol})); err != nil {
		return nil, err
	}
	// Both status changes in one step: a reconcile in between would see
	// a join (new joining, dead still in the target) or a drain, and
	// claim a target that moves rows of live nodes too.
	if _, err := c.cfg.Metadata.ChangeNodeStatuses(ctx, []metadata.StatusChange{
		{ID: repl.ID, From: []string{repl.Status}, To: metadata.NodeJoining},
		{ID: dead.ID, From: []string{dead.Status}, To: metadata.NodeLeaving},
	}); err != nil {
		if errors.Is(err, metadata.ErrStale) || errors.Is(err, metadata.ErrNotFound) {
			return nil, subjects.Errorf(subjects.KindConflict, "node %q or %q changed concurrently (%v); read them again and retry", dead.ID, repl.ID, err)
		}
		return nil, err
	}
	c.log.Info("storage node replacing a dead one", "dead", dead.ID, "new", repl.ID)
	_, _, changed, err := c.routing.update(ctx, func(cur *placement, _ []metadata.Node) (*ring.Map, error) {
		if cur.nodes == 0 {
			return nil, nil
		}
		tn := cur.m.TargetNodes()
		if !slices.Contains(tn, dead.ID) || slices.Contains(tn, repl.ID) {
			return nil, nil // a reconcile got there first; it claimed a target for the same node set
		}
		target, err := cur.m.Substitute(dead.ID, repl.ID)
		if err != nil {
			return nil, err
		}
		return cur.m.Retarget(target, cur.version+1)
	})
	if err != nil {
		return nil, subjects.Errorf(subjects.KindUnavailable, "the node records changed but the placement map could not be stored (it will be at the next refresh): %v", err)
	}
	if changed {
		c.announceRing()
	}
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	n, err := c.getNode(ctx, repl.ID)
	if err != nil {
		return nil, err
	}
	return wireNode(n), nil
}
