package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
)

func TestJSONRequestAndReply(t *testing.T) {
	var r subjects.Request
	if err := Unmarshal(true, []byte(`{"key":"k","value":"hé","consistency":"all","timeout_ms":5}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.Key != "k" || string(r.Value) != "hé" || r.Consistency != "all" || r.TimeoutMS != 5 {
		t.Fatalf("%+v", r)
	}
	if err := Unmarshal(true, []byte(`{"key_base64":"AP8=","value_base64":"AAE="}`), &r); err != nil || r.Key != "\x00\xff" || string(r.Value) != "\x00\x01" {
		t.Fatalf("%v %+v", err, r)
	}
	for _, bad := range []string{`{"key":"k","key_base64":"aw=="}`, `{"value_base64":"%%"}`, `[1]`, `{"key":1}`, `{`} {
		var e *subjects.Error
		if err := Unmarshal(true, []byte(bad), &r); !errors.As(err, &e) || e.Code != subjects.CodeInvalid {
			t.Errorf("%s: %v, want a 400", bad, err)
		}
	}
	out, err := Marshal(true, subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte{0xff}, Siblings: [][]byte{{0xff}, []byte("a")}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"value_base64":"/w=="`) || !strings.Contains(string(out), `"siblings_base64":["/w==","YQ=="]`) {
		t.Fatalf("binary get reply: %s", out)
	}
	var g subjects.GetReply
	if err := Unmarshal(true, out, &g); err != nil || string(g.Value) != "\xff" || len(g.Siblings) != 2 {
		t.Fatalf("%v %+v", err, g)
	}
	// msgpack round trip of the same reply.
	mp, _ := Marshal(false, subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte("v")})
	var g2 subjects.GetReply
	if err := Unmarshal(false, mp, &g2); err != nil || string(g2.Value) != "v" || !g2.Found {
		t.Fatalf("%v %+v", err, g2)
	}
	if !IsJSON("application/json") || !IsJSON("application/json; charset=utf-8") || IsJSON("application/msgpack") || IsJSON("") {
		t.Fatal("IsJSON")
	}
}

// TestCustomJSONFields holds customJSONFields, which the strictness check
// reads, to the JSON forms in subjects/json.go: every member a form writes,
// for text and for binary content, is listed, and every listed member is
// written by one of them.
func TestCustomJSONFields(t *testing.T) {
	bin := "\xff\x00"
	samples := map[reflect.Type][]any{
		reflect.TypeFor[subjects.Request](): {
			subjects.Request{Key: "k", Value: []byte("v"), Consistency: "all", Context: "c", IdempotencyKey: "i", TimeoutMS: 5, TTLMs: 60_000},
			subjects.Request{Key: bin, Value: []byte(bin)},
		},
		reflect.TypeFor[subjects.GetReply](): {
			subjects.GetReply{Success: true, Key: "k", Found: true, Value: []byte("v"), Context: "c", Siblings: [][]byte{[]byte("a"), []byte("b")}, ExpiresAtMs: 1_800_000_000_000, ReplicaCount: 2, Consistency: "all"},
			subjects.GetReply{Key: bin, Found: true, Value: []byte(bin), Siblings: [][]byte{[]byte(bin), []byte("b")}},
		},
		reflect.TypeFor[subjects.WriteReply](): {
			subjects.WriteReply{Success: true, Key: "k", Context: "c", IdempotencyKey: "i", IsDuplicate: true, ReplicaCount: 2, Consistency: "all"},
			subjects.WriteReply{Key: bin},
		},
		reflect.TypeFor[subjects.NodeRequest](): {
			subjects.NodeRequest{NodeID: "n1", VirtualNodes: 128, Epoch: 7},
			subjects.NodeRequest{NodeID: "n1", Protocol: 2, Hold: true, Force: true, Transfer: &subjects.TransferStatus{MapVersion: 3}},
		},
	}
	if len(samples) != len(customJSONFields) {
		t.Fatalf("samples for %d types, customJSONFields lists %d", len(samples), len(customJSONFields))
	}
	for typ, vs := range samples {
		seen := map[string]bool{}
		for _, v := range vs {
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]json.RawMessage
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			for k := range m {
				seen[k] = true
			}
		}
		want := customJSONFields[typ]
		for k := range seen {
			if !slices.Contains(want, k) {
				t.Errorf("%v writes %q, which customJSONFields does not list", typ, k)
			}
		}
		for _, k := range want {
			if !seen[k] {
				t.Errorf("customJSONFields lists %q for %v, which its JSON form never writes", k, typ)
			}
		}
	}
}

// TestNodeJSONIsNodeListElement: a single node in JSON is written as
// subjects.NodeList writes each of its nodes.
func TestNodeJSONIsNodeListElement(t *testing.T) {
	n := subjects.Node{ID: "n1", Status: "active", VirtualNodes: 128, Epoch: 1<<63 + 1, RegisteredAt: time.Unix(2, 0).UTC(), LastSeen: time.Unix(3, 0).UTC()}
	one, err := Marshal(true, n)
	if err != nil {
		t.Fatal(err)
	}
	list, err := Marshal(true, subjects.NodeList{Nodes: []subjects.Node{n}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"nodes":[` + string(one) + `]}`; string(list) != want {
		t.Fatalf("node %s\nlist %s", one, list)
	}
}
