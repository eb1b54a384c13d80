package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/subjects"
)

// wantInvalid checks that err is a 400 invalid whose message holds msg.
func wantInvalid(t *testing.T, name string, err error, msg string) {
	t.Helper()
	var e *subjects.Error
	if !errors.As(err, &e) || e.Code != subjects.CodeInvalid || e.Kind != subjects.KindInvalid || !strings.Contains(e.Message, msg) {
		t.Errorf("%s: got %v, want 400 invalid containing %q", name, err, msg)
	}
}

// TestJSONRefusesWhatEncodingJSONRewrites: input encoding/json would take
// and silently rewrite (invalid text), match loosely (letter case) or pick
// from (a repeated field) is a 400 naming the problem.
func TestJSONRefusesWhatEncodingJSONRewrites(t *testing.T) {
	for _, tc := range []struct {
		name, body, msg string
		v               any
	}{
		{"invalid UTF-8 key", "{\"key\":\"a\xffb\",\"value\":\"v\"}", "key is not valid Unicode text", &subjects.Request{}},
		{"lone high surrogate key", `{"key":"\ud800","value":"v"}`, "key_base64", &subjects.Request{}},
		{"high surrogate then text", `{"key":"\ud800x","value":"v"}`, "key is not valid Unicode text", &subjects.Request{}},
		{"two high surrogates", `{"key":"\ud800\ud800","value":"v"}`, "key is not valid Unicode text", &subjects.Request{}},
		{"lone low surrogate value", `{"key":"k","value":"a\udc00"}`, "value_base64", &subjects.Request{}},
		{"invalid UTF-8 context", "{\"key\":\"k\",\"context\":\"\xc3\"}", `field "context" is not valid Unicode text`, &subjects.Request{}},
		{"invalid UTF-8 name", "{\"key\":\"k\",\"\xff\":1}", "a field name is not valid Unicode text", &subjects.Request{}},
		{"upper-case KEY", `{"KEY":"k","value":"v"}`, `unknown field "KEY": field names are case-sensitive; use "key"`, &subjects.Request{}},
		{"mixed-case Value", `{"key":"k","Value":"v"}`, `use "value"`, &subjects.Request{}},
		{"Kelvin sign", `{"\u212aey":"k"}`, `use "key"`, &subjects.Request{}},
		{"duplicate key", `{"key":"a","value":"v","key":"b"}`, `field "key" appears more than once`, &subjects.Request{}},
		{"duplicate by escape", `{"key":"a","k\u0065y":"b"}`, `field "key" appears more than once`, &subjects.Request{}},
		{"duplicate unknown field", `{"key":"a","x":1,"x":2}`, `field "x" appears more than once`, &subjects.Request{}},
		{"trailing bracket", `{"key":"k"}]`, "trailing data", &subjects.Request{}},
		{"admin field case", `{"Tenant_ID":"acme"}`, `use "tenant_id"`, &subjects.TenantRequest{}},
		{"admin duplicate", `{"tenant_id":"a","tenant_id":"b"}`, `field "tenant_id" appears more than once`, &subjects.TenantRequest{}},
		{"admin invalid UTF-8", "{\"tenant_id\":\"\xff\"}", `field "tenant_id" is not valid Unicode text`, &subjects.TenantRequest{}},
		{"node field case", `{"Node_Id":"n1"}`, `use "node_id"`, &subjects.NodeRequest{}},
		{"node duplicate epoch", `{"node_id":"n1","epoch":1,"epoch":"2"}`, `field "epoch" appears more than once`, &subjects.NodeRequest{}},
	} {
		wantInvalid(t, tc.name, Unmarshal(true, []byte(tc.body), tc.v), tc.msg)
	}
	// What is valid stays accepted, exactly.
	for _, tc := range []struct{ body, key, value string }{
		{`{"key":"\ud83d\ude00","value":"\u00e9"}`, "😀", "é"},
		{`{"key":"\ufffd","value":"a\"b\\c\/\n"}`, "\ufffd", "a\"b\\c/\n"},
		{`{"key":"k","unknown":{"Key":1,"nested":["\ud83d\ude00"]}}`, "k", ""},
		{" \n{\"key\":\"k\"}\n ", "k", ""},
	} {
		var r subjects.Request
		if err := Unmarshal(true, []byte(tc.body), &r); err != nil || r.Key != tc.key || string(r.Value) != tc.value {
			t.Errorf("%s: %v %+v, want key %q value %q", tc.body, err, r, tc.key, tc.value)
		}
	}
}

// TestMsgpackRefusesTrailingAndRepeatedFields: one message is one msgpack
// value; a field is sent once. Both the hand-written and the library path.
func TestMsgpackRefusesTrailingAndRepeatedFields(t *testing.T) {
	req, _ := msgpack.Marshal(map[string]any{"key": "k", "value": []byte("v")})
	trailing := append(bytes.Clone(req), 0xc0)
	wantInvalid(t, "request trailing nil", Unmarshal(false, trailing, &subjects.Request{}), "1 bytes after the message")
	wantInvalid(t, "request trailing map", Unmarshal(false, append(bytes.Clone(req), req...), &subjects.Request{}), "bytes after the message")
	admin, _ := msgpack.Marshal(&subjects.TenantRequest{TenantID: "acme"})
	wantInvalid(t, "admin trailing", Unmarshal(false, append(admin, 0x01), &subjects.TenantRequest{}), "1 bytes after the message")
	// {"key": "a", "value": bin "v", "key": "b"}
	dup := []byte{0x83, 0xa3, 'k', 'e', 'y', 0xa1, 'a', 0xa5, 'v', 'a', 'l', 'u', 'e', 0xc4, 1, 'v', 0xa3, 'k', 'e', 'y', 0xa1, 'b'}
	wantInvalid(t, "duplicate key", Unmarshal(false, dup, &subjects.Request{}), `map key "key" appears more than once`)
	// tenant_id twice, through the library path.
	dupAdmin := []byte{0x82, 0xa9, 't', 'e', 'n', 'a', 'n', 't', '_', 'i', 'd', 0xa1, 'a', 0xa9, 't', 'e', 'n', 'a', 'n', 't', '_', 'i', 'd', 0xa1, 'b'}
	wantInvalid(t, "duplicate admin field", Unmarshal(false, dupAdmin, &subjects.TenantRequest{}), `map key "tenant_id" appears more than once`)
	// A JSON body sent without the header is told to set it.
	wantInvalid(t, "JSON as msgpack", Unmarshal(false, []byte(`{"key":"k"}`), &subjects.Request{}), "set the header Content-Type: application/json")
	if err := Unmarshal(false, req, &subjects.Request{}); err != nil {
		t.Fatal(err)
	}
}

func TestContentTypeMatchesAsHTTPDoes(t *testing.T) {
	for _, v := range []string{"application/json", "APPLICATION/JSON", "Application/Json; charset=utf-8", " application/json ;charset=UTF-8"} {
		if !IsJSON(v) {
			t.Errorf("IsJSON(%q) = false", v)
		}
	}
	for _, v := range []string{"", "application/msgpack", "application/jsonx", "text/json", "application/json-seq"} {
		if IsJSON(v) {
			t.Errorf("IsJSON(%q) = true", v)
		}
	}
	for _, h := range []map[string][]string{
		{"Content-Type": {"application/json"}},
		{"content-type": {"application/json"}},
		{"CONTENT-TYPE": {"Application/JSON; charset=utf-8"}},
	} {
		if !IsJSONHeader(h) {
			t.Errorf("IsJSONHeader(%v) = false", h)
		}
	}
	for _, h := range []map[string][]string{nil, {}, {"Content-Type": {"application/msgpack"}}, {"Content-Typo": {"application/json"}}} {
		if IsJSONHeader(h) {
			t.Errorf("IsJSONHeader(%v) = true", h)
		}
	}
}

// TestBinaryKeysInReplies: a key that is not UTF-8 is key_base64 in JSON
// (put and delete replies as get's) and bin, never an invalid str, in
// msgpack.
func TestBinaryKeysInReplies(t *testing.T) {
	const bin = "\x00\xff"
	out, err := Marshal(true, subjects.WriteReply{Success: true, Key: bin, Context: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"key_base64":"AP8="`) || strings.Contains(string(out), `"key":`) {
		t.Fatalf("JSON write reply: %s", out)
	}
	var w subjects.WriteReply
	if err := Unmarshal(true, out, &w); err != nil || w.Key != bin {
		t.Fatalf("%v %+v", err, w)
	}
	out, _ = Marshal(true, &subjects.WriteReply{Key: "text"})
	if !strings.Contains(string(out), `"key":"text"`) || strings.Contains(string(out), "key_base64") {
		t.Fatalf("JSON write reply: %s", out)
	}
	for _, v := range []any{&subjects.WriteReply{Key: bin}, &subjects.GetReply{Key: bin}, &subjects.Request{Key: bin}} {
		b, err := Marshal(false, v)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]msgpack.RawMessage
		if err := msgpack.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if k := m["key"]; len(k) == 0 || k[0] != mpBin8 {
			t.Errorf("%T: key encoded as % x, want bin8", v, k)
		}
		back := fresh(v)
		if err := Unmarshal(false, b, back); err != nil {
			t.Fatal(err)
		}
		if err := msgpack.Unmarshal(b, fresh(v)); err != nil {
			t.Fatalf("%T: the library cannot read a bin key: %v", v, err)
		}
	}
	b, _ := Marshal(false, &subjects.WriteReply{Key: "text"})
	var m map[string]msgpack.RawMessage
	if err := msgpack.Unmarshal(b, &m); err != nil || m["key"][0] != 0xa4 {
		t.Fatalf("UTF-8 key encoded as % x, want fixstr", m["key"])
	}
}

// TestEpochIsAStringInJSON: 64-bit identifiers survive JSON readers that
// parse numbers as float64 (JavaScript).
func TestEpochIsAStringInJSON(t *testing.T) {
	const epoch = uint64(1<<63 + 12345) // not representable as a float64
	n := subjects.Node{ID: "n1", Status: "active", VirtualNodes: 128, Epoch: epoch, LastSeen: time.Unix(1, 0).UTC()}
	for _, v := range []any{n, &n, subjects.NodeList{Nodes: []subjects.Node{n}}} {
		out, err := Marshal(true, v)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), `"epoch":"9223372036854788153"`) || strings.Count(string(out), `"epoch"`) != 1 ||
			!strings.Contains(string(out), `"node_id":"n1"`) || !strings.Contains(string(out), `"virtual_nodes":128`) {
			t.Errorf("%T: %s", v, out)
		}
	}
	// msgpack keeps the uint64.
	b, _ := Marshal(false, subjects.NodeList{Nodes: []subjects.Node{n}})
	var l subjects.NodeList
	if err := msgpack.Unmarshal(b, &l); err != nil || l.Nodes[0].Epoch != epoch {
		t.Fatalf("%v %+v", err, l)
	}
	// Requests take a string or a number.
	for _, body := range []string{`{"node_id":"n1","epoch":"9223372036854788153"}`, `{"node_id":"n1","epoch":9223372036854788153}`} {
		var r subjects.NodeRequest
		if err := Unmarshal(true, []byte(body), &r); err != nil || r.Epoch != epoch || r.NodeID != "n1" {
			t.Errorf("%s: %v %+v", body, err, r)
		}
	}
	for _, body := range []string{`{"node_id":"n1","epoch":"-1"}`, `{"node_id":"n1","epoch":1.5}`, `{"node_id":"n1","epoch":"x"}`, `{"node_id":"n1","epoch":true}`} {
		wantInvalid(t, body, Unmarshal(true, []byte(body), &subjects.NodeRequest{}), "epoch")
	}
	out, _ := json.Marshal(subjects.NodeRequest{NodeID: "n1", Epoch: epoch})
	if !strings.Contains(string(out), `"epoch":"9223372036854788153"`) {
		t.Fatalf("%s", out)
	}
}

// TestFastPathRefusesWhatTheLibraryPathRefuses: an unknown field sent
// twice is refused whichever decoder reads it, and many unknown fields
// are still accepted (by the library path).
func TestFastPathRefusesWhatTheLibraryPathRefuses(t *testing.T) {
	// {"key": "k", "x": 1, "x": 2}
	dup := []byte{0x83, 0xa3, 'k', 'e', 'y', 0xa1, 'k', 0xa1, 'x', 1, 0xa1, 'x', 2}
	if unmarshalFast(dup, &subjects.Request{}) {
		t.Fatal("fast path accepted a repeated unknown field")
	}
	wantInvalid(t, "repeated unknown field", Unmarshal(false, dup, &subjects.Request{}), `map key "x" appears more than once`)
	many := map[string]any{"key": "k"}
	for i := range 2 * maxUnknownFields {
		many[string(rune('a'+i))] = i
	}
	b, _ := msgpack.Marshal(many)
	var r subjects.Request
	if err := Unmarshal(false, b, &r); err != nil || r.Key != "k" {
		t.Fatalf("%v %+v", err, r)
	}
}
