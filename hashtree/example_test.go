package hashtree_test

import (
	"fmt"

	"github.com/quorumkv/quorumkv/hashtree"
)

// A partition's write loop keeps the tree up to date with the version it
// replaced and the one it wrote; an exchange compares two replicas' trees
// and gets the buckets whose keys to exchange.
func Example() {
	cfg := hashtree.DefaultConfig()
	a, _ := hashtree.New(cfg)
	b, _ := hashtree.New(cfg)

	v1 := hashtree.VersionHash([]byte("state 1 (msgpack)"))
	v2 := hashtree.VersionHash([]byte("state 2 (msgpack)"))
	for _, t := range []*hashtree.Tree{a, b} {
		t.Insert("acme", "user:1", v1)
		t.Insert("acme", "user:2", v1)
	}
	// Replica b missed the second write of user:2.
	if err := a.Update("acme", "user:2", v1, v2); err != nil {
		fmt.Println(err)
	}

	buckets, st, err := hashtree.Diff(hashtree.Local{T: a}, hashtree.Local{T: b})
	if err != nil {
		fmt.Println(err)
	}
	fmt.Println(len(buckets), buckets[0] == uint32(a.Bucket("acme", "user:2")), st.Rounds)
	// Output: 1 true 4
}
