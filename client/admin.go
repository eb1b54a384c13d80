package client

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Admin calls the admin API (kv.v1.admin.>). Safe for concurrent use.
type Admin struct {
	nc      *nats.Conn
	timeout time.Duration
}

// NewAdmin returns an admin client over nc, which the caller keeps owning.
func NewAdmin(nc *nats.Conn) *Admin { return &Admin{nc: nc, timeout: 10 * time.Second} }

func (a *Admin) call(ctx context.Context, subject string, req, out any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, a.timeout)
		defer cancel()
	}
	return request(ctx, a.nc, subject, req, out)
}

// TenantSpec is what CreateTenant and UpdateTenant set; nil fields keep
// their default (create) or current value (update).
type TenantSpec struct {
	ReplicationFactor  *int
	DefaultConsistency *string
	ConflictPolicy     *string
}

// CreateTenant creates tenant id. Defaults: replication factor 3, quorum,
// lww.
func (a *Admin) CreateTenant(ctx context.Context, id string, spec TenantSpec) (*subjects.Tenant, error) {
	var t subjects.Tenant
	req := subjects.TenantRequest{TenantID: id, ReplicationFactor: spec.ReplicationFactor, DefaultConsistency: spec.DefaultConsistency, ConflictPolicy: spec.ConflictPolicy}
	if err := a.call(ctx, subjects.AdminTenantCreate, &req, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// GetTenant returns tenant id (ErrNoSuchTenant if missing).
func (a *Admin) GetTenant(ctx context.Context, id string) (*subjects.Tenant, error) {
	var t subjects.Tenant
	if err := a.call(ctx, subjects.AdminTenantGet, &subjects.TenantRequest{TenantID: id}, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// ListTenants returns every tenant, sorted by id.
func (a *Admin) ListTenants(ctx context.Context) ([]subjects.Tenant, error) {
	var l subjects.TenantList
	if err := a.call(ctx, subjects.AdminTenantList, struct{}{}, &l); err != nil {
		return nil, err
	}
	return l.Tenants, nil
}

// UpdateTenant changes tenant id, which must still be at version (else
// ErrConflict: read it again and retry).
func (a *Admin) UpdateTenant(ctx context.Context, id string, version int64, spec TenantSpec) (*subjects.Tenant, error) {
	var t subjects.Tenant
	req := subjects.TenantRequest{TenantID: id, Version: version, ReplicationFactor: spec.ReplicationFactor, DefaultConsistency: spec.DefaultConsistency, ConflictPolicy: spec.ConflictPolicy}
	if err := a.call(ctx, subjects.AdminTenantUpdate, &req, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// DeleteTenant deletes tenant id; without force it refuses while the
// tenant holds data.
func (a *Admin) DeleteTenant(ctx context.Context, id string, force bool) error {
	var s subjects.Success
	return a.call(ctx, subjects.AdminTenantDelete, &subjects.TenantRequest{TenantID: id, Force: force}, &s)
}

// ListNodes returns the storage nodes, sorted by id.
func (a *Admin) ListNodes(ctx context.Context) ([]subjects.Node, error) {
	var l subjects.NodeList
	if err := a.call(ctx, subjects.AdminNodeList, struct{}{}, &l); err != nil {
		return nil, err
	}
	return l.Nodes, nil
}

// DrainNode takes node id out of preference lists.
func (a *Admin) DrainNode(ctx context.Context, id string) (*subjects.Node, error) {
	var n subjects.Node
	if err := a.call(ctx, subjects.AdminNodeDrain, &subjects.NodeRequest{NodeID: id}, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// RemoveNode forgets a drained or down node whose process no longer runs.
// The id is then refused (409 node_removed) until JoinNode re-admits it.
func (a *Admin) RemoveNode(ctx context.Context, id string) error {
	var s subjects.Success
	return a.call(ctx, subjects.AdminNodeRemove, &subjects.NodeRequest{NodeID: id}, &s)
}

// JoinNode re-admits a removed node id: the node's next heartbeat registers
// it as a new, active node. ErrNoSuchNode if id was not removed.
func (a *Admin) JoinNode(ctx context.Context, id string) error {
	var s subjects.Success
	return a.call(ctx, subjects.AdminNodeJoin, &subjects.NodeRequest{NodeID: id}, &s)
}

// Placement returns the cluster's current placement map: which nodes own
// each partition, in preference order (a tenant of RF r uses the first r;
// see ring.Map.PreferenceList). Before any storage node registered, and
// while none is active, it is the zero Map, which names no owners. The
// answering coordinator reloads the map from the metadata store first, so
// it is at least as new as any node change acknowledged before the call.
func (a *Admin) Placement(ctx context.Context) (*ring.Map, error) {
	rep, err := a.PlacementInfo(ctx)
	if err != nil {
		return nil, err
	}
	if len(rep.Map) == 0 {
		return &ring.Map{}, nil
	}
	m, err := ring.Decode(rep.Map)
	if err != nil {
		return nil, fmt.Errorf("placement map version %d: %w", rep.Version, err)
	}
	return m, nil
}

// PlacementInfo returns kv.v1.admin.placement.get's reply as sent: the
// map's version, Q, R, its binary form and each node's share.
func (a *Admin) PlacementInfo(ctx context.Context) (*subjects.PlacementReply, error) {
	var rep subjects.PlacementReply
	if err := a.call(ctx, subjects.AdminPlacementGet, struct{}{}, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// Dump lists what storage node id holds for tenant, in (partition, key) order, after
// the key after (limit 0 = 1000). It asks the node itself, bypassing the
// coordinators: the view operators and tests use to compare replicas.
func (a *Admin) Dump(ctx context.Context, node, tenant, after string, limit int) (*subjects.DumpReply, error) {
	if err := subjects.ValidateNodeID(node); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var d subjects.DumpReply
	if err := a.call(ctx, subjects.StorageNode(node, subjects.NodeOpDump), &subjects.DumpRequest{Tenant: tenant, After: after, Limit: limit}, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// DumpAll pages through Dump until the node has listed every key of tenant.
func (a *Admin) DumpAll(ctx context.Context, node, tenant string) ([]subjects.DumpEntry, error) {
	var all []subjects.DumpEntry
	after := ""
	for {
		d, err := a.Dump(ctx, node, tenant, after, 1000)
		if err != nil {
			return nil, err
		}
		all = append(all, d.Entries...)
		if !d.More || len(d.Entries) == 0 {
			return all, nil
		}
		after = d.Entries[len(d.Entries)-1].Key
	}
}
