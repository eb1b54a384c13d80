package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/subjects"
)

// MaxReplicationFactor is the largest replication factor a tenant may have.
const MaxReplicationFactor = 7

// MaxVirtualNodes bounds a node's ring points.
const MaxVirtualNodes = 4096

type adminEndpoint struct {
	name, subject string
	handle        func(micro.Request)
}

func (c *Coordinator) adminEndpoints() []adminEndpoint {
	rel := func(full string) string { return full[len(subjects.AdminPrefix)+1:] }
	return []adminEndpoint{
		{"tenant_create", rel(subjects.AdminTenantCreate), c.adminCall(c.tenantCreate)},
		{"tenant_get", rel(subjects.AdminTenantGet), c.adminCall(c.tenantGet)},
		{"tenant_list", rel(subjects.AdminTenantList), c.adminCall(c.tenantList)},
		{"tenant_update", rel(subjects.AdminTenantUpdate), c.adminCall(c.tenantUpdate)},
		{"tenant_delete", rel(subjects.AdminTenantDelete), c.adminCall(c.tenantDelete)},
		{"node_register", rel(subjects.AdminNodeRegister), c.adminCall(c.nodeRegister)},
		{"node_list", rel(subjects.AdminNodeList), c.adminCall(c.nodeList)},
		{"node_drain", rel(subjects.AdminNodeDrain), c.adminCall(c.nodeDrain)},
		{"node_remove", rel(subjects.AdminNodeRemove), c.adminCall(c.nodeRemove)},
		{"node_join", rel(subjects.AdminNodeJoin), c.adminCall(c.nodeJoin)},
		{"placement_get", rel(subjects.AdminPlacementGet), c.adminCall(c.placementGet)},
	}
}

// adminCall decodes the request body into the handler's request type and
// answers with its result or error. An empty body is an empty request.
func (c *Coordinator) adminCall(h func(ctx context.Context, body func(v any) error) (any, error)) func(micro.Request) {
	return func(req micro.Request) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		isJSON := wire.IsJSONHeader(req.Headers())
		body := func(v any) error {
			if len(req.Data()) == 0 {
				return nil
			}
			return wire.Unmarshal(isJSON, req.Data(), v)
		}
		res, err := h(ctx, body)
		if err != nil {
			c.respondError(req, adminError(err))
			return
		}
		c.respond(req, res)
	}
}

// wireTenant and wireNode are the admin API's records of a tenant and a
// node. The metadata tenant and the wire tenant have the same fields, so
// that is a conversion, which the compiler refuses if the two drift; the
// wire node adds its placement share (set by node.list only).
func wireTenant(t metadata.Tenant) subjects.Tenant { return subjects.Tenant(t) }
func wireNode(n metadata.Node) subjects.Node {
	return subjects.Node{ID: n.ID, Status: n.Status, VirtualNodes: n.VirtualNodes, Epoch: n.Epoch,
		RegisteredAt: n.RegisteredAt, LastSeen: n.LastSeen}
}

// adminError maps metadata errors to wire errors.
func adminError(err error) error {
	var e *subjects.Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, metadata.ErrRemoved):
		return subjects.Errorf(subjects.KindNodeRemoved, "this node id was removed by an operator; re-admit it with node join before it registers again")
	case errors.Is(err, metadata.ErrStale):
		return subjects.Errorf(subjects.KindConflict, "stale version: the record changed since you read it; read it again and retry")
	case errors.Is(err, metadata.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		return storeError("metadata store", err)
	}
	return err
}

func (c *Coordinator) tenantCreate(ctx context.Context, body func(any) error) (any, error) {
	var req subjects.TenantRequest
	if err := body(&req); err != nil {
		return nil, err
	}
	t := metadata.Tenant{ID: req.TenantID, ReplicationFactor: 3, DefaultConsistency: subjects.Quorum, ConflictPolicy: subjects.PolicyLWW}
	applyTenantFields(&t, &req)
	if err := c.validateTenant(ctx, t); err != nil {
		return nil, err
	}
	created, err := c.cfg.Metadata.CreateTenant(ctx, t)
	if errors.Is(err, metadata.ErrExists) {
		return nil, subjects.Errorf(subjects.KindExists, "tenant %q already exists", t.ID)
	}
	if err != nil {
		return nil, err
	}
	c.tenantChanged(created, false)
	return wireTenant(created), nil
}

func applyTenantFields(t *metadata.Tenant, req *subjects.TenantRequest) {
	if req.ReplicationFactor != nil {
		t.ReplicationFactor = *req.ReplicationFactor
	}
	if req.DefaultConsistency != nil {
		t.DefaultConsistency = *req.DefaultConsistency
	}
	if req.ConflictPolicy != nil {
		t.ConflictPolicy = *req.ConflictPolicy
	}
}

// validateTenant checks t. The active nodes are counted in the metadata
// store, not in this coordinator's placement map: the map of a coordinator
// that has not yet received the last ring event lags the store, and a
// tenant created right after a node registered (through another
// coordinator) must not be refused for it.
func (c *Coordinator) validateTenant(ctx context.Context, t metadata.Tenant) error {
	if err := subjects.ValidateTenantID(t.ID); err != nil {
		return subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	if t.ReplicationFactor < 1 || t.ReplicationFactor > MaxReplicationFactor {
		return subjects.Errorf(subjects.KindInvalid, "replication_factor %d out of range 1..%d", t.ReplicationFactor, MaxReplicationFactor)
	}
	nodes, err := c.cfg.Metadata.ListNodes(ctx)
	if err != nil {
		return storeError("metadata store", err)
	}
	active := 0
	for _, n := range nodes {
		if n.Status == metadata.NodeActive {
			active++
		}
	}
	if t.ReplicationFactor > active {
		return subjects.Errorf(subjects.KindInvalid, "replication_factor %d exceeds the %d active storage nodes", t.ReplicationFactor, active)
	}
	if !ValidLevel(t.DefaultConsistency) {
		return subjects.Errorf(subjects.KindInvalid, "unknown default_consistency %q; use one, quorum or all", t.DefaultConsistency)
	}
	switch t.ConflictPolicy {
	case subjects.PolicyLWW, subjects.PolicySiblings:
	default:
		return subjects.Errorf(subjects.KindInvalid, "unknown conflict_policy %q; use lww or siblings", t.ConflictPolicy)
	}
	return nil
}

// tenantChanged updates this coordinator's cache and tells the others.
func (c *Coordinator) tenantChanged(t metadata.Tenant, deleted bool) {
	if deleted {
		c.tenants.invalidate(t.ID)
	} else {
		c.tenants.put(t)
	}
	data, _ := msgpack.Marshal(&subjects.TenantEvent{TenantID: t.ID, Version: t.Version, Deleted: deleted})
	if err := c.nc.Publish(subjects.EventsTenant, data); err != nil {
		c.log.Warn("tenant event not published; other coordinators catch up within the cache TTL", "err", err)
	}
}

func (c *Coordinator) tenantID(body func(any) error) (subjects.TenantRequest, error) {
	var req subjects.TenantRequest
	if err := body(&req); err != nil {
		return req, err
	}
	if err := subjects.ValidateTenantID(req.TenantID); err != nil {
		return req, subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	return req, nil
}

func (c *Coordinator) getTenant(ctx context.Context, id string) (metadata.Tenant, error) {
	t, err := c.cfg.Metadata.GetTenant(ctx, id)
	if errors.Is(err, metadata.ErrNotFound) {
		return t, subjects.Errorf(subjects.KindNoSuchTenant, "no tenant %q", id)
	}
	return t, err
}

func (c *Coordinator) tenantGet(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.tenantID(body)
	if err != nil {
		return nil, err
	}
	t, err := c.getTenant(ctx, req.TenantID)
	if err != nil {
		return nil, err
	}
	return wireTenant(t), nil
}

func (c *Coordinator) tenantList(ctx context.Context, _ func(any) error) (any, error) {
	ts, err := c.cfg.Metadata.ListTenants(ctx)
	if err != nil {
		return nil, err
	}
	l := subjects.TenantList{Tenants: make([]subjects.Tenant, 0, len(ts))}
	for _, t := range ts {
		l.Tenants = append(l.Tenants, wireTenant(t))
	}
	return l, nil
}

func (c *Coordinator) tenantUpdate(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.tenantID(body)
	if err != nil {
		return nil, err
	}
	if req.Version <= 0 {
		return nil, subjects.Errorf(subjects.KindInvalid, "version is required: send the version of the tenant you read")
	}
	t, err := c.getTenant(ctx, req.TenantID)
	if err != nil {
		return nil, err
	}
	if req.ConflictPolicy != nil && *req.ConflictPolicy != t.ConflictPolicy {
		return nil, subjects.Errorf(subjects.KindInvalid,
			"conflict_policy cannot change from %q to %q: stored versions are kept in the policy's own format; create a new tenant and copy the data",
			t.ConflictPolicy, *req.ConflictPolicy)
	}
	applyTenantFields(&t, &req)
	t.Version = req.Version
	if err := c.validateTenant(ctx, t); err != nil {
		return nil, err
	}
	updated, err := c.cfg.Metadata.UpdateTenant(ctx, t)
	if err != nil {
		return nil, err
	}
	c.tenantChanged(updated, false)
	return wireTenant(updated), nil
}

func (c *Coordinator) tenantDelete(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.tenantID(body)
	if err != nil {
		return nil, err
	}
	t, err := c.getTenant(ctx, req.TenantID)
	if err != nil {
		return nil, err
	}
	if !req.Force {
		holds, err := c.tenantHoldsData(ctx, t.ID)
		if err != nil {
			return nil, err
		}
		if holds != "" {
			return nil, subjects.Errorf(subjects.KindTenantNotEmpty, "tenant %q still holds data (on node %s); delete its keys first or pass force", t.ID, holds)
		}
	}
	if err := c.cfg.Metadata.DeleteTenant(ctx, t.ID); err != nil {
		if errors.Is(err, metadata.ErrNotFound) {
			return nil, subjects.Errorf(subjects.KindNoSuchTenant, "no tenant %q", t.ID)
		}
		return nil, err
	}
	c.tenantChanged(t, true)
	return subjects.Success{Success: true}, nil
}

// tenantHoldsData asks every registered node (draining ones too) whether
// it holds a live (not deleted) key of tenant and returns the first node
// that does, or "". A node that does not answer makes the check fail:
// deleting blind could orphan data.
func (c *Coordinator) tenantHoldsData(ctx context.Context, tenant string) (string, error) {
	nodes, err := c.cfg.Metadata.ListNodes(ctx)
	if err != nil {
		return "", err
	}
	for _, m := range nodes {
		after := ""
		for {
			req, _ := msgpack.Marshal(&subjects.DumpRequest{Tenant: tenant, After: after, Limit: 1000})
			msg, err := c.nc.RequestWithContext(ctx, subjects.StorageNode(m.ID, subjects.NodeOpDump), req)
			if err != nil {
				return "", subjects.Errorf(subjects.KindUnavailable, "cannot check node %s for data of tenant %q: %v; pass force to delete anyway", m.ID, tenant, err)
			}
			if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
				return "", subjects.Errorf(subjects.KindUnavailable, "node %s: %v", m.ID, e)
			}
			var rep subjects.DumpReply
			if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
				return "", fmt.Errorf("decode dump from %s: %w", m.ID, err)
			}
			for _, e := range rep.Entries {
				if !e.Tombstone {
					return m.ID, nil
				}
			}
			if !rep.More || len(rep.Entries) == 0 {
				break
			}
			after = rep.Entries[len(rep.Entries)-1].Key
		}
	}
	return "", nil
}

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

// existingNode decodes a node request and returns the node it names
// (no_such_node if there is none).
func (c *Coordinator) existingNode(ctx context.Context, body func(any) error) (metadata.Node, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return metadata.Node{}, err
	}
	n, err := c.cfg.Metadata.GetNode(ctx, req.NodeID)
	if errors.Is(err, metadata.ErrNotFound) {
		return n, subjects.Errorf(subjects.KindNoSuchNode, "no storage node %q", req.NodeID)
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
	prev, perr := c.cfg.Metadata.GetNode(ctx, req.NodeID)
	if perr == nil && req.Epoch == 0 {
		// The epoch names the node's data directory; storing 0 over a live
		// node's epoch would let its dots be mistaken for another's until
		// its next heartbeat put the real one back.
		return nil, subjects.Errorf(subjects.KindInvalid, "node %q is registered with epoch %d: a registration of an existing node must carry its epoch", req.NodeID, prev.Epoch)
	}
	n, err := c.cfg.Metadata.RegisterNode(ctx, metadata.Node{ID: req.NodeID, VirtualNodes: req.VirtualNodes, Epoch: req.Epoch})
	if err != nil {
		return nil, err
	}
	if perr != nil || prev.Status != n.Status || prev.VirtualNodes != n.VirtualNodes || prev.Epoch != n.Epoch {
		c.log.Info("storage node registered", "node", n.ID, "status", n.Status, "epoch", n.Epoch)
	}
	// The cheap path: a heartbeat of a node whose place in the map is
	// already right (an active node in it, or a draining one out of it)
	// reads nothing more. A new node, one that came back active, or one
	// whose earlier change no map reflects yet (a failed reconcile) claims
	// the next map.
	if inMap := c.routing.placement().m.HasNode(n.ID); inMap != (n.Status == metadata.NodeActive) {
		if err := c.placementChanged(ctx); err != nil {
			return nil, err
		}
	}
	return wireNode(n), nil
}

// placementChanged is called after the active node set changed: it
// computes and stores the next placement map (routing.reconcile) and, if
// one was stored, tells the other coordinators on kv.v1.events.ring.
// The node record is already changed when this fails: the request answers
// the error, and the periodic refresh of any coordinator stores the map
// later.
func (c *Coordinator) placementChanged(ctx context.Context) error {
	changed, err := c.routing.reconcile(ctx)
	if err != nil {
		return subjects.Errorf(subjects.KindUnavailable, "the node record changed but the placement map could not be stored (it will be at the next refresh): %v", err)
	}
	if changed {
		if err := c.nc.Publish(subjects.EventsRing, nil); err != nil {
			c.log.Warn("ring event not published; other coordinators catch up at their next refresh", "err", err)
		}
	}
	return nil
}

func (c *Coordinator) nodeList(ctx context.Context, _ func(any) error) (any, error) {
	ns, err := c.cfg.Metadata.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	pl := c.routing.placement()
	l := subjects.NodeList{Nodes: make([]subjects.Node, 0, len(ns)), PlacementVersion: pl.version, Partitions: pl.q}
	for _, n := range ns {
		w := wireNode(n)
		share := pl.shares[n.ID] // zero for a node outside the map
		w.Share = &share
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
	pl := c.routing.placement()
	rep := subjects.PlacementReply{Version: pl.version, Partitions: pl.q, Replicas: pl.m.Replicas(), Shares: pl.shares}
	if pl.nodes > 0 {
		b, err := pl.m.MarshalBinary()
		if err != nil {
			return nil, err
		}
		rep.Map = b
	}
	return rep, nil
}

func (c *Coordinator) nodeDrain(ctx context.Context, body func(any) error) (any, error) {
	n, err := c.existingNode(ctx, body)
	if err != nil {
		return nil, err
	}
	if n.Status == metadata.NodeActive {
		if err := c.checkCapacity(ctx, c.routing.placement().nodeCount()-1); err != nil {
			return nil, err
		}
	}
	n, err = c.cfg.Metadata.SetNodeStatus(ctx, n.ID, metadata.NodeDraining)
	if err != nil {
		return nil, err
	}
	// Out of every owner list at once (no data moves yet: see
	// docs/ARCHITECTURE.md, "Placement").
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	return wireNode(n), nil
}

// checkCapacity refuses a change that would leave fewer active nodes than a
// tenant's replication factor.
func (c *Coordinator) checkCapacity(ctx context.Context, active int) error {
	ts, err := c.cfg.Metadata.ListTenants(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if t.ReplicationFactor > active {
			return subjects.Errorf(subjects.KindTooFewNodes, "tenant %q has replication_factor %d; only %d active nodes would remain", t.ID, t.ReplicationFactor, active)
		}
	}
	return nil
}

func (c *Coordinator) nodeRemove(ctx context.Context, body func(any) error) (any, error) {
	n, err := c.existingNode(ctx, body)
	if err != nil {
		return nil, err
	}
	if n.Status == metadata.NodeActive {
		return nil, subjects.Errorf(subjects.KindNodeActive, "node %q is active; drain it first", n.ID)
	}
	if err := c.nodeAnswers(ctx, n.ID); err != nil {
		return nil, err
	}
	if err := c.cfg.Metadata.RemoveNode(ctx, n.ID); err != nil {
		return nil, err
	}
	c.log.Info("storage node removed; its id is refused until node join", "node", n.ID)
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	return subjects.Success{Success: true}, nil
}

// nodeAnswers refuses (node_live) to remove a node whose process still
// serves its subjects: it would re-register at its next heartbeat and, if
// it could, come back as an active node holding stale data. Any answer, an
// error too, means a live process; so does a subscriber that never answers
// (a paused process). Only "no responders" proves nothing listens.
func (c *Coordinator) nodeAnswers(ctx context.Context, id string) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Limit: 1})
	_, err := c.nc.RequestWithContext(pctx, subjects.StorageNode(id, subjects.NodeOpDump), req)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil
	case err == nil:
		return subjects.Errorf(subjects.KindNodeLive, "node %q is still running (it answers on its subjects); stop its process, then remove it", id)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return subjects.Errorf(subjects.KindNodeLive, "something still subscribes to node %q's subjects but did not answer; stop its process, then remove it", id)
	default:
		return subjects.Errorf(subjects.KindUnavailable, "cannot tell whether node %q is still running: %v", id, err)
	}
}

// nodeJoin re-admits a removed node id: the node's next heartbeat registers
// it as a new, active node.
func (c *Coordinator) nodeJoin(ctx context.Context, body func(any) error) (any, error) {
	req, err := c.nodeRequest(body)
	if err != nil {
		return nil, err
	}
	err = c.cfg.Metadata.AdmitNode(ctx, req.NodeID)
	if errors.Is(err, metadata.ErrNotFound) {
		return nil, subjects.Errorf(subjects.KindNoSuchNode, "no removed storage node %q to admit (only a removed id needs node join; a new id registers by itself)", req.NodeID)
	}
	if err != nil {
		return nil, err
	}
	c.log.Info("removed storage node re-admitted; it registers at its next heartbeat", "node", req.NodeID)
	// The id is not active until it registers (which claims the map then);
	// reconciling here costs two reads and catches up any change an
	// earlier failure left unstored.
	if err := c.placementChanged(ctx); err != nil {
		return nil, err
	}
	return subjects.Success{Success: true}, nil
}
