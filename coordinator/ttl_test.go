package coordinator_test

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// Per-key TTL (issue 15, spec D5): coordinator integration tests on real
// NATS, Pebble storage nodes, and both store combinations.

// offsetClock is the wall clock moved forward by a settable offset: the
// coordinator's Config.Now in these tests, so a TTL can pass without
// waiting for it. Offsets stay far below the 5 minutes of clock skew a
// context may carry.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) advance(d time.Duration) { c.off.Add(int64(d)) }

// ttlCluster starts 3 nodes with one coordinator on clk, on the stores of
// cfg.
func ttlCluster(t *testing.T, cfg devcluster.Config, clk *offsetClock) *devcluster.Cluster {
	t.Helper()
	cfg.Nodes = 3
	cfg.Coordinator.Now = clk.now
	return startClusterWith(t, cfg)
}

// replicaEntries returns what each of the 3 nodes holds for key (read on
// each node directly with its dump subject), failing unless all 3 do.
func replicaEntries(t *testing.T, c *devcluster.Cluster, tenant, key string) []subjects.DumpEntry {
	t.Helper()
	es := dumpKey(t, c, tenant, key, 3)
	if len(es) != 3 {
		t.Fatalf("%d replicas hold %q, want 3: %+v", len(es), key, es)
	}
	return es
}

// sameExpiresEverywhere checks that every replica holds key at the same
// version with the same Expires, within [lo, hi], and returns it.
func sameExpiresEverywhere(t *testing.T, c *devcluster.Cluster, tenant, key string, lo, hi int64) int64 {
	t.Helper()
	es := replicaEntries(t, c, tenant, key)
	for _, e := range es[1:] {
		if e.Expires != es[0].Expires || e.Context != es[0].Context {
			t.Fatalf("replicas of %q differ: %+v vs %+v", key, e, es[0])
		}
	}
	if exp := es[0].Expires; exp < lo || exp > hi {
		t.Fatalf("%q expires at %d, want within [%d, %d]", key, exp, lo, hi)
	}
	return es[0].Expires
}

func createTTLTenant(t *testing.T, c *devcluster.Cluster, id, policy string, defaultTTL *time.Duration) *client.Client {
	t.Helper()
	if _, err := client.NewAdmin(connect(t, c)).CreateTenant(ctxT(t), id, client.TenantSpec{ConflictPolicy: &policy, DefaultTTL: defaultTTL}); err != nil {
		t.Fatalf("create tenant %s: %v", id, err)
	}
	return kvClient(t, c, id)
}

// TestTTLExpiresOnEveryReplica: a put with a TTL stores the same Expires
// (the coordinator's time of the put plus the TTL) on every replica; the
// value reads until then and reads as not found from then on, with a
// context, under both policies; a put with that context behaves as on a
// missing key; a delete's tombstone carries the time of the delete.
func TestTTLExpiresOnEveryReplica(t *testing.T) {
	backends(t, func(t *testing.T, cfg devcluster.Config) {
		clk := &offsetClock{}
		c := ttlCluster(t, cfg, clk)
		for _, policy := range []string{subjects.PolicyLWW, subjects.PolicySiblings} {
			t.Run(policy, func(t *testing.T) {
				ctx := ctxT(t)
				tenant := "ttl-" + policy
				kv := createTTLTenant(t, c, tenant, policy, nil)
				all := client.WithConsistency(subjects.All)
				before := clk.now().UnixMilli()
				if _, err := kv.Put(ctx, "k", []byte("short-lived"), client.WithTTL(time.Minute), all); err != nil {
					t.Fatalf("put with ttl: %v", err)
				}
				after := clk.now().UnixMilli()
				if _, err := kv.Put(ctx, "forever", []byte("stays"), all); err != nil {
					t.Fatal(err)
				}
				exp := sameExpiresEverywhere(t, c, tenant, "k", before+60_000, after+60_000)
				if es := replicaEntries(t, c, tenant, "forever"); es[0].Expires != 0 {
					t.Fatalf("a put without TTL stored Expires %d", es[0].Expires)
				}
				got, err := kv.Get(ctx, "k", all)
				if err != nil || string(got.Value) != "short-lived" {
					t.Fatalf("before expiry: %v %+v", err, got)
				}
				if got.ExpiresAtMs != exp {
					t.Fatalf("get answered expires_at_ms %d, the replicas hold %d", got.ExpiresAtMs, exp)
				}
				if got, err := kv.Get(ctx, "forever"); err != nil || got.ExpiresAtMs != 0 {
					t.Fatalf("a value without TTL: %v, expires_at_ms %d, want none", err, got.ExpiresAtMs)
				}

				// Just short of Expires the value is there; at Expires it
				// is gone, and the read carries a context.
				// (5s of margin: a loaded machine may take a while to read.)
				clk.advance(time.Duration(exp-clk.now().UnixMilli()-5_000) * time.Millisecond)
				if got, err := kv.Get(ctx, "k", all); err != nil || string(got.Value) != "short-lived" {
					t.Fatalf("5s before expiry: %v %+v", err, got)
				}
				clk.advance(5 * time.Second)
				gone, err := kv.Get(ctx, "k", all)
				if !errors.Is(err, client.ErrNotFound) {
					t.Fatalf("after expiry: %v %+v, want not found", err, gone)
				}
				if gone.Context == "" {
					t.Fatal("an expired key read without a context")
				}
				if got, err := kv.Get(ctx, "forever"); err != nil || string(got.Value) != "stays" {
					t.Fatalf("a key without TTL after the clock moved: %v %+v", err, got)
				}
				// Every replica still holds the expired version (reaping is
				// not a read's business), all alike.
				sameExpiresEverywhere(t, c, tenant, "k", exp, exp)

				// A put with the context of the expired read is a put on a
				// missing key: the new value alone, no TTL, no sibling.
				if _, err := kv.Put(ctx, "k", []byte("reborn"), client.WithContext(gone.Context), all); err != nil {
					t.Fatalf("put with the context after expiry: %v", err)
				}
				got, err = kv.Get(ctx, "k", all)
				if err != nil || string(got.Value) != "reborn" || len(got.Siblings) != 0 {
					t.Fatalf("after the put with context: %v %+v", err, got)
				}
				for _, e := range replicaEntries(t, c, tenant, "k") {
					if e.Expires != 0 || string(e.Value) != "reborn" || (policy == subjects.PolicySiblings && e.Siblings != 1) {
						t.Fatalf("replica holds %+v, want only the new value without TTL", e)
					}
				}

				// A delete stamps its tombstone with the time of the delete.
				before = clk.now().UnixMilli()
				if _, err := kv.Delete(ctx, "forever", all); err != nil {
					t.Fatal(err)
				}
				after = clk.now().UnixMilli()
				for _, e := range replicaEntries(t, c, tenant, "forever") {
					if !e.Tombstone || e.Expires < before || e.Expires > after {
						t.Fatalf("tombstone %+v, want Expires within [%d, %d]", e, before, after)
					}
				}
			})
		}
	})
}

// TestTTLSiblingsExpireOneByOne: under siblings each value keeps its own
// expiry: an expired sibling drops out of reads while a concurrent one
// without TTL stays, and a blind put after expiry does not bring it back.
func TestTTLSiblingsExpireOneByOne(t *testing.T) {
	clk := &offsetClock{}
	c := ttlCluster(t, devcluster.Config{}, clk)
	ctx := ctxT(t)
	kv := createTTLTenant(t, c, "sib", subjects.PolicySiblings, nil)
	all := client.WithConsistency(subjects.All)
	if _, err := kv.Put(ctx, "k", []byte("brief"), client.WithTTL(30*time.Second), all); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "k", []byte("lasting"), all); err != nil {
		t.Fatal(err)
	}
	got, err := kv.Get(ctx, "k", all)
	if err != nil || len(got.Siblings) != 2 {
		t.Fatalf("before expiry: %v %+v, want two siblings", err, got)
	}
	if got.Value == nil || (string(got.Value) == "brief") != (got.ExpiresAtMs != 0) {
		t.Fatalf("expires_at_ms %d for value %q: it is the value's own", got.ExpiresAtMs, got.Value)
	}
	clk.advance(31 * time.Second)
	got, err = kv.Get(ctx, "k", all)
	if err != nil || string(got.Value) != "lasting" || len(got.Siblings) != 0 || got.ExpiresAtMs != 0 {
		t.Fatalf("after one sibling expired: %v %+v, want only the lasting value, without expiry", err, got)
	}
	if _, err := kv.Put(ctx, "k", []byte("blind"), all); err != nil {
		t.Fatal(err)
	}
	got, err = kv.Get(ctx, "k", all)
	if v := values(got); err != nil || strings.Join(v, ",") != "blind,lasting" {
		t.Fatalf("after a blind put: %v %q, want blind and lasting", err, v)
	}
}

// TestTTLTenantDefault: a tenant's default_ttl_ms applies to puts without
// ttl_ms; a put's own ttl_ms wins; updating the default to 0 stops it.
func TestTTLTenantDefault(t *testing.T) {
	backends(t, func(t *testing.T, cfg devcluster.Config) {
		clk := &offsetClock{}
		c := ttlCluster(t, cfg, clk)
		ctx := ctxT(t)
		admin := client.NewAdmin(connect(t, c))
		def := 45 * time.Second
		kv := createTTLTenant(t, c, "deft", subjects.PolicyLWW, &def)
		tn, err := admin.GetTenant(ctx, "deft")
		if err != nil || tn.DefaultTTLMs != 45_000 {
			t.Fatalf("tenant %+v, %v; want default_ttl_ms 45000", tn, err)
		}
		all := client.WithConsistency(subjects.All)
		before := clk.now().UnixMilli()
		if _, err := kv.Put(ctx, "d", []byte("v"), all); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "own", []byte("v"), client.WithTTL(5*time.Second), all); err != nil {
			t.Fatal(err)
		}
		after := clk.now().UnixMilli()
		sameExpiresEverywhere(t, c, "deft", "d", before+45_000, after+45_000)
		sameExpiresEverywhere(t, c, "deft", "own", before+5_000, after+5_000)
		clk.advance(46 * time.Second)
		if _, err := kv.Get(ctx, "d"); !errors.Is(err, client.ErrNotFound) {
			t.Fatalf("a value past the tenant's default TTL: %v, want not found", err)
		}
		zero := time.Duration(0)
		if _, err := admin.UpdateTenant(ctx, "deft", tn.Version, client.TenantSpec{DefaultTTL: &zero}); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "plain", []byte("v"), all); err != nil {
			t.Fatal(err)
		}
		sameExpiresEverywhere(t, c, "deft", "plain", 0, 0)
	})
}

// TestTTLBadInput: a ttl_ms below 0, above 10 years or not an integer, in
// JSON or msgpack, and ttl_ms on a delete, answer 400 and write nothing;
// so does a tenant default_ttl_ms out of range.
func TestTTLBadInput(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	put := subjects.Put("default")
	for _, tc := range []struct {
		name string
		body []byte
		json bool
		msg  string
	}{
		{"negative", mp(t, map[string]any{"key": "bad", "value": []byte("v"), "ttl_ms": -1}), false, "ttl_ms -1 out of range 0..315360000000"},
		{"above 10 years", mp(t, map[string]any{"key": "bad", "value": []byte("v"), "ttl_ms": int64(subjects.MaxTTLMs + 1)}), false, "ttl_ms 315360000001 out of range"},
		{"negative JSON", []byte(`{"key":"bad","value":"v","ttl_ms":-5}`), true, "ttl_ms -5 out of range"},
		{"fraction JSON", []byte(`{"key":"bad","value":"v","ttl_ms":1.5}`), true, "malformed JSON"},
		{"string JSON", []byte(`{"key":"bad","value":"v","ttl_ms":"10m"}`), true, "malformed JSON"},
		{"string msgpack", mp(t, map[string]any{"key": "bad", "value": []byte("v"), "ttl_ms": "10m"}), false, "malformed msgpack"},
		{"float msgpack", mp(t, map[string]any{"key": "bad", "value": []byte("v"), "ttl_ms": 1.5}), false, "malformed msgpack"},
		{"whole float msgpack", mp(t, map[string]any{"key": "bad", "value": []byte("v"), "ttl_ms": 60000.0}), false, "malformed msgpack"},
	} {
		code, kind, desc, _ := rawRequest(t, nc, put, tc.body, tc.json)
		if code != "400" || kind != subjects.KindInvalid || !strings.Contains(desc, tc.msg) {
			t.Errorf("%s: %s %s %q, want 400 invalid containing %q", tc.name, code, kind, desc, tc.msg)
		}
	}
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	if _, err := kv.Put(ctx, "bad", []byte("v"), client.WithTTL(-time.Second)); err == nil {
		t.Fatal("client put with a negative TTL succeeded")
	} else {
		assertCode(t, err, 400, "ttl_ms -1000 out of range")
	}
	code, _, desc, _ := rawRequest(t, nc, subjects.Delete("default"), mp(t, map[string]any{"key": "bad", "ttl_ms": 1000}), false)
	if code != "400" || !strings.Contains(desc, "ttl_ms is a field of put only") {
		t.Errorf("delete with ttl_ms: %s %q", code, desc)
	}
	if es := dumpKey(t, c, "default", "bad", 3); len(es) != 0 {
		t.Fatalf("refused requests wrote %+v", es)
	}
	// Both encodings carry a valid ttl_ms to the replicas.
	for enc, tc := range map[string]struct {
		body []byte
		json bool
	}{
		"json":    {[]byte(`{"key":"j","value":"v","ttl_ms":60000,"consistency":"all"}`), true},
		"msgpack": {mp(t, map[string]any{"key": "m", "value": []byte("v"), "ttl_ms": 60000, "consistency": "all"}), false},
	} {
		before := time.Now().UnixMilli()
		if code, _, desc, _ := rawRequest(t, nc, put, tc.body, tc.json); code != "" {
			t.Fatalf("%s put with ttl_ms: %s %s", enc, code, desc)
		}
		key := map[string]string{"json": "j", "msgpack": "m"}[enc]
		sameExpiresEverywhere(t, c, "default", key, before+60_000, time.Now().UnixMilli()+60_000)
	}
	admin := client.NewAdmin(nc)
	for _, d := range []time.Duration{-time.Millisecond, (subjects.MaxTTLMs + 1) * time.Millisecond} {
		_, err := admin.CreateTenant(ctx, "badttl", client.TenantSpec{DefaultTTL: &d})
		assertKind(t, err, 400, subjects.KindInvalid)
		if !strings.Contains(err.Error(), "default_ttl_ms") {
			t.Fatalf("refusal %q does not name default_ttl_ms", err)
		}
	}
	if _, err := admin.GetTenant(ctx, "badttl"); !errors.Is(err, client.ErrNoSuchTenant) {
		t.Fatalf("a refused tenant exists: %v", err)
	}
}

// TestTTLNeedsProtocol3: while a node of the map registered node protocol
// 2 (a binary without TTL support), a put with a TTL answers 503 naming
// the node to upgrade and writes nothing (never the value without its
// TTL), puts without TTL still work, and deletes write tombstones without
// Expires (which protocol 2 cannot read). Once the node registers 3 again,
// TTLs work.
func TestTTLNeedsProtocol3(t *testing.T) {
	clk := &offsetClock{}
	c := ttlCluster(t, devcluster.Config{Coordinator: coordinatorConfigFastTTL()}, clk)
	ctx := ctxT(t)
	nc := connect(t, c)
	kv := kvClient(t, c, "default")
	co := c.Coordinators()[0]
	if p := co.NodeProtocol(); p != subjects.NodeProtocolTTL {
		t.Fatalf("coordinator speaks protocol %d to a cluster of new nodes", p)
	}
	old := devcluster.NodeID(1)
	n, err := c.Metadata().GetNode(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	// The node is replaced by an old binary: it registers protocol 2.
	if err := c.StopNode(old); err != nil {
		t.Fatal(err)
	}
	if _, e := register(t, nc, subjects.NodeRequest{NodeID: old, Epoch: n.Epoch, Protocol: 2}); e != nil {
		t.Fatalf("register protocol 2: %v", e)
	}
	waitFor(t, 10*time.Second, func() error {
		if p := co.NodeProtocol(); p != 2 {
			return fmt.Errorf("protocol %d", p)
		}
		return nil
	})
	_, err = kv.Put(ctx, "ttl", []byte("v"), client.WithTTL(time.Minute))
	assertCode(t, err, 503, "needs node protocol 3 on every storage node")
	assertCode(t, err, 503, old+" (protocol 2)")
	// node-1 is down: read the others directly.
	live := func(key string) []subjects.DumpEntry {
		var out []subjects.DumpEntry
		for _, id := range []string{devcluster.NodeID(2), devcluster.NodeID(3)} {
			es, err := client.NewAdmin(nc).DumpAll(ctx, id, "default")
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range es {
				if e.Key == key {
					out = append(out, e)
				}
			}
		}
		return out
	}
	if es := live("ttl"); len(es) != 0 {
		t.Fatalf("a refused TTL put wrote %+v", es)
	}
	if _, err := kv.Put(ctx, "plain", []byte("v")); err != nil {
		t.Fatalf("a put without TTL: %v", err)
	}
	if _, err := kv.Delete(ctx, "plain"); err != nil {
		t.Fatalf("a delete: %v", err)
	}
	es := live("plain")
	if len(es) != 2 {
		t.Fatalf("the live replicas hold %+v", es)
	}
	for _, e := range es {
		if !e.Tombstone || e.Expires != 0 {
			t.Fatalf("with a protocol-2 node in the map, a delete wrote %+v (Expires must stay 0)", e)
		}
	}
	// The node is upgraded again.
	if err := c.StartNode(old); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		if p := co.NodeProtocol(); p != subjects.NodeProtocolTTL {
			return fmt.Errorf("protocol %d", p)
		}
		return nil
	})
	if _, err := kv.Put(ctx, "ttl", []byte("v"), client.WithTTL(time.Minute), client.WithConsistency(subjects.All)); err != nil {
		t.Fatalf("TTL put after the upgrade: %v", err)
	}
}

// TestTTLExpiredDataDoesNotHoldATenant: tenant.delete without force is
// refused while a value lives and allowed once every value has expired
// (an expired value is as gone as a deleted one), under both policies.
func TestTTLExpiredDataDoesNotHoldATenant(t *testing.T) {
	clk := &offsetClock{}
	c := ttlCluster(t, devcluster.Config{}, clk)
	ctx := ctxT(t)
	admin := client.NewAdmin(connect(t, c))
	for _, policy := range []string{subjects.PolicyLWW, subjects.PolicySiblings} {
		tenant := "gone-" + policy
		kv := createTTLTenant(t, c, tenant, policy, nil)
		if _, err := kv.Put(ctx, "k", []byte("v"), client.WithTTL(10*time.Second), client.WithConsistency(subjects.All)); err != nil {
			t.Fatal(err)
		}
		err := admin.DeleteTenant(ctx, tenant, false)
		assertKind(t, err, 409, subjects.KindTenantNotEmpty)
		clk.advance(11 * time.Second)
		if err := admin.DeleteTenant(ctx, tenant, false); err != nil {
			t.Fatalf("%s: delete of a tenant whose only value expired: %v", policy, err)
		}
	}
}
