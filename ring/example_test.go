package ring_test

import (
	"fmt"

	"github.com/quorumkv/quorumkv/ring"
)

func Example() {
	r := ring.New([]ring.Member{
		{ID: "node-1", Active: true},
		{ID: "node-2", Active: true},
		{ID: "node-3", Active: true},
		{ID: "node-4", Active: true, VirtualNodes: 256}, // twice the load
		{ID: "node-5"},                                  // known but draining: never in a preference list
	})
	fmt.Println("members:", r.Len(), "active:", r.ActiveCount(), "owns node-5:", r.Owns("node-5"))

	// Reuse a buffer on the hot path: no allocation per lookup.
	buf := make([]string, 0, 3)
	for _, key := range []string{"user:42", "user:43", "cart:7"} {
		buf = r.PreferenceList("default", key, 3, buf)
		fmt.Println(key, "->", buf)
	}

	// Asking for more replicas than active members returns them all.
	fmt.Println(len(r.PreferenceList("default", "user:42", 10, nil)))

	// Output:
	// members: 5 active: 4 owns node-5: true
	// user:42 -> [node-1 node-3 node-4]
	// user:43 -> [node-2 node-3 node-1]
	// cart:7 -> [node-3 node-4 node-2]
	// 4
}

// The primary's share of the hash space, for a status page.
func ExampleRing_Shares() {
	r := ring.New([]ring.Member{
		{ID: "a", Active: true, VirtualNodes: 1},
		{ID: "b", Active: false},
	})
	fmt.Println(r.Shares())
	// Output: map[a:1]
}
