package storage

import (
	"fmt"
	"testing"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// TestCoordinateLimitsRefuseOnlyGrowth: past the sibling cap (reached
// through repair merges) a coordinating write that does not grow the key
// is accepted, so the key can be resolved; one that grows it is refused.
func TestCoordinateLimitsRefuseOnlyGrowth(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	var st vclock.DVVSet
	for i := range subjects.MaxSiblings + 5 {
		st, _, _ = vclock.Update(st, nil, "repair.1", vclock.Value{Data: []byte(fmt.Sprint(i))})
	}
	if res := n.eng.applyWrites([]subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k", DVV: &st}}); res[0].Err != "" {
		t.Fatal(res[0].Err)
	}
	// A context that saw the oldest value only: one replaced, one added.
	seen := vclock.DVVContext{{Actor: "repair.1", Counter: 1}}
	res := n.eng.applyWrites([]subjects.NodeWrite{{ID: 2, Tenant: "t", Key: "k",
		Coordinate: &subjects.Coordinate{Context: seen, Value: vclock.Value{Data: []byte("x")}}}})
	if res[0].Err != "" || res[0].DVV == nil || res[0].DVV.Size() != subjects.MaxSiblings+5 {
		t.Fatalf("a write that does not grow a key over the cap: %+v", res[0])
	}
	res = n.eng.applyWrites([]subjects.NodeWrite{{ID: 3, Tenant: "t", Key: "k",
		Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: []byte("y")}}}})
	if res[0].Kind != subjects.KindTooManySiblings {
		t.Fatalf("a write that grows a key over the cap: %+v", res[0])
	}
	// The byte cap likewise: a put that grows the state past MaxBytes is
	// refused, a delete never is.
	res = n.eng.applyWrites([]subjects.NodeWrite{{ID: 4, Tenant: "t", Key: "b",
		Coordinate: &subjects.Coordinate{Value: vclock.Value{Data: make([]byte, 100)}, MaxBytes: 100}}})
	if res[0].Kind != subjects.KindTooLarge {
		t.Fatalf("a put past MaxBytes: %+v", res[0])
	}
	res = n.eng.applyWrites([]subjects.NodeWrite{{ID: 5, Tenant: "t", Key: "k",
		Coordinate: &subjects.Coordinate{Value: vclock.Value{Tombstone: true}, MaxBytes: 1}}})
	if res[0].Err != "" || res[0].DVV.Size() != 1 || !res[0].DVV.Deleted() {
		t.Fatalf("a delete without a context of a key over every cap: %+v", res[0])
	}
}
