package storage

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func open(t *testing.T, id, dir string) *Node {
	t.Helper()
	n, err := Open(Config{NodeID: id, DataDir: dir, Logger: quiet()})
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	return n
}

func TestDataDirIsExclusive(t *testing.T) {
	dir := t.TempDir()
	n := open(t, "node-1", dir)
	if _, err := Open(Config{NodeID: "node-1", DataDir: dir, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), "another storage node") {
		t.Fatalf("second open of a dir in use: %v", err)
	}
	if err := n.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := n.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := Open(Config{NodeID: "node-2", DataDir: dir, Logger: quiet()}); err == nil || !strings.Contains(err.Error(), `belongs to node "node-1"`) {
		t.Fatalf("open of another node's dir: %v", err)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{NodeID: "", DataDir: "x"},
		{NodeID: "a.b", DataDir: "x"},
		{NodeID: "n", DataDir: ""},
		{NodeID: "n", DataDir: "x", VirtualNodes: 100000},
		{NodeID: "n", DataDir: "x", Partitions: 1000},
		{NodeID: "n", DataDir: "x", Partitions: 1 << 17},
		{NodeID: "n", DataDir: "x", AntiEntropyInterval: -time.Second},
		{NodeID: "n", DataDir: "x", AntiEntropyRate: -5},
	} {
		c.Logger = quiet()
		if _, err := Open(c); err == nil {
			t.Errorf("Open(%+v) accepted a bad config", c)
		}
	}
}

func TestEpochPersistsAndChangesOnWipe(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "node")
	n := open(t, "node-1", dir)
	e1 := n.Epoch()
	_ = n.Stop()
	n = open(t, "node-1", dir)
	if n.Epoch() != e1 || e1 == 0 {
		t.Fatalf("epoch %x after reopen, want %x", n.Epoch(), e1)
	}
	_ = n.Stop()
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	n = open(t, "node-1", dir)
	defer n.Stop()
	if n.Epoch() == e1 {
		t.Fatal("a wiped data dir kept its epoch")
	}
}

func version(counter uint64, actor, value string) *vclock.Version {
	return &vclock.Version{Dot: vclock.Dot{Counter: counter, Actor: actor}, Value: []byte(value)}
}

// TestApplyWritesMerges: a batch merges every write with what is stored
// and with earlier writes of the same batch; an older version never
// replaces a newer one, and the node reports the version it kept.
func TestApplyWritesMerges(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	res := n.eng.applyWrites([]subjects.NodeWrite{
		{ID: 1, Tenant: "t", Key: "a", LWW: version(10, "x", "ten")},
		{ID: 2, Tenant: "t", Key: "a", LWW: version(5, "x", "five")}, // older, same batch
		{ID: 3, Tenant: "t", Key: "b", LWW: version(1, "x", "b1")},
		{ID: 4, Tenant: "u", Key: "a", LWW: version(1, "x", "other tenant")},
		{ID: 5, Tenant: "t", Key: "c"}, // no version
	})
	if len(res) != 5 || res[0].Err != "" || res[0].LWW != nil {
		t.Fatalf("results %+v", res)
	}
	if res[1].Err != "" || res[1].LWW == nil || string(res[1].LWW.Value) != "ten" {
		t.Fatalf("older write should report the kept version: %+v", res[1])
	}
	if res[4].Err == "" {
		t.Fatal("a write without a version must fail")
	}
	res = n.eng.applyWrites([]subjects.NodeWrite{{ID: 6, Tenant: "t", Key: "a", LWW: version(7, "z", "seven")}})
	if res[0].LWW == nil || string(res[0].LWW.Value) != "ten" {
		t.Fatalf("older write in a later batch: %+v", res[0])
	}
	rec, err := n.eng.read("t", "a")
	if err != nil || rec.LWW == nil || string(rec.LWW.Value) != "ten" {
		t.Fatalf("read t/a: %v %+v", err, rec)
	}
	rec, _ = n.eng.read("u", "a")
	if rec.LWW == nil || string(rec.LWW.Value) != "other tenant" {
		t.Fatalf("tenants must not share keys: %+v", rec)
	}
	if v, _ := n.eng.read("t", "missing"); v.LWW != nil || v.DVV != nil {
		t.Fatalf("missing key: %+v", v)
	}
}

// TestDumpPagesInPartitionOrderPerTenant: dump lists one tenant's keys in
// (partition, key) order, page by page, resuming after the last key.
func TestDumpPagesInPartitionOrderPerTenant(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	var writes []subjects.NodeWrite
	for i, k := range []string{"b", "a", "c", "a\x00z", "d"} {
		writes = append(writes, subjects.NodeWrite{ID: uint64(i), Tenant: "t", Key: k, LWW: version(uint64(i+1), "x", k)})
	}
	writes = append(writes, subjects.NodeWrite{ID: 9, Tenant: "t2", Key: "a", LWW: version(1, "x", "no")})
	tomb := version(100, "x", "")
	tomb.Tombstone = true
	writes = append(writes, subjects.NodeWrite{ID: 10, Tenant: "t", Key: "d", LWW: tomb})
	n.eng.applyWrites(writes)
	var keys []string
	after := ""
	for {
		es, more, err := n.eng.dump("t", after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			keys = append(keys, e.Key)
			if e.Key == "d" && !e.Tombstone {
				t.Fatal("d should be a tombstone")
			}
		}
		if !more {
			break
		}
		after = es[len(es)-1].Key
	}
	want := partitionOrder(n.eng.q, "t", "a", "a\x00z", "b", "c", "d")
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Fatalf("dump keys %q, want %q", keys, want)
	}
}

func TestChunkSplitsBySize(t *testing.T) {
	sizes := []int{10, 10, 10, 50, 5}
	var parts [][]int
	var mores []bool
	chunk(sizes, func(s *int) int { return *s }, 25, func(p []int, more bool) {
		parts = append(parts, p)
		mores = append(mores, more)
	})
	// 10+10 fits 25; the third 10 starts a part; 50 is alone (oversized);
	// 5 cannot join it.
	if fmt.Sprint(parts) != "[[10 10] [10] [50] [5]]" {
		t.Fatalf("parts %v", parts)
	}
	if fmt.Sprint(mores) != "[true true true false]" {
		t.Fatalf("more flags %v", mores)
	}
	parts = nil
	chunk([]int{}, func(s *int) int { return *s }, 25, func(p []int, more bool) { parts = append(parts, p) })
	if len(parts) != 1 || len(parts[0]) != 0 {
		t.Fatalf("empty results must still send one (empty, final) part: %v", parts)
	}
}

// TestCoordinateRefusedAfterDeadline: a coordinating write that reaches
// the replica after the coordinator moved on is refused and stores
// nothing, so it cannot be applied a second time under this replica's dot.
func TestCoordinateRefusedAfterDeadline(t *testing.T) {
	n := open(t, "node-1", t.TempDir())
	defer n.Stop()
	late := &subjects.Coordinate{Value: vclock.Value{Data: []byte("v")}, Deadline: time.Now().Add(-time.Millisecond).UnixMilli()}
	res := n.eng.applyWrites([]subjects.NodeWrite{{ID: 1, Tenant: "t", Key: "k", Coordinate: late}})
	if res[0].Err == "" || res[0].Kind != subjects.KindTimeout || res[0].DVV != nil {
		t.Fatalf("late coordinate: %+v", res[0])
	}
	if rec, _ := n.eng.read("t", "k"); rec.DVV != nil {
		t.Fatalf("a refused write was stored: %+v", rec.DVV)
	}
	onTime := &subjects.Coordinate{Value: vclock.Value{Data: []byte("v")}, Deadline: time.Now().Add(time.Minute).UnixMilli()}
	res = n.eng.applyWrites([]subjects.NodeWrite{{ID: 2, Tenant: "t", Key: "k", Coordinate: onTime}})
	if res[0].Err != "" || res[0].DVV == nil || res[0].DVV.Size() != 1 {
		t.Fatalf("coordinate in time: %+v", res[0])
	}
}
