// Package natskv is the embedded default metadata.Store, kept in two JetStream
// key-value buckets: "<prefix>_tenants" and "<prefix>_nodes".
//
// Each record is stored JSON-encoded under its ID. IDs made only of
// [A-Za-z0-9_-] are used as keys unchanged; any other ID is stored under "="
// followed by its unpadded base64url encoding, so every string is a valid key
// and the two forms never collide.
//
// Optimistic locking uses the KV revision: a write names the revision it read
// and JetStream rejects it if the key changed since.
//
// The cluster's context secret lives in the tenants bucket under the key
// "cluster.context_secret", its partition count under "cluster.partitions"
// and its placement map under "cluster.placement". The "." keeps them apart
// from every record key (those never contain one) and listings skip them;
// they stay inside the subjects the coordinators' NATS permissions already
// grant.
package natskv

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/metadata"
)

// Options configures Open.
type Options struct {
	// Replicas is the buckets' replica count; 0 means 1.
	Replicas int
	// BucketPrefix names the buckets "<prefix>_tenants" and "<prefix>_nodes";
	// "" means "quorumkv". It must consist of [A-Za-z0-9_-].
	BucketPrefix string
}

// Store is a metadata.Store on JetStream KV. It is safe for concurrent use.
type Store struct {
	js      jetstream.JetStream
	tenants jetstream.KeyValue
	nodes   jetstream.KeyValue
}

var _ metadata.Store = (*Store)(nil)

// Open creates the two buckets, or binds to them and updates their
// configuration to opts if they exist; calling it again is harmless. It
// returns an error wrapping metadata.ErrUnavailable if JetStream cannot be
// reached.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Store, error) {
	if js == nil {
		return nil, errors.New("metadata/natskv: open: nil JetStream")
	}
	if opts.Replicas < 0 {
		return nil, fmt.Errorf("metadata/natskv: open: replicas %d < 0", opts.Replicas)
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	if opts.BucketPrefix == "" {
		opts.BucketPrefix = "quorumkv"
	}
	open := func(suffix, desc string) (jetstream.KeyValue, error) {
		name := opts.BucketPrefix + "_" + suffix
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      name,
			Description: desc,
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    opts.Replicas,
		})
		if err != nil {
			return nil, wrap(fmt.Sprintf("open bucket %q", name), err)
		}
		return kv, nil
	}
	tenants, err := open("tenants", "quorumkv tenants")
	if err != nil {
		return nil, err
	}
	nodes, err := open("nodes", "quorumkv storage nodes")
	if err != nil {
		return nil, err
	}
	return &Store{js: js, tenants: tenants, nodes: nodes}, nil
}

// contextSecretKey is where ContextSecret keeps the secret (see the
// package doc).
const contextSecretKey = "cluster.context_secret"

// storedSecret is the JSON record under contextSecretKey.
type storedSecret struct {
	Secret    []byte    `json:"secret"` // base64 in JSON
	CreatedAt time.Time `json:"created_at"`
}

// ContextSecret implements metadata.Store: a KV create, which only the
// first writer wins, then a read of whatever is stored.
func (s *Store) ContextSecret(ctx context.Context, candidate []byte) ([]byte, error) {
	const op = "context secret"
	if len(candidate) == 0 {
		return nil, fmt.Errorf("metadata/natskv: %s: empty candidate", op)
	}
	data, err := json.Marshal(storedSecret{Secret: candidate, CreatedAt: metadata.Now()})
	if err != nil {
		return nil, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
	}
	if _, err := s.tenants.Create(ctx, contextSecretKey, data); err == nil {
		return append([]byte(nil), candidate...), nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, wrap(op, err)
	}
	e, err := s.tenants.Get(ctx, contextSecretKey)
	if err != nil {
		return nil, wrap(op+": read", err)
	}
	var rec storedSecret
	if err := json.Unmarshal(e.Value(), &rec); err != nil || len(rec.Secret) == 0 {
		return nil, fmt.Errorf("metadata/natskv: %s: stored record at revision %d is damaged: %v", op, e.Revision(), err)
	}
	return rec.Secret, nil
}

// Keys of the cluster-wide records (see the package doc).
const (
	partitionsKey = "cluster.partitions"
	placementKey  = "cluster.placement"
)

// storedPartitions is the JSON record under partitionsKey.
type storedPartitions struct {
	Partitions int       `json:"partitions"`
	CreatedAt  time.Time `json:"created_at"`
}

// Partitions implements metadata.Store: a KV create, which only the first
// writer wins, then a read of whatever is stored.
func (s *Store) Partitions(ctx context.Context, candidate int) (int, error) {
	const op = "partitions"
	if candidate <= 0 {
		return 0, fmt.Errorf("metadata/natskv: %s: candidate %d <= 0", op, candidate)
	}
	data, err := json.Marshal(storedPartitions{Partitions: candidate, CreatedAt: metadata.Now()})
	if err != nil {
		return 0, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
	}
	if _, err := s.tenants.Create(ctx, partitionsKey, data); err == nil {
		return candidate, nil
	} else if !errors.Is(err, jetstream.ErrKeyExists) {
		return 0, wrap(op, err)
	}
	e, err := s.tenants.Get(ctx, partitionsKey)
	if err != nil {
		return 0, wrap(op+": read", err)
	}
	var rec storedPartitions
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.Partitions <= 0 {
		return 0, fmt.Errorf("metadata/natskv: %s: stored record at revision %d is damaged: %v", op, e.Revision(), err)
	}
	return rec.Partitions, nil
}

// GetPlacement implements metadata.Store.
func (s *Store) GetPlacement(ctx context.Context) (metadata.Placement, error) {
	p, _, err := s.getPlacement(ctx)
	if err != nil {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: get placement: %w", err)
	}
	return p, nil
}

func (s *Store) getPlacement(ctx context.Context) (metadata.Placement, uint64, error) {
	var p metadata.Placement
	e, err := s.tenants.Get(ctx, placementKey)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return p, 0, metadata.ErrNotFound
		}
		return p, 0, classify(err)
	}
	if err := json.Unmarshal(e.Value(), &p); err != nil || p.Version == 0 {
		return p, 0, fmt.Errorf("stored record at revision %d is damaged: %v", e.Revision(), err)
	}
	return p, e.Revision(), nil
}

// SetPlacement implements metadata.Store: a KV create for version 1, else
// an update under the revision that holds version p.Version-1, so of
// concurrent writers only the first succeeds.
func (s *Store) SetPlacement(ctx context.Context, p metadata.Placement) (metadata.Placement, error) {
	op := fmt.Sprintf("set placement version %d", p.Version)
	if p.Version == 0 {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: version 0", op)
	}
	p.UpdatedAt = metadata.Now()
	data, err := json.Marshal(p)
	if err != nil {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
	}
	if p.Version == 1 {
		if _, err := s.tenants.Create(ctx, placementKey, data); err != nil {
			if isRevisionMismatch(err) {
				return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: a map is stored already: %w", op, metadata.ErrStale)
			}
			return metadata.Placement{}, wrap(op, err)
		}
		return p, nil
	}
	cur, rev, err := s.getPlacement(ctx)
	if errors.Is(err, metadata.ErrNotFound) {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: none stored: %w", op, metadata.ErrStale)
	}
	if err != nil {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
	}
	if cur.Version != p.Version-1 {
		return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: stored version is %d: %w", op, cur.Version, metadata.ErrStale)
	}
	if _, err := s.tenants.Update(ctx, placementKey, data, rev); err != nil {
		if isRevisionMismatch(err) {
			return metadata.Placement{}, fmt.Errorf("metadata/natskv: %s: concurrent update: %w", op, metadata.ErrStale)
		}
		return metadata.Placement{}, wrap(op, err)
	}
	return p, nil
}

// Close does nothing: the store holds no resources of its own, and the
// JetStream context and its connection belong to the caller.
func (s *Store) Close() error { return nil }

// CreateTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrExists if the ID is taken.
func (s *Store) CreateTenant(ctx context.Context, t metadata.Tenant) (metadata.Tenant, error) {
	now := metadata.Now()
	t.Version, t.CreatedAt, t.UpdatedAt = 1, now, now
	t.TombstoneGraceMS = graceOrDefault(t.TombstoneGraceMS)
	data, err := json.Marshal(t)
	if err != nil {
		return metadata.Tenant{}, fmt.Errorf("metadata/natskv: create tenant %q: encode: %w", t.ID, err)
	}
	if _, err := s.tenants.Create(ctx, key(t.ID), data); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return metadata.Tenant{}, fmt.Errorf("metadata/natskv: create tenant %q: %w", t.ID, metadata.ErrExists)
		}
		return metadata.Tenant{}, wrap(fmt.Sprintf("create tenant %q", t.ID), err)
	}
	return t, nil
}

// GetTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the tenant does not exist.
func (s *Store) GetTenant(ctx context.Context, id string) (metadata.Tenant, error) {
	t, _, err := s.getTenant(ctx, id)
	if err != nil {
		return metadata.Tenant{}, fmt.Errorf("metadata/natskv: get tenant %q: %w", id, err)
	}
	return t, nil
}

// getTenant reads a tenant and its KV revision. Its errors carry no package
// prefix; callers add it.
func (s *Store) getTenant(ctx context.Context, id string) (metadata.Tenant, uint64, error) {
	var t metadata.Tenant
	rev, err := get(ctx, s.tenants, id, &t)
	t.TombstoneGraceMS = graceOrDefault(t.TombstoneGraceMS)
	return t, rev, err
}

// graceOrDefault reads a record stored without a tombstone grace (before
// it existed) as the default grace.
func graceOrDefault(ms int64) int64 {
	if ms == 0 {
		return metadata.DefaultTombstoneGraceMS
	}
	return ms
}

// ListTenants implements metadata.Store.
func (s *Store) ListTenants(ctx context.Context) ([]metadata.Tenant, error) {
	out := make([]metadata.Tenant, 0)
	err := s.list(ctx, s.tenants, func(data []byte) error {
		var t metadata.Tenant
		if err := json.Unmarshal(data, &t); err != nil {
			return err
		}
		t.TombstoneGraceMS = graceOrDefault(t.TombstoneGraceMS)
		out = append(out, t)
		return nil
	})
	if err != nil {
		return nil, wrap("list tenants", err)
	}
	slices.SortFunc(out, func(a, b metadata.Tenant) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// UpdateTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrStale if t.Version is not the stored version (or another writer
// got in between its read and its write), and metadata.ErrNotFound if the
// tenant does not exist.
func (s *Store) UpdateTenant(ctx context.Context, t metadata.Tenant) (metadata.Tenant, error) {
	op := fmt.Sprintf("update tenant %q", t.ID)
	cur, rev, err := s.getTenant(ctx, t.ID)
	if err != nil {
		return metadata.Tenant{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
	}
	if cur.Version != t.Version {
		return metadata.Tenant{}, fmt.Errorf("metadata/natskv: %s: have version %d, stored %d: %w",
			op, t.Version, cur.Version, metadata.ErrStale)
	}
	cur.ReplicationFactor = t.ReplicationFactor
	cur.DefaultConsistency = t.DefaultConsistency
	cur.ConflictPolicy = t.ConflictPolicy
	cur.DefaultTTLMs = t.DefaultTTLMs
	cur.TombstoneGraceMS = graceOrDefault(t.TombstoneGraceMS)
	cur.Version++
	cur.UpdatedAt = metadata.Now()
	data, err := json.Marshal(cur)
	if err != nil {
		return metadata.Tenant{}, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
	}
	if _, err := s.tenants.Update(ctx, key(t.ID), data, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			// Someone wrote or deleted the tenant after our read.
			if _, _, gerr := s.getTenant(ctx, t.ID); errors.Is(gerr, metadata.ErrNotFound) {
				return metadata.Tenant{}, fmt.Errorf("metadata/natskv: %s: %w", op, metadata.ErrNotFound)
			}
			return metadata.Tenant{}, fmt.Errorf("metadata/natskv: %s: concurrent update: %w", op, metadata.ErrStale)
		}
		return metadata.Tenant{}, wrap(op, err)
	}
	return cur, nil
}

// DeleteTenant implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the tenant does not exist.
func (s *Store) DeleteTenant(ctx context.Context, id string) error {
	if err := remove(ctx, s.tenants, id); err != nil {
		return fmt.Errorf("metadata/natskv: delete tenant %q: %w", id, err)
	}
	return nil
}

// RegisterNode implements metadata.Store. It retries internally when another
// writer changes the node concurrently, until ctx is done.
func (s *Store) RegisterNode(ctx context.Context, n metadata.Node) (metadata.Node, error) {
	op := fmt.Sprintf("register node %q", n.ID)
	for {
		if err := ctx.Err(); err != nil {
			return metadata.Node{}, wrap(op, err)
		}
		cur, rev, err := s.getNode(ctx, n.ID)
		now := metadata.Now()
		switch {
		case errors.Is(err, metadata.ErrNotFound):
			status := metadata.NodeJoining
			if n.Hold {
				status = metadata.NodeStandby
			}
			cur = metadata.Node{
				ID:           n.ID,
				Status:       status,
				VirtualNodes: n.VirtualNodes,
				Epoch:        n.Epoch,
				RegisteredAt: now,
				LastSeen:     now,
				Protocol:     n.Protocol,
				Transfer:     n.Transfer,
			}
			data, err := json.Marshal(cur)
			if err != nil {
				return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
			}
			if _, err := s.nodes.Create(ctx, key(n.ID), data); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					continue // registered concurrently; refresh it instead
				}
				return metadata.Node{}, wrap(op, err)
			}
			return cur, nil
		case err != nil:
			return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		case cur.Status == metadata.NodeRemoved:
			return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: %w", op, metadata.ErrRemoved)
		}
		if cur.Status == metadata.NodeDown {
			cur.Status = metadata.NodeJoining
		}
		cur.VirtualNodes = n.VirtualNodes
		cur.Epoch = n.Epoch
		cur.Protocol = n.Protocol
		cur.Transfer = n.Transfer
		cur.LastSeen = now
		ok, err := s.putNode(ctx, cur, rev)
		if err != nil {
			return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		if ok {
			cur.Status = metadata.ReadStatus(cur.Status)
			return cur, nil
		}
	}
}

// statusIntentKey holds the last ChangeNodeStatuses (a statusIntent), in
// the nodes bucket; list skips it (the ".").
const statusIntentKey = "cluster.status_intent"

// statusIntent is a ChangeNodeStatuses in progress (Pending) or done.
// KV has no write of two keys in one step, so the step is this one key:
// once it is stored pending, every read (getNode, ListNodes) shows its
// changes as made, all of them (overlay), while the writer stores them
// node by node and then marks it done. A reader that finds it pending
// shows it; a writer (ChangeNodeStatuses) that finds it pending finishes
// it first (rollForward), so one whose writer died does not stay pending.
type statusIntent struct {
	Pending bool                    `json:"pending"`
	Changes []metadata.StatusChange `json:"changes"`
}

// readIntent returns the stored intent and its revision (0: none).
func (s *Store) readIntent(ctx context.Context) (statusIntent, uint64, error) {
	var in statusIntent
	e, err := s.nodes.Get(ctx, statusIntentKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return in, 0, nil
	}
	if err != nil {
		return in, 0, classify(err)
	}
	if err := json.Unmarshal(e.Value(), &in); err != nil {
		return in, 0, fmt.Errorf("decode %s revision %d: %w", statusIntentKey, e.Revision(), err)
	}
	return in, e.Revision(), nil
}

// holds reports whether a pending intent is in force over the stored
// statuses: each of its nodes exists and has one of its From statuses or
// already its To. Otherwise a node changed another way after the intent's
// check (or the intent was refused): it is void, and shows nothing.
func (in statusIntent) holds(status func(id string) (string, bool)) bool {
	if !in.Pending {
		return false
	}
	for _, ch := range in.Changes {
		st, ok := status(ch.ID)
		if !ok || st == metadata.NodeRemoved || (st != ch.To && !slices.Contains(ch.From, st)) {
			return false
		}
	}
	return true
}

// show sets n's status to what a holding intent makes it.
func (in statusIntent) show(n *metadata.Node) {
	for _, ch := range in.Changes {
		if ch.ID == n.ID {
			n.Status = ch.To
		}
	}
}

// rawStatus reads id's stored status (as read, see ReadStatus).
func (s *Store) rawStatus(ctx context.Context, id string) (string, bool, error) {
	n, _, err := s.getRawNode(ctx, id)
	if errors.Is(err, metadata.ErrNotFound) {
		return "", false, nil
	}
	return n.Status, err == nil, err
}

// intentHolds reports whether the pending intent in holds, reading the
// statuses of its nodes.
func (s *Store) intentHolds(ctx context.Context, in statusIntent) (bool, error) {
	if !in.Pending {
		return false, nil
	}
	sts := map[string]string{}
	for _, ch := range in.Changes {
		st, ok, err := s.rawStatus(ctx, ch.ID)
		if err != nil {
			return false, err
		}
		if ok {
			sts[ch.ID] = st
		}
	}
	return in.holds(func(id string) (string, bool) { st, ok := sts[id]; return st, ok }), nil
}

// rollForward stores the changes of the pending intent in (at revision
// rev) node by node, if it holds, and marks it done. It reports whether
// the intent held (its changes are made).
func (s *Store) rollForward(ctx context.Context, in statusIntent, rev uint64) (bool, error) {
	held, err := s.intentHolds(ctx, in)
	if err != nil {
		return false, err
	}
	if held {
		for _, ch := range in.Changes {
			for {
				n, nrev, err := s.getRawNode(ctx, ch.ID)
				if err != nil {
					return false, err
				}
				if n.Status == ch.To || n.Status == metadata.NodeRemoved || !slices.Contains(ch.From, n.Status) {
					break // made, or changed since by a writer that saw the intent
				}
				n.Status = ch.To
				ok, err := s.putNode(ctx, n, nrev)
				if err != nil {
					return false, err
				}
				if ok {
					break
				}
			}
		}
	}
	data, err := json.Marshal(statusIntent{Changes: in.Changes})
	if err != nil {
		return false, fmt.Errorf("encode: %w", err)
	}
	if _, err := s.nodes.Update(ctx, statusIntentKey, data, rev); err != nil && !isRevisionMismatch(err) {
		return false, classify(err)
	}
	return held, nil
}

// ChangeNodeStatuses implements metadata.Store through a statusIntent:
// it checks every node, stores the intent pending under the revision it
// read (so of concurrent calls one wins, the others check again), and
// then rolls it forward. From the intent's store on, every read shows
// all its changes. A writer that read a node before the intent and
// changes its status while the intent is pending voids it (holds):
// readers then see that writer's status, and the intent's other change
// only if already stored. The caller gets ErrStale when the intent was
// void before its first record was stored.
func (s *Store) ChangeNodeStatuses(ctx context.Context, changes []metadata.StatusChange) ([]metadata.Node, error) {
	const op = "change node statuses"
	for {
		if err := ctx.Err(); err != nil {
			return nil, wrap(op, err)
		}
		in, irev, err := s.readIntent(ctx)
		if err != nil {
			return nil, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		if in.Pending {
			if _, err := s.rollForward(ctx, in, irev); err != nil {
				return nil, fmt.Errorf("metadata/natskv: %s: finish the previous change: %w", op, err)
			}
			continue
		}
		out := make([]metadata.Node, 0, len(changes))
		for _, ch := range changes {
			n, _, err := s.getRawNode(ctx, ch.ID)
			if err == nil && n.Status == metadata.NodeRemoved {
				err = metadata.ErrNotFound
			}
			if err != nil {
				return nil, fmt.Errorf("metadata/natskv: %s: node %q: %w", op, ch.ID, err)
			}
			if !slices.Contains(ch.From, n.Status) {
				return nil, fmt.Errorf("metadata/natskv: %s: node %q status is %q, not one of %q: %w", op, ch.ID, n.Status, ch.From, metadata.ErrStale)
			}
			n.Status = ch.To
			out = append(out, n)
		}
		next := statusIntent{Pending: true, Changes: changes}
		data, err := json.Marshal(next)
		if err != nil {
			return nil, fmt.Errorf("metadata/natskv: %s: encode: %w", op, err)
		}
		var rev uint64
		if irev == 0 {
			rev, err = s.nodes.Create(ctx, statusIntentKey, data)
		} else {
			rev, err = s.nodes.Update(ctx, statusIntentKey, data, irev)
		}
		if err != nil {
			if isRevisionMismatch(err) {
				continue // another change got in first: check again
			}
			return nil, wrap(op, err)
		}
		held, err := s.rollForward(ctx, next, rev)
		if err != nil {
			return nil, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		if !held {
			return nil, fmt.Errorf("metadata/natskv: %s: a node changed concurrently: %w", op, metadata.ErrStale)
		}
		return out, nil
	}
}

// GetNode implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist.
func (s *Store) GetNode(ctx context.Context, id string) (metadata.Node, error) {
	n, _, err := s.getNode(ctx, id)
	if err == nil && n.Status == metadata.NodeRemoved {
		err = metadata.ErrNotFound
	}
	if err != nil {
		return metadata.Node{}, fmt.Errorf("metadata/natskv: get node %q: %w", id, err)
	}
	return n, nil
}

// getNode returns id's record, a removed id's marker included, with the
// status a pending statusIntent that holds gives it, and the record's
// revision. Every writer of a node record reads it here, so what it
// writes back includes the intent's change. The intent is read again
// after the record: an intent that was done and replaced between the two
// reads would otherwise be applied to a record the later intent already
// changed (read as pending, it showed x's old change over the newer
// record's revision, and a heartbeat wrote it back: x and y then differed;
// the conformance test met it under CI load), so the read is tried again.
func (s *Store) getNode(ctx context.Context, id string) (metadata.Node, uint64, error) {
	for {
		in, irev, err := s.readIntent(ctx)
		if err != nil {
			return metadata.Node{}, 0, err
		}
		n, rev, err := s.getRawNode(ctx, id)
		if err != nil || n.Status == metadata.NodeRemoved {
			return n, rev, err
		}
		held := false
		if in.Pending {
			if held, err = s.intentHolds(ctx, in); err != nil {
				return metadata.Node{}, 0, err
			}
		}
		_, again, err := s.readIntent(ctx)
		if err != nil {
			return metadata.Node{}, 0, err
		}
		if again != irev {
			if err := ctx.Err(); err != nil {
				return metadata.Node{}, 0, err
			}
			continue // the intent changed meanwhile
		}
		if held {
			in.show(&n)
		}
		return n, rev, nil
	}
}

// getRawNode returns id's record as stored, a removed id's marker included.
func (s *Store) getRawNode(ctx context.Context, id string) (metadata.Node, uint64, error) {
	var n metadata.Node
	rev, err := get(ctx, s.nodes, id, &n)
	n.Status = metadata.ReadStatus(n.Status)
	return n, rev, err
}

// putNode writes n if the node's revision is still rev. It reports false,
// without error, if the node changed since.
func (s *Store) putNode(ctx context.Context, n metadata.Node, rev uint64) (bool, error) {
	data, err := json.Marshal(n)
	if err != nil {
		return false, fmt.Errorf("encode: %w", err)
	}
	if _, err := s.nodes.Update(ctx, key(n.ID), data, rev); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, nil
		}
		return false, classify(err)
	}
	return true, nil
}

// listAttempts bounds how often ListNodes lists again because a
// ChangeNodeStatuses intent changed while it read.
const listAttempts = 20

// ListNodes implements metadata.Store. The records are read one by one,
// so it reads the statusIntent before and after them and lists again when
// it changed in between: the list shows a ChangeNodeStatuses whole or not
// at all (a pending intent that holds is shown as made).
func (s *Store) ListNodes(ctx context.Context) ([]metadata.Node, error) {
	for range listAttempts {
		in, rev, err := s.readIntent(ctx)
		if err != nil {
			return nil, wrap("list nodes", err)
		}
		out := make([]metadata.Node, 0)
		stored := map[string]string{} // every record's status, removed markers too
		err = s.list(ctx, s.nodes, func(data []byte) error {
			var n metadata.Node
			if err := json.Unmarshal(data, &n); err != nil {
				return err
			}
			n.Status = metadata.ReadStatus(n.Status)
			stored[n.ID] = n.Status
			if n.Status != metadata.NodeRemoved {
				out = append(out, n)
			}
			return nil
		})
		if err != nil {
			return nil, wrap("list nodes", err)
		}
		_, again, err := s.readIntent(ctx)
		if err != nil {
			return nil, wrap("list nodes", err)
		}
		if again != rev {
			continue
		}
		if in.holds(func(id string) (string, bool) { st, ok := stored[id]; return st, ok }) {
			for i := range out {
				in.show(&out[i])
			}
		}
		slices.SortFunc(out, func(a, b metadata.Node) int { return strings.Compare(a.ID, b.ID) })
		return out, nil
	}
	return nil, fmt.Errorf("metadata/natskv: list nodes: node statuses changed during %d reads in a row: %w", listAttempts, metadata.ErrUnavailable)
}

// SetNodeStatus implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist. It retries internally when
// another writer changes the node concurrently, until ctx is done.
func (s *Store) SetNodeStatus(ctx context.Context, id string, status string) (metadata.Node, error) {
	return s.updateNode(ctx, id, fmt.Sprintf("set node %q status %q", id, status), func(n *metadata.Node) error {
		n.Status = status
		return nil
	})
}

// ChangeNodeStatus implements metadata.Store: the check of the status and
// the write are one step under the record's revision.
func (s *Store) ChangeNodeStatus(ctx context.Context, id string, from []string, status string) (metadata.Node, error) {
	return s.updateNode(ctx, id, fmt.Sprintf("change node %q status to %q", id, status), func(n *metadata.Node) error {
		if !slices.Contains(from, n.Status) {
			return fmt.Errorf("status is %q, not one of %q: %w", n.Status, from, metadata.ErrStale)
		}
		n.Status = status
		return nil
	})
}

// SetNodeTransfer implements metadata.Store.
func (s *Store) SetNodeTransfer(ctx context.Context, id string, t *metadata.TransferStatus) (metadata.Node, error) {
	return s.updateNode(ctx, id, fmt.Sprintf("set node %q transfer", id), func(n *metadata.Node) error {
		n.Transfer = t
		return nil
	})
}

// updateNode applies change to id's record and writes it under the
// revision it read, retrying when another writer got in first, until ctx is
// done. An error from change is returned (wrapped) and nothing is written.
func (s *Store) updateNode(ctx context.Context, id, op string, change func(*metadata.Node) error) (metadata.Node, error) {
	for {
		if err := ctx.Err(); err != nil {
			return metadata.Node{}, wrap(op, err)
		}
		cur, rev, err := s.getNode(ctx, id)
		if err == nil && cur.Status == metadata.NodeRemoved {
			err = metadata.ErrNotFound
		}
		if err == nil {
			err = change(&cur)
		}
		if err != nil {
			return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		ok, err := s.putNode(ctx, cur, rev)
		if err != nil {
			return metadata.Node{}, fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		if ok {
			cur.Status = metadata.ReadStatus(cur.Status)
			return cur, nil
		}
	}
}

// RemoveNode implements metadata.Store. It returns an error wrapping
// metadata.ErrNotFound if the node does not exist. The node's record is
// replaced, under its revision, by a removed marker: a RegisterNode racing
// with it either refreshes the node before (and the removal then retries on
// the new revision) or sees the marker.
func (s *Store) RemoveNode(ctx context.Context, id string) error {
	op := fmt.Sprintf("remove node %q", id)
	for {
		if err := ctx.Err(); err != nil {
			return wrap(op, err)
		}
		cur, rev, err := s.getNode(ctx, id)
		if err == nil && cur.Status == metadata.NodeRemoved {
			err = metadata.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		cur.Status = metadata.NodeRemoved
		ok, err := s.putNode(ctx, cur, rev)
		if err != nil {
			return fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		if ok {
			return nil
		}
	}
}

// AdmitNode implements metadata.Store: it deletes a removed id's marker,
// under its revision. It returns an error wrapping metadata.ErrNotFound if
// id is not a removed node.
func (s *Store) AdmitNode(ctx context.Context, id string) error {
	op := fmt.Sprintf("admit node %q", id)
	for {
		if err := ctx.Err(); err != nil {
			return wrap(op, err)
		}
		cur, rev, err := s.getNode(ctx, id)
		if err == nil && cur.Status != metadata.NodeRemoved {
			err = metadata.ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("metadata/natskv: %s: %w", op, err)
		}
		err = s.nodes.Delete(ctx, key(id), jetstream.LastRevision(rev))
		if err == nil {
			return nil
		}
		if !isRevisionMismatch(err) {
			return wrap(op, err)
		}
	}
}

// get reads id's record into v and returns its revision. The error wraps
// metadata.ErrNotFound or, for transport trouble, metadata.ErrUnavailable.
func get(ctx context.Context, kv jetstream.KeyValue, id string, v any) (uint64, error) {
	e, err := kv.Get(ctx, key(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return 0, metadata.ErrNotFound
		}
		return 0, classify(err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return 0, fmt.Errorf("decode revision %d: %w", e.Revision(), err)
	}
	return e.Revision(), nil
}

// remove deletes id's record, which must exist. The delete names the revision
// it saw, so a concurrent delete is reported as metadata.ErrNotFound rather
// than succeeding twice.
func remove(ctx context.Context, kv jetstream.KeyValue, id string) error {
	for {
		if err := ctx.Err(); err != nil {
			return classify(err)
		}
		e, err := kv.Get(ctx, key(id))
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return metadata.ErrNotFound
			}
			return classify(err)
		}
		err = kv.Delete(ctx, key(id), jetstream.LastRevision(e.Revision()))
		if err == nil {
			return nil
		}
		if !isRevisionMismatch(err) {
			return classify(err)
		}
		// Changed since we read it: look again.
	}
}

// list calls fn with the value of every record (not cluster.* keys) in
// kv, in key order. The keys come from the bucket's stream state (the
// subjects it holds), then each is read: a watcher's "all initial values
// delivered" marker counts messages, and a record rewritten while the
// watch is under way (a node's heartbeat) is delivered twice and counted
// twice, so the marker came early and a listing could miss records
// (TestListNodesCompleteUnderHeartbeats: 14 of 300 listings short). A
// short node list would have moved partitions off live nodes.
func (s *Store) list(ctx context.Context, kv jetstream.KeyValue, fn func([]byte) error) error {
	stream, err := s.js.Stream(ctx, "KV_"+kv.Bucket())
	if err != nil {
		return err
	}
	prefix := "$KV." + kv.Bucket() + "."
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		k := strings.TrimPrefix(subj, prefix)
		if strings.Contains(k, ".") { // not a record (cluster.*)
			continue
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			continue // deleted since, or a delete marker
		}
		if err != nil {
			return err
		}
		if err := fn(e.Value()); err != nil {
			return fmt.Errorf("decode key %q revision %d: %w", e.Key(), e.Revision(), err)
		}
	}
	return nil
}

// isRevisionMismatch reports whether err is JetStream's "wrong last sequence"
// answer to a conditional write.
func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// key maps an ID to a valid KV key (see the package doc).
func key(id string) string {
	if id != "" && strings.IndexFunc(id, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
	}) < 0 {
		return id
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// wrap adds the package prefix and op to err, marking transport failures
// with metadata.ErrUnavailable.
func wrap(op string, err error) error {
	return fmt.Errorf("metadata/natskv: %s: %w", op, classify(err))
}

// classify returns err, additionally wrapping metadata.ErrUnavailable when it
// means JetStream could not be reached or did not answer in time.
func classify(err error) error {
	if err == nil || errors.Is(err, metadata.ErrUnavailable) || !unavailable(err) {
		return err
	}
	return fmt.Errorf("%w: %w", metadata.ErrUnavailable, err)
}

func unavailable(err error) bool {
	for _, target := range []error{
		context.DeadlineExceeded,
		nats.ErrTimeout,
		nats.ErrNoResponders,
		nats.ErrConnectionClosed,
		nats.ErrConnectionDraining,
		nats.ErrConnectionReconnecting,
		nats.ErrDisconnected,
		nats.ErrNoServers,
		nats.ErrStaleConnection,
		nats.ErrMaxConnectionsExceeded,
		jetstream.ErrNoStreamResponse,
		jetstream.ErrJetStreamNotEnabled,
		jetstream.ErrJetStreamNotEnabledForAccount,
		jetstream.ErrConnectionClosed,
		jetstream.ErrServerShutdown,
		jetstream.ErrNoHeartbeat,
		jetstream.ErrAsyncPublishTimeout,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	// 503: JetStream is temporarily unavailable (no leader, no quorum).
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503
}
