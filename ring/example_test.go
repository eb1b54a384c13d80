package ring_test

import (
	"fmt"

	"github.com/quorumkv/quorumkv/ring"
)

func Example() {
	// A new cluster of three nodes and 16 partitions (real clusters have
	// ring.DefaultPartitions).
	m, err := ring.Claim(nil, []ring.Node{{ID: "node-1"}, {ID: "node-2"}, {ID: "node-3"}}, 16)
	if err != nil {
		panic(err)
	}
	fmt.Println("version:", m.Version(), "partitions:", m.Partitions(), "owners per partition:", m.Replicas())

	// Reuse a buffer on the hot path: no allocation per lookup.
	buf := make([]string, 0, 3)
	for _, key := range []string{"user:42", "user:43", "cart:7"} {
		buf = m.PreferenceList("default", key, 2, buf)
		fmt.Println(key, "partition", m.Partition("default", key), "->", buf)
	}

	// Each node is first owner (primary) of Q/N partitions, give or take one.
	fmt.Println(m.Load(1))

	// A fourth node: the next version, moving about a quarter of the slots.
	next, _ := ring.Claim(m, []ring.Node{{ID: "node-1"}, {ID: "node-2"}, {ID: "node-3"}, {ID: "node-4"}}, 16)
	fmt.Println("version:", next.Version(), next.Load(1))
	// Output:
	// version: 1 partitions: 16 owners per partition: 3
	// user:42 partition 3 -> [node-2 node-1]
	// user:43 partition 4 -> [node-1 node-3]
	// cart:7 partition 15 -> [node-2 node-3]
	// map[node-1:6 node-2:5 node-3:5]
	// version: 2 map[node-1:4 node-2:4 node-3:4 node-4:4]
}

// A fourth node joins without a read gap: the map heads for the claim's
// target, the new node pulls the partitions it receives, and each flips
// once it reports them. With up to seven nodes every node is in every
// owner row (R = min(7, N)), so the fourth receives every partition, at
// the position the claim gives it.
func ExampleMap_Retarget() {
	nodes := []ring.Node{{ID: "node-1"}, {ID: "node-2"}, {ID: "node-3"}}
	m, _ := ring.Claim(nil, nodes, 16)
	target, _ := ring.Claim(m.TargetMap(), append(nodes, ring.Node{ID: "node-4"}), 16)
	m, _ = m.Retarget(target, m.Version()+1)

	recv := m.Receiving("node-4", nil)
	fmt.Println("version", m.Version(), "node-4 receives", recv)
	p := recv[0]
	set, counted := m.WriteSet(p, 3, nil)
	fmt.Println("partition", p, "reads", m.Owners(p, nil), "writes", set, "counting", counted, "since", m.Since(p))

	m, flipped, _ := m.MarkDone("node-4", recv, m.Version()+1)
	fmt.Println("version", m.Version(), "flipped", len(flipped), "now reads", m.Owners(p, nil))
	// Output:
	// version 2 node-4 receives [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15]
	// partition 0 reads [node-1 node-3 node-2] writes [node-1 node-3 node-2 node-4] counting 3 since 2
	// version 3 flipped 16 now reads [node-4 node-3 node-2 node-1]
}
