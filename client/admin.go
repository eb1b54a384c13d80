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
	// DefaultTTL is the time to live of values put without WithTTL
	// (default_ttl_ms, rounded up to a millisecond); 0 = they never expire.
	DefaultTTL *time.Duration
	// TombstoneGrace is how long deleted keys' tombstones are kept before
	// storage nodes reap them (1 s .. 10 years; create default 7 days),
	// sent in whole milliseconds.
	TombstoneGrace *time.Duration
}

// request is the TenantRequest that sets spec's fields.
func (spec TenantSpec) request(id string) subjects.TenantRequest {
	req := subjects.TenantRequest{TenantID: id, ReplicationFactor: spec.ReplicationFactor, DefaultConsistency: spec.DefaultConsistency, ConflictPolicy: spec.ConflictPolicy}
	if spec.DefaultTTL != nil {
		ms := ttlMillis(*spec.DefaultTTL)
		req.DefaultTTLMs = &ms
	}
	if spec.TombstoneGrace != nil {
		ms := spec.TombstoneGrace.Milliseconds()
		req.TombstoneGraceMS = &ms
	}
	return req
}

// CreateTenant creates tenant id. Defaults: replication factor 3, quorum,
// lww.
func (a *Admin) CreateTenant(ctx context.Context, id string, spec TenantSpec) (*subjects.Tenant, error) {
	var t subjects.Tenant
	req := spec.request(id)
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
	req := spec.request(id)
	req.Version = version
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

// DrainNode makes node id leaving: the placement target leaves it out and
// its partitions stream to their next owners; it is left once the map
// names it nowhere. Draining a leaving or left node changes nothing. 409
// too_few_nodes when a tenant's replication factor exceeds the joining
// and active nodes that would remain.
func (a *Admin) DrainNode(ctx context.Context, id string) (*subjects.Node, error) {
	var n subjects.Node
	if err := a.call(ctx, subjects.AdminNodeDrain, &subjects.NodeRequest{NodeID: id}, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// RemoveNode removes a left node (or a standby one) whose process no
// longer runs. The id is then refused (409 node_removed) until JoinNode
// re-admits it. 409 node_active for a node in any other status.
func (a *Admin) RemoveNode(ctx context.Context, id string) error {
	_, err := a.Remove(ctx, id, false)
	return err
}

// removeReply is node.remove's answer.
type removeReply struct {
	Success bool   `json:"success" msgpack:"success"`
	Warning string `json:"warning,omitempty" msgpack:"warning,omitempty"`
}

// Remove removes node id: a left node, or with force one that is down
// (silent for three heartbeats) whatever its status, whose partitions are
// then pulled from the surviving owners. warning is set when force
// removed a node that was not left: writes acknowledged only by it are
// lost.
func (a *Admin) Remove(ctx context.Context, id string, force bool) (warning string, err error) {
	var r removeReply
	if err := a.call(ctx, subjects.AdminNodeRemove, &subjects.NodeRequest{NodeID: id, Force: force}, &r); err != nil {
		return "", err
	}
	return r.Warning, nil
}

// JoinNode is Join without the answer.
func (a *Admin) JoinNode(ctx context.Context, id string) error {
	_, err := a.Join(ctx, id)
	return err
}

// Join makes node id joining: a standby node (storage --join=false), or a
// leaving or left one (cancelling its drain), enters the placement target
// and streams its partitions; it is active once it holds them. A joining
// or active node is answered as is. A removed id is re-admitted: the node
// is nil, and the node's next heartbeat registers it as a new, joining
// node. ErrNoSuchNode if id is neither registered nor removed.
func (a *Admin) Join(ctx context.Context, id string) (*subjects.Node, error) {
	var n subjects.Node
	if err := a.call(ctx, subjects.AdminNodeJoin, &subjects.NodeRequest{NodeID: id}, &n); err != nil {
		return nil, err
	}
	if n.ID == "" {
		return nil, nil // re-admitted: the answer is a bare success
	}
	return &n, nil
}

// Replace gives the partitions of node dead, which must be down, to node
// repl, registered standby (storage --join=false) and holding no partition:
// repl becomes joining and streams them from the surviving owners, dead
// becomes leaving. It returns repl's record.
func (a *Admin) Replace(ctx context.Context, dead, repl string) (*subjects.Node, error) {
	var n subjects.Node
	if err := a.call(ctx, subjects.AdminNodeReplace, &subjects.NodeReplace{Dead: dead, New: repl}, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// Register registers (or refreshes, as a heartbeat) a storage node, as
// storage nodes do themselves; tools and tests use it. It returns the
// stored node.
func (a *Admin) Register(ctx context.Context, req subjects.NodeRequest) (*subjects.Node, error) {
	var n subjects.Node
	if err := a.call(ctx, subjects.AdminNodeRegister, &req, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// ReportTransfer sends a storage node's transfer report (the partitions it
// received under map version rep.MapVersion, and its progress) and returns
// the placement map after it.
func (a *Admin) ReportTransfer(ctx context.Context, rep subjects.TransferReport) (*subjects.PlacementReply, error) {
	var r subjects.PlacementReply
	if err := a.call(ctx, subjects.AdminNodeTransfer, &rep, &r); err != nil {
		return nil, err
	}
	return &r, nil
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
