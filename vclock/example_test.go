package vclock_test

import (
	"fmt"
	"time"

	"github.com/quorumkv/quorumkv/vclock"
)

// A client reads a key through one node and writes it back through another
// whose wall clock is a minute behind. Because the write carries the read's
// context, it still wins, and the replicas converge whatever order the
// versions reach them in.
func Example() {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	clockA := vclock.NewHLC(func() time.Time { return t0 })
	clockB := vclock.NewHLC(func() time.Time { return t0.Add(-time.Minute) })

	// Node a coordinates the first write (no context: the key was absent).
	v1 := vclock.Version{Dot: clockA.Stamp("a", vclock.Dot{}), Value: []byte("v1")}

	// A read returns the value and its context.
	ctx := vclock.EncodeContext(v1.Dot)
	fmt.Println("context:", ctx)

	// The client deletes through node b, handing the context back.
	read, err := vclock.DecodeContext(ctx)
	if err != nil {
		panic(err) // a client error in a real server
	}
	v2 := vclock.Version{Dot: clockB.Stamp("b", read), Tombstone: true}

	// Replicas merge in different orders and converge on the delete.
	r1, _ := vclock.MergeAll([]vclock.Version{v1, v2})
	r2 := vclock.Merge(vclock.Merge(vclock.Version{}, v2), v1)
	fmt.Println("converged:", vclock.Compare(r1, r2) == 0)
	fmt.Println("winner:", r1.Dot.Actor, "tombstone:", r1.Tombstone, "live:", r1.Live())
	fmt.Println("stamped at:", vclock.Physical(r1.Dot.Counter).Format(time.RFC3339Nano))

	// Output:
	// context: l1.AZQk-GCIAABh
	// converged: true
	// winner: b tombstone: true live: false
	// stamped at: 2025-01-02T03:04:05Z
}
