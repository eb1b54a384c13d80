// Package metadatatest is the conformance suite every metadata.Store
// implementation must pass.
package metadatatest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/metadata"
)

// Run runs the conformance suite as subtests of t. open is called once per
// subtest with that subtest's *testing.T and must return a Store that holds no
// tenants and no nodes; open registers whatever cleanup the Store needs
// (including Close) on the t it is given. Subtests run one after another.
func Run(t *testing.T, open func(t *testing.T) metadata.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s metadata.Store)
	}{
		{"CreateGetTenant", testCreateGetTenant},
		{"CreateTenantExists", testCreateTenantExists},
		{"GetTenantNotFound", testGetTenantNotFound},
		{"ListTenantsEmpty", testListTenantsEmpty},
		{"ListTenantsSorted", testListTenantsSorted},
		{"UpdateTenant", testUpdateTenant},
		{"TenantDefaultTTL", testTenantDefaultTTL},
		{"UpdateTenantStale", testUpdateTenantStale},
		{"UpdateTenantNotFound", testUpdateTenantNotFound},
		{"UpdateTenantConcurrent", testUpdateTenantConcurrent},
		{"DeleteTenant", testDeleteTenant},
		{"RegisterNodeNew", testRegisterNodeNew},
		{"RegisterNodeUpsert", testRegisterNodeUpsert},
		{"RegisterNodeConcurrent", testRegisterNodeConcurrent},
		{"NodeEpochRange", testNodeEpochRange},
		{"GetNodeNotFound", testGetNodeNotFound},
		{"SetNodeStatus", testSetNodeStatus},
		{"RegisterNodeHold", testRegisterNodeHold},
		{"NodeProtocolTransfer", testNodeProtocolTransfer},
		{"ChangeNodeStatus", testChangeNodeStatus},
		{"ChangeNodeStatusConcurrent", testChangeNodeStatusConcurrent},
		{"ChangeNodeStatuses", testChangeNodeStatuses},
		{"ChangeNodeStatusesAtomic", testChangeNodeStatusesAtomic},
		{"RemoveNode", testRemoveNode},
		{"RemoveNodeRacesRegister", testRemoveNodeRacesRegister},
		{"ListNodes", testListNodes},
		{"ContextSecretFirstWins", testContextSecretFirstWins},
		{"ContextSecretConcurrent", testContextSecretConcurrent},
		{"PartitionsFirstWins", testPartitionsFirstWins},
		{"PartitionsConcurrent", testPartitionsConcurrent},
		{"PlacementCompareAndSet", testPlacementCompareAndSet},
		{"PlacementConcurrent", testPlacementConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t)
			if s == nil {
				t.Fatal("metadatatest: open returned a nil Store")
			}
			tc.fn(t, s)
		})
	}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// window returns a check that a store-set time lies between the window's
// start and the check, is UTC and has at most microsecond precision.
func window() func(t *testing.T, what string, got time.Time) {
	start := time.Now().UTC().Truncate(time.Microsecond)
	return func(t *testing.T, what string, got time.Time) {
		t.Helper()
		end := time.Now()
		if got.Before(start) || got.After(end) {
			t.Errorf("%s = %v, want within [%v, %v]", what, got, start, end)
		}
		if got.Location() != time.UTC {
			t.Errorf("%s = %v has location %v, want UTC", what, got, got.Location())
		}
		if got.Nanosecond()%1000 != 0 {
			t.Errorf("%s = %v is not truncated to microseconds", what, got)
		}
	}
}

func newTenant(id string) metadata.Tenant {
	return metadata.Tenant{
		ID:                 id,
		ReplicationFactor:  3,
		DefaultConsistency: "quorum",
		ConflictPolicy:     "lww",
	}
}

func mustCreateTenant(t *testing.T, s metadata.Store, tn metadata.Tenant) metadata.Tenant {
	t.Helper()
	got, err := s.CreateTenant(testCtx(t), tn)
	if err != nil {
		t.Fatalf("CreateTenant(%q): %v", tn.ID, err)
	}
	return got
}

func mustRegisterNode(t *testing.T, s metadata.Store, n metadata.Node) metadata.Node {
	t.Helper()
	got, err := s.RegisterNode(testCtx(t), n)
	if err != nil {
		t.Fatalf("RegisterNode(%q): %v", n.ID, err)
	}
	return got
}

func wantErr(t *testing.T, call string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want one wrapping %v", call, err, target)
	}
}

func sameTenant(t *testing.T, what string, got, want metadata.Tenant) {
	t.Helper()
	if got.ID != want.ID || got.ReplicationFactor != want.ReplicationFactor ||
		got.DefaultConsistency != want.DefaultConsistency || got.ConflictPolicy != want.ConflictPolicy ||
		got.DefaultTTLMs != want.DefaultTTLMs || got.Version != want.Version || !got.CreatedAt.Equal(want.CreatedAt) || !got.UpdatedAt.Equal(want.UpdatedAt) ||
		got.TombstoneGraceMS != want.TombstoneGraceMS {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func sameNode(t *testing.T, what string, got, want metadata.Node) {
	t.Helper()
	if got.ID != want.ID || got.Status != want.Status || got.VirtualNodes != want.VirtualNodes ||
		got.Epoch != want.Epoch || !got.RegisteredAt.Equal(want.RegisteredAt) || !got.LastSeen.Equal(want.LastSeen) ||
		got.Protocol != want.Protocol || !sameTransfer(got.Transfer, want.Transfer) {
		t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

func testCreateGetTenant(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	in := metadata.Tenant{
		ID:                 "acme",
		ReplicationFactor:  5,
		DefaultConsistency: "all",
		ConflictPolicy:     "siblings",
		TombstoneGraceMS:   3_600_000,
		// The store must ignore these.
		Version:   42,
		CreatedAt: time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC),
		UpdatedAt: time.Date(2002, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	check := window()
	got, err := s.CreateTenant(ctx, in)
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	if got.ID != in.ID || got.ReplicationFactor != 5 || got.DefaultConsistency != "all" || got.ConflictPolicy != "siblings" ||
		got.TombstoneGraceMS != 3_600_000 {
		t.Errorf("CreateTenant returned %+v, want the input's fields", got)
	}
	// Created without a grace: the default.
	if d := mustCreateTenant(t, s, newTenant("nograce")); d.TombstoneGraceMS != metadata.DefaultTombstoneGraceMS {
		t.Errorf("CreateTenant without a grace: TombstoneGraceMS = %d, want the default %d", d.TombstoneGraceMS, metadata.DefaultTombstoneGraceMS)
	}
	if got.Version != 1 {
		t.Errorf("CreateTenant Version = %d, want 1", got.Version)
	}
	check(t, "CreatedAt", got.CreatedAt)
	if !got.UpdatedAt.Equal(got.CreatedAt) {
		t.Errorf("UpdatedAt = %v, want CreatedAt %v", got.UpdatedAt, got.CreatedAt)
	}

	read, err := s.GetTenant(ctx, "acme")
	if err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	sameTenant(t, "GetTenant after CreateTenant", read, got)
	if read.CreatedAt.Location() != time.UTC || read.UpdatedAt.Location() != time.UTC {
		t.Errorf("GetTenant times %v, %v are not UTC", read.CreatedAt, read.UpdatedAt)
	}
}

func testCreateTenantExists(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	first := mustCreateTenant(t, s, newTenant("dup"))
	other := newTenant("dup")
	other.ReplicationFactor = 1
	_, err := s.CreateTenant(ctx, other)
	wantErr(t, "second CreateTenant", err, metadata.ErrExists)
	got, err := s.GetTenant(ctx, "dup")
	if err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	sameTenant(t, "tenant after failed CreateTenant", got, first)
}

func testGetTenantNotFound(t *testing.T, s metadata.Store) {
	_, err := s.GetTenant(testCtx(t), "nope")
	wantErr(t, "GetTenant(missing)", err, metadata.ErrNotFound)
}

func testListTenantsEmpty(t *testing.T, s metadata.Store) {
	got, err := s.ListTenants(testCtx(t))
	if err != nil {
		t.Fatalf("ListTenants: %v", err)
	}
	if got == nil || len(got) != 0 {
		t.Fatalf("ListTenants on an empty store = %#v, want a non-nil empty slice", got)
	}
}

func testListTenantsSorted(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	// Byte order differs from most locales' collation for these.
	ids := []string{"b", "a_1", "a1", "a-1", "a", "0z", "zz-top"}
	want := map[string]metadata.Tenant{}
	for i, id := range ids {
		tn := newTenant(id)
		tn.ReplicationFactor = 1 + i%7
		want[id] = mustCreateTenant(t, s, tn)
	}
	got, err := s.ListTenants(ctx)
	if err != nil {
		t.Fatalf("ListTenants: %v", err)
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	if len(got) != len(sorted) {
		t.Fatalf("ListTenants returned %d tenants, want %d: %+v", len(got), len(sorted), got)
	}
	for i, id := range sorted {
		if got[i].ID != id {
			t.Fatalf("ListTenants order: got %v, want %v", tenantIDs(got), sorted)
		}
		sameTenant(t, "ListTenants entry "+id, got[i], want[id])
	}
}

func tenantIDs(ts []metadata.Tenant) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.ID
	}
	return out
}

// testTenantDefaultTTL: default_ttl_ms is stored on create (0 when
// unset), kept by an update that does not change it, changed by one that
// does, and read back by get and list.
func testTenantDefaultTTL(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	plain := mustCreateTenant(t, s, newTenant("ttl-none"))
	if plain.DefaultTTLMs != 0 {
		t.Fatalf("a tenant created without a TTL has DefaultTTLMs %d", plain.DefaultTTLMs)
	}
	in := newTenant("ttl")
	in.DefaultTTLMs = 600_000
	created := mustCreateTenant(t, s, in)
	if created.DefaultTTLMs != 600_000 {
		t.Fatalf("CreateTenant returned DefaultTTLMs %d, want 600000", created.DefaultTTLMs)
	}
	read, err := s.GetTenant(ctx, "ttl")
	if err != nil {
		t.Fatal(err)
	}
	sameTenant(t, "GetTenant after create", read, created)
	read.ReplicationFactor = 2
	kept, err := s.UpdateTenant(ctx, read)
	if err != nil || kept.DefaultTTLMs != 600_000 {
		t.Fatalf("UpdateTenant of another field: %+v, %v; want DefaultTTLMs kept", kept, err)
	}
	kept.DefaultTTLMs = 315_360_000_000
	upd, err := s.UpdateTenant(ctx, kept)
	if err != nil || upd.DefaultTTLMs != 315_360_000_000 {
		t.Fatalf("UpdateTenant of DefaultTTLMs: %+v, %v", upd, err)
	}
	list, err := s.ListTenants(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tn := range list {
		if tn.ID == "ttl" {
			sameTenant(t, "ListTenants", tn, upd)
		}
	}
	upd.DefaultTTLMs = 0
	cleared, err := s.UpdateTenant(ctx, upd)
	if err != nil || cleared.DefaultTTLMs != 0 {
		t.Fatalf("UpdateTenant clearing DefaultTTLMs: %+v, %v", cleared, err)
	}
}

func testUpdateTenant(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	created := mustCreateTenant(t, s, newTenant("upd"))
	in := created
	in.ReplicationFactor = 5
	in.DefaultConsistency = "one"
	in.ConflictPolicy = "siblings"
	in.TombstoneGraceMS = 1000
	in.CreatedAt = time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC) // must be ignored
	check := window()
	got, err := s.UpdateTenant(ctx, in)
	if err != nil {
		t.Fatalf("UpdateTenant: %v", err)
	}
	if got.Version != 2 {
		t.Errorf("Version = %d, want 2", got.Version)
	}
	if got.ReplicationFactor != 5 || got.DefaultConsistency != "one" || got.ConflictPolicy != "siblings" || got.TombstoneGraceMS != 1000 {
		t.Errorf("UpdateTenant returned %+v, want the new settings", got)
	}
	if !got.CreatedAt.Equal(created.CreatedAt) {
		t.Errorf("CreatedAt = %v, want unchanged %v", got.CreatedAt, created.CreatedAt)
	}
	check(t, "UpdatedAt", got.UpdatedAt)
	if got.UpdatedAt.Before(created.UpdatedAt) {
		t.Errorf("UpdatedAt went back: %v before %v", got.UpdatedAt, created.UpdatedAt)
	}
	read, err := s.GetTenant(ctx, "upd")
	if err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	sameTenant(t, "GetTenant after UpdateTenant", read, got)

	// A second update from the returned value moves on to version 3.
	got.ReplicationFactor = 7
	third, err := s.UpdateTenant(ctx, got)
	if err != nil {
		t.Fatalf("second UpdateTenant: %v", err)
	}
	if third.Version != 3 || third.ReplicationFactor != 7 {
		t.Errorf("second UpdateTenant = %+v, want version 3 and RF 7", third)
	}
}

func testUpdateTenantStale(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	created := mustCreateTenant(t, s, newTenant("stale"))

	a, b := created, created
	a.ReplicationFactor = 1
	b.ReplicationFactor = 5
	won, err := s.UpdateTenant(ctx, a)
	if err != nil {
		t.Fatalf("first updater: %v", err)
	}
	_, err = s.UpdateTenant(ctx, b)
	wantErr(t, "second updater with the same version", err, metadata.ErrStale)

	future := won
	future.Version = won.Version + 5
	_, err = s.UpdateTenant(ctx, future)
	wantErr(t, "UpdateTenant with a version from the future", err, metadata.ErrStale)

	got, err := s.GetTenant(ctx, "stale")
	if err != nil {
		t.Fatalf("GetTenant: %v", err)
	}
	sameTenant(t, "tenant after stale updates", got, won)
}

func testUpdateTenantNotFound(t *testing.T, s metadata.Store) {
	tn := newTenant("ghost")
	tn.Version = 1
	_, err := s.UpdateTenant(testCtx(t), tn)
	wantErr(t, "UpdateTenant(missing)", err, metadata.ErrNotFound)
}

func testUpdateTenantConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	const updaters, rounds = 8, 5
	cur := mustCreateTenant(t, s, newTenant("race"))
	for round := range rounds {
		var (
			wg      sync.WaitGroup
			start   = make(chan struct{})
			results = make([]metadata.Tenant, updaters)
			errs    = make([]error, updaters)
		)
		for i := range updaters {
			wg.Add(1)
			go func() {
				defer wg.Done()
				in := cur
				in.ReplicationFactor = 1 + i%7
				<-start
				results[i], errs[i] = s.UpdateTenant(ctx, in)
			}()
		}
		close(start)
		wg.Wait()

		winner := -1
		for i, err := range errs {
			switch {
			case err == nil:
				if winner >= 0 {
					t.Fatalf("round %d: updaters %d and %d both won with version %d", round, winner, i, cur.Version)
				}
				winner = i
			case !errors.Is(err, metadata.ErrStale):
				t.Fatalf("round %d: updater %d: error %v, want one wrapping %v", round, i, err, metadata.ErrStale)
			}
		}
		if winner < 0 {
			t.Fatalf("round %d: no updater won", round)
		}
		w := results[winner]
		if w.Version != cur.Version+1 || w.ReplicationFactor != 1+winner%7 {
			t.Fatalf("round %d: winner %d returned %+v, want version %d and RF %d", round, winner, w, cur.Version+1, 1+winner%7)
		}
		got, err := s.GetTenant(ctx, "race")
		if err != nil {
			t.Fatalf("GetTenant: %v", err)
		}
		sameTenant(t, fmt.Sprintf("round %d: stored tenant", round), got, w)
		cur = w
	}
}

func testDeleteTenant(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	mustCreateTenant(t, s, newTenant("gone"))
	mustCreateTenant(t, s, newTenant("kept"))
	if err := s.DeleteTenant(ctx, "gone"); err != nil {
		t.Fatalf("DeleteTenant: %v", err)
	}
	_, err := s.GetTenant(ctx, "gone")
	wantErr(t, "GetTenant after DeleteTenant", err, metadata.ErrNotFound)
	err = s.DeleteTenant(ctx, "gone")
	wantErr(t, "second DeleteTenant", err, metadata.ErrNotFound)
	err = s.DeleteTenant(ctx, "never")
	wantErr(t, "DeleteTenant(missing)", err, metadata.ErrNotFound)
	tn := newTenant("gone")
	tn.Version = 1
	_, err = s.UpdateTenant(ctx, tn)
	wantErr(t, "UpdateTenant after DeleteTenant", err, metadata.ErrNotFound)

	list, err := s.ListTenants(ctx)
	if err != nil {
		t.Fatalf("ListTenants: %v", err)
	}
	if ids := tenantIDs(list); !slices.Equal(ids, []string{"kept"}) {
		t.Fatalf("ListTenants after delete = %v, want [kept]", ids)
	}

	// The ID is free again, and the new tenant starts over.
	again := mustCreateTenant(t, s, newTenant("gone"))
	if again.Version != 1 {
		t.Errorf("re-created tenant Version = %d, want 1", again.Version)
	}
}

func testRegisterNodeNew(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	check := window()
	got, err := s.RegisterNode(ctx, metadata.Node{
		ID:           "node-1",
		Status:       metadata.NodeDown, // ignored
		VirtualNodes: 128,
		Epoch:        7,
		RegisteredAt: time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), // ignored
		LastSeen:     time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC), // ignored
	})
	if err != nil {
		t.Fatalf("RegisterNode: %v", err)
	}
	if got.ID != "node-1" || got.Status != metadata.NodeJoining || got.VirtualNodes != 128 || got.Epoch != 7 {
		t.Errorf("RegisterNode = %+v, want node-1 joining with 128 vnodes, epoch 7", got)
	}
	check(t, "RegisteredAt", got.RegisteredAt)
	if !got.LastSeen.Equal(got.RegisteredAt) {
		t.Errorf("LastSeen = %v, want RegisteredAt %v", got.LastSeen, got.RegisteredAt)
	}
	read, err := s.GetNode(ctx, "node-1")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	sameNode(t, "GetNode after RegisterNode", read, got)
}

func testRegisterNodeUpsert(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	first := mustRegisterNode(t, s, metadata.Node{ID: "n1", VirtualNodes: 64, Epoch: 1})

	// joining stays joining; VirtualNodes, Epoch and LastSeen change.
	check := window()
	second := mustRegisterNode(t, s, metadata.Node{ID: "n1", Status: metadata.NodeDraining, VirtualNodes: 32, Epoch: 2})
	want := first
	want.VirtualNodes, want.Epoch, want.LastSeen = 32, 2, second.LastSeen
	sameNode(t, "re-registered active node", second, want)
	check(t, "LastSeen", second.LastSeen)

	// leaving is kept; a legacy "draining" reads as leaving.
	if _, err := s.SetNodeStatus(ctx, "n1", metadata.NodeDraining); err != nil {
		t.Fatalf("SetNodeStatus(draining): %v", err)
	}
	third := mustRegisterNode(t, s, metadata.Node{ID: "n1", VirtualNodes: 16, Epoch: 3})
	want.Status, want.VirtualNodes, want.Epoch, want.LastSeen = metadata.NodeLeaving, 16, 3, third.LastSeen
	sameNode(t, "re-registered draining node", third, want)
	if third.LastSeen.Before(second.LastSeen) {
		t.Errorf("LastSeen went back: %v before %v", third.LastSeen, second.LastSeen)
	}

	// A legacy "down" comes back joining: it has to catch up.
	if _, err := s.SetNodeStatus(ctx, "n1", metadata.NodeDown); err != nil {
		t.Fatalf("SetNodeStatus(down): %v", err)
	}
	fourth := mustRegisterNode(t, s, metadata.Node{ID: "n1", VirtualNodes: 16, Epoch: 4})
	want.Status, want.Epoch, want.LastSeen = metadata.NodeJoining, 4, fourth.LastSeen
	sameNode(t, "re-registered down node", fourth, want)

	read, err := s.GetNode(ctx, "n1")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	sameNode(t, "GetNode after upserts", read, fourth)
}

func testRegisterNodeConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	const n = 8
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		errs  = make([]error, n)
		got   = make([]metadata.Node, n)
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			got[i], errs[i] = s.RegisterNode(ctx, metadata.Node{ID: "busy", VirtualNodes: 10 + i, Epoch: uint64(i)})
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("RegisterNode %d: %v", i, err)
		}
	}
	read, err := s.GetNode(ctx, "busy")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	if read.Status != metadata.NodeJoining || read.VirtualNodes != 10+int(read.Epoch) {
		t.Errorf("GetNode = %+v, want joining with one registration's VirtualNodes and Epoch", read)
	}
	for i := range got {
		if !got[i].RegisteredAt.Equal(read.RegisteredAt) {
			t.Errorf("registration %d: RegisteredAt %v, stored %v: concurrent registrations must agree", i, got[i].RegisteredAt, read.RegisteredAt)
		}
	}
	list, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	if len(list) != 1 {
		t.Errorf("ListNodes = %+v, want exactly one node", list)
	}
}

func testNodeEpochRange(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	for _, epoch := range []uint64{0, 1, math.MaxInt64, math.MaxInt64 + 1, math.MaxUint64 - 1, math.MaxUint64} {
		id := fmt.Sprintf("epoch-%d", epoch)
		got := mustRegisterNode(t, s, metadata.Node{ID: id, VirtualNodes: 1, Epoch: epoch})
		if got.Epoch != epoch {
			t.Errorf("RegisterNode epoch %d returned %d", epoch, got.Epoch)
		}
		read, err := s.GetNode(ctx, id)
		if err != nil {
			t.Fatalf("GetNode(%q): %v", id, err)
		}
		if read.Epoch != epoch {
			t.Errorf("epoch %d read back as %d", epoch, read.Epoch)
		}
	}
}

func testGetNodeNotFound(t *testing.T, s metadata.Store) {
	_, err := s.GetNode(testCtx(t), "nope")
	wantErr(t, "GetNode(missing)", err, metadata.ErrNotFound)
}

func testSetNodeStatus(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	reg := mustRegisterNode(t, s, metadata.Node{ID: "st", VirtualNodes: 8, Epoch: 9})
	for _, status := range []string{metadata.NodeLeaving, metadata.NodeDown, metadata.NodeActive, metadata.NodeStandby,
		metadata.NodeJoining, metadata.NodeLeft, metadata.NodeDraining} {
		got, err := s.SetNodeStatus(ctx, "st", status)
		if err != nil {
			t.Fatalf("SetNodeStatus(%q): %v", status, err)
		}
		want := reg
		want.Status = metadata.ReadStatus(status)
		sameNode(t, "SetNodeStatus("+status+")", got, want)
		read, err := s.GetNode(ctx, "st")
		if err != nil {
			t.Fatalf("GetNode: %v", err)
		}
		sameNode(t, "GetNode after SetNodeStatus("+status+")", read, want)
	}
	_, err := s.SetNodeStatus(ctx, "missing", metadata.NodeDown)
	wantErr(t, "SetNodeStatus(missing)", err, metadata.ErrNotFound)
}

func testRemoveNode(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	old := mustRegisterNode(t, s, metadata.Node{ID: "rm", VirtualNodes: 8, Epoch: 1})
	mustRegisterNode(t, s, metadata.Node{ID: "stay", VirtualNodes: 8, Epoch: 1})
	if _, err := s.SetNodeStatus(ctx, "rm", metadata.NodeDraining); err != nil {
		t.Fatalf("SetNodeStatus: %v", err)
	}
	if err := s.RemoveNode(ctx, "rm"); err != nil {
		t.Fatalf("RemoveNode: %v", err)
	}
	_, err := s.GetNode(ctx, "rm")
	wantErr(t, "GetNode after RemoveNode", err, metadata.ErrNotFound)
	err = s.RemoveNode(ctx, "rm")
	wantErr(t, "second RemoveNode", err, metadata.ErrNotFound)
	err = s.RemoveNode(ctx, "never")
	wantErr(t, "RemoveNode(missing)", err, metadata.ErrNotFound)
	_, err = s.SetNodeStatus(ctx, "rm", metadata.NodeActive)
	wantErr(t, "SetNodeStatus after RemoveNode", err, metadata.ErrNotFound)

	list, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	if len(list) != 1 || list[0].ID != "stay" {
		t.Fatalf("ListNodes after RemoveNode = %+v, want only stay", list)
	}

	// A removed id stays removed: its heartbeat must not bring it back.
	_, err = s.RegisterNode(ctx, metadata.Node{ID: "rm", VirtualNodes: 4, Epoch: 2})
	wantErr(t, "RegisterNode after RemoveNode", err, metadata.ErrRemoved)
	if _, err := s.GetNode(ctx, "rm"); !errors.Is(err, metadata.ErrNotFound) {
		t.Fatalf("GetNode after a refused RegisterNode: %v, want not found", err)
	}
	// Only a removed id can be admitted, once.
	wantErr(t, "AdmitNode(missing)", s.AdmitNode(ctx, "never"), metadata.ErrNotFound)
	wantErr(t, "AdmitNode(live node)", s.AdmitNode(ctx, "stay"), metadata.ErrNotFound)
	if err := s.AdmitNode(ctx, "rm"); err != nil {
		t.Fatalf("AdmitNode: %v", err)
	}
	wantErr(t, "second AdmitNode", s.AdmitNode(ctx, "rm"), metadata.ErrNotFound)

	// Registering after admission makes a new node: joining, with a new
	// RegisteredAt.
	time.Sleep(2 * time.Millisecond) // let the clock move past old.RegisteredAt
	again := mustRegisterNode(t, s, metadata.Node{ID: "rm", VirtualNodes: 4, Epoch: 2})
	if again.Status != metadata.NodeJoining || !again.RegisteredAt.After(old.RegisteredAt) || !again.LastSeen.Equal(again.RegisteredAt) {
		t.Errorf("re-registered removed node = %+v, want a fresh joining node registered after %v", again, old.RegisteredAt)
	}
}

// testRemoveNodeRacesRegister: heartbeats racing with a removal never
// bring the node back; once RemoveNode has returned, every RegisterNode is
// refused.
func testRemoveNodeRacesRegister(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	mustRegisterNode(t, s, metadata.Node{ID: "race", VirtualNodes: 8, Epoch: 1})
	stop := make(chan struct{})
	errs := make(chan error, 4)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				_, err := s.RegisterNode(ctx, metadata.Node{ID: "race", VirtualNodes: 8, Epoch: 1})
				if err != nil && !errors.Is(err, metadata.ErrRemoved) {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond) // let the heartbeats run
	removeErr := s.RemoveNode(ctx, "race")
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("RegisterNode during RemoveNode: %v", err)
		}
	}
	if removeErr != nil {
		t.Fatalf("RemoveNode: %v", removeErr)
	}
	_, err := s.RegisterNode(ctx, metadata.Node{ID: "race", VirtualNodes: 8, Epoch: 1})
	wantErr(t, "RegisterNode after RemoveNode", err, metadata.ErrRemoved)
	_, err = s.GetNode(ctx, "race")
	wantErr(t, "GetNode after RemoveNode", err, metadata.ErrNotFound)
}

func testListNodes(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	empty, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	if empty == nil || len(empty) != 0 {
		t.Fatalf("ListNodes on an empty store = %#v, want a non-nil empty slice", empty)
	}

	// IDs that are not plain words, and whose byte order differs from most
	// locales' collation.
	ids := []string{"node-b", "node.c", "Node-Z", "node-a", "node_a", "node a", "n/1", "ünïcode"}
	want := map[string]metadata.Node{}
	for i, id := range ids {
		want[id] = mustRegisterNode(t, s, metadata.Node{ID: id, VirtualNodes: 1 + i, Epoch: uint64(i)})
	}
	got, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	sorted := slices.Clone(ids)
	slices.Sort(sorted)
	if len(got) != len(sorted) {
		t.Fatalf("ListNodes returned %d nodes, want %d: %+v", len(got), len(sorted), got)
	}
	for i, id := range sorted {
		if got[i].ID != id {
			gotIDs := make([]string, len(got))
			for j, n := range got {
				gotIDs[j] = n.ID
			}
			t.Fatalf("ListNodes order: got %q, want %q", gotIDs, sorted)
		}
		sameNode(t, "ListNodes entry "+id, got[i], want[id])
	}
}

func secretCandidate(i int) []byte {
	return bytes.Repeat([]byte{byte('A' + i%26), byte(i)}, 24)
}

// testContextSecretFirstWins: the first candidate is stored and returned
// to every later caller; the secret does not show up among tenants or
// nodes, and they do not disturb it.
func testContextSecretFirstWins(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	if _, err := s.ContextSecret(ctx, nil); err == nil {
		t.Error("ContextSecret(empty candidate) succeeded")
	}
	first, second := secretCandidate(1), secretCandidate(2)
	got, err := s.ContextSecret(ctx, first)
	if err != nil {
		t.Fatalf("ContextSecret: %v", err)
	}
	if !bytes.Equal(got, first) {
		t.Fatalf("first ContextSecret = %x, want the candidate %x", got, first)
	}
	got, err = s.ContextSecret(ctx, second)
	if err != nil {
		t.Fatalf("second ContextSecret: %v", err)
	}
	if !bytes.Equal(got, first) {
		t.Fatalf("second ContextSecret = %x, want the first candidate %x", got, first)
	}
	ts, err := s.ListTenants(ctx)
	if err != nil || len(ts) != 0 {
		t.Fatalf("ListTenants with only a secret stored = %v, %v; want none", ts, err)
	}
	ns, err := s.ListNodes(ctx)
	if err != nil || len(ns) != 0 {
		t.Fatalf("ListNodes with only a secret stored = %v, %v; want none", ns, err)
	}
	mustCreateTenant(t, s, newTenant("context"))
	mustRegisterNode(t, s, metadata.Node{ID: "context", VirtualNodes: 1, Epoch: 1})
	if ts, err := s.ListTenants(ctx); err != nil || len(ts) != 1 {
		t.Fatalf("ListTenants = %v, %v; want tenant context only", ts, err)
	}
	if err := s.DeleteTenant(ctx, "context"); err != nil {
		t.Fatal(err)
	}
	got, err = s.ContextSecret(ctx, second)
	if err != nil || !bytes.Equal(got, first) {
		t.Fatalf("ContextSecret after tenant and node changes = %x, %v; want %x", got, err, first)
	}
}

// testContextSecretConcurrent: concurrent creators all end with the same
// secret, one of their candidates.
func testContextSecretConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	const n = 8
	var (
		wg   sync.WaitGroup
		got  [n][]byte
		errs [n]error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = s.ContextSecret(ctx, secretCandidate(i))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if !bytes.Equal(got[i], got[0]) {
			t.Fatalf("creators disagree: %x vs %x", got[i], got[0])
		}
	}
	for i := range n {
		if bytes.Equal(got[0], secretCandidate(i)) {
			return
		}
	}
	t.Fatalf("the secret %x is none of the candidates", got[0])
}

// testPartitionsFirstWins: Q is stored by the first caller and never
// changes; it is no tenant or node.
func testPartitionsFirstWins(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	if _, err := s.Partitions(ctx, 0); err == nil {
		t.Error("Partitions(0) succeeded")
	}
	got, err := s.Partitions(ctx, 256)
	if err != nil || got != 256 {
		t.Fatalf("first Partitions(256) = %d, %v; want 256", got, err)
	}
	got, err = s.Partitions(ctx, 1024)
	if err != nil || got != 256 {
		t.Fatalf("second Partitions(1024) = %d, %v; want the first, 256", got, err)
	}
	if ts, err := s.ListTenants(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("ListTenants with only Q stored = %v, %v; want none", ts, err)
	}
	if ns, err := s.ListNodes(ctx); err != nil || len(ns) != 0 {
		t.Fatalf("ListNodes with only Q stored = %v, %v; want none", ns, err)
	}
}

// testPartitionsConcurrent: concurrent creators all get the same Q, one of
// their candidates.
func testPartitionsConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	const n = 8
	var (
		wg   sync.WaitGroup
		got  [n]int
		errs [n]error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = s.Partitions(ctx, 1<<(i+1))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("creators disagree: %d vs %d", got[i], got[0])
		}
	}
	if got[0] < 2 || got[0] > 1<<n || got[0]&(got[0]-1) != 0 {
		t.Fatalf("Q = %d is none of the candidates", got[0])
	}
}

func placementBytes(v uint64) []byte {
	// Any bytes will do: the store keeps the map opaque. A zero byte and
	// high bytes check that nothing is lost on the way.
	return []byte{'q', 'k', 0, byte(v), 0xff, 0x80, byte(v >> 8)}
}

// testPlacementCompareAndSet: the map record is read back as written, and
// a write must name the version that follows the stored one.
func testPlacementCompareAndSet(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	_, err := s.GetPlacement(ctx)
	wantErr(t, "GetPlacement before any", err, metadata.ErrNotFound)
	if _, err := s.SetPlacement(ctx, metadata.Placement{Version: 0, Map: placementBytes(0)}); err == nil {
		t.Fatal("SetPlacement(version 0) succeeded")
	}
	_, err = s.SetPlacement(ctx, metadata.Placement{Version: 2, Map: placementBytes(2)})
	wantErr(t, "SetPlacement(version 2) with none stored", err, metadata.ErrStale)

	check := window()
	p1, err := s.SetPlacement(ctx, metadata.Placement{Version: 1, Map: placementBytes(1)})
	if err != nil {
		t.Fatalf("SetPlacement(version 1): %v", err)
	}
	check(t, "UpdatedAt", p1.UpdatedAt)
	got, err := s.GetPlacement(ctx)
	if err != nil || got.Version != 1 || !bytes.Equal(got.Map, placementBytes(1)) || !got.UpdatedAt.Equal(p1.UpdatedAt) {
		t.Fatalf("GetPlacement = %+v, %v; want %+v", got, err, p1)
	}
	_, err = s.SetPlacement(ctx, metadata.Placement{Version: 1, Map: placementBytes(9)})
	wantErr(t, "SetPlacement(version 1) again", err, metadata.ErrStale)
	_, err = s.SetPlacement(ctx, metadata.Placement{Version: 3, Map: placementBytes(3)})
	wantErr(t, "SetPlacement(version 3) over 1", err, metadata.ErrStale)

	// An empty map (no active node) is a valid record; so are large
	// versions.
	if _, err := s.SetPlacement(ctx, metadata.Placement{Version: 2}); err != nil {
		t.Fatalf("SetPlacement(version 2, empty map): %v", err)
	}
	if got, err := s.GetPlacement(ctx); err != nil || got.Version != 2 || len(got.Map) != 0 {
		t.Fatalf("GetPlacement = %+v, %v; want version 2 with an empty map", got, err)
	}
	big := make([]byte, 16<<10) // a map of 1024 partitions × 7 owners and more
	for i := range big {
		big[i] = byte(i * 7)
	}
	if _, err := s.SetPlacement(ctx, metadata.Placement{Version: 3, Map: big}); err != nil {
		t.Fatalf("SetPlacement(version 3, 16 KiB): %v", err)
	}
	if got, err := s.GetPlacement(ctx); err != nil || got.Version != 3 || !bytes.Equal(got.Map, big) {
		t.Fatalf("GetPlacement = version %d, %d bytes, %v; want version 3 and the 16 KiB written", got.Version, len(got.Map), err)
	}
	if ts, err := s.ListTenants(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("ListTenants with only a map stored = %v, %v; want none", ts, err)
	}
	if ns, err := s.ListNodes(ctx); err != nil || len(ns) != 0 {
		t.Fatalf("ListNodes with only a map stored = %v, %v; want none", ns, err)
	}
}

// testPlacementConcurrent: of concurrent writers of one version exactly one
// wins, the others get ErrStale, and the stored map is the winner's.
func testPlacementConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	if _, err := s.SetPlacement(ctx, metadata.Placement{Version: 1, Map: placementBytes(1)}); err != nil {
		t.Fatal(err)
	}
	const n = 8
	for version := uint64(2); version <= 3; version++ {
		var (
			wg   sync.WaitGroup
			errs [n]error
		)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = s.SetPlacement(ctx, metadata.Placement{Version: version, Map: []byte{byte(version), byte(i)}})
			}()
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("version %d: writers %d and %d both won", version, winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, metadata.ErrStale):
				t.Fatalf("version %d, writer %d: %v, want ErrStale or success", version, i, err)
			}
		}
		if winner < 0 {
			t.Fatalf("version %d: no writer won", version)
		}
		got, err := s.GetPlacement(ctx)
		if err != nil || got.Version != version || !bytes.Equal(got.Map, []byte{byte(version), byte(winner)}) {
			t.Fatalf("GetPlacement = %+v, %v; want version %d by writer %d", got, err, version, winner)
		}
	}
}

func sameTransfer(a, b *metadata.TransferStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.MapVersion == b.MapVersion && a.PartitionsDone == b.PartitionsDone && a.PartitionsTotal == b.PartitionsTotal &&
		a.Bytes == b.Bytes && a.Keys == b.Keys && a.RateBytes == b.RateBytes && a.Updated.Equal(b.Updated)
}

// testRegisterNodeHold: a new node registered with Hold is standby; Hold
// changes nothing for a node that exists.
func testRegisterNodeHold(t *testing.T, s metadata.Store) {
	got := mustRegisterNode(t, s, metadata.Node{ID: "held", VirtualNodes: 8, Epoch: 1, Hold: true})
	if got.Status != metadata.NodeStandby {
		t.Fatalf("RegisterNode with Hold: status %q, want standby", got.Status)
	}
	again := mustRegisterNode(t, s, metadata.Node{ID: "held", VirtualNodes: 8, Epoch: 1})
	if again.Status != metadata.NodeStandby {
		t.Fatalf("re-register without Hold: status %q, want standby kept", again.Status)
	}
	mustRegisterNode(t, s, metadata.Node{ID: "plain", VirtualNodes: 8, Epoch: 1})
	if _, err := s.SetNodeStatus(testCtx(t), "plain", metadata.NodeActive); err != nil {
		t.Fatal(err)
	}
	if got := mustRegisterNode(t, s, metadata.Node{ID: "plain", VirtualNodes: 8, Epoch: 1, Hold: true}); got.Status != metadata.NodeActive {
		t.Fatalf("re-register of an active node with Hold: status %q, want active kept", got.Status)
	}
}

// testNodeProtocolTransfer: registration records the protocol and the
// transfer progress; SetNodeTransfer changes only the transfer.
func testNodeProtocolTransfer(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	tr := &metadata.TransferStatus{MapVersion: 1 << 40, PartitionsDone: 3, PartitionsTotal: 9, Bytes: 1 << 33, Keys: 77,
		RateBytes: 1.5e6, Updated: metadata.Now()}
	got := mustRegisterNode(t, s, metadata.Node{ID: "pt", VirtualNodes: 8, Epoch: 1, Protocol: 2, Transfer: tr})
	if got.Protocol != 2 || !sameTransfer(got.Transfer, tr) {
		t.Fatalf("RegisterNode = %+v (transfer %+v), want protocol 2 and transfer %+v", got, got.Transfer, tr)
	}
	read, err := s.GetNode(ctx, "pt")
	if err != nil {
		t.Fatal(err)
	}
	sameNode(t, "GetNode after RegisterNode with transfer", read, got)

	tr2 := *tr
	tr2.PartitionsDone = 9
	set, err := s.SetNodeTransfer(ctx, "pt", &tr2)
	if err != nil {
		t.Fatalf("SetNodeTransfer: %v", err)
	}
	want := got
	want.Transfer = &tr2
	sameNode(t, "SetNodeTransfer", set, want)
	list, err := s.ListNodes(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("ListNodes = %+v, %v", list, err)
	}
	sameNode(t, "ListNodes after SetNodeTransfer", list[0], want)

	// A heartbeat without progress clears it; an old node (protocol 0) is recorded as such.
	cleared := mustRegisterNode(t, s, metadata.Node{ID: "pt", VirtualNodes: 8, Epoch: 1})
	if cleared.Protocol != 0 || cleared.Transfer != nil {
		t.Fatalf("re-register without protocol/transfer = %+v, want protocol 0 and no transfer", cleared)
	}
	_, err = s.SetNodeTransfer(ctx, "missing", tr)
	wantErr(t, "SetNodeTransfer(missing)", err, metadata.ErrNotFound)
}

// testChangeNodeStatus: the change happens only from the named statuses;
// a legacy "draining" counts as leaving.
func testChangeNodeStatus(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	reg := mustRegisterNode(t, s, metadata.Node{ID: "cs", VirtualNodes: 8, Epoch: 1})
	got, err := s.ChangeNodeStatus(ctx, "cs", []string{metadata.NodeJoining}, metadata.NodeActive)
	if err != nil {
		t.Fatalf("ChangeNodeStatus(joining->active): %v", err)
	}
	want := reg
	want.Status = metadata.NodeActive
	sameNode(t, "ChangeNodeStatus", got, want)

	_, err = s.ChangeNodeStatus(ctx, "cs", []string{metadata.NodeJoining, metadata.NodeStandby}, metadata.NodeLeaving)
	wantErr(t, "ChangeNodeStatus from a status it does not have", err, metadata.ErrStale)
	if read, _ := s.GetNode(ctx, "cs"); read.Status != metadata.NodeActive {
		t.Fatalf("a refused ChangeNodeStatus changed the status to %q", read.Status)
	}
	if _, err := s.SetNodeStatus(ctx, "cs", metadata.NodeDraining); err != nil {
		t.Fatal(err)
	}
	got, err = s.ChangeNodeStatus(ctx, "cs", []string{metadata.NodeLeaving}, metadata.NodeLeft)
	if err != nil {
		t.Fatalf("ChangeNodeStatus(draining as leaving -> left): %v", err)
	}
	if got.Status != metadata.NodeLeft {
		t.Fatalf("status %q, want left", got.Status)
	}
	_, err = s.ChangeNodeStatus(ctx, "missing", []string{metadata.NodeActive}, metadata.NodeLeaving)
	wantErr(t, "ChangeNodeStatus(missing)", err, metadata.ErrNotFound)
	if err := s.RemoveNode(ctx, "cs"); err != nil {
		t.Fatal(err)
	}
	_, err = s.ChangeNodeStatus(ctx, "cs", []string{metadata.NodeLeft, metadata.NodeRemoved}, metadata.NodeActive)
	wantErr(t, "ChangeNodeStatus(removed)", err, metadata.ErrNotFound)
}

// testChangeNodeStatusConcurrent: of concurrent changes from one status
// exactly one wins.
func testChangeNodeStatusConcurrent(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	mustRegisterNode(t, s, metadata.Node{ID: "cc", VirtualNodes: 8, Epoch: 1})
	const n = 6
	var (
		wg   sync.WaitGroup
		errs = make([]error, n)
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			to := metadata.NodeActive
			if i%2 == 1 {
				to = metadata.NodeLeaving
			}
			_, errs[i] = s.ChangeNodeStatus(ctx, "cc", []string{metadata.NodeJoining}, to)
		}()
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, metadata.ErrStale):
			t.Fatalf("ChangeNodeStatus %d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d concurrent ChangeNodeStatus calls from joining succeeded, want exactly 1", won)
	}
}

// testChangeNodeStatuses: both changes or neither: a node with another
// status (ErrStale) or a missing node (ErrNotFound) changes nothing.
func testChangeNodeStatuses(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	mustRegisterNode(t, s, metadata.Node{ID: "dead", VirtualNodes: 8, Epoch: 1})
	mustRegisterNode(t, s, metadata.Node{ID: "new", VirtualNodes: 8, Epoch: 2, Hold: true})
	if _, err := s.ChangeNodeStatus(ctx, "dead", []string{metadata.NodeJoining}, metadata.NodeActive); err != nil {
		t.Fatal(err)
	}
	status := func(id string) string {
		t.Helper()
		n, err := s.GetNode(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return n.Status
	}
	_, err := s.ChangeNodeStatuses(ctx, []metadata.StatusChange{
		{ID: "new", From: []string{metadata.NodeStandby}, To: metadata.NodeJoining},
		{ID: "dead", From: []string{metadata.NodeJoining}, To: metadata.NodeLeaving},
	})
	wantErr(t, "ChangeNodeStatuses with one status wrong", err, metadata.ErrStale)
	if a, b := status("new"), status("dead"); a != metadata.NodeStandby || b != metadata.NodeActive {
		t.Fatalf("a refused ChangeNodeStatuses left new %s, dead %s", a, b)
	}
	_, err = s.ChangeNodeStatuses(ctx, []metadata.StatusChange{
		{ID: "new", From: []string{metadata.NodeStandby}, To: metadata.NodeJoining},
		{ID: "ghost", From: []string{metadata.NodeActive}, To: metadata.NodeLeaving},
	})
	wantErr(t, "ChangeNodeStatuses of a missing node", err, metadata.ErrNotFound)
	if a := status("new"); a != metadata.NodeStandby {
		t.Fatalf("a refused ChangeNodeStatuses left new %s", a)
	}
	got, err := s.ChangeNodeStatuses(ctx, []metadata.StatusChange{
		{ID: "new", From: []string{metadata.NodeStandby}, To: metadata.NodeJoining},
		{ID: "dead", From: []string{metadata.NodeActive}, To: metadata.NodeLeaving},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != "new" || got[0].Status != metadata.NodeJoining || got[1].ID != "dead" || got[1].Status != metadata.NodeLeaving {
		t.Fatalf("ChangeNodeStatuses returned %+v", got)
	}
	if a, b := status("new"), status("dead"); a != metadata.NodeJoining || b != metadata.NodeLeaving {
		t.Fatalf("after ChangeNodeStatuses new is %s, dead %s", a, b)
	}
	ns, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if want := map[string]string{"new": metadata.NodeJoining, "dead": metadata.NodeLeaving}[n.ID]; n.Status != want {
			t.Fatalf("ListNodes shows %s %s, want %s", n.ID, n.Status, want)
		}
	}
	// Later single changes and registrations see and keep the changes.
	mustRegisterNode(t, s, metadata.Node{ID: "new", VirtualNodes: 8, Epoch: 2})
	if _, err := s.ChangeNodeStatus(ctx, "dead", []string{metadata.NodeLeaving}, metadata.NodeLeft); err != nil {
		t.Fatal(err)
	}
	if a, b := status("new"), status("dead"); a != metadata.NodeJoining || b != metadata.NodeLeft {
		t.Fatalf("new is %s, dead %s; want joining and left", a, b)
	}
}

// testChangeNodeStatusesAtomic: readers never see half of a
// ChangeNodeStatuses: two nodes swap between active and leaving together
// while ListNodes runs, and heartbeats (RegisterNode) of both go on.
func testChangeNodeStatusesAtomic(t *testing.T, s metadata.Store) {
	ctx := testCtx(t)
	for _, id := range []string{"x", "y"} {
		mustRegisterNode(t, s, metadata.Node{ID: id, VirtualNodes: 8, Epoch: 1})
		if _, err := s.ChangeNodeStatus(ctx, id, []string{metadata.NodeJoining}, metadata.NodeActive); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var (
		wg    sync.WaitGroup
		lists atomic.Int64 // lists that answered
	)
	errs := make(chan error, 4)
	wg.Add(2)
	go func() { // the readers
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ns, err := s.ListNodes(ctx)
			if errors.Is(err, metadata.ErrUnavailable) {
				// Allowed: a store that reads records one by one may give
				// up under changes this back-to-back (never in real use,
				// where statuses change seconds apart); a wrong answer is
				// what must never happen.
				continue
			}
			if err != nil {
				errs <- err
				return
			}
			lists.Add(1)
			st := map[string]string{}
			for _, n := range ns {
				st[n.ID] = n.Status
			}
			if st["x"] != st["y"] {
				errs <- fmt.Errorf("ListNodes saw x %s and y %s: half of a ChangeNodeStatuses", st["x"], st["y"])
				return
			}
		}
	}()
	go func() { // heartbeats
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, id := range []string{"x", "y"} {
				if _, err := s.RegisterNode(ctx, metadata.Node{ID: id, VirtualNodes: 8, Epoch: 1}); err != nil {
					errs <- err
					return
				}
			}
		}
	}()
	from, to := metadata.NodeActive, metadata.NodeLeaving
	for range 40 {
		if _, err := s.ChangeNodeStatuses(ctx, []metadata.StatusChange{
			{ID: "x", From: []string{from}, To: to}, {ID: "y", From: []string{from}, To: to},
		}); err != nil {
			close(stop)
			wg.Wait()
			t.Fatal(err)
		}
		from, to = to, from
	}
	// A last list after the changes stopped must answer.
	if _, err := s.ListNodes(ctx); err != nil {
		t.Fatalf("ListNodes once the status changes stopped: %v", err)
	}
	close(stop)
	wg.Wait()
	t.Logf("%d lists answered during the changes", lists.Load())
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
