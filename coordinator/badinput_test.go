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
	"github.com/quorumkv/quorumkv/internal/wire"
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
		{"negative timeout", subjects.Get("default"), mp(t, map[string]any{"key": "k", "timeout_ms": -1}), false, "400", "invalid", "timeout_ms -1 out of range 0..60000 (0 or absent: the coordinator's default)"},
		{"malformed msgpack", subjects.Put("default"), []byte{0xc1, 0xff, 0x00}, false, "400", "invalid", "malformed msgpack"},
		{"msgpack of wrong type", subjects.Put("default"), mp(t, []int{1, 2, 3}), false, "400", "invalid", "malformed msgpack"},
		{"empty body", subjects.Put("default"), nil, false, "400", "invalid", "empty request body"},
		{"malformed JSON", subjects.Put("default"), []byte(`{"key": "k", "value": `), true, "400", "invalid", "malformed JSON"},
		{"JSON trailing data", subjects.Put("default"), []byte(`{"key":"k","value":"v"} {}`), true, "400", "invalid", "trailing data"},
		{"JSON value and base64", subjects.Put("default"), []byte(`{"key":"k","value":"v","value_base64":"dg=="}`), true, "400", "invalid", "not both"},
		{"JSON bad base64", subjects.Put("default"), []byte(`{"key":"k","value_base64":"!!"}`), true, "400", "invalid", "not standard base64"},
		{"bad context", subjects.Put("default"), mp(t, map[string]any{"key": "k", "value": []byte("v"), "context": "l2.@@@"}), false, "400", "invalid", "context was not issued by this store"},
		{"delete with value", subjects.Delete("default"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", "delete takes no value"},
		{"unknown tenant", subjects.Put("nosuch"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "404", "no_such_tenant", `no tenant "nosuch"`},
		{"tenant not a token", "kv.v1.Bad!Tenant.put", mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", "must match [a-z0-9][a-z0-9_-]{0,62}"},
		{"reserved tenant", subjects.Put("admin"), mp(t, map[string]any{"key": "k", "value": []byte("v")}), false, "400", "invalid", `tenant id "admin" is reserved`},
		{"RF above active nodes", subjects.AdminTenantCreate, mp(t, map[string]any{"tenant_id": "t5", "replication_factor": 5}), false, "400", "invalid", "replication_factor 5 exceeds the 3 active and joining storage nodes"},
		{"RF zero", subjects.AdminTenantCreate, mp(t, map[string]any{"tenant_id": "t0", "replication_factor": 0}), false, "400", "invalid", "replication_factor 0 out of range 1..7"},
		{"bad tenant id", subjects.AdminTenantCreate, []byte(`{"tenant_id":"Has Space"}`), true, "400", "invalid", "must match"},
		{"bad policy", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tp","conflict_policy":"newest"}`), true, "400", "invalid", `unknown conflict_policy "newest"`},
		{"bad default level", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tl","default_consistency":"two"}`), true, "400", "invalid", `unknown default_consistency "two"`},
		{"grace too short", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tg","tombstone_grace_ms":999}`), true, "400", "invalid", "tombstone_grace_ms 999 out of range 1000..315360000000"},
		{"grace negative", subjects.AdminTenantCreate, mp(t, map[string]any{"tenant_id": "tg", "tombstone_grace_ms": -1}), false, "400", "invalid", "tombstone_grace_ms -1 out of range"},
		{"grace over 10 years", subjects.AdminTenantCreate, []byte(`{"tenant_id":"tg","tombstone_grace_ms":315360000001}`), true, "400", "invalid", "tombstone_grace_ms 315360000001 out of range"},
		{"update grace zero", subjects.AdminTenantUpdate, []byte(`{"tenant_id":"default","version":1,"tombstone_grace_ms":0}`), true, "400", "invalid", "tombstone_grace_ms 0 out of range"},
		{"duplicate tenant", subjects.AdminTenantCreate, []byte(`{"tenant_id":"default"}`), true, "409", "exists", `tenant "default" already exists`},
		{"update without version", subjects.AdminTenantUpdate, []byte(`{"tenant_id":"default"}`), true, "400", "invalid", "version is required"},
		{"stale update", subjects.AdminTenantUpdate, []byte(`{"tenant_id":"default","version":99,"replication_factor":2}`), true, "409", "conflict", "stale version"},
		{"get missing tenant", subjects.AdminTenantGet, []byte(`{"tenant_id":"nope"}`), true, "404", "no_such_tenant", `no tenant "nope"`},
		{"register bad node", subjects.AdminNodeRegister, []byte(`{"node_id":"a.b"}`), true, "400", "invalid", "node id"},
		{"register too many vnodes", subjects.AdminNodeRegister, []byte(`{"node_id":"n9","virtual_nodes":100000}`), true, "400", "invalid", "virtual_nodes 100000 out of range"},
		{"drain missing node", subjects.AdminNodeDrain, []byte(`{"node_id":"ghost"}`), true, "404", "no_such_node", `no storage node "ghost"`},
		{"remove active node", subjects.AdminNodeRemove, []byte(`{"node_id":"node-1"}`), true, "409", "node_active", "only a left node can be removed"},
		// Input encoding/json or the msgpack library would take and rewrite,
		// match loosely, or pick from is refused, never stored.
		{"JSON key not UTF-8", subjects.Put("default"), []byte("{\"key\":\"a\xffb\",\"value\":\"v\"}"), true, "400", "invalid", "key is not valid Unicode text"},
		{"JSON key lone surrogate", subjects.Put("default"), []byte(`{"key":"a\ud800","value":"v"}`), true, "400", "invalid", "key_base64"},
		{"JSON value lone surrogate", subjects.Put("default"), []byte(`{"key":"k","value":"\udfff"}`), true, "400", "invalid", "value_base64"},
		{"JSON KEY field", subjects.Put("default"), []byte(`{"KEY":"k","value":"v"}`), true, "400", "invalid", `unknown field "KEY": field names are case-sensitive; use "key"`},
		{"JSON duplicate field", subjects.Put("default"), []byte(`{"key":"a","value":"v","key":"b"}`), true, "400", "invalid", `field "key" appears more than once`},
		{"JSON get duplicate field", subjects.Get("default"), []byte(`{"key":"a","key":"b"}`), true, "400", "invalid", `field "key" appears more than once`},
		{"msgpack trailing bytes", subjects.Put("default"), append(mp(t, map[string]any{"key": "k", "value": []byte("v")}), 0xc0), false, "400", "invalid", "1 bytes after the message"},
		{"msgpack duplicate field", subjects.Put("default"), []byte{0x83, 0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa5, 'v', 'a', 'l', 'u', 'e', 0xc4, 1, 'v', 0xa3, 'k', 'e', 'y', 0xa1, 'b'}, false, "400", "invalid", `map key "key" appears more than once`},
		{"JSON without the header", subjects.Put("default"), []byte(`{"key":"k","value":"v"}`), false, "400", "invalid", "set the header Content-Type: application/json"},
		{"admin JSON field case", subjects.AdminTenantCreate, []byte(`{"Tenant_Id":"tc","replication_factor":1}`), true, "400", "invalid", `use "tenant_id"`},
		{"admin JSON duplicate", subjects.AdminTenantCreate, []byte(`{"tenant_id":"td","tenant_id":"te"}`), true, "400", "invalid", `field "tenant_id" appears more than once`},
		{"admin msgpack trailing", subjects.AdminTenantCreate, append(mp(t, map[string]any{"tenant_id": "tt", "replication_factor": 1}), 0x01), false, "400", "invalid", "1 bytes after the message"},
		{"admin bad epoch", subjects.AdminNodeRegister, []byte(`{"node_id":"n9","epoch":"-1"}`), true, "400", "invalid", "epoch"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, kind, desc, data := rawRequest(t, nc, tc.subject, tc.body, tc.json)
			if code != tc.code || kind != tc.kind || !strings.Contains(desc, tc.msg) {
				t.Fatalf("got %s %s %q, want %s %s containing %q", code, kind, desc, tc.code, tc.kind, tc.msg)
			}
			// The body carries the same error, in the request's encoding.
			var e subjects.Error
			if err := wire.Unmarshal(tc.json, data, &e); err != nil || fmt.Sprint(int(e.Code)) != tc.code || e.Kind != tc.kind {
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
	// The baseline is taken once the goroutine count has stopped falling
	// (the warm-up's tails have ended), not after a fixed sleep.
	base := runtime.NumGoroutine()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		n := runtime.NumGoroutine()
		if n >= base {
			break
		}
		base = n
	}
	base = runtime.NumGoroutine()
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
	// timeout_ms 0 is documented as the coordinator's default, in both
	// encodings.
	for _, body := range [][]byte{[]byte(`{"key":"t0","value":"v","timeout_ms":0}`), mp(t, map[string]any{"key": "t0", "value": []byte("v"), "timeout_ms": 0})} {
		if code, _, desc, _ := rawRequest(t, nc, subjects.Put("default"), body, body[0] == '{'); code != "" {
			t.Fatalf("timeout_ms 0: %s %s", code, desc)
		}
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

// requestWithHeader sends body to subject with the header name: value as
// given (no canonical spelling) and returns the reply.
func requestWithHeader(t *testing.T, nc *nats.Conn, subject string, body []byte, name, value string) *nats.Msg {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header[name] = []string{value}
	reply, err := nc.RequestMsg(m, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	if e := subjects.ErrorFromHeaders(reply.Header.Get); e != nil {
		t.Fatalf("request %s with %s: %s: %v", subject, name, value, e)
	}
	return reply
}

// TestContentTypeInAnyCase: the Content-Type header is matched as HTTP
// matches it, name and value in any letter case, parameters allowed; the
// reply is JSON too.
func TestContentTypeInAnyCase(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	for i, h := range [][2]string{
		{"content-type", "application/json"},
		{"CONTENT-TYPE", "APPLICATION/JSON"},
		{"Content-Type", "Application/Json; charset=utf-8"},
	} {
		body := fmt.Appendf(nil, `{"key":"ct%d","value":"v"}`, i)
		reply := requestWithHeader(t, nc, subjects.Put("default"), body, h[0], h[1])
		var put map[string]any
		if err := json.Unmarshal(reply.Data, &put); err != nil || put["success"] != true {
			t.Fatalf("%s: %s: reply %q is not a JSON put reply: %v", h[0], h[1], reply.Data, err)
		}
		if got := reply.Header.Get(subjects.ContentType); got != subjects.JSONContentType {
			t.Fatalf("%s: %s: reply Content-Type %q", h[0], h[1], got)
		}
	}
	// Admin subjects too.
	reply := requestWithHeader(t, nc, subjects.AdminTenantList, nil, "content-type", "application/json")
	if !bytes.Contains(reply.Data, []byte(`"tenant_id":"default"`)) {
		t.Fatalf("tenant list %q", reply.Data)
	}
}

// TestBinaryKeysOnTheWire: a key that is not UTF-8 comes back as
// key_base64 in every JSON reply (put, delete, get), and as msgpack bin,
// never as a str holding invalid UTF-8.
func TestBinaryKeysOnTheWire(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	for _, op := range []string{subjects.Put("default"), subjects.Get("default"), subjects.Delete("default")} {
		body := []byte(`{"key_base64":"AP8="}`)
		if op == subjects.Put("default") {
			body = []byte(`{"key_base64":"AP8=","value":"v"}`)
		}
		code, _, desc, data := rawRequest(t, nc, op, body, true)
		if code != "" {
			t.Fatalf("%s: %s %s", op, code, desc)
		}
		var rep map[string]any
		if err := json.Unmarshal(data, &rep); err != nil {
			t.Fatalf("%s: %q: %v", op, data, err)
		}
		if _, has := rep["key"]; has || rep["key_base64"] != "AP8=" {
			t.Fatalf("%s: JSON reply %s, want key_base64 AP8= and no key", op, data)
		}
	}
	// msgpack: the key field of every reply is bin for a binary key, str
	// for a UTF-8 one.
	for _, tc := range []struct {
		key  string
		code byte
	}{{"\x00\xff", 0xc4}, {"text", 0xa4}} {
		for _, op := range []string{subjects.Put("default"), subjects.Get("default"), subjects.Delete("default")} {
			req := map[string]any{"key": []byte(tc.key)}
			if op == subjects.Put("default") {
				req["value"] = []byte("v")
			}
			code, _, desc, data := rawRequest(t, nc, op, mp(t, req), false)
			if code != "" {
				t.Fatalf("%s: %s %s", op, code, desc)
			}
			var rep map[string]msgpack.RawMessage
			if err := msgpack.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if k := rep["key"]; len(k) == 0 || k[0] != tc.code {
				t.Fatalf("%s key %q: reply key encoded as % x, want type byte %#x", op, tc.key, k, tc.code)
			}
		}
	}
}

// TestNodeEpochIsAStringInJSON: a node's epoch (a uint64, usually above
// 2^53) is a decimal string in JSON admin replies, so float64 JSON readers
// (JavaScript) do not round it; msgpack keeps the integer.
func TestNodeEpochIsAStringInJSON(t *testing.T) {
	c := startCluster(t, 3)
	nc := connect(t, c)
	code, _, desc, data := rawRequest(t, nc, subjects.AdminNodeList, nil, true)
	if code != "" {
		t.Fatalf("node list: %s %s", code, desc)
	}
	var list struct {
		Nodes []map[string]any `json:"nodes"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&list); err != nil || len(list.Nodes) != 3 {
		t.Fatalf("node list %s: %v", data, err)
	}
	nodes, err := client.NewAdmin(nc).ListNodes(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, n := range nodes {
		want[n.ID] = fmt.Sprint(n.Epoch)
	}
	for _, n := range list.Nodes {
		epoch, isString := n["epoch"].(string)
		if !isString || epoch != want[fmt.Sprint(n["node_id"])] {
			t.Fatalf("node %v: epoch %#v, want the string %q", n["node_id"], n["epoch"], want[fmt.Sprint(n["node_id"])])
		}
	}
	// A JSON register takes the epoch as a string too, and answers it as one.
	code, _, desc, data = rawRequest(t, nc, subjects.AdminNodeRegister, []byte(`{"node_id":"node-9","epoch":"18446744073709551615"}`), true)
	if code != "" || !bytes.Contains(data, []byte(`"epoch":"18446744073709551615"`)) {
		t.Fatalf("register: %s %s %s", code, desc, data)
	}
}
