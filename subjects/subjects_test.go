package subjects

import (
	"encoding/json"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/vclock"
)

func TestSubjectBuilders(t *testing.T) {
	cases := map[string]string{
		Put("acme"):                       "kv.v1.acme.put",
		Get("acme"):                       "kv.v1.acme.get",
		Delete("acme"):                    "kv.v1.acme.delete",
		StorageNode("node-1", NodeOpRead): "kv.node.node-1.read",
		NodeAll("node-1"):                 "kv.node.node-1.*",
		Repair("acme"):                    "kv.repair.acme",
		AdminTenantCreate:                 "kv.v1.admin.tenant.create",
		AdminNodeRegister:                 "kv.v1.admin.node.register",
		AdminNodeTransfer:                 "kv.v1.admin.node.transfer",
		AdminNodeReplace:                  "kv.v1.admin.node.replace",
		RepairAll:                         "kv.repair.*",
		RepairDead("acme"):                "kv.repair.dead.acme",
		RepairDeadAll:                     "kv.repair.dead.*",
		RepairWorkersStats:                "kv.repair.workers.stats",
	}
	for got, want := range cases {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for subject, tenant := range map[string]string{
		"kv.v1.acme.put": "acme", "kv.v1.a-b_c.get": "a-b_c", "kv.v1.acme": "", "kv.v2.acme.put": "", "": "",
	} {
		if got := TenantFromData(subject); got != tenant {
			t.Errorf("TenantFromData(%q) = %q, want %q", subject, got, tenant)
		}
	}
}

func TestValidateTenantID(t *testing.T) {
	for _, ok := range []string{"a", "default", "acme-1", "x_y", "0", strings.Repeat("a", 63)} {
		if err := ValidateTenantID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "A", "-a", "_a", "a.b", "a*", "a>", "a b", strings.Repeat("a", 64), "admin", "events", "é"} {
		if err := ValidateTenantID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	for _, bad := range []string{"", "a.b", "a*", "a>", "a b", strings.Repeat("n", 64)} {
		if err := ValidateNodeID(bad); err == nil {
			t.Errorf("node id %q accepted", bad)
		}
	}
}

func TestErrorsRoundTripThroughHeaders(t *testing.T) {
	e := Errorf(KindInProgress, "request %q in progress", "k")
	if e.Code != CodeConflict || e.Error() != `in_progress: request "k" in progress` {
		t.Fatalf("%+v %q", e, e.Error())
	}
	h := http.Header{}
	h.Set(ErrorCodeHeader, "409")
	h.Set(ErrorHeader, e.Description())
	h.Set(KindHeader, e.Kind)
	back := ErrorFromHeaders(h.Get)
	if back == nil || *back != *e {
		t.Fatalf("round trip %+v, want %+v", back, e)
	}
	if !errors.Is(back, &Error{Kind: KindInProgress}) || errors.Is(back, &Error{Kind: KindConflict}) || !errors.Is(back, &Error{Code: CodeConflict}) {
		t.Fatal("Is must match by kind, or by code when no kind is given")
	}
	// A server that sent only micro's headers still yields a kind.
	h = http.Header{}
	h.Set(ErrorCodeHeader, "503")
	h.Set(ErrorHeader, "quorum not reached")
	back = ErrorFromHeaders(h.Get)
	if back.Kind != KindUnavailable || back.Message != "quorum not reached" {
		t.Fatalf("%+v", back)
	}
	if ErrorFromHeaders(http.Header{}.Get) != nil {
		t.Fatal("no headers is no error")
	}
	for _, k := range []string{KindInvalid, KindNoSuchTenant, KindExists, KindTooLarge, KindOverloaded, KindUnavailable, KindTimeout, KindInternal} {
		if CodeKind(KindCode(k)) == "" {
			t.Errorf("kind %s has no code mapping", k)
		}
	}
}

// TestIsTokenMatchesTheDocumentedPattern holds the hand-written check to
// the regular expressions the docs state, over every short string of a
// small alphabet.
func TestIsTokenMatchesTheDocumentedPattern(t *testing.T) {
	tenant := regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	node := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)
	alphabet := []byte("aZ0_-.é ")
	var walk func(prefix []byte)
	walk = func(prefix []byte) {
		s := string(prefix)
		if isToken(s, false) != tenant.MatchString(s) || isToken(s, true) != node.MatchString(s) {
			t.Fatalf("%q: isToken disagrees with the pattern", s)
		}
		if len(prefix) < 4 {
			for _, c := range alphabet {
				walk(append(prefix, c))
			}
		}
	}
	walk(nil)
	for _, n := range []int{62, 63, 64} {
		s := strings.Repeat("a", n)
		if isToken(s, false) != tenant.MatchString(s) {
			t.Fatalf("length %d disagrees", n)
		}
	}
}

// TestMaxStateBytes: a state at the cap, with one value repeated as
// "value", fits one message in base64 JSON under the max payload, and the
// shipped 4 MiB holds a 1 MiB value.
func TestMaxStateBytes(t *testing.T) {
	for _, mp := range []int64{1 << 20, 2 << 20, 4 << 20, 8 << 20, 64 << 20} {
		c := MaxStateBytes(mp)
		reply := c + min(c, MaxValueBytes)
		if b64 := (reply + 2) / 3 * 4; b64 > int(mp)-ReplyHeadroom {
			t.Errorf("max payload %d: cap %d makes a %d-byte JSON reply", mp, c, b64)
		}
		if mp >= 4<<20 && c < MaxValueBytes {
			t.Errorf("max payload %d: cap %d does not hold one value", mp, c)
		}
	}
	if got := MaxStateBytes(4 << 20); got != 2_048_000 {
		t.Errorf("cap at 4 MiB is %d, documented 2048000", got)
	}
}

// TestErrorHeaders: Headers writes what the servers wrote by hand before
// it existed (micro's two headers and the kind), and ErrorFromHeaders
// reads every kind back unchanged.
func TestErrorHeaders(t *testing.T) {
	e := Errorf(KindInvalid, "bad %s", "batch")
	h := e.Headers()
	want := map[string]string{ErrorHeader: "invalid: bad batch", ErrorCodeHeader: "400", KindHeader: KindInvalid}
	if len(h) != len(want) {
		t.Fatalf("headers %v, want %v", h, want)
	}
	for k, v := range want {
		if got := h[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s: %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{KindInvalid, KindNoSuchTenant, KindExists, KindTooManySiblings, KindTooLarge, KindOverloaded, KindUnavailable, KindTimeout, KindInternal, KindIdempotencyMismatch, KindNotOwner, KindMapBehind} {
		e := Errorf(k, "message: with %s", "colons")
		if back := ErrorFromHeaders(e.Headers().Get); back == nil || *back != *e {
			t.Errorf("%s: round trip %+v, want %+v", k, back, e)
		}
	}
}

// TestNodeProtocol: a node accepts the protocols from NodeProtocolMin to
// NodeProtocolVersion, one version apart for rolling upgrades.
func TestNodeProtocol(t *testing.T) {
	if NodeProtocolVersion != 3 || NodeProtocolMin != 1 || NodeProtocolBatch != 2 || NodeProtocolTTL != 3 {
		t.Fatalf("node protocol %d..%d, batch form %d, TTL %d", NodeProtocolMin, NodeProtocolVersion, NodeProtocolBatch, NodeProtocolTTL)
	}
	for p, ok := range map[int]bool{0: false, 1: true, 2: true, 3: true, 4: false, -1: false} {
		if NodeProtocolSupported(p) != ok {
			t.Errorf("NodeProtocolSupported(%d) = %v", p, !ok)
		}
	}
}

// TestFencingKinds: not_owner travels per item, as a write result's Kind
// or the first word of any item's Err; map_behind as a 503 to retry.
func TestFencingKinds(t *testing.T) {
	if KindCode(KindNotOwner) != CodeConflict || KindCode(KindMapBehind) != CodeUnavailable {
		t.Fatalf("codes %d, %d", KindCode(KindNotOwner), KindCode(KindMapBehind))
	}
	text := NotOwnerError(17, 42, 40)
	if text != "not_owner: partition 17 changed at map version 42; request has 40" {
		t.Fatalf("NotOwnerError = %q", text)
	}
	for _, tc := range []struct{ kind, err, want string }{
		{"", text, KindNotOwner},
		{KindNotOwner, text, KindNotOwner},
		{KindTooLarge, "too big", KindTooLarge},
		{"", "commit: disk full", ""},
		{"", "not_owner", ""},
		{"", "too_large: x", ""}, // only item kinds are read from the text
		{"", "", ""},
	} {
		if got := ItemKind(tc.kind, tc.err); got != tc.want {
			t.Errorf("ItemKind(%q, %q) = %q, want %q", tc.kind, tc.err, got, tc.want)
		}
	}
}

// TestTransferMessagesJSON: the map versions are decimal strings in JSON
// (they may pass 2^53), and the new fields' names are the contract's.
func TestTransferMessagesJSON(t *testing.T) {
	st := &TransferStatus{MapVersion: 1<<60 + 1, PartitionsDone: 3, PartitionsTotal: 9, Bytes: 1 << 40, Keys: 5, RateBytes: 2.5,
		Updated: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	for _, tc := range []struct {
		v    any
		want string
	}{
		{TransferReport{NodeID: "n1", MapVersion: 1 << 60, Done: []uint32{1, 2}, Status: st}, `{"node_id":"n1","map_version":"1152921504606846976","done":[1,2],"status":{"map_version":"1152921504606846977","partitions_done":3,"partitions_total":9,"bytes":1099511627776,"keys":5,"rate_bytes":2.5,"updated":"2026-12-01T00:00:00Z"}}`},
		{TransferStatus{HandoffDone: 1<<60 + 3}, `{"map_version":"0","partitions_done":0,"partitions_total":0,"bytes":0,"keys":0,"rate_bytes":0,"updated":"0001-01-01T00:00:00Z","handoff_done":"1152921504606846979"}`},
		{NodeReplace{Dead: "a", New: "b"}, `{"dead_node_id":"a","new_node_id":"b"}`},
		{NodeRequest{NodeID: "n", Protocol: 2, Hold: true, Force: true}, `{"node_id":"n","protocol":2,"hold":true,"force":true}`},
		{NodeRequest{NodeID: "n"}, `{"node_id":"n"}`},
	} {
		b, err := json.Marshal(tc.v)
		if err != nil || string(b) != tc.want {
			t.Errorf("%T: %s, %v\nwant %s", tc.v, b, err, tc.want)
		}
	}
	var back TransferReport
	if err := json.Unmarshal([]byte(`{"node_id":"n1","map_version":"18446744073709551615","done":[7]}`), &back); err != nil || back.MapVersion != 1<<64-1 || back.Done[0] != 7 {
		t.Fatalf("%+v %v", back, err)
	}
}

// TestVersionSizeCountsExpires: an Expires (up to 9 msgpack bytes) counts
// in the estimate, so batches of TTL versions stay below the max payload.
func TestVersionSizeCountsExpires(t *testing.T) {
	v := vclock.Version{Dot: vclock.Dot{Counter: 1 << 60, Actor: "a"}, Value: []byte("x")}
	exp := v
	exp.Expires = 1 << 62
	bv, _ := msgpack.Marshal(&v)
	be, _ := msgpack.Marshal(&exp)
	if got := VersionSize(&exp, nil) - VersionSize(&v, nil); got < len(be)-len(bv) {
		t.Fatalf("Expires adds %d to the estimate, %d to the encoding", got, len(be)-len(bv))
	}
	s := vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "a", Counter: 1, Values: []vclock.Value{{Data: []byte("x")}}}}}
	se := vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "a", Counter: 1, Values: []vclock.Value{{Data: []byte("x"), Expires: 1 << 62}}}}}
	bs, _ := msgpack.Marshal(s)
	bse, _ := msgpack.Marshal(se)
	if got := StateSize(&se) - StateSize(&s); got < len(bse)-len(bs) {
		t.Fatalf("Expires adds %d to the state estimate, %d to the encoding", got, len(bse)-len(bs))
	}
}

// TestAEStatusJSON: node list --json shows anti_entropy with RFC 3339
// times, and leaves out the times of a pass that never happened.
func TestAEStatusJSON(t *testing.T) {
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	b, err := json.Marshal(Node{ID: "n1", AntiEntropy: &AEStatus{Exchanges: 2, KeysRepaired: 1, LastPass: at}})
	if err != nil {
		t.Fatal(err)
	}
	want := `"anti_entropy":{"exchanges":2,"keys_repaired":1,"bytes":0,"last_pass":"2026-12-01T10:00:00Z","errors":0}`
	if !strings.Contains(string(b), want) {
		t.Fatalf("JSON %s lacks %s", b, want)
	}
}
