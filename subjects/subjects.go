// Package subjects is quorumkv's wire contract: the NATS subjects every
// process speaks on (this file lists all of them), the messages they
// carry, the error codes and how errors travel, the limits, and the
// protocol versions. docs/PROTOCOL.md describes the same contract for
// people writing clients in other languages. The codec that turns these
// messages into bytes is internal/wire; this package defines what the
// bytes mean.
//
// Client-facing messages are msgpack maps whose field names equal the JSON
// names; a request carrying the header Content-Type: application/json is
// decoded from JSON and answered in JSON. Messages between coordinators and
// storage nodes are internal, msgpack-only and encoded as arrays.
//
// Names in this package are public contract: add, never rename.
package subjects

import (
	"fmt"
	"strings"
)

// ProtocolVersion is the version of the client protocol ("v1" in subjects).
//
// Storage-node messages carry the node protocol version they are written
// in. NodeProtocolVersion is the newest this build speaks and
// NodeProtocolMin the oldest a node still accepts, so a node and a
// coordinator one version apart interoperate during a rolling upgrade:
//
//   - 1: NodeWriteBatch and NodeReadBatch are [proto, items];
//     PartitionScan has six elements. No fencing.
//   - 2: the batches are [proto, items, map version] and PartitionScan has
//     a seventh element, MapVersion: the sender's placement map version,
//     which nodes fence by (KindNotOwner, KindMapBehind); 0 = unfenced
//     (repair, hints, handoff). Nodes register with their protocol
//     (NodeRequest.Protocol); a coordinator sends 2 only when every node of
//     its map registered 2 or more.
//   - 3: versions may carry an expiry (per-key TTL, issue 15):
//     vclock.Version is [Dot, Value, Tombstone, Expires] and a siblings
//     vclock.Value [Data, Tombstone, Expires] when Expires is not 0 (the
//     3- and 2-element forms otherwise, unchanged), in batches, replies,
//     scans and stored records alike. Deletes write tombstones whose
//     Expires is the coordinator's wall time of the delete. Batches and
//     scans keep protocol 2's form. A node of protocol 2 cannot decode a
//     version with Expires, so a coordinator sends versions with Expires
//     (and batches as 3) only when every node of its map registered 3 or
//     more; until then a put with ttl_ms answers 503 unavailable naming
//     the nodes to upgrade, and deletes write tombstones without Expires.
//     Storage nodes' and repair workers' own clients write batches as
//     NodeProtocolBatch (2), which nodes of protocol 2 and 3 both read.
//
// Replies have the same form in all.
const (
	ProtocolVersion     = 1
	NodeProtocolVersion = 3
	NodeProtocolMin     = 1
	// NodeProtocolBatch is the newest form of node batches and scans
	// (protocol 3 changed none): what a client that does not negotiate
	// (storage nodes, repair workers) writes, so nodes one version
	// behind still read it during a rolling upgrade.
	NodeProtocolBatch = 2
	// NodeProtocolTTL is the node protocol that carries expiries
	// (vclock.Version.Expires, vclock.Value.Expires).
	NodeProtocolTTL = 3
)

// NodeProtocolSupported reports whether a node accepts messages of node
// protocol proto: NodeProtocolMin <= proto <= NodeProtocolVersion.
func NodeProtocolSupported(proto int) bool {
	return proto >= NodeProtocolMin && proto <= NodeProtocolVersion
}

// Service identity of the coordinators (nats.go micro).
const (
	ServiceName = "quorumkv"
	QueueGroup  = "coordinators"
)

// Data operations. ONLY APPEND TO THIS LIST.
const (
	OpPut    = "put"
	OpGet    = "get"
	OpDelete = "delete"
)

// Prefixes of the subject spaces.
const (
	DataPrefix   = "kv.v1"        // kv.v1.<tenant>.<op>
	AdminPrefix  = "kv.v1.admin"  // kv.v1.admin.<area>.<verb>
	EventsPrefix = "kv.v1.events" // kv.v1.events.<what>
	NodePrefix   = "kv.node"      // kv.node.<nodeID>.<op>
	RepairPrefix = "kv.repair"    // kv.repair.<tenant>, kv.repair.dead.<tenant>, kv.repair.workers.stats
)

// Put, Get and Delete are the data subjects of tenant.
func Put(tenant string) string    { return DataPrefix + "." + tenant + "." + OpPut }
func Get(tenant string) string    { return DataPrefix + "." + tenant + "." + OpGet }
func Delete(tenant string) string { return DataPrefix + "." + tenant + "." + OpDelete }

// Data returns the subject of op for tenant.
func Data(tenant, op string) string { return DataPrefix + "." + tenant + "." + op }

// TenantFromData returns the tenant token of a data subject
// (kv.v1.<tenant>.<op>), or "" if subject is not one.
func TenantFromData(subject string) string {
	rest, ok := strings.CutPrefix(subject, DataPrefix+".")
	if !ok {
		return ""
	}
	tenant, _, ok := strings.Cut(rest, ".")
	if !ok {
		return ""
	}
	return tenant
}

// Admin subjects. ONLY APPEND TO THIS LIST.
const (
	AdminTenantCreate = AdminPrefix + ".tenant.create"
	AdminTenantGet    = AdminPrefix + ".tenant.get"
	AdminTenantList   = AdminPrefix + ".tenant.list"
	AdminTenantUpdate = AdminPrefix + ".tenant.update"
	AdminTenantDelete = AdminPrefix + ".tenant.delete"
	AdminNodeRegister = AdminPrefix + ".node.register"
	AdminNodeList     = AdminPrefix + ".node.list"
	AdminNodeDrain    = AdminPrefix + ".node.drain"
	AdminNodeRemove   = AdminPrefix + ".node.remove"
	AdminNodeJoin     = AdminPrefix + ".node.join" // re-admits a removed node id
	// AdminNodeTransfer: a storage node reports partitions it received
	// (TransferReport → PlacementReply, the map after the report).
	AdminNodeTransfer = AdminPrefix + ".node.transfer"
	// AdminNodeReplace gives a dead node's partitions to a new one
	// (NodeReplace → Node, the new node).
	AdminNodeReplace = AdminPrefix + ".node.replace"
	// AdminPlacementGet returns the current placement map (PlacementReply).
	AdminPlacementGet = AdminPrefix + ".placement.get"
)

// Event subjects: plain publishes, no reply expected.
const (
	// EventsRing: a new placement map was stored (the set of active
	// storage nodes changed); coordinators reload it from the metadata
	// store. The payload is empty; do not rely on it.
	EventsRing   = EventsPrefix + ".ring"
	EventsTenant = EventsPrefix + ".tenant" // a tenant changed; payload TenantEvent
)

// Storage-node operations. ONLY APPEND TO THIS LIST.
const (
	NodeOpWrite = "write" // NodeWriteBatch → NodeWriteReply
	NodeOpRead  = "read"  // NodeReadBatch → NodeReadReply
	NodeOpDump  = "dump"  // DumpRequest → DumpReply (operators, repair checks)
	NodeOpScan  = "scan"  // PartitionScan → PartitionScanReply (partition transfer)
	NodeOpAE    = "ae"    // AERequest → AEReply (anti-entropy exchange between storage nodes)
	NodeOpReap  = "reap"  // ReapRequest → ReapReply (tombstone reaping: confirm, then delete if unchanged)
)

// StorageNode returns the subject of op on storage node nodeID.
func StorageNode(nodeID, op string) string { return NodePrefix + "." + nodeID + "." + op }

// NodeAll is the wildcard a storage node subscribes to.
func NodeAll(nodeID string) string { return NodePrefix + "." + nodeID + ".*" }

// Repair subjects. Coordinators publish repairs to the work stream
// (JetStream KV_REPAIR) on Repair(tenant), one token after RepairPrefix;
// repair workers move a repair that exhausted its deliveries to the
// dead-letter stream (KV_REPAIR_DEAD) on RepairDead(tenant), two tokens
// after it. The two streams never overlap although both live under
// kv.repair.>, which is what a repair role's permissions name; a tenant
// called "dead" is no problem, since its work subject kv.repair.dead has
// one token too few for the dead-letter stream. ONLY APPEND TO THIS LIST.
const (
	RepairAll          = RepairPrefix + ".*"             // the work stream's subjects: kv.repair.<tenant>
	RepairDeadPrefix   = RepairPrefix + ".dead"          // kv.repair.dead.<tenant>
	RepairDeadAll      = RepairDeadPrefix + ".*"         // the dead-letter stream's subjects
	RepairWorkersStats = RepairPrefix + ".workers.stats" // the workers' stats endpoint (micro service quorumkv-repair)
)

// Repair returns the repair-stream subject of tenant.
func Repair(tenant string) string { return RepairPrefix + "." + tenant }

// RepairDead returns the dead-letter subject of tenant.
func RepairDead(tenant string) string { return RepairDeadPrefix + "." + tenant }

// Tenant ids that would collide with other subject spaces.
var reservedTenants = map[string]bool{"admin": true, "events": true}

// ValidateTenantID reports why id cannot name a tenant, or nil. A tenant id
// is a subject token: `[a-z0-9][a-z0-9_-]{0,62}`, and not "admin" or
// "events", which name other subject spaces.
func ValidateTenantID(id string) error {
	if !isToken(id, false) {
		return fmt.Errorf("tenant id %q must match [a-z0-9][a-z0-9_-]{0,62}", id)
	}
	if reservedTenants[id] {
		return fmt.Errorf("tenant id %q is reserved", id)
	}
	return nil
}

// ValidateNodeID reports why id cannot name a storage node, or nil. A node id
// is a subject token: `[A-Za-z0-9][A-Za-z0-9_-]{0,62}`.
func ValidateNodeID(id string) error {
	if !isToken(id, true) {
		return fmt.Errorf("node id %q must match [A-Za-z0-9][A-Za-z0-9_-]{0,62}", id)
	}
	return nil
}

// isToken reports whether id matches [a-z0-9][a-z0-9_-]{0,62} (upper-case
// letters too when upper). Every request checks its tenant id, so this is
// a loop rather than a regular expression.
func isToken(id string, upper bool) bool {
	if len(id) == 0 || len(id) > 63 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case upper && c >= 'A' && c <= 'Z':
		case i > 0 && (c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}
