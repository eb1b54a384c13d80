package hashtree

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/quorumkv/quorumkv/ring"
)

// configs covers the extremes of the limits and the default.
var configs = []Config{
	{FanOut: 2, Depth: 1},
	{FanOut: 2, Depth: 8},
	{FanOut: 4, Depth: 2},
	DefaultConfig(),
	{FanOut: 256, Depth: 1},
	{FanOut: 256, Depth: 2},
}

type kv struct{ tenant, key string }

// model is the set a tree should summarise.
type model map[kv]Hash

func (m model) scan() func(func(Entry) bool) {
	return func(yield func(Entry) bool) {
		for k, v := range m {
			if !yield(Entry{k.tenant, k.key, v}) {
				return
			}
		}
	}
}

func mustNew(tb testing.TB, cfg Config) *Tree {
	tb.Helper()
	t, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

func mustBuild(tb testing.TB, cfg Config, m model) *Tree {
	tb.Helper()
	t, err := Build(cfg, m.scan())
	if err != nil {
		tb.Fatal(err)
	}
	return t
}

func randVersion(r *rand.Rand) Hash { return VersionHash(fmt.Appendf(nil, "state-%d", r.Uint64())) }

// randomSet returns n distinct keys over a few tenants at random versions.
func randomSet(r *rand.Rand, n int) model {
	m := make(model, n)
	for i := range n {
		m[kv{fmt.Sprintf("t%d", r.IntN(3)), fmt.Sprintf("key-%d-%d", i, r.Uint32())}] = randVersion(r)
	}
	return m
}

// equalTrees fails unless a and b agree on every node and count.
func equalTrees(tb testing.TB, a, b *Tree) {
	tb.Helper()
	if a.Root() != b.Root() {
		tb.Fatalf("roots differ: %x vs %x", a.Root(), b.Root())
	}
	if !slices.Equal(a.nodes, b.nodes) || !slices.Equal(a.counts, b.counts) || a.n != b.n {
		tb.Fatal("equal roots but different nodes or counts")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range configs {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
	for _, c := range []Config{{}, {FanOut: 3, Depth: 2}, {FanOut: 1, Depth: 2}, {FanOut: 512, Depth: 1},
		{FanOut: 16, Depth: 0}, {FanOut: 2, Depth: 9}, {FanOut: 16, Depth: 6}, {FanOut: -16, Depth: 3}} {
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: got %v, want ErrConfig", c, err)
		}
		if _, err := New(c); err == nil {
			t.Errorf("New(%+v) accepted", c)
		}
	}
	if got := DefaultConfig().Leaves(); got != 4096 {
		t.Errorf("default leaves %d, want 4096", got)
	}
}

func TestEmptyRootIsZero(t *testing.T) {
	for _, c := range configs {
		tr := mustNew(t, c)
		if !tr.Root().IsZero() {
			t.Errorf("%+v: empty root %x", c, tr.Root())
		}
		tr.Insert("t", "k", VersionHash([]byte("v")))
		if tr.Root().IsZero() {
			t.Errorf("%+v: root zero with a key", c)
		}
		if err := tr.Delete("t", "k", VersionHash([]byte("v"))); err != nil {
			t.Fatal(err)
		}
		if !tr.Root().IsZero() || tr.Len() != 0 || tr.Dirty() != 0 {
			t.Errorf("%+v: insert then delete left root %x len %d", c, tr.Root(), tr.Len())
		}
	}
}

// Two trees fed the same set in different orders, and the tree built from
// a scan of it, are equal node for node.
func TestSameSetAnyOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range configs {
		m := randomSet(r, 2000)
		keys := slices.Collect(maps.Keys(m))
		a, b := mustNew(t, c), mustNew(t, c)
		for _, k := range keys {
			a.Insert(k.tenant, k.key, m[k])
		}
		r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		for i, k := range keys {
			b.Insert(k.tenant, k.key, m[k])
			if i%97 == 0 {
				b.Root() // interleave lazy rehashes with writes
			}
		}
		equalTrees(t, a, b)
		equalTrees(t, a, mustBuild(t, c, m))
	}
}

// Any sequence of inserts, updates and deletes that keeps the caller
// contract ends in the tree a scan of the final set builds.
func TestIncrementalEqualsRebuild(t *testing.T) {
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 7))
		c := configs[int(seed)%len(configs)]
		tr := mustNew(t, c)
		m := model{}
		keyspace := 1 + r.IntN(300)
		for op := range 3000 {
			k := kv{fmt.Sprintf("t%d", r.IntN(2)), fmt.Sprintf("k%d", r.IntN(keyspace))}
			old, ok := m[k]
			switch {
			case !ok:
				v := randVersion(r)
				tr.Insert(k.tenant, k.key, v)
				m[k] = v
			case r.IntN(3) == 0:
				if err := tr.Delete(k.tenant, k.key, old); err != nil {
					t.Fatal(err)
				}
				delete(m, k)
			default:
				v := old
				if r.IntN(10) != 0 {
					v = randVersion(r)
				}
				if err := tr.Update(k.tenant, k.key, old, v); err != nil {
					t.Fatal(err)
				}
				m[k] = v
			}
			if op%(1+r.IntN(500)) == 0 {
				tr.Root()
			}
		}
		if tr.Len() != len(m) {
			t.Fatalf("seed %d: len %d, want %d", seed, tr.Len(), len(m))
		}
		equalTrees(t, tr, mustBuild(t, c, m))
	}
}

// A write marks at most Depth nodes dirty, and Root clears them all.
func TestDirtyMarksAreLazy(t *testing.T) {
	tr := mustNew(t, DefaultConfig())
	tr.Insert("t", "a", Hash{1})
	if got := tr.Dirty(); got != 3 {
		t.Fatalf("one write: %d dirty, want 3 (one per inner level)", got)
	}
	tr.Insert("t", "a2", Hash{1})
	if got := tr.Dirty(); got > 5 {
		t.Fatalf("two writes: %d dirty, want <= 5 (the root is shared)", got)
	}
	tr.Root()
	if tr.Dirty() != 0 {
		t.Fatalf("%d dirty after Root", tr.Dirty())
	}
}

func TestNotPresent(t *testing.T) {
	tr := mustNew(t, DefaultConfig())
	if err := tr.Delete("t", "never", Hash{1}); !errors.Is(err, ErrNotPresent) {
		t.Fatalf("delete from an empty tree: %v", err)
	}
	if err := tr.Update("t", "never", Hash{1}, Hash{2}); !errors.Is(err, ErrNotPresent) {
		t.Fatalf("update in an empty tree: %v", err)
	}
	if !tr.Root().IsZero() || tr.Len() != 0 {
		t.Fatal("a refused delete changed the tree")
	}
}

// The caller contract: a Delete of a key the tree never got, in a bucket
// that holds another key, cannot be refused (the tree keeps no keys). The
// tree then differs from its data in exactly that bucket, which a
// comparison with a rebuild (or a replica) finds.
func TestDeleteNeverInsertedIsFoundByRebuild(t *testing.T) {
	cfg := DefaultConfig()
	r := rand.New(rand.NewPCG(3, 4))
	m := randomSet(r, 20000) // ~5 keys per bucket: every bucket is non-empty
	tr := mustBuild(t, cfg, m)
	ghost := kv{"t0", "never-inserted"}
	if err := tr.Delete(ghost.tenant, ghost.key, Hash{42, 42}); err != nil {
		t.Fatalf("delete in a non-empty bucket: %v (the tree cannot tell)", err)
	}
	got, _, err := Diff(Local{tr}, Local{mustBuild(t, cfg, m)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint32{uint32(tr.Bucket(ghost.tenant, ghost.key))}; !slices.Equal(got, want) {
		t.Fatalf("diff with a rebuild: %v, want %v", got, want)
	}
}

// A stale old version on Update breaks the contract the same way.
func TestStaleUpdateIsFoundByRebuild(t *testing.T) {
	cfg := Config{FanOut: 4, Depth: 2}
	m := model{{"t", "a"}: Hash{1}, {"t", "b"}: Hash{2}}
	tr := mustBuild(t, cfg, m)
	if err := tr.Update("t", "a", Hash{9}, Hash{3}); err != nil { // old should be {1}
		t.Fatal(err)
	}
	m[kv{"t", "a"}] = Hash{3}
	got, _, err := Diff(Local{tr}, Local{mustBuild(t, cfg, m)})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint32{uint32(tr.Bucket("t", "a"))}; !slices.Equal(got, want) {
		t.Fatalf("diff: %v, want %v", got, want)
	}
}

// The bucket of a key depends on the key alone.
func TestBucketIsIndependentOfContents(t *testing.T) {
	cfg := DefaultConfig()
	a := mustNew(t, cfg)
	b := mustBuild(t, cfg, randomSet(rand.New(rand.NewPCG(5, 6)), 1000))
	for i := range 1000 {
		k := fmt.Sprintf("k%d", i)
		if a.Bucket("t", k) != b.Bucket("t", k) {
			t.Fatalf("bucket of %q differs", k)
		}
	}
	// tenant 0x00 key: "ab"/"c" and "a"/"bc" are different keys.
	if EntryHash("ab", "c", Hash{}) == EntryHash("a", "bc", Hash{}) {
		t.Fatal("entry hash does not separate tenant from key")
	}
}

// Golden values: the hashes are part of the anti-entropy protocol, every
// node must compute them identically. A change here is a protocol change.
func TestGolden(t *testing.T) {
	v := VersionHash([]byte("state"))
	tr := mustNew(t, DefaultConfig())
	tr.Insert("acme", "user:1", v)
	tr.Insert("acme", "user:2", VersionHash(nil))
	long := string(make([]byte, 300)) // the streamed path of KeyDigest
	got := fmt.Sprintf("%016x%016x %016x%016x %d %016x%016x", v[0], v[1],
		tr.Root()[0], tr.Root()[1], tr.Bucket("acme", "user:1"),
		EntryHash("t", long, v)[0], EntryHash("t", long, v)[1])
	const want = "0d04cead0dcf16d828c61d64bc5ffdee 355dd10b6f831d10d207a48560bf52d2 2834 bb3920af47f23fde024dcbe67f2c957c"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// KeyDigest hashes short keys from a stack buffer and streams long ones;
// both give the same bytes' hash, and the low lane is ring.KeyHash.
func TestKeyDigestStreamedEqualsStack(t *testing.T) {
	for n := keyStackBuf - 30; n < keyStackBuf+30; n++ {
		key := string(make([]byte, n))
		var buf []byte
		buf = append(buf, "tenant"...)
		buf = append(buf, 0)
		buf = append(buf, key...)
		got := KeyDigest("tenant", key)
		if want := sum128(buf); got != want {
			t.Fatalf("key length %d: %x, want %x", n, got, want)
		}
		if got[1] != ring.KeyHash("tenant", key) {
			t.Fatalf("key length %d: low lane is not ring.KeyHash", n)
		}
	}
}

func TestWritesDoNotAllocate(t *testing.T) {
	tr := mustNew(t, DefaultConfig())
	v1, v2 := VersionHash([]byte("1")), VersionHash([]byte("2"))
	tr.Insert("tenant", "key", v1)
	allocs := testing.AllocsPerRun(1000, func() {
		_ = tr.Update("tenant", "key", v1, v2)
		_ = tr.Update("tenant", "key", v2, v1)
		_ = tr.Delete("tenant", "key", v1)
		tr.Insert("tenant", "key", v1)
		tr.Root()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per write cycle, want 0", allocs)
	}
}

func TestLevelAndChildren(t *testing.T) {
	cfg := Config{FanOut: 4, Depth: 3}
	tr := mustBuild(t, cfg, randomSet(rand.New(rand.NewPCG(8, 9)), 500))
	for l := 0; l < cfg.Depth; l++ {
		parents, err := tr.Level(nil, l)
		if err != nil {
			t.Fatal(err)
		}
		all := make([]uint32, len(parents))
		for i := range all {
			all[i] = uint32(i)
		}
		kids, err := tr.Children(nil, l, all)
		if err != nil {
			t.Fatal(err)
		}
		lvl, _ := tr.Level(nil, l+1)
		if !slices.Equal(kids, lvl) {
			t.Fatalf("children of level %d are not level %d", l, l+1)
		}
		for i, p := range parents {
			if HashChildren(nil, kids[i*cfg.FanOut:(i+1)*cfg.FanOut]) != p {
				t.Fatalf("node %d of level %d is not the hash of its children", i, l)
			}
		}
	}
	if _, err := tr.Level(nil, 4); err == nil {
		t.Error("level beyond the leaves accepted")
	}
	if _, err := tr.Children(nil, 3, []uint32{0}); err == nil {
		t.Error("children of a leaf accepted")
	}
	if _, err := tr.Children(nil, 0, []uint32{0, 0}); err == nil {
		t.Error("more parents than the level holds accepted")
	}
	if _, err := tr.Children(nil, 1, []uint32{4}); err == nil {
		t.Error("node beyond its level accepted")
	}
}

func TestCloneIsIndependent(t *testing.T) {
	tr := mustNew(t, DefaultConfig())
	tr.Insert("t", "a", Hash{1})
	c := tr.Clone()
	tr.Insert("t", "b", Hash{2})
	if c.Len() != 1 || c.Root() == tr.Root() {
		t.Fatal("clone follows the original")
	}
	tr.Reset()
	if !tr.Root().IsZero() || tr.Len() != 0 || c.Len() != 1 {
		t.Fatal("reset")
	}
}

// FuzzOps drives a tree with an operation sequence read from the input
// (keys from a small space so updates and deletes hit) and checks it
// against a rebuild of the resulting set, then against Diff.
func FuzzOps(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9})
	f.Add([]byte{0x10, 0x10, 0x90, 0x10, 0x50, 0xd0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		cfg := configs[len(ops)%len(configs)]
		tr := mustNew(t, cfg)
		m := model{}
		for i, op := range ops {
			k := kv{"t", fmt.Sprintf("k%d", op&0x3f)}
			v := Hash{uint64(i), uint64(op)}
			old, ok := m[k]
			switch {
			case !ok:
				tr.Insert(k.tenant, k.key, v)
				m[k] = v
			case op&0x80 != 0:
				if err := tr.Delete(k.tenant, k.key, old); err != nil {
					t.Fatal(err)
				}
				delete(m, k)
			default:
				if err := tr.Update(k.tenant, k.key, old, v); err != nil {
					t.Fatal(err)
				}
				m[k] = v
			}
			if op&0x40 != 0 {
				tr.Root()
			}
		}
		built := mustBuild(t, cfg, m)
		equalTrees(t, tr, built)
		if got, _, err := Diff(Local{tr}, Local{built}); err != nil || got != nil {
			t.Fatalf("diff of equal trees: %v %v", got, err)
		}
	})
}

// The keys of one partition share the high bits of their KeyHash; the
// buckets must still spread them over every leaf, not over the few the
// partition's bits leave.
func TestBucketsSpreadWithinPartition(t *testing.T) {
	const q, part = 64, 37
	tr := mustNew(t, DefaultConfig())
	seen := map[int]bool{}
	n := 0
	for i := 0; n < 4096; i++ {
		k := fmt.Sprintf("user:%d", i)
		if ring.Partition("acme", k, q) != part {
			continue
		}
		n++
		seen[tr.Bucket("acme", k)] = true
	}
	// 4096 keys over 4096 leaves at random fill 1-1/e of them (~2589).
	if len(seen) < 2400 {
		t.Fatalf("4096 keys of one partition fill %d of 4096 leaves", len(seen))
	}
}
