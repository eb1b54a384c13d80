// Package metadata defines quorumkv's cluster metadata: the tenants the store
// serves and the storage nodes that hold their data, and the Store interface
// through which coordinators read and change them.
//
// Two implementations exist: metadata/natskv keeps everything in JetStream
// key-value buckets (the embedded default) and metadata/postgres keeps it in
// PostgreSQL (migrated by package schema). metadata/metadatatest holds the
// conformance suite both must pass.
//
// Every error a Store returns is wrapped with context; compare with errors.Is
// against the sentinels below.
package metadata

import (
	"context"
	"errors"
	"time"
)

var (
	// ErrNotFound means the tenant or node does not exist.
	ErrNotFound = errors.New("metadata: not found")
	// ErrExists means a tenant with that ID already exists.
	ErrExists = errors.New("metadata: already exists")
	// ErrStale means an optimistic-lock failure: the caller's Version is not
	// the stored one (someone else changed the record first). Re-read and retry.
	ErrStale = errors.New("metadata: stale version")
	// ErrUnavailable means the backing store could not be reached (connection
	// refused or cut, timeout, no responders). The error also wraps the cause.
	// The operation may or may not have taken effect.
	ErrUnavailable = errors.New("metadata: store unavailable")
	// ErrRemoved means RegisterNode named a node id an operator removed and
	// has not re-admitted (AdmitNode): a heartbeat must not bring it back.
	ErrRemoved = errors.New("metadata: node was removed")
)

// Tenant is one tenant's replication and conflict settings.
type Tenant struct {
	ID                 string `json:"tenant_id" msgpack:"tenant_id"`
	ReplicationFactor  int    `json:"replication_factor" msgpack:"replication_factor"`
	DefaultConsistency string `json:"default_consistency" msgpack:"default_consistency"` // one|quorum|all
	ConflictPolicy     string `json:"conflict_policy" msgpack:"conflict_policy"`         // lww|siblings
	// DefaultTTLMs is the time to live, in milliseconds, of a value put
	// without ttl_ms; 0 = never expires (0..subjects.MaxTTLMs).
	DefaultTTLMs int64     `json:"default_ttl_ms,omitempty" msgpack:"default_ttl_ms,omitempty"`
	Version      int64     `json:"version" msgpack:"version"`
	CreatedAt    time.Time `json:"created_at" msgpack:"created_at"`
	UpdatedAt    time.Time `json:"updated_at" msgpack:"updated_at"`
	// TombstoneGraceMS is how long tombstones are kept before reaping
	// (subjects.Tenant.TombstoneGraceMS); 0 in a record written before it
	// existed, read as the default.
	TombstoneGraceMS int64 `json:"tombstone_grace_ms" msgpack:"tombstone_grace_ms"`
}

// DefaultTombstoneGraceMS is the grace a tenant gets when created without
// one, and what a stored record without one (written before the field
// existed) reads as: 7 days (subjects.DefaultTombstoneGraceMS).
const DefaultTombstoneGraceMS int64 = 7 * 24 * 3600 * 1000

// NodeStatus is a storage node's administrative state (its lifecycle,
// DESIGN.md §3): standby → joining → active → leaving → left → removed.
type NodeStatus = string

// Storage node states.
const (
	// NodeStandby is a node registered with Hold (storage --join=false): it
	// takes no partitions until node join makes it joining.
	NodeStandby = "standby"
	// NodeJoining is a node in the placement map's target: it receives
	// writes for the partitions it is gaining and streams them, and does
	// not count toward a quorum until its partitions flip.
	NodeJoining = "joining"
	// NodeActive is a node that holds everything it owns.
	NodeActive = "active"
	// NodeLeaving is a node out of the target whose partitions stream away
	// to their next owners (node drain, or remove --force of a down node).
	NodeLeaving = "leaving"
	// NodeLeft is a node the placement map names in no row: it owns
	// nothing and may be removed.
	NodeLeft = "left"

	// NodeDraining is the status an older version stored for a node being
	// emptied. Stores never return it: they report it as NodeLeaving.
	NodeDraining = "draining"
	// NodeDown is a status older versions could store. It is not a
	// lifecycle state (node list computes "down" from the last heartbeat);
	// RegisterNode turns a stored one into NodeJoining.
	NodeDown = "down"

	// NodeRemoved marks the record a store keeps of a removed node id so
	// that RegisterNode can refuse it. Stores never return such a record:
	// GetNode, ListNodes and SetNodeStatus treat the id as absent.
	NodeRemoved = "removed"
)

// ReadStatus maps a stored status to the one a Store returns: the legacy
// "draining" reads as NodeLeaving; every other status is itself.
func ReadStatus(s string) string {
	if s == NodeDraining {
		return NodeLeaving
	}
	return s
}

// TransferStatus is a node's progress receiving partitions during a
// placement transition, as its heartbeat and its transfer reports carry it.
type TransferStatus struct {
	MapVersion      uint64    `json:"map_version" msgpack:"map_version"` // the map the figures are for
	PartitionsDone  int       `json:"partitions_done" msgpack:"partitions_done"`
	PartitionsTotal int       `json:"partitions_total" msgpack:"partitions_total"`
	Bytes           int64     `json:"bytes" msgpack:"bytes"` // received in this transition
	Keys            int64     `json:"keys" msgpack:"keys"`
	RateBytes       float64   `json:"rate_bytes" msgpack:"rate_bytes"` // bytes/s over the last ~10 s
	Updated         time.Time `json:"updated" msgpack:"updated"`
	// HandoffDone is the placement map version under which the node found
	// itself named in no row and holding no records (its handoff
	// finished); 0 otherwise (subjects.TransferStatus.HandoffDone).
	HandoffDone uint64 `json:"handoff_done,omitempty" msgpack:"handoff_done,omitempty"`
	// RebuildTotal and RebuildDone count the partitions a node with a new,
	// wiped or stale directory rebuilds (subjects.TransferStatus).
	RebuildTotal int `json:"rebuild_total,omitempty" msgpack:"rebuild_total,omitempty"`
	RebuildDone  int `json:"rebuild_done,omitempty" msgpack:"rebuild_done,omitempty"`
}

// Node is one storage node as the coordinators know it.
type Node struct {
	ID           string    `json:"node_id" msgpack:"node_id"`
	Status       string    `json:"status" msgpack:"status"`
	VirtualNodes int       `json:"virtual_nodes" msgpack:"virtual_nodes"`
	Epoch        uint64    `json:"epoch" msgpack:"epoch"` // changes when the node's data dir is created or wiped
	RegisteredAt time.Time `json:"registered_at" msgpack:"registered_at"`
	LastSeen     time.Time `json:"last_seen" msgpack:"last_seen"`
	// Protocol is the node protocol version the node registered with
	// (subjects.NodeProtocolVersion); 0 for a node older than protocol 2,
	// which means 1.
	Protocol int `json:"protocol,omitempty" msgpack:"protocol,omitempty"`
	// Transfer is the node's last reported transfer progress; nil when it
	// reported none.
	Transfer *TransferStatus `json:"transfer,omitempty" msgpack:"transfer,omitempty"`
	// Hold is an input of RegisterNode only (never stored or returned): a
	// new node registers as NodeStandby instead of NodeJoining.
	Hold bool `json:"-" msgpack:"-"`
}

// StatusChange is one node's part of Store.ChangeNodeStatuses: node ID's
// status becomes To if it is one of From.
type StatusChange struct {
	ID   string
	From []string
	To   string
}

// Placement is the cluster's stored placement map (DESIGN.md §3): which
// storage nodes own each of the cluster's fixed partitions.
type Placement struct {
	// Version numbers the stored maps 1, 2, 3, ...: every change stores
	// Version+1, and a write names the version it follows (optimistic
	// locking, see SetPlacement).
	Version uint64 `json:"version" msgpack:"version"`
	// Map is the map's binary form (ring.Map.MarshalBinary), empty when no
	// storage node is active. The store keeps it as opaque bytes: the
	// encoding carries its own format number, so a later format (per-
	// partition pending owners during a transfer) fits this same record.
	Map []byte `json:"map" msgpack:"map"`
	// UpdatedAt is when this version was stored; set by the store.
	UpdatedAt time.Time `json:"updated_at" msgpack:"updated_at"`
}

// Store keeps tenants and storage nodes. Implementations are safe for
// concurrent use. Validation of ids/ranges is the caller's job; the store only
// persists (a backend may still reject values its own schema forbids, with a
// non-sentinel error).
//
// Every method may also return an error wrapping ErrUnavailable when the
// backing service cannot be reached, and the context's error when ctx is
// cancelled. Times set by the store are UTC, truncated to microseconds.
type Store interface {
	// CreateTenant stores a new tenant with Version=1 and
	// CreatedAt=UpdatedAt=now, ignoring those fields of t (and
	// TombstoneGraceMS 0 as DefaultTombstoneGraceMS), and returns it.
	// ErrExists if the ID is taken.
	CreateTenant(ctx context.Context, t Tenant) (Tenant, error)
	// GetTenant returns the tenant. ErrNotFound if it does not exist.
	GetTenant(ctx context.Context, id string) (Tenant, error)
	// ListTenants returns all tenants sorted by ID (byte order); an empty,
	// non-nil slice when there are none.
	ListTenants(ctx context.Context) ([]Tenant, error)
	// UpdateTenant stores t's ReplicationFactor, DefaultConsistency,
	// ConflictPolicy, DefaultTTLMs and TombstoneGraceMS (0: the default) if t.Version equals the stored Version, and returns the
	// tenant with Version+1, a new UpdatedAt and CreatedAt unchanged.
	// ErrStale if the versions differ; ErrNotFound if the tenant does not exist.
	UpdateTenant(ctx context.Context, t Tenant) (Tenant, error)
	// DeleteTenant removes the tenant. ErrNotFound if it does not exist.
	DeleteTenant(ctx context.Context, id string) error

	// RegisterNode inserts or refreshes a node and returns the stored node.
	// A new node gets Status=joining (standby when n.Hold) and
	// RegisteredAt=LastSeen=now. An existing node keeps RegisteredAt and its
	// status (a legacy "down" becomes joining), and gets n's VirtualNodes,
	// Epoch, Protocol and Transfer and LastSeen=now. n.Status,
	// n.RegisteredAt and n.LastSeen are ignored. ErrRemoved if the id was
	// removed (RemoveNode) and not re-admitted since (AdmitNode).
	RegisterNode(ctx context.Context, n Node) (Node, error)
	// GetNode returns the node. ErrNotFound if it does not exist.
	GetNode(ctx context.Context, id string) (Node, error)
	// ListNodes returns all nodes sorted by ID (byte order); an empty,
	// non-nil slice when there are none.
	ListNodes(ctx context.Context) ([]Node, error)
	// SetNodeStatus sets the node's status and returns the node; other fields
	// are unchanged. ErrNotFound if the node does not exist.
	SetNodeStatus(ctx context.Context, id string, status string) (Node, error)
	// ChangeNodeStatus sets the node's status to status only if its
	// current one (as read, see ReadStatus) is one of from, atomically, and
	// returns the node. ErrStale if the node has another status (the
	// caller decided on a record that changed since); ErrNotFound if it
	// does not exist.
	ChangeNodeStatus(ctx context.Context, id string, from []string, status string) (Node, error)
	// ChangeNodeStatuses applies every change of changes (distinct node
	// ids) or none, in one atomic step: each node's status becomes its To
	// only if its current one (as read, see ReadStatus) is one of its
	// From, and GetNode and ListNodes see all the changes or none of them
	// (node replace changes two statuses that no reconcile may see half
	// of). It returns the changed nodes in the order of changes. ErrStale
	// if some node has another status, ErrNotFound if some node does not
	// exist; nothing is changed then.
	ChangeNodeStatuses(ctx context.Context, changes []StatusChange) ([]Node, error)
	// SetNodeTransfer stores t (nil clears it) as the node's transfer
	// progress and returns the node; other fields are unchanged.
	// ErrNotFound if the node does not exist.
	SetNodeTransfer(ctx context.Context, id string, t *TransferStatus) (Node, error)
	// RemoveNode removes the node and remembers its id as removed, so that
	// RegisterNode refuses it (ErrRemoved) until AdmitNode. ErrNotFound if
	// the node does not exist (or is already removed). The check and the
	// removal are one atomic step against a concurrent RegisterNode.
	RemoveNode(ctx context.Context, id string) error
	// AdmitNode forgets that id was removed: the next RegisterNode of it
	// creates a new node. ErrNotFound if id is not a removed node.
	AdmitNode(ctx context.Context, id string) error

	// ContextSecret returns the cluster's context secret, the key under
	// which coordinators authenticate the contexts they issue. If none is
	// stored yet it stores candidate (non-empty) and returns it: the first
	// writer wins, and every caller, concurrent ones included, gets the
	// same bytes. The secret is never changed or removed afterwards.
	ContextSecret(ctx context.Context, candidate []byte) ([]byte, error)

	// Partitions returns the cluster's partition count Q. If none is
	// stored yet it stores candidate (> 0; the caller checks it is a valid
	// count) and returns it: the first writer wins, every caller gets the
	// same number, and it never changes afterwards (Q is fixed when the
	// cluster is created).
	Partitions(ctx context.Context, candidate int) (int, error)
	// GetPlacement returns the stored placement map. ErrNotFound if none
	// was stored yet.
	GetPlacement(ctx context.Context) (Placement, error)
	// SetPlacement stores p if it follows the stored map: p.Version must be
	// the stored Version+1, or 1 when none is stored. It returns p with
	// UpdatedAt set. ErrStale if the stored version is not p.Version-1 (a
	// concurrent writer stored that version first, or the caller read an
	// old one): of concurrent writers of one version exactly one wins; the
	// others re-read and recompute. p.Version 0 is an error.
	SetPlacement(ctx context.Context, p Placement) (Placement, error)

	// Close releases what the store opened itself. It does not close
	// connections it was handed.
	Close() error
}

// Now returns the current time as stores record it: UTC, truncated to
// microseconds (the precision PostgreSQL keeps).
func Now() time.Time {
	return time.Now().UTC().Truncate(time.Microsecond)
}
