package subjects

import (
	"time"

	"github.com/quorumkv/quorumkv/vclock"
)

// Limits every coordinator enforces. Breaches answer 400 or 413.
const (
	MaxKeyBytes   = 1024    // a key is 1..MaxKeyBytes bytes, any bytes
	MaxValueBytes = 1 << 20 // a value is 0..MaxValueBytes bytes
	MaxTimeoutMS  = 60_000  // timeout_ms is 0..MaxTimeoutMS; 0 = the coordinator's default
	// MaxTTLMs bounds ttl_ms of a put and a tenant's default_ttl_ms: 10
	// years (of 365 days) in milliseconds.
	MaxTTLMs = 315_360_000_000
)

// Consistency levels. ONLY APPEND TO THIS LIST.
const (
	One    = "one"
	Quorum = "quorum"
	All    = "all"
)

// Conflict policies. ONLY APPEND TO THIS LIST.
const (
	PolicyLWW      = "lww"
	PolicySiblings = "siblings"
)

// Request is the body of kv.v1.<tenant>.put, .get and .delete. Get reads
// Key, Consistency and TimeoutMS; delete ignores Value.
//
// In JSON, Value is the UTF-8 string "value" or the base64 "value_base64";
// Key likewise may be sent as "key_base64".
type Request struct {
	Key            string `msgpack:"key"`
	Value          []byte `msgpack:"value,omitempty"`
	Consistency    string `msgpack:"consistency,omitempty"`     // one|quorum|all; "" = the tenant's default
	Context        string `msgpack:"context,omitempty"`         // opaque, from an earlier read or write
	IdempotencyKey string `msgpack:"idempotency_key,omitempty"` // "" = the coordinator makes one
	TimeoutMS      int64  `msgpack:"timeout_ms,omitempty"`      // 0 = the coordinator's default
	// TTLMs (put) is the value's time to live in milliseconds, 0..MaxTTLMs;
	// 0 or absent = the tenant's default_ttl_ms (0 there = never expires).
	// The value expires at the coordinator's wall time of the put plus
	// TTLMs, the same instant on every replica; from then on reads answer
	// not found, as for a deleted key.
	TTLMs int64 `msgpack:"ttl_ms,omitempty"`
}

// WriteReply answers put and delete.
type WriteReply struct {
	Success        bool   `json:"success" msgpack:"success"`
	Key            string `json:"key" msgpack:"key"`
	Context        string `json:"context" msgpack:"context"`
	IdempotencyKey string `json:"idempotency_key" msgpack:"idempotency_key"`
	IsDuplicate    bool   `json:"is_duplicate" msgpack:"is_duplicate"`
	ReplicaCount   int    `json:"replica_count" msgpack:"replica_count"` // replicas that acknowledged before the reply
	Consistency    string `json:"consistency" msgpack:"consistency"`     // the level applied
}

// GetReply answers get. A missing or deleted key is Found=false with no
// error; Context is then still set when a tombstone was read.
type GetReply struct {
	Success  bool     `msgpack:"success"`
	Key      string   `msgpack:"key"`
	Found    bool     `msgpack:"found"`
	Value    []byte   `msgpack:"value"`
	Context  string   `msgpack:"context"`
	Siblings [][]byte `msgpack:"siblings,omitempty"` // every live value, only when more than one
	// ExpiresAtMs is when Value expires (its TTL), in Unix milliseconds;
	// 0 when it never expires or the key was not found.
	ExpiresAtMs int64 `msgpack:"expires_at_ms,omitempty"`
	// ReplicaCount is how many replicas answered before the reply.
	ReplicaCount int    `msgpack:"replica_count"`
	Consistency  string `msgpack:"consistency"`
}

// Tenant is the admin API's record of a tenant: the answer to tenant.create,
// tenant.get and tenant.update, and an element of TenantList. Times are UTC.
// Its fields are those of the coordinators' metadata record, which converts
// to it field for field (the two are kept identical; the compiler checks
// the conversion).
type Tenant struct {
	ID                 string `json:"tenant_id" msgpack:"tenant_id"`
	ReplicationFactor  int    `json:"replication_factor" msgpack:"replication_factor"`
	DefaultConsistency string `json:"default_consistency" msgpack:"default_consistency"` // One, Quorum or All
	ConflictPolicy     string `json:"conflict_policy" msgpack:"conflict_policy"`         // PolicyLWW or PolicySiblings
	// DefaultTTLMs is the time to live (ms) of a value put without
	// ttl_ms; 0 = never expires (0..MaxTTLMs).
	DefaultTTLMs int64     `json:"default_ttl_ms" msgpack:"default_ttl_ms"`
	Version      int64     `json:"version" msgpack:"version"` // optimistic lock: send it back on tenant.update
	CreatedAt    time.Time `json:"created_at" msgpack:"created_at"`
	UpdatedAt    time.Time `json:"updated_at" msgpack:"updated_at"`
	// TombstoneGraceMS is how long (milliseconds) a deleted key's
	// tombstone is kept before storage nodes may reap it
	// (MinTombstoneGraceMS..MaxTombstoneGraceMS; DefaultTombstoneGraceMS
	// when created without one). A replica down for longer than the
	// smallest grace must rejoin with a wiped directory (storage does so
	// by itself), else it could bring deleted keys back. 0 from an older
	// coordinator means the default.
	TombstoneGraceMS int64 `json:"tombstone_grace_ms" msgpack:"tombstone_grace_ms"`
}

// Tombstone grace limits (Tenant.TombstoneGraceMS, milliseconds): 1 s to
// 10 years (365-day years), 7 days by default. Outside the range a
// tenant.create or tenant.update answers 400 invalid.
const (
	MinTombstoneGraceMS     int64 = 1000
	MaxTombstoneGraceMS     int64 = 10 * 365 * 24 * 3600 * 1000
	DefaultTombstoneGraceMS int64 = 7 * 24 * 3600 * 1000
)

// Node is the admin API's record of a storage node: the answer to
// node.register and node.drain, and an element of NodeList. Its first six
// fields mirror the metadata record. In JSON, Epoch is a decimal string (it
// is often above 2^53); in msgpack an unsigned integer.
type Node struct {
	ID           string    `json:"node_id" msgpack:"node_id"`
	Status       string    `json:"status" msgpack:"status"`               // standby, joining, active, leaving, left or down (DESIGN.md §3)
	VirtualNodes int       `json:"virtual_nodes" msgpack:"virtual_nodes"` // unused since the placement map; kept for old readers
	Epoch        uint64    `json:"epoch" msgpack:"epoch"`                 // changes when the node's data dir is created or wiped
	RegisteredAt time.Time `json:"registered_at" msgpack:"registered_at"`
	LastSeen     time.Time `json:"last_seen" msgpack:"last_seen"`
	// Share is the node's share of the placement map's partitions, set in
	// node.list (absent elsewhere; zero counts for a node not in the map,
	// such as a draining one).
	Share *NodeShare `json:"share,omitempty" msgpack:"share,omitempty"`
	// Protocol is the node protocol version the node registered with
	// (NodeProtocolVersion of its build; 0 = an old node = 1).
	Protocol int `json:"protocol,omitempty" msgpack:"protocol,omitempty"`
	// Transfer is the node's progress receiving partitions, as its last
	// heartbeat or transfer report gave it; nil when it reported none.
	Transfer *TransferStatus `json:"transfer,omitempty" msgpack:"transfer,omitempty"`
	// AntiEntropy is the node's anti-entropy figures, as its last
	// heartbeat gave them; nil when it reported none (anti-entropy off, an
	// older node, or no heartbeat since this coordinator started).
	AntiEntropy *AEStatus `json:"anti_entropy,omitempty" msgpack:"anti_entropy,omitempty"`
}

// TransferStatus is a node's progress receiving partitions, sent with its
// heartbeat and transfer reports and shown by node list. In JSON,
// MapVersion is a decimal string.
type TransferStatus struct {
	MapVersion      uint64    `json:"map_version,string" msgpack:"map_version"` // the map the figures are for
	PartitionsDone  int       `json:"partitions_done" msgpack:"partitions_done"`
	PartitionsTotal int       `json:"partitions_total" msgpack:"partitions_total"`
	Bytes           int64     `json:"bytes" msgpack:"bytes"` // received in this transition
	Keys            int64     `json:"keys" msgpack:"keys"`
	RateBytes       float64   `json:"rate_bytes" msgpack:"rate_bytes"` // bytes/s over the last ~10 s
	Updated         time.Time `json:"updated" msgpack:"updated"`
	// HandoffDone is the version of the placement map under which the
	// node last found that the map names it in no row and that it holds
	// no partition's records (its handoff finished: every record pushed
	// to the owners, every range dropped); 0 while it is named or holds
	// records, and from nodes older than this field. A leaving node
	// becomes left only once it reported a HandoffDone at least the
	// coordinator's map version (or it is down). A decimal string in JSON.
	HandoffDone uint64 `json:"handoff_done,string,omitempty" msgpack:"handoff_done,omitempty"`
	// RebuildTotal and RebuildDone: a node whose data directory was new,
	// wiped or stale (D7) rebuilds the partitions it owns from their other
	// owners, answering reads of them `rebuilding` until each is pulled;
	// these count them (0 and 0: no rebuild since the node started).
	RebuildTotal int `json:"rebuild_total,omitempty" msgpack:"rebuild_total,omitempty"`
	RebuildDone  int `json:"rebuild_done,omitempty" msgpack:"rebuild_done,omitempty"`
}

// TransferReport is the body of kv.v1.admin.node.transfer: storage node
// NodeID, working from map version MapVersion, received the partitions
// Done from every reachable current owner. The answer is a
// PlacementReply, the map after the report (ring.Map.MarkDone). In JSON,
// MapVersion is a decimal string.
type TransferReport struct {
	NodeID     string          `json:"node_id" msgpack:"node_id"`
	MapVersion uint64          `json:"map_version,string" msgpack:"map_version"`
	Done       []uint32        `json:"done" msgpack:"done"`
	Status     *TransferStatus `json:"status,omitempty" msgpack:"status,omitempty"`
}

// NodeReplace is the body of kv.v1.admin.node.replace: give the partitions
// of the dead node Dead to the registered, partitionless node New, which
// pulls them from the surviving owners. The answer is New's Node.
type NodeReplace struct {
	Dead string `json:"dead_node_id" msgpack:"dead_node_id"`
	New  string `json:"new_node_id" msgpack:"new_node_id"`
}

// NodeShare is one node's share of a placement map's partitions.
type NodeShare struct {
	// Primaries counts the partitions whose first owner the node is (the
	// first replica of every key there, for any RF).
	Primaries int `json:"primaries" msgpack:"primaries"`
	// Replicas counts the partitions in which the node is among the first
	// min(3, R) owners: its load for tenants of RF 3.
	Replicas int `json:"replicas" msgpack:"replicas"`
	// Owned counts the partitions in which the node is among all R owners
	// (R = min(7, nodes in the map)).
	Owned int `json:"owned" msgpack:"owned"`
	// Fraction is Replicas / (Q × min(3, R)): the node's share of the
	// RF-3 replica slots, 1/N when balanced.
	Fraction float64 `json:"fraction" msgpack:"fraction"`
}

// PlacementReply answers kv.v1.admin.placement.get: the placement map the
// answering coordinator routes by (it reloads it from the metadata store
// first).
type PlacementReply struct {
	// Version of the map; 0 when none exists yet (no node ever registered).
	Version uint64 `json:"version" msgpack:"version"`
	// Partitions is the cluster's partition count Q.
	Partitions int `json:"partitions" msgpack:"partitions"`
	// Replicas is R, the length of the shortest current owner list:
	// min(7, nodes) when no partition moves.
	Replicas int `json:"replicas" msgpack:"replicas"`
	// Map is the map's binary form (ring.Map.MarshalBinary; read it with
	// ring.Decode), base64 in JSON; empty while no node is active.
	Map []byte `json:"map" msgpack:"map"`
	// Shares holds each node of the map's share, by node id.
	Shares map[string]NodeShare `json:"shares" msgpack:"shares"`
}

// TenantRequest is the body of the tenant admin subjects. Create reads
// every field (nil = default); update reads TenantID, Version and the
// non-nil fields; get and delete read TenantID (and Force on delete).
type TenantRequest struct {
	TenantID           string  `json:"tenant_id" msgpack:"tenant_id"`
	ReplicationFactor  *int    `json:"replication_factor,omitempty" msgpack:"replication_factor,omitempty"`
	DefaultConsistency *string `json:"default_consistency,omitempty" msgpack:"default_consistency,omitempty"`
	ConflictPolicy     *string `json:"conflict_policy,omitempty" msgpack:"conflict_policy,omitempty"`
	// DefaultTTLMs (create, update) sets the tenant's default_ttl_ms:
	// 0..MaxTTLMs, 0 = values never expire (nil = 0 on create, unchanged
	// on update).
	DefaultTTLMs *int64 `json:"default_ttl_ms,omitempty" msgpack:"default_ttl_ms,omitempty"`
	// TombstoneGraceMS: MinTombstoneGraceMS..MaxTombstoneGraceMS
	// (Tenant.TombstoneGraceMS); nil = the default (create) or unchanged
	// (update).
	TombstoneGraceMS *int64 `json:"tombstone_grace_ms,omitempty" msgpack:"tombstone_grace_ms,omitempty"`
	Version          int64  `json:"version,omitempty" msgpack:"version,omitempty"`
	Force            bool   `json:"force,omitempty" msgpack:"force,omitempty"`
}

// TenantList answers kv.v1.admin.tenant.list.
type TenantList struct {
	Tenants []Tenant `json:"tenants" msgpack:"tenants"`
}

// NodeRequest is the body of the node admin subjects.
type NodeRequest struct {
	NodeID       string `json:"node_id" msgpack:"node_id"`
	VirtualNodes int    `json:"virtual_nodes,omitempty" msgpack:"virtual_nodes,omitempty"`
	Epoch        uint64 `json:"epoch,omitempty" msgpack:"epoch,omitempty"`
	// Protocol (register) is the node's NodeProtocolVersion; 0 = an old
	// node = 1.
	Protocol int `json:"protocol,omitempty" msgpack:"protocol,omitempty"`
	// Hold (register) registers a new node as standby (storage
	// --join=false): it takes no partitions until node.join.
	Hold bool `json:"hold,omitempty" msgpack:"hold,omitempty"`
	// Transfer (register, the heartbeat) is the node's progress receiving
	// partitions.
	Transfer *TransferStatus `json:"transfer,omitempty" msgpack:"transfer,omitempty"`
	// AntiEntropy (register, the heartbeat) is the node's anti-entropy
	// figures; nil when anti-entropy is off.
	AntiEntropy *AEStatus `json:"anti_entropy,omitempty" msgpack:"anti_entropy,omitempty"`
	// Force (remove) removes a node that is down without waiting for it to
	// be left: its partitions are pulled from the surviving owners, and
	// writes acknowledged only by it are lost.
	Force bool `json:"force,omitempty" msgpack:"force,omitempty"`
}

// NodeList answers kv.v1.admin.node.list.
type NodeList struct {
	Nodes []Node `json:"nodes" msgpack:"nodes"`
	// PlacementVersion is the version of the placement map the shares
	// come from (0: none yet); Partitions is the cluster's Q.
	PlacementVersion uint64 `json:"placement_version,omitempty" msgpack:"placement_version,omitempty"`
	Partitions       int    `json:"partitions,omitempty" msgpack:"partitions,omitempty"`
}

// Success answers admin calls that return nothing else.
type Success struct {
	Success bool `json:"success" msgpack:"success"`
}

// TenantEvent is published on EventsTenant after a tenant changes.
type TenantEvent struct {
	TenantID string `json:"tenant_id" msgpack:"tenant_id"`
	Version  int64  `json:"version" msgpack:"version"`
	Deleted  bool   `json:"deleted,omitempty" msgpack:"deleted,omitempty"`
}

// Storage-node messages: internal, msgpack arrays. Fields are only ever
// appended.

// NodeWriteBatch is the body of kv.node.<id>.write: writes a coordinator
// batched for one node. The node applies the whole batch as one storage
// batch (one fsync) and answers NodeWriteReply with one result per item.
//
// MapVersion is the sender's placement map version (node protocol 2; 0 =
// unfenced: repair, hints, handoff). A node refuses an item whose
// partition changed after it (KindNotOwner). In node protocol 1 the batch
// is [Proto, Items] and decodes with MapVersion 0 (internal/wire writes
// and reads both forms).
type NodeWriteBatch struct {
	_msgpack   struct{}    `msgpack:",as_array"`
	Proto      int         // the node protocol version it is written in (NodeProtocolMin..NodeProtocolVersion)
	Items      []NodeWrite //
	MapVersion uint64      // node protocol 2
}

// NodeWrite changes one key. Exactly one of LWW, DVV and Coordinate is
// set:
//
//   - LWW (lww policy): merge this version (max).
//   - DVV (siblings policy): merge this complete state (DVVSet sync). Merges
//     are never refused, whatever the sibling count.
//   - Coordinate (siblings policy): this node is the coordinating replica:
//     atomically mint a dot from its own per-key state, drop the siblings
//     the context covers, store, and answer the key's complete state in
//     NodeWriteResult.DVV. Refused (KindTooManySiblings) when the result
//     would hold more than MaxSiblings values, (KindTooLarge) when a put
//     would grow the state past Coordinate.MaxBytes, and (KindTooLarge)
//     when the state would not fit one reply; never when the write does
//     not grow the state past the limits. A tombstone without a context
//     takes the node's own state of the key as its context.
type NodeWrite struct {
	_msgpack   struct{} `msgpack:",as_array"`
	ID         uint64   // the coordinator's id for this item; echoed in the result
	Tenant     string
	Key        string
	LWW        *vclock.Version
	DVV        *vclock.DVVSet
	Coordinate *Coordinate
}

// Coordinate is a client write under the siblings policy.
type Coordinate struct {
	_msgpack struct{}          `msgpack:",as_array"`
	Context  vclock.DVVContext // what the client read; empty for a blind write
	Value    vclock.Value      // the new value, or a tombstone for a delete
	// Deadline (Unix milliseconds; 0 = none) is when the coordinator stops
	// waiting for this replica and lets the next primary coordinate the
	// write. A replica that gets to the write later refuses it
	// (KindTimeout) instead of applying it a second time under its own dot.
	Deadline int64
	// MaxBytes caps the [StateSize] a put may leave (0: the node's own
	// default, MaxStateBytes of its connection's max payload). A put that
	// would grow the state past it is refused (KindTooLarge); a put that
	// does not grow the state, and every delete, is accepted.
	MaxBytes int64
}

// MaxSiblings is how many values a key may hold under the siblings policy
// before client writes are refused (409 too_many_siblings): the client must
// read and resolve first. Repair merges are exempt.
const MaxSiblings = 100

// NodeWriteReply answers NodeWriteBatch. A node may answer one batch with
// several replies when the results would not fit one message: every reply
// but the last has More set. Results missing once the last reply arrived
// count as failed.
type NodeWriteReply struct {
	_msgpack struct{} `msgpack:",as_array"`
	Results  []NodeWriteResult
	More     bool
}

// NodeWriteResult is the outcome of one NodeWrite. Err is empty on success.
type NodeWriteResult struct {
	_msgpack struct{} `msgpack:",as_array"`
	ID       uint64
	Err      string
	// LWW says whether an lww write won its merge. It is nil when the
	// version the node holds after the merge is the one sent (the write
	// won, or the node already held exactly it), and otherwise it is the
	// version that beat the write (see Lost): a coordinator must not count
	// such a write as acknowledged, since that version will supersede it
	// on every replica. Nodes have set it this way since node protocol
	// version 1, so the signal needs no new field (a new element in these
	// arrays would break every older reader; see NodeProtocolVersion:
	// replies keep their form in every node protocol version).
	LWW *vclock.Version
	// DVV is the key's complete state after a Coordinate write.
	DVV *vclock.DVVSet
	// Kind classifies Err when a coordinator must answer it specifically
	// (KindTooManySiblings, KindTooLarge, KindNotOwner); empty otherwise.
	Kind string
}

// Lost reports whether an lww write lost its merge on the node, and the
// dot of the version that beat it. A failed item (Err set) did not lose:
// it was not applied.
func (r *NodeWriteResult) Lost() (vclock.Dot, bool) {
	if r.Err != "" || r.LWW == nil {
		return vclock.Dot{}, false
	}
	return r.LWW.Dot, true
}

// NodeReadBatch is the body of kv.node.<id>.read. Proto and MapVersion
// are as in NodeWriteBatch (a refused item's NodeReadResult.Err starts
// with KindNotOwner).
type NodeReadBatch struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int
	Items      []NodeRead
	MapVersion uint64 // node protocol 2
}

// NodeRead asks for the versions a node holds for one key.
type NodeRead struct {
	_msgpack struct{} `msgpack:",as_array"`
	ID       uint64
	Tenant   string
	Key      string
}

// NodeReadReply answers NodeReadBatch, in one or more replies like
// NodeWriteReply.
type NodeReadReply struct {
	_msgpack struct{} `msgpack:",as_array"`
	Results  []NodeReadResult
	More     bool
}

// NodeReadResult is the outcome of one NodeRead: what the node holds for
// the key under its policy (LWW or DVV), both nil when it holds nothing.
type NodeReadResult struct {
	_msgpack struct{} `msgpack:",as_array"`
	ID       uint64
	Err      string
	LWW      *vclock.Version
	DVV      *vclock.DVVSet
}

// DumpRequest is the body of kv.node.<id>.dump: list what a node stores for
// a tenant, in (partition, key) order, starting after After (the last key of
// the previous page). Limit 0 means 1000.
type DumpRequest struct {
	Tenant string `json:"tenant" msgpack:"tenant"`
	After  string `json:"after,omitempty" msgpack:"after,omitempty"`
	Limit  int    `json:"limit,omitempty" msgpack:"limit,omitempty"`
}

// DumpEntry is one key of a DumpReply.
type DumpEntry struct {
	Key       string `json:"key" msgpack:"key"`
	Value     []byte `json:"value" msgpack:"value"`
	Tombstone bool   `json:"tombstone" msgpack:"tombstone"`
	Context   string `json:"context" msgpack:"context"`
	Counter   uint64 `json:"counter" msgpack:"counter"`
	Actor     string `json:"actor" msgpack:"actor"`
	// Expires is the Expires of the version (lww) or of the greatest dot
	// (siblings): for a value, when its TTL ends; for a tombstone, when it
	// was deleted (Unix ms; 0 = none). The siblings' own are in DVV.
	Expires int64 `json:"expires,omitempty" msgpack:"expires,omitempty"`
	// Siblings policy: the number of values (tombstones included) and the
	// complete state; Value, Counter and Actor describe the greatest dot.
	Siblings int            `json:"siblings,omitempty" msgpack:"siblings,omitempty"`
	DVV      *vclock.DVVSet `json:"dvv,omitempty" msgpack:"dvv,omitempty"`
}

// DumpReply answers DumpRequest. More is true when Limit cut the list; ask
// again with After set to the last key.
type DumpReply struct {
	NodeID  string      `json:"node_id" msgpack:"node_id"`
	Entries []DumpEntry `json:"entries" msgpack:"entries"`
	More    bool        `json:"more" msgpack:"more"`
}

// Repair reasons: why a RepairRequest was published. ONLY APPEND TO THIS
// LIST.
const (
	RepairReasonRead = "read" // a read saw replicas that lack the merge
	RepairReasonHint = "hint" // a primary did not acknowledge a write in time (hinted handoff)
)

// RepairRequest is a message on the repair stream (KV_REPAIR, subject
// kv.repair.<tenant>): merge LWW into Key on every node of Targets. A
// repair worker sends it to each target as a NodeWrite, which the node
// merges (max); repair never overwrites. Unlike the node messages it is a
// msgpack map (field names as in JSON), so operators can read it and
// fields can be added.
type RepairRequest struct {
	Tenant  string          `json:"tenant" msgpack:"tenant"`
	Key     string          `json:"key" msgpack:"key"`
	LWW     *vclock.Version `json:"lww,omitempty" msgpack:"lww,omitempty"` // lww: the merged version
	DVV     *vclock.DVVSet  `json:"dvv,omitempty" msgpack:"dvv,omitempty"` // siblings: the merged state
	Targets []string        `json:"targets" msgpack:"targets"`             // storage node ids that lack it
	Reason  string          `json:"reason" msgpack:"reason"`               // RepairReasonRead or RepairReasonHint
	// Coordinator is the actor id of the coordinator that asked, for logs.
	Coordinator string `json:"coordinator,omitempty" msgpack:"coordinator,omitempty"`
}

// VersionSize estimates the encoded bytes of a version or state, for
// sizing batches and replies below the server's max payload.
func VersionSize(v *vclock.Version, s *vclock.DVVSet) int {
	n := 0
	// An Expires adds at most 9 bytes (msgpack int64) to its version or value.
	if v != nil {
		n += 16 + len(v.Value) + len(v.Dot.Actor)
		if v.Expires != 0 {
			n += 9
		}
	}
	if s != nil {
		for _, e := range s.Entries {
			n += 16 + len(e.Actor)
			for _, val := range e.Values {
				n += 4 + len(val.Data)
				if val.Expires != 0 {
					n += 9
				}
			}
		}
	}
	return n
}

// PartitionScan is the body of kv.node.<id>.scan: the pull request of a
// partition transfer (the receiver asks, the source answers). It asks for
// the records of partition Partition after Cursor, in (tenant, key) order,
// up to Limit records and MaxBytes bytes of records. The node answers
// PartitionScanReply, or a 400 for a malformed request: a node protocol
// version it does not accept, a Partitions other than its own, a partition
// not below it, or a cursor that is not a (tenant, key) of that partition.
// In node protocol 2 the request names the receiver's map version
// (MapVersion): a source whose own map is older answers KindMapBehind (503)
// and reloads, so that every write it accepted before the scan came from a
// coordinator that also sent it to the receiver. Protocol 1 requests have
// six elements and decode with MapVersion 0 (internal/wire).
//
// Each request is answered from its own Pebble iterator, a consistent view
// of the node at that moment; successive requests see the node as it is
// when each arrives, so a record changed after its part of the range was
// sent is not sent again. A transfer relies on the writes made during it
// reaching the receiver too (pending owners), never on the source holding
// a view open for it. Requests hold no state on the source: any number of
// them, from any receiver, in any order, and a restarted source answers a
// cursor it handed out before.
type PartitionScan struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int      // NodeProtocolVersion
	Partitions int      // the receiver's partition count Q; must equal the source's
	Partition  uint32   // 0..Q-1
	Cursor     []byte   // nil: from the start of the partition; else a reply's Cursor
	Limit      int      // records at most; 0 means 1000, more than 10000 means 10000
	MaxBytes   int      // record bytes at most (0 or past the node's reply limit: that limit); one record always goes
	MapVersion uint64   // node protocol 2: the receiver's map version; 0 = unfenced
	// Tenants, when not empty, limits the scan to these tenants' records
	// (sorted, distinct, valid tenant ids; else a 400): a receiver asks a
	// source only for the tenants it needs from it (their RF puts the
	// receiver in the target and the source in the current owners). Each
	// tenant is a contiguous range of the partition, so the source seeks to
	// it. Empty: every tenant, and the request is sent in the seven-element
	// form (a source of an older build ignores an eighth element and would
	// answer every tenant, which is safe: the receiver merges them).
	Tenants []string
	// Rebuild says the receiver is itself rebuilding the partition (its
	// directory is new, wiped or stale). A source that is rebuilding the
	// partition too answers it with what it holds (two lost disks rebuild
	// from each other and the third owner); any other scan of a partition
	// the source is rebuilding answers KindRebuilding, so that a transfer
	// never counts an incomplete copy toward its coverage. Sent in the
	// nine-element form, which a source of an older build refuses
	// (KindInvalid): the receiver then asks again without it, since such
	// a source has no rebuild state.
	Rebuild bool
}

// PartitionScanReply answers PartitionScan.
type PartitionScanReply struct {
	_msgpack struct{}          `msgpack:",as_array"`
	Records  []PartitionRecord // in (tenant, key) order, all of the requested partition
	// Cursor resumes the scan after the last record: send it in the next
	// request. Nil once the partition has no more records. It is opaque
	// (today tenant 0x00 key) and stays valid across writes and restarts
	// of either node.
	Cursor []byte
}

// PartitionRecord is one key of a partition with its complete version
// state. State is the msgpack array the source stores, [LWW] for the lww
// policy or [nil, DVV] for siblings (elements typed as in NodeReadResult:
// *vclock.Version, *vclock.DVVSet; trailing nils may be absent). A
// receiver merges it like a repair (NodeWrite.LWW or NodeWrite.DVV), never
// stores it as it is.
type PartitionRecord struct {
	_msgpack struct{} `msgpack:",as_array"`
	Tenant   string
	Key      string
	State    []byte
}

// AEStatus is a storage node's anti-entropy figures since it started,
// sent with its heartbeat (NodeRequest.AntiEntropy) and shown by node
// list (Node.AntiEntropy) and status.
type AEStatus struct {
	// Exchanges counts (partition, peer) comparisons this node initiated
	// and completed, equal roots included.
	Exchanges int64 `json:"exchanges" msgpack:"exchanges"`
	// KeysRepaired counts (key, replica) pairs whose stored record a merge
	// of an exchange this node initiated changed: here or on the peer.
	KeysRepaired int64 `json:"keys_repaired" msgpack:"keys_repaired"`
	// Bytes counts record bytes anti-entropy scanned, fetched and sent.
	Bytes int64 `json:"bytes" msgpack:"bytes"`
	// LastPass is when the last full pass over every partition of the
	// node ended; zero (absent in JSON) before the first.
	LastPass time.Time `json:"last_pass,omitzero" msgpack:"last_pass"`
	// OldestPartitionPass is the oldest, over the partitions the node
	// owns, of the time each last completed every exchange of a pass
	// without an error; zero (absent in JSON) while some owned partition
	// never did.
	OldestPartitionPass time.Time `json:"oldest_partition_pass,omitzero" msgpack:"oldest_partition_pass"`
	// Errors counts exchanges that failed (peer down or refusing, a
	// tree that changed mid-exchange); each is retried the next pass.
	Errors int64 `json:"errors" msgpack:"errors"`
}

// Anti-entropy ops (AERequest.Op). ONLY APPEND TO THIS LIST.
const (
	AEOpRoots    = "roots"    // Parts → Hashes: one root per partition, in order
	AEOpChildren = "children" // Partition, Level, Indices (parents) → Hashes: FanOut per parent, in order
	AEOpKeys     = "keys"     // Partition, Indices (leaf buckets) → Entries of the buckets Done
	AEOpRecords  = "records"  // Partition, Keys → Records (missing keys left out) of the keys Done
	AEOpPush     = "push"     // Partition, Records → Changed: merge them, count the keys changed
)

// AERequest is the body of kv.node.<id>.ae: one step of an anti-entropy
// exchange (docs/PROTOCOL.md, "Anti-entropy"). The node that initiates
// an exchange of partition p with a peer asks it for the roots of its
// Merkle trees (package hashtree) of p over the tenants Tenants, built
// with Config, descends the differing subtrees (children), lists the
// keys of differing leaf buckets with their version hashes (keys),
// fetches the records it lacks or holds differently (records) and pushes
// its own (push). The responder refuses, with the node error reply:
// KindMapBehind when MapVersion is newer than its map, KindNotOwner when
// it is not a current owner of a partition named, KindInvalid for a
// malformed request (protocol, Partitions other than its own, a partition
// out of range, Tenants not sorted, distinct and valid, a Config outside
// hashtree's limits, an index outside its level, an unknown Op).
// Fields are only appended.
type AERequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int      // NodeProtocolVersion of the sender
	Op         string   // AEOpRoots, AEOpChildren, AEOpKeys, AEOpRecords or AEOpPush
	Partitions int      // the sender's partition count Q; must equal the responder's
	MapVersion uint64   // the sender's map version (not 0)
	Tenants    []string // the tenants the trees cover: sorted, distinct, not empty
	Config     AEConfig // the trees' shape (hashtree.Config)
	Parts      []uint32 // roots: the partitions, at most AEMaxParts
	Partition  uint32   // every other op: the partition
	Level      int      // children: the parents' level (0 = the root)
	Indices    []uint32 // children: parent indices within Level; keys: leaf buckets
	Keys       []AEKey  // records: the keys to send
	// Records (push) are merged like a repair (NodeWrite.LWW or .DVV);
	// every one must be of Partition and of a tenant of Tenants.
	Records []PartitionRecord
	// Root (children) is the root the sender got for Partition from the
	// roots op: the responder answers from the tree of that root, which
	// it keeps while an exchange descends it even if the partition
	// changes meanwhile (it keeps the last two trees per partition,
	// tenant set and config); if it no longer has it, it answers
	// KindConflict and the sender retries the next pass.
	Root [2]uint64
	// Transfer (appended) marks an exchange a receiver of a moving
	// partition runs to reconcile Partition with a second current owner
	// after pulling it whole from another (docs/ARCHITECTURE.md, "Moving
	// a partition"). The responder builds trees and lists keys for it
	// without its anti-entropy rate and figures (the receiver paces the
	// records it fetches by its transfer rate and counts them as
	// transfer). Only roots, children, keys and records are sent with it;
	// an older responder ignores it and paces by its anti-entropy rate.
	Transfer bool
}

// AEMaxParts bounds AERequest.Parts of one roots request.
const AEMaxParts = 4096

// AEConfig is the shape of the trees compared (hashtree.Config).
type AEConfig struct {
	_msgpack struct{} `msgpack:",as_array"`
	FanOut   int
	Depth    int
}

// AEKey names a key of an AERequest records op.
type AEKey struct {
	_msgpack struct{} `msgpack:",as_array"`
	Tenant   string
	Key      string
}

// AEEntry is a key of a leaf bucket and the hash of the record the node
// stores for it (hashtree.VersionHash of the stored bytes).
type AEEntry struct {
	_msgpack struct{}  `msgpack:",as_array"`
	Tenant   string    //
	Key      string    //
	Version  [2]uint64 // hashtree.Hash
}

// AEReply answers AERequest.
type AEReply struct {
	_msgpack struct{}    `msgpack:",as_array"`
	Hashes   [][2]uint64 // roots, children: hashtree.Hash values
	Entries  []AEEntry   // keys
	Records  []PartitionRecord
	// Done (keys, records) is how many of the request's Indices or Keys
	// the reply covers completely, from the first: a reply is cut to fit
	// one message, and the sender asks again for the rest.
	Done int
	// Changed (push) is how many of the records changed what the node
	// stored: each a (key, replica) repaired.
	Changed int
}

// ReapRequest is the body of kv.node.<id>.reap (NodeOpReap): the
// confirmation and the conditional delete of tombstone reaping (issue 15,
// D6; docs/ARCHITECTURE.md "Reaping tombstones"). A reaping owner of
// partition Partition sends it to every other current owner within each
// key's tenant RF:
//
//   - Commit false asks what each owner holds: the answer's Held is the
//     VersionHash (hashtree.VersionHash of the stored record bytes) of each
//     item's key, the zero hash when the key holds nothing.
//   - Commit true reaps: each item's key is deleted, on the node's write
//     loop, only if the VersionHash of what it stores still equals the
//     item's Hash (Reaped says so); a key that holds nothing answers
//     Reaped false, Held zero.
//
// A node answers KindMapBehind when MapVersion is newer than its map,
// KindNotOwner when it is not a current owner of the partition, and a 400
// for a malformed request (a node protocol it does not accept, another
// Partitions, a partition out of range, an item of another partition).
type ReapRequest struct {
	_msgpack   struct{} `msgpack:",as_array"`
	Proto      int      // NodeProtocolVersion
	Partitions int      // the sender's partition count Q; must equal the node's
	Partition  uint32   // every item's partition
	MapVersion uint64   // the sender's map version
	Items      []ReapItem
	Commit     bool
}

// ReapItem names one key and the version hash the reaper holds for it (a
// tombstone dead for longer than the tenant's grace).
type ReapItem struct {
	_msgpack struct{} `msgpack:",as_array"`
	Tenant   string
	Key      string
	Hash     [2]uint64 // hashtree.Hash of the reaper's stored record
}

// ReapReply answers ReapRequest with one result per item, in order.
type ReapReply struct {
	_msgpack struct{} `msgpack:",as_array"`
	Results  []ReapResult
}

// ReapResult is one key's outcome: the version hash the node holds (zero:
// nothing; with Commit, what it held before the delete) and whether it
// deleted the key.
type ReapResult struct {
	_msgpack struct{} `msgpack:",as_array"`
	Held     [2]uint64
	Reaped   bool
}
