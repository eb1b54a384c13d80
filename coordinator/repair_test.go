package coordinator

import (
	"slices"
	"sync"
	"testing"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func ver(counter uint64, actor, value string) *vclock.Version {
	return &vclock.Version{Dot: vclock.Dot{Counter: counter, Actor: actor}, Value: []byte(value)}
}

func TestDetectConflicts(t *testing.T) {
	v1, v2 := ver(10, "a", "one"), ver(20, "b", "two")
	tomb := &vclock.Version{Dot: vclock.Dot{Counter: 20, Actor: "b"}, Tombstone: true}
	tests := []struct {
		name    string
		replies []ReplicaVersion
		merged  *vclock.Version // nil: nothing to repair
		stale   []string
	}{
		{"no replies", nil, nil, nil},
		{"nobody holds the key", []ReplicaVersion{{Node: "n1", LWW: nil}, {Node: "n2", LWW: nil}}, nil, nil},
		{"all agree", []ReplicaVersion{{Node: "n1", LWW: v1}, {Node: "n2", LWW: v1}, {Node: "n3", LWW: v1}}, v1, nil},
		{"one older", []ReplicaVersion{{Node: "n1", LWW: v2}, {Node: "n2", LWW: v1}, {Node: "n3", LWW: v2}}, v2, []string{"n2"}},
		{"one holds nothing", []ReplicaVersion{{Node: "n1", LWW: nil}, {Node: "n2", LWW: v1}, {Node: "n3", LWW: v1}}, v1, []string{"n1"}},
		{"only one holds it", []ReplicaVersion{{Node: "n1", LWW: nil}, {Node: "n2", LWW: nil}, {Node: "n3", LWW: v2}}, v2, []string{"n1", "n2"}},
		{"tombstone beats value of same dot", []ReplicaVersion{{Node: "n1", LWW: v2}, {Node: "n2", LWW: tomb}}, tomb, []string{"n1"}},
		{"duplicate node named once", []ReplicaVersion{{Node: "n1", LWW: v1}, {Node: "n1", LWW: v1}, {Node: "n2", LWW: v2}}, v2, []string{"n1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			merged, stale, ok := DetectConflicts(tc.replies)
			if ok != (tc.merged != nil) {
				t.Fatalf("ok = %v, want %v", ok, tc.merged != nil)
			}
			if tc.merged != nil && vclock.Compare(merged, *tc.merged) != 0 {
				t.Fatalf("merged %+v, want %+v", merged, *tc.merged)
			}
			if !slices.Equal(stale, tc.stale) {
				t.Fatalf("stale %v, want %v", stale, tc.stale)
			}
		})
	}
}

// The merge does not depend on the order replies arrive in.
func TestDetectConflictsOrderIndependent(t *testing.T) {
	replies := []ReplicaVersion{{Node: "n1", LWW: ver(5, "x", "a")}, {Node: "n2", LWW: ver(7, "a", "b")}, {Node: "n3", LWW: ver(7, "b", "c")}}
	want, _, _ := DetectConflicts(replies)
	for _, perm := range [][]int{{0, 1, 2}, {2, 1, 0}, {1, 0, 2}, {2, 0, 1}} {
		var r []ReplicaVersion
		for _, i := range perm {
			r = append(r, replies[i])
		}
		got, stale, _ := DetectConflicts(r)
		if vclock.Compare(got, want) != 0 {
			t.Fatalf("order %v: merged %+v, want %+v", perm, got, want)
		}
		slices.Sort(stale)
		if !slices.Equal(stale, []string{"n1", "n2"}) {
			t.Fatalf("order %v: stale %v", perm, stale)
		}
	}
}

type fakePublisher struct {
	mu   sync.Mutex
	reqs []subjects.RepairRequest
	full bool
}

func (f *fakePublisher) Publish(r subjects.RepairRequest) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.full {
		return false
	}
	f.reqs = append(f.reqs, r)
	return true
}

func TestTriggerRepairCounts(t *testing.T) {
	pub := &fakePublisher{}
	s := newConflictService(pub, "me", nil)
	v := *ver(1, "a", "v")
	s.TriggerRepair("t", "k", v, []string{"n1"}, subjects.RepairReasonRead)
	s.TriggerRepair("t", "k", v, []string{"n2"}, subjects.RepairReasonHint)
	pub.full = true
	if s.TriggerRepair("t", "k", v, []string{"n3"}, subjects.RepairReasonHint) {
		t.Fatal("a refused publish reported success")
	}
	if got := s.Stats(); got != (RepairStats{ReadRepairs: 1, Hints: 1, Dropped: 1}) {
		t.Fatalf("stats %+v", got)
	}
	if len(pub.reqs) != 2 || pub.reqs[0].Coordinator != "me" || pub.reqs[1].Targets[0] != "n2" || pub.reqs[1].Reason != subjects.RepairReasonHint {
		t.Fatalf("published %+v", pub.reqs)
	}
}
