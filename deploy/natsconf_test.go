package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// TestConfLimits checks the settings of nats.conf that quorumkv relies on.
func TestConfLimits(t *testing.T) {
	opts := loadConf(t, []string{"nats-route://route:x@nats-1:6222", "nats-route://route:x@nats-2:6222", "nats-route://route:x@nats-3:6222"})
	if !opts.JetStream {
		t.Error("JetStream is off")
	}
	if min := subjects.MaxValueBytes + 64<<10; opts.MaxPayload < int32(min) {
		t.Errorf("max_payload %d does not fit a %d-byte value plus overhead", opts.MaxPayload, subjects.MaxValueBytes)
	}
	if opts.MaxPayload != 4<<20 {
		t.Errorf("max_payload %d, want 4MB", opts.MaxPayload)
	}
	if opts.Cluster.Name == "" || opts.Cluster.Port != 6222 {
		t.Errorf("cluster %q on port %d, want a named cluster on 6222", opts.Cluster.Name, opts.Cluster.Port)
	}
	if opts.Cluster.Username == "" || opts.Cluster.Password == "" {
		t.Error("routes are not authenticated")
	}
	if len(opts.Routes) != 3 {
		t.Errorf("QKV_ROUTES gave %d routes, want 3", len(opts.Routes))
	}
	for _, r := range opts.Routes {
		if p, _ := r.User.Password(); r.User.Username() != "route" || p != "x" {
			t.Errorf("route %s lost its credentials", r.Redacted())
		}
	}
	if opts.ServerName != "test" {
		t.Errorf("server_name %q, want it from QKV_SERVER_NAME", opts.ServerName)
	}
	if opts.SystemAccount != "SYS" {
		t.Errorf("system account %q", opts.SystemAccount)
	}
}

// TestAuthentication: nobody gets in without a user of nats.conf.
func TestAuthentication(t *testing.T) {
	s := runServer(t)
	if nc, err := nats.Connect(s.ClientURL()); err == nil {
		nc.Close()
		t.Error("anonymous connection accepted")
	}
	if c, err := tryDial(s.ClientURL(), "default", "wrong"); err == nil {
		c.Close()
		t.Error("wrong password accepted")
	}
	for user := range userPasswordVar {
		if c, err := tryDial(s.ClientURL(), user, password(t, user)); err != nil {
			t.Errorf("user %s: %v", user, err)
		} else {
			c.Close()
		}
	}
}

// TestRolesEndToEnd runs quorumkv with every process connected as its role
// and proves both what each may do and what it may not.
func TestRolesEndToEnd(t *testing.T) {
	sys := startSystem(t, coordinator.Config{})
	// Calls use the clients' own timeouts; loops that poll stop at wait's.
	ctx, wait := context.Background(), ctxT(t)
	def, defConn := sys.tenant(t, "default")
	acme, _ := sys.tenant(t, "acme")

	t.Run("tenants put and get their own keys", func(t *testing.T) {
		if _, err := def.Put(ctx, "k", []byte("default's")); err != nil {
			t.Fatalf("default put: %v", err)
		}
		if _, err := acme.Put(ctx, "k", []byte("acme's")); err != nil {
			t.Fatalf("acme put: %v", err)
		}
		for kv, want := range map[*client.Client]string{def: "default's", acme: "acme's"} {
			got, err := kv.Get(ctx, "k")
			if err != nil {
				t.Fatalf("%s get: %v", kv.Tenant(), err)
			}
			if string(got.Value) != want || got.ReplicaCount < 2 {
				t.Errorf("%s got %q from %d replicas, want %q from a quorum", kv.Tenant(), got.Value, got.ReplicaCount, want)
			}
		}
		if _, err := def.Delete(ctx, "k"); err != nil {
			t.Fatalf("default delete: %v", err)
		}
		if got, err := acme.Get(ctx, "k"); err != nil || string(got.Value) != "acme's" {
			t.Errorf("acme's key after default deleted its own: %+v, %v", got, err)
		}
	})

	t.Run("idempotent retries, tenant updates and repair work as roles", func(t *testing.T) {
		first, err := def.Put(ctx, "idem", []byte("once"), client.WithIdempotencyKey("retry-1"))
		if err != nil {
			t.Fatal(err)
		}
		again, err := def.Put(ctx, "idem", []byte("once"), client.WithIdempotencyKey("retry-1"))
		if err != nil || !again.IsDuplicate || again.Context != first.Context {
			t.Fatalf("retry: %+v, %v; want the first response marked duplicate", again, err)
		}
		// A generated key is recorded through the coordinator role's
		// permissions, and honoured.
		gen, err := def.Put(ctx, "idem-gen", []byte("once"))
		if err != nil || gen.IdempotencyKey == "" {
			t.Fatalf("put without a key: %+v, %v; want a generated key", gen, err)
		}
		if again, err := def.Put(ctx, "idem-gen", []byte("once"), client.WithIdempotencyKey(gen.IdempotencyKey)); err != nil || !again.IsDuplicate {
			t.Fatalf("retry with the generated key: %+v, %v; want a duplicate", again, err)
		}
		ten, err := sys.admin.GetTenant(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		one := subjects.One
		if _, err := sys.admin.UpdateTenant(ctx, "acme", ten.Version, client.TenantSpec{DefaultConsistency: &one}); err != nil {
			t.Fatalf("update tenant: %v", err)
		}
		// Hinted handoff: a write that misses node-3 reaches it through
		// KV_REPAIR and the repair worker once it is back.
		sys.stopNode(t, "node-3")
		if _, err := def.Put(ctx, "hinted", []byte("late")); err != nil {
			t.Fatalf("put with node-3 down: %v", err)
		}
		sys.startNode(t, "node-3")
		for {
			entries, err := sys.admin.DumpAll(ctx, "node-3", "default")
			if err == nil && slices.ContainsFunc(entries, func(e subjects.DumpEntry) bool { return e.Key == "hinted" && string(e.Value) == "late" }) {
				break
			}
			select {
			case <-wait.Done():
				t.Fatalf("node-3 never received the hinted write: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	})

	t.Run("dead letters reach the admin", func(t *testing.T) {
		js, err := jetstream.New(sys.adminConn.Conn)
		if err != nil {
			t.Fatal(err)
		}
		req := &subjects.RepairRequest{Tenant: "default", Key: "orphan", LWW: &vclock.Version{Dot: vclock.Dot{Actor: "test", Counter: 1}, Value: []byte("x")}, Targets: []string{"node-9"}, Reason: subjects.RepairReasonRead}
		data, err := repair.Encode(req)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, subjects.Repair("default"), data, jetstream.WithMsgID(repair.MsgID(req))); err != nil {
			t.Fatalf("admin publishes a repair: %v", err)
		}
		for {
			dead, err := repair.ListDead(ctx, js, 0, 10)
			if err == nil && len(dead) > 0 {
				if _, err := repair.ReplayDead(ctx, js, dead[0].Seq); err != nil {
					t.Fatalf("admin replays a dead letter: %v", err)
				}
				break
			}
			select {
			case <-wait.Done():
				t.Fatalf("the repair for node-9 never reached the dead letters: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	})

	t.Run("a 1 MiB value fits max_payload", func(t *testing.T) {
		big := bytes.Repeat([]byte{0xa5}, subjects.MaxValueBytes)
		if _, err := def.Put(ctx, "big", big); err != nil {
			t.Fatalf("put 1 MiB: %v", err)
		}
		got, err := def.Get(ctx, "big")
		if err != nil {
			t.Fatalf("get 1 MiB: %v", err)
		}
		if !bytes.Equal(got.Value, big) {
			t.Fatalf("get 1 MiB: %d bytes back", len(got.Value))
		}
	})

	t.Run("the payload cannot choose the tenant", func(t *testing.T) {
		// The tenant is the subject's, and a tenant user can send only on
		// its own subjects: acme's key is unreachable from default.
		// Quorum, as acme's default is now one: the key is read back below.
		if _, err := acme.Put(ctx, "secret", []byte("acme only"), client.WithConsistency(subjects.Quorum)); err != nil {
			t.Fatal(err)
		}
		if got, err := def.Get(ctx, "secret"); !errors.Is(err, client.ErrNotFound) {
			t.Errorf("default read acme's key: %+v, %v", got, err)
		}
	})

	t.Run("a tenant cannot read or write another tenant's keys", func(t *testing.T) {
		for _, op := range []string{subjects.OpPut, subjects.OpGet, subjects.OpDelete} {
			defConn.mustNotPublish(t, subjects.Data("acme", op))
		}
		// Through the client too: the request goes nowhere.
		spy, err := client.New(defConn.Conn, "acme")
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := spy.Put(short, "secret", []byte("overwritten")); err == nil {
			t.Error("default wrote through acme's subject")
		}
		if got, err := spy.Get(short, "secret"); err == nil {
			t.Errorf("default read through acme's subject: %q", got.Value)
		}
		if got, err := acme.Get(ctx, "secret", client.WithConsistency(subjects.Quorum)); err != nil || string(got.Value) != "acme only" {
			t.Errorf("acme's key changed: %+v, %v", got, err)
		}
	})

	t.Run("a tenant cannot subscribe to another tenant's replies", func(t *testing.T) {
		for _, subj := range []string{">", "_INBOX_acme.>", "_R_.>", "kv.v1.acme.>", "kv.v1.>", "$SRV.>", "kv.node.>", "kv.repair.>", "$JS.>"} {
			defConn.mustNotSubscribe(t, subj)
		}
		// Its own inboxes are allowed, and acme's replies never reach them:
		// they travel in acme's account.
		spy, err := defConn.SubscribeSync("_INBOX.>")
		if err != nil {
			t.Fatal(err)
		}
		if err := defConn.Flush(); err != nil {
			t.Fatal(err)
		}
		// Quorum: acme's default is now one, and a get at one need not see
		// a put at one (R + W = 2 is not above RF 3).
		q := client.WithConsistency(subjects.Quorum)
		for i := range 5 {
			if _, err := acme.Put(ctx, "r", []byte{byte(i)}, q); err != nil {
				t.Fatal(err)
			}
			if _, err := acme.Get(ctx, "r", q); err != nil {
				t.Fatal(err)
			}
		}
		if m, err := spy.NextMsg(200 * time.Millisecond); err == nil {
			t.Errorf("default saw a reply of acme's on %s", m.Subject)
		}
		_ = spy.Unsubscribe()
	})

	t.Run("a tenant cannot reach storage, repair, admin, events or JetStream", func(t *testing.T) {
		for _, subj := range []string{
			subjects.StorageNode("node-1", subjects.NodeOpWrite),
			subjects.StorageNode("node-1", subjects.NodeOpRead),
			subjects.StorageNode("node-1", subjects.NodeOpDump),
			subjects.StorageNode("node-1", subjects.NodeOpScan),
			subjects.Repair("default"),
			"kv.repair.dead.default",
			subjects.AdminTenantList,
			subjects.AdminTenantCreate,
			subjects.AdminNodeRegister,
			subjects.EventsRing,
			"$JS.API.INFO",
			"$JS.API.STREAM.LIST",
			"$KV.quorumkv_tenants.default",
			"$SRV.PING",
		} {
			defConn.mustNotPublish(t, subj)
		}
		// Even the admin client, pointed at a tenant connection, gets nowhere.
		adm := client.NewAdmin(defConn.Conn)
		tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := adm.ListTenants(tctx); err == nil {
			t.Error("a tenant listed the tenants")
		}
	})

	t.Run("a storage node cannot call the admin API", func(t *testing.T) {
		st := dial(t, sys.url, "storage")
		for _, subj := range []string{
			subjects.AdminTenantCreate, subjects.AdminTenantGet, subjects.AdminTenantUpdate, subjects.AdminTenantDelete,
			subjects.AdminNodeDrain, subjects.AdminNodeRemove, subjects.AdminNodeList,
			subjects.Put("default"), subjects.Get("acme"),
			subjects.AdminNodeJoin, subjects.AdminNodeReplace,
			subjects.Repair("default"), subjects.EventsRing,
			"$JS.API.INFO", "$KV.quorumkv_nodes.node-1", "$SRV.PING",
		} {
			st.mustNotPublish(t, subj)
		}
		for _, subj := range []string{"kv.v1.>", "_INBOX_coordinator.>", "_INBOX.>", "$JS.>"} {
			st.mustNotSubscribe(t, subj)
		}
		adm := client.NewAdmin(st.Conn)
		tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if _, err := adm.GetTenant(tctx, "default"); err == nil {
			t.Error("a storage node read a tenant")
		}
	})

	t.Run("a storage node loads the map, reports transfers and hands off", func(t *testing.T) {
		st, co := dial(t, sys.url, "storage"), dial(t, sys.url, "coordinator")
		// The map: asked of the real coordinator, announced on events.
		if m, err := st.Request(subjects.AdminPlacementGet, nil, 5*time.Second); err != nil || m.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("placement.get from a storage node: %v %v", m, err)
		}
		ring, err := st.SubscribeSync(subjects.EventsRing)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Flush()
		if err := co.Publish(subjects.EventsRing, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := ring.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("a storage node got no %s: %v", subjects.EventsRing, err)
		}
		// A transfer report reaches the coordinators (this responder, or
		// the real coordinator once it serves the subject: any answer).
		sub, err := co.Subscribe(subjects.AdminNodeTransfer, func(m *nats.Msg) { _ = m.Respond([]byte("ok")) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		_ = co.Flush()
		if _, err := st.Request(subjects.AdminNodeTransfer, nil, 5*time.Second); err != nil {
			t.Fatalf("node.transfer from a storage node: %v", err)
		}
		// Handoff: merges written to another node (node-9: no real node).
		dst := dial(t, sys.url, "storage")
		w, err := dst.Subscribe(subjects.StorageNode("node-9", subjects.NodeOpWrite), func(m *nats.Msg) { _ = m.Respond([]byte("ack")) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = w.Unsubscribe() }()
		_ = dst.Flush()
		if m, err := st.Request(subjects.StorageNode("node-9", subjects.NodeOpWrite), nil, 5*time.Second); err != nil || string(m.Data) != "ack" {
			t.Fatalf("handoff write between storage nodes: %v %v", m, err)
		}
		// Tenant-scoped transfers: the replication factors, listed of the
		// real coordinator and refreshed on tenant events.
		if ts, err := client.NewAdmin(st.Conn).ListTenants(ctx); err != nil || len(ts) == 0 {
			t.Fatalf("tenant.list from a storage node: %v %v", ts, err)
		}
		tev, err := st.SubscribeSync(subjects.EventsTenant)
		if err != nil {
			t.Fatal(err)
		}
		_ = st.Flush()
		if err := co.Publish(subjects.EventsTenant, nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tev.NextMsg(5 * time.Second); err != nil {
			t.Fatalf("a storage node got no %s: %v", subjects.EventsTenant, err)
		}
		st.mustNotSubscribe(t, "kv.v1.events.>")
	})

	t.Run("a storage node pulls pages of a partition from another", func(t *testing.T) {
		// node-9: no real node of the system serves it, so only this
		// subscriber answers (a real node-1 would race it with its own reply).
		src, dst := dial(t, sys.url, "storage"), dial(t, sys.url, "storage")
		sub, err := src.Subscribe(subjects.StorageNode("node-9", subjects.NodeOpScan), func(m *nats.Msg) { _ = m.Respond([]byte("page")) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		_ = src.Flush()
		if m, err := dst.Request(subjects.StorageNode("node-9", subjects.NodeOpScan), nil, 5*time.Second); err != nil || string(m.Data) != "page" {
			t.Fatalf("scan request between storage nodes: %v %v", m, err)
		}
	})

	t.Run("a storage node exchanges anti-entropy requests with another", func(t *testing.T) {
		src, dst := dial(t, sys.url, "storage"), dial(t, sys.url, "storage")
		sub, err := src.Subscribe(subjects.StorageNode("node-9", subjects.NodeOpAE), func(m *nats.Msg) { _ = m.Respond([]byte("roots")) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		_ = src.Flush()
		if m, err := dst.Request(subjects.StorageNode("node-9", subjects.NodeOpAE), nil, 5*time.Second); err != nil || string(m.Data) != "roots" {
			t.Fatalf("ae request between storage nodes: %v %v", m, err)
		}
	})

	t.Run("a storage node asks another to confirm and reap tombstones", func(t *testing.T) {
		src, dst := dial(t, sys.url, "storage"), dial(t, sys.url, "storage")
		sub, err := src.Subscribe(subjects.StorageNode("node-9", subjects.NodeOpReap), func(m *nats.Msg) { _ = m.Respond([]byte("held")) })
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = sub.Unsubscribe() }()
		_ = src.Flush()
		if m, err := dst.Request(subjects.StorageNode("node-9", subjects.NodeOpReap), nil, 5*time.Second); err != nil || string(m.Data) != "held" {
			t.Fatalf("reap request between storage nodes: %v %v", m, err)
		}
	})

	t.Run("the coordinator answers only what it was asked", func(t *testing.T) {
		co := dial(t, sys.url, "coordinator")
		// allow_responses: it may reply, but not publish into an inbox unasked.
		for _, subj := range []string{"_INBOX_admin.x.y", "_INBOX_storage.x", "_R_.x.y", subjects.AdminTenantCreate, subjects.Put("default"), subjects.StorageNode("node-1", subjects.NodeOpDump), "$JS.API.STREAM.DELETE.OTHER"} {
			co.mustNotPublish(t, subj)
		}
		for _, subj := range []string{"_INBOX_admin.>", "_INBOX_storage.>", "kv.node.>", ">"} {
			co.mustNotSubscribe(t, subj)
		}
	})

	t.Run("the repair worker and the admin stay in their lanes", func(t *testing.T) {
		rp := dial(t, sys.url, "repair")
		for _, subj := range []string{subjects.AdminTenantCreate, subjects.Put("default"), subjects.EventsRing, "$KV.quorumkv_tenants.x", "$JS.API.STREAM.DELETE.KV_REPAIR", "_INBOX_admin.x"} {
			rp.mustNotPublish(t, subj)
		}
		rp.mustNotSubscribe(t, "kv.node.>")
		ad := dial(t, sys.url, "admin")
		for _, subj := range []string{subjects.Put("default"), subjects.Get("acme"), subjects.StorageNode("node-1", subjects.NodeOpWrite), subjects.EventsRing, "$KV.quorumkv_tenants.x", "$JS.API.STREAM.DELETE.KV_REPAIR"} {
			ad.mustNotPublish(t, subj)
		}
		for _, subj := range []string{"_INBOX_coordinator.>", "kv.node.>", "kv.v1.>"} {
			ad.mustNotSubscribe(t, subj)
		}
	})

	t.Run("the admin API works for the admin user", func(t *testing.T) {
		ts, err := sys.admin.ListTenants(ctx)
		if err != nil || len(ts) != 2 {
			t.Fatalf("list tenants: %d, %v", len(ts), err)
		}
		nodes, err := sys.admin.ListNodes(ctx)
		if err != nil || len(nodes) != 3 {
			t.Fatalf("list nodes: %d, %v", len(nodes), err)
		}
		d, err := sys.admin.DumpAll(ctx, "node-1", "acme")
		if err != nil || len(d) == 0 {
			t.Fatalf("dump node-1: %d entries, %v", len(d), err)
		}
		if got, err := sys.admin.GetTenant(ctx, "acme"); err != nil || got.ID != "acme" {
			t.Fatalf("get tenant: %+v, %v", got, err)
		}
	})

	t.Run("garbage from a tenant is answered 400", func(t *testing.T) {
		garbage := map[string][]byte{
			"msgpack": {0xc1, 0xff, 0x00},
			"empty":   nil,
			"array":   {0x93, 0x01, 0x02, 0x03},
			"json":    []byte(`{"key": `),
		}
		for name, body := range garbage {
			for _, op := range []string{subjects.OpPut, subjects.OpGet, subjects.OpDelete} {
				m := nats.NewMsg(subjects.Data("default", op))
				m.Data = body
				if name == "json" {
					m.Header.Set(subjects.ContentType, subjects.JSONContentType)
				}
				reply, err := defConn.RequestMsg(m, 5*time.Second)
				if err != nil {
					t.Fatalf("%s %s: %v", name, op, err)
				}
				e := subjects.ErrorFromHeaders(reply.Header.Get)
				if e == nil || e.Code != subjects.CodeInvalid {
					t.Errorf("%s %s: got %+v, want 400", name, op, e)
				}
			}
		}
		// The admin API too.
		for _, subj := range []string{subjects.AdminTenantCreate, subjects.AdminTenantUpdate, subjects.AdminNodeDrain} {
			reply, err := sys.adminConn.Request(subj, []byte{0xdd, 0xff, 0xff, 0xff, 0xff}, 5*time.Second)
			if err != nil {
				t.Fatalf("%s: %v", subj, err)
			}
			if e := subjects.ErrorFromHeaders(reply.Header.Get); e == nil || e.Code != subjects.CodeInvalid {
				t.Errorf("garbage on %s: got %+v, want 400", subj, e)
			}
		}
		// The coordinator is still serving.
		if _, err := def.Put(ctx, "after-garbage", []byte("ok")); err != nil {
			t.Fatal(err)
		}
	})

	sys.noViolations(t)
}

func TestNoCoordinatorMeansNoResponders(t *testing.T) {
	// With no coordinator behind the service import the tenant hears at
	// once (no responders crosses the import) instead of waiting out its
	// timeout, so an outage is visible as one.
	s := runServer(t)
	c := dial(t, s.ClientURL(), "default")
	kv, err := client.New(c.Conn, "default")
	if err != nil {
		t.Fatal(err)
	}
	_, err = kv.Get(ctxT(t), "k")
	if !errors.Is(err, client.ErrUnavailable) || !strings.Contains(err.Error(), "kv.v1.default.get") {
		t.Fatalf("get without coordinators: %v, want unavailable naming the subject", err)
	}
}
