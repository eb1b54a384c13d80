package coordinator

import (
	"context"
	"errors"
	"fmt"
	"time"

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
		{"node_replace", rel(subjects.AdminNodeReplace), c.adminCall(c.nodeReplace)},
		{"node_transfer", rel(subjects.AdminNodeTransfer), c.adminCall(c.nodeTransfer)},
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
	w := subjects.Node{ID: n.ID, Status: n.Status, VirtualNodes: n.VirtualNodes, Epoch: n.Epoch,
		RegisteredAt: n.RegisteredAt, LastSeen: n.LastSeen, Protocol: n.Protocol}
	if t := n.Transfer; t != nil {
		w.Transfer = &subjects.TransferStatus{MapVersion: t.MapVersion, PartitionsDone: t.PartitionsDone,
			PartitionsTotal: t.PartitionsTotal, Bytes: t.Bytes, Keys: t.Keys, RateBytes: t.RateBytes, Updated: t.Updated,
			HandoffDone: t.HandoffDone, RebuildTotal: t.RebuildTotal, RebuildDone: t.RebuildDone}
	}
	return w
}

// metaTransfer is a wire transfer status as the metadata store keeps it.
func metaTransfer(t *subjects.TransferStatus) *metadata.TransferStatus {
	if t == nil {
		return nil
	}
	return &metadata.TransferStatus{MapVersion: t.MapVersion, PartitionsDone: t.PartitionsDone,
		PartitionsTotal: t.PartitionsTotal, Bytes: t.Bytes, Keys: t.Keys, RateBytes: t.RateBytes, Updated: t.Updated,
		HandoffDone: t.HandoffDone, RebuildTotal: t.RebuildTotal, RebuildDone: t.RebuildDone}
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
	t := metadata.Tenant{ID: req.TenantID, ReplicationFactor: 3, DefaultConsistency: subjects.Quorum, ConflictPolicy: subjects.PolicyLWW,
		TombstoneGraceMS: subjects.DefaultTombstoneGraceMS}
	applyTenantFields(&t, &req)
	if err := c.validateTenant(ctx, t); err != nil {
		return nil, err
	}
	created, err := c.cfg.Metadata.CreateTenant(ctx, t)
	if errors.Is(err, metadata.ErrExists) {
		// A create retried after the 503 below lands here: it answers that
		// the tenant exists only once a map version is stored after it, so
		// no answer to a create lets a client write before the fence.
		// (For a tenant created long ago it only stores one more version.)
		if err := c.fence(ctx); err != nil {
			return nil, subjects.Errorf(subjects.KindUnavailable,
				"tenant %q exists, but the placement map could not be stored after it; retry the create (it answers exists once it is): %v", t.ID, err)
		}
		return nil, subjects.Errorf(subjects.KindExists, "tenant %q already exists", t.ID)
	}
	if err != nil {
		return nil, err
	}
	// No client knows the tenant before this answer, so its first write
	// comes after a map version stored after it exists: a reconcile that
	// saw no tenant (and took the noData shortcut) cannot land after that.
	err = c.fence(ctx)
	c.tenantChanged(created, false)
	if err != nil {
		return nil, subjects.Errorf(subjects.KindUnavailable,
			"tenant %q was created, but the placement map could not be stored after it (a node joining right now may not receive its first writes); retry the create before using the tenant (it answers exists once the map is stored): %v", t.ID, err)
	}
	return wireTenant(created), nil
}

// fence stores a map version after a tenant's creation (fenceTenant) and
// announces it when it stored one.
func (c *Coordinator) fence(ctx context.Context) error {
	changed, err := c.routing.fenceTenant(ctx)
	if changed {
		c.announceRing()
	}
	return err
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
	if req.DefaultTTLMs != nil {
		t.DefaultTTLMs = *req.DefaultTTLMs
	}
	if req.TombstoneGraceMS != nil {
		t.TombstoneGraceMS = *req.TombstoneGraceMS
	}
}

// validateTenant checks t. The active and joining nodes (the placement
// target's) are counted in the metadata
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
	if t.DefaultTTLMs < 0 || t.DefaultTTLMs > subjects.MaxTTLMs {
		return subjects.Errorf(subjects.KindInvalid, "default_ttl_ms %d out of range 0..%d (10 years; 0 = values never expire)", t.DefaultTTLMs, subjects.MaxTTLMs)
	}
	nodes, err := c.cfg.Metadata.ListNodes(ctx)
	if err != nil {
		return storeError("metadata store", err)
	}
	active := len(desiredNodes(nodes))
	if t.ReplicationFactor > active {
		return subjects.Errorf(subjects.KindInvalid, "replication_factor %d exceeds the %d active and joining storage nodes", t.ReplicationFactor, active)
	}
	if !ValidLevel(t.DefaultConsistency) {
		return subjects.Errorf(subjects.KindInvalid, "unknown default_consistency %q; use one, quorum or all", t.DefaultConsistency)
	}
	switch t.ConflictPolicy {
	case subjects.PolicyLWW, subjects.PolicySiblings:
	default:
		return subjects.Errorf(subjects.KindInvalid, "unknown conflict_policy %q; use lww or siblings", t.ConflictPolicy)
	}
	if t.TombstoneGraceMS < subjects.MinTombstoneGraceMS || t.TombstoneGraceMS > subjects.MaxTombstoneGraceMS {
		return subjects.Errorf(subjects.KindInvalid, "tombstone_grace_ms %d out of range %d..%d (1 s to 10 years)",
			t.TombstoneGraceMS, subjects.MinTombstoneGraceMS, subjects.MaxTombstoneGraceMS)
	}
	return nil
}

// tenantChanged updates this coordinator's cache and tells the others.
func (c *Coordinator) tenantChanged(t metadata.Tenant, deleted bool) {
	if deleted {
		c.tenants.invalidate(t.ID, true)
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

// tenantHoldsData asks every registered node (leaving ones too) whether
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
			now := c.cfg.Now().UnixMilli()
			for _, e := range rep.Entries {
				// A value whose TTL has passed is as gone as a tombstone.
				dead := e.Tombstone || (e.Expires != 0 && now >= e.Expires)
				if e.DVV != nil {
					dead = e.DVV.DeletedAt(now)
				}
				if !dead {
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
