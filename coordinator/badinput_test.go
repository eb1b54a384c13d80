package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// rawRequest sends body to subject (as JSON when isJSON) and returns the
// reply's error code, kind and description ("" when it succeeded).
func rawRequest(t *testing.T, nc *nats.Conn, subject string, body []byte, isJSON bool) (code, kind, desc string, data []byte) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = body
	if isJSON {
		m.Header.Set("Content-Type", "application/json")
	}
	reply, err := nc.RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	return reply.Header.Get("Nats-Service-Error-Code"), reply.Header.Get(subjects.KindHeader), reply.Header.Get("Nats-Service-Error"), reply.Data
}

func mp(t *testing.T, v any) []byte {
	t.Helper()
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBadInputAnswers4xxAndWritesNothing(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	longKey := strings.Repeat("k", subjects.MaxKeyBytes+1)
	bigValue := make([]byte, subjects.MaxValueBytes+1)
	cases := []struct {
		name    string
		subject string
		body    []byte
		json    bool
		code    string
		kind    string
		msg     string
	}{
		{"empty key", subjects.Put("default"), mp(t, map[string]any{"key": "", "value": []byte("v")}), false, "400", "invalid", "key is empty"},
		{"missing key", subjects.Get("default"), mp(t, map[string]any{}), false, "400", "invalid", "key is empty"},
		{"key too long", subjects.Put("default"), mp(t, map[string]any{"key": longKey, "value": []byte("v")}), false, "413", "too_large", "key is 1025 bytes; the limit is 1024"},
		{"value too large", subjects.Put("default"), mp(t, map[string]any{"key": "k", "value": bigValue}), false, "413", "too_large", "value is 1048577 bytes; the limit is 1048576"},
		{"unknown level", subjects.Put("default"), mp(t, map[string]any{"key": "k", "value": []byte("v"), "consistency": "two"}), false, "400", "invalid", `unknown consistency "two"`},
		{"unknown level get", subjects.Get("default"), mp(t, map[string]any{"key": "k", "consistency": "most"}), false, "400", "invalid", `unknown consistency "most"`},
		{"bad timeout", subjects.Get("default"), mp(t, map[string]any{"key": "k", "timeout_ms": 600000}), false, "400", "invalid", "timeout_ms 600000 out of range"},
		{"malformed msgpack", subjects.Put("default"), []byte{0xc1, 0xff, 0x00}, false, "400", "invalid", "malformed msgpack"},
		{"msgpack of wrong type", subjects.Put("default"), mp(t, []int{1, 2, 3}), false, "400", "invalid", "malformed msgpack"},
		{"empty body", subjects.Put("default"), nil, false, "400", "invalid", "empty request body"},
		{"malformed JSON", subjects.Put("default"), []byte(`{"key": "k", "value": `), true, "400", "invalid", "malformed JSON"},
		{"JSON trailing data", subjects.Put("default"), []byte(`{"key":"k","value":"v"} {}`), true, "400", "invalid", "trailing data"},
		{"JSON value and base64", subjects.Put("default"), []byte(`{"key":"k","value":"v","value_base64":"dg=="}`), true, "400", "invalid", "not both"},
		{"JSON bad base64", subjects.Put("default"), []byte(`{"key":"k","value_base64":"!!"}`), true, "400", "invalid", "not standard base64"},
		{"bad context", subjects.Put("default"), mp(t, map[string]any{"key": "k", "value": []byte("v"), "context": "l1.@@@"}), false, "400", "invalid", "context is not one this store issued"},
		{"delete with value", subjects.Delete("default"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", "delete takes no value"},
		{"unknown tenant", subjects.Put("nosuch"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "404", "no_such_tenant", `no tenant "nosuch"`},
		{"tenant not a token", "kv.v1.Bad!Tenant.put", mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", "must match [a-z0-9][a-z0-9_-]{0,62}"},
		{"reserved tenant", subjects.Put("admin"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", `tenant id "admin" is reserved`},
		{"RF above active nodes", subjects.AdminTenantCreate, mp(t, map[string]any{"tenant_id": "t5", "replication_factor": 5}), false, "400", "invalid", "replication_factor 5 exceeds the 3 active storage nodes"},
		{"RF zero", subjects.AdminTenantCreate, mp(t, map[string]any{"tenant_id": "t0", "replication_factor": 0}), false, "400", "invalid", "replication_factor 0 out of range 1..7"},
		{"bad tenant id", subjects.AdminTenantCreate, []byte(`{"tenant_id":"Has Space"}`), true, "400", "invalid", "must match"},
		{"bad policy", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tp","conflict_policy":"newest"}`), true, "400", "invalid", `unknown conflict_policy "newest"`},
		{"bad default level", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tl","default_consistency":"two"}`), true, "400", "invalid", `unknown default_consistency "two"`},
		{"duplicate tenant", subjects.AdminTenantCreate, []byte(`{"tenant_id":"default"}`), true, "409", "exists", `tenant "default" already exists`},
		{"update without version", subjects.AdminTenantUpdate, []byte(`{"tenant_id":"default"}`), true, "400", "invalid", "version is required"},
		{"stale update", subjects.AdminTenantUpdate, []byte(`{"tenant_id":"default","version":99,"replication_factor":2}`), true, "409", "conflict", "stale version"},
		{"get missing tenant", subjects.AdminTenantGet, []byte(`{"tenant_id":"nope"}`), true, "404", "no_such_tenant", `no tenant "nope"`},
		{"register bad node", subjects.AdminNodeRegister, []byte(`{"node_id":"a.b"}`), true, "400", "invalid", "node id"},
		{"register too many vnodes", subjects.AdminNodeRegister, []byte(`{"node_id":"n9","virtual_nodes":100000}`), true, "400", "invalid", "virtual_nodes 100000 out of range"},
		{"drain missing node", subjects.AdminNodeDrain, []byte(`{"node_id":"ghost"}`), true, "404", "no_such_node", `no storage node "ghost"`},
		{"remove active node", subjects.AdminNodeRemove, []byte(`{"node_id":"node-1"}`), true, "409", "node_active", "drain it first"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, kind, desc, data := rawRequest(t, nc, tc.subject, tc.body, tc.json)
			if code != tc.code || kind != tc.kind || !strings.Contains(desc, tc.msg) {
				t.Fatalf("got %s %s %q, want %s %s containing %q", code, kind, desc, tc.code, tc.kind, tc.msg)
			}
			// The body carries the same error, in the request's encoding.
			var e subjects.Error
			if err := subjects.Unmarshal(tc.json, data, &e); err != nil || fmt.Sprint(int(e.Code)) != tc.code || e.Kind != tc.kind {
				t.Fatalf("error body %q (%v), want code %s kind %s", data, err, tc.code, tc.kind)
			}
		})
	}
	// Nothing was written by any of them.
	admin := client.NewAdmin(nc)
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		entries, err := admin.DumpAll(context.Background(), id, "default")
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 0 {
			t.Fatalf("%s holds %d keys after bad requests only", id, len(entries))
		}
	}
	ts, err := admin.ListTenants(context.Background())
	if err != nil || len(ts) != 1 {
		t.Fatalf("tenants after bad creates: %v %+v", err, ts)
	}
}

// TestBadInputLeaksNoGoroutines sends a burst of bad and good requests and
// checks that the goroutine count returns to where it was.
func TestBadInputLeaksNoGoroutines(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	kv := kvClient(t, c, "default")
	ctx := ctxT(t)
	warm := func() {
		for i := 0; i < 50; i++ {
			_, _ = kv.Put(ctx, fmt.Sprintf("k%d", i), []byte("v"))
			_, _ = kv.Get(ctx, fmt.Sprintf("k%d", i))
			rawRequest(t, nc, subjects.Put("default"), []byte{0xc1}, false)
			rawRequest(t, nc, subjects.Put("nosuch"), mp(t, map[string]any{"key": "k"}), false)
			rawRequest(t, nc, subjects.Get("default"), []byte("{"), true)
		}
	}
	warm()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()
	warm()
	waitFor(t, 3*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base+3 {
			return fmt.Errorf("%d goroutines, %d before the burst", n, base)
		}
		return nil
	})
}

func TestJSONProtocol(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	code, _, desc, data := rawRequest(t, nc, subjects.Put("default"), []byte(`{"key":"greeting","value":"hello, wörld"}`), true)
	if code != "" {
		t.Fatalf("json put: %s %s", code, desc)
	}
	var put map[string]any
	if err := json.Unmarshal(data, &put); err != nil {
		t.Fatalf("json put reply %q: %v", data, err)
	}
	for _, f := range []string{"success", "key", "context", "idempotency_key", "is_duplicate", "replica_count", "consistency"} {
		if _, ok := put[f]; !ok {
			t.Fatalf("put reply lacks %q: %s", f, data)
		}
	}
	if put["success"] != true || put["key"] != "greeting" || put["consistency"] != "quorum" || put["idempotency_key"] == "" {
		t.Fatalf("put reply %s", data)
	}
	_, _, _, data = rawRequest(t, nc, subjects.Get("default"), []byte(`{"key":"greeting"}`), true)
	var get map[string]any
	if err := json.Unmarshal(data, &get); err != nil {
		t.Fatal(err)
	}
	if get["found"] != true || get["value"] != "hello, wörld" || get["context"] != put["context"] {
		t.Fatalf("get reply %s", data)
	}
	// Binary values travel as value_base64 both ways.
	code, _, desc, _ = rawRequest(t, nc, subjects.Put("default"), []byte(`{"key_base64":"AP8=","value_base64":"/wABAg=="}`), true)
	if code != "" {
		t.Fatalf("binary json put: %s %s", code, desc)
	}
	_, _, _, data = rawRequest(t, nc, subjects.Get("default"), []byte(`{"key_base64":"AP8="}`), true)
	if !bytes.Contains(data, []byte(`"value_base64":"/wABAg=="`)) || !bytes.Contains(data, []byte(`"key_base64":"AP8="`)) {
		t.Fatalf("binary get reply %s", data)
	}
	// The binary key is the same key for msgpack clients.
	got, err := kvClient(t, c, "default").Get(ctxT(t), "\x00\xff")
	if err != nil || !bytes.Equal(got.Value, []byte{0xff, 0, 1, 2}) {
		t.Fatalf("msgpack get of binary key: %v %+v", err, got)
	}
	// A missing key is found:false with no error.
	code, _, _, data = rawRequest(t, nc, subjects.Get("default"), []byte(`{"key":"nope"}`), true)
	if code != "" || !bytes.Contains(data, []byte(`"found":false`)) {
		t.Fatalf("missing key: %s %s", code, data)
	}
	// Admin in JSON.
	code, _, _, data = rawRequest(t, nc, subjects.AdminTenantList, nil, true)
	if code != "" || !bytes.Contains(data, []byte(`"tenant_id":"default"`)) {
		t.Fatalf("tenant list: %s %s", code, data)
	}
}
