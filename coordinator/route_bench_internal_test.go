package coordinator

import (
	"fmt"
	"testing"

	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/ring"
)

var routeSink []string

// BenchmarkKeyRoute compares the key lookup of the request path before
// write sets (the preference list) with the write set, on a map without
// moving partitions and on one where a fourth node joins.
func BenchmarkKeyRoute(b *testing.B) {
	nodes := []ring.Node{{ID: "node-1"}, {ID: "node-2"}, {ID: "node-3"}}
	m, err := ring.Claim(nil, nodes, 1024)
	if err != nil {
		b.Fatal(err)
	}
	m = m.WithVersion(1)
	target, err := ring.Claim(m.TargetMap(), append(nodes, ring.Node{ID: "node-4"}), 1024)
	if err != nil {
		b.Fatal(err)
	}
	moving, err := m.Retarget(target, 2)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("user%012d", i)
	}
	r := &dataRequest{tenant: metadata.Tenant{ID: "default", ReplicationFactor: 3}}
	b.Run("preference-list", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			routeSink = m.PreferenceList(r.tenant.ID, keys[i%len(keys)], 3, make([]string, 0, 3))
			i++
		}
	})
	for name, mm := range map[string]*ring.Map{"write-set/stable": m, "write-set/moving": moving} {
		pl := newPlacement(mm.Version(), 1024, mm)
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				r.Key = keys[i%len(keys)]
				routeSink, _, _ = keyWriteSet(pl, r, 3)
				i++
			}
		})
	}
}
