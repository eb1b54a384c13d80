package storage

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/subjects"
)

// FuzzServeAE feeds arbitrary bytes to the anti-entropy request handler
// of a serving node that owns every partition and holds a few keys: it
// must answer a reply or an error of a known kind, never panic or hang.
func FuzzServeAE(f *testing.F) {
	s := natstest.RunServer(f)
	fc := newFakeCoord(f, s, claim(f, nil, "a"), false)
	n := startXfer(f, s, Config{NodeID: "a", DataDir: filepath.Join(f.TempDir(), "a"), Heartbeat: time.Hour, AntiEntropyRate: Unlimited}, nil)
	waitFor(f, 5*time.Second, "the map", func() bool { return n.Map() != nil })
	k := keysIn("acme", 1, xferQ, 1)[0]
	apply(f, n.eng, []subjects.NodeWrite{{Tenant: "acme", Key: k, LWW: version(3, "c1", "v")}})
	state, _ := encodeRecord(nil, &record{LWW: version(4, "c1", "w")})
	base := subjects.AERequest{Proto: subjects.NodeProtocolVersion, Partitions: xferQ, MapVersion: fc.current().Version(),
		Tenants: []string{"acme"}, Config: subjects.AEConfig{FanOut: 16, Depth: 2}, Partition: 1}
	for _, r := range []subjects.AERequest{
		func() subjects.AERequest { r := base; r.Op, r.Parts = subjects.AEOpRoots, []uint32{0, 1}; return r }(),
		func() subjects.AERequest { r := base; r.Op, r.Indices = subjects.AEOpChildren, []uint32{0}; return r }(),
		func() subjects.AERequest {
			r := base
			r.Op, r.Indices = subjects.AEOpKeys, []uint32{0, 1, 255}
			return r
		}(),
		func() subjects.AERequest {
			r := base
			r.Op, r.Keys = subjects.AEOpRecords, []subjects.AEKey{{Tenant: "acme", Key: k}}
			return r
		}(),
		func() subjects.AERequest {
			r := base
			r.Op, r.Records = subjects.AEOpPush, []subjects.PartitionRecord{{Tenant: "acme", Key: k, State: state}}
			return r
		}(),
	} {
		b, err := msgpack.Marshal(&r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x93, 0x02, 0xa1, 'x', 0x10})
	known := map[string]bool{subjects.KindInvalid: true, subjects.KindNotOwner: true, subjects.KindMapBehind: true,
		subjects.KindConflict: true, subjects.KindTooLarge: true, subjects.KindRebuilding: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		rep, kind, err := n.serveAE(data)
		if (err == nil) == (rep == nil) || (err != nil && !known[kind]) {
			t.Fatalf("serveAE answered %+v, kind %q, %v", rep, kind, err)
		}
	})
}
