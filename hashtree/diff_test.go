package hashtree

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// A single differing key (a different version, or missing on one side)
// is found in exactly its bucket, and the exchange descends one path.
func TestDiffSingleKey(t *testing.T) {
	r := rand.New(rand.NewPCG(10, 11))
	for _, c := range configs {
		m := randomSet(r, 3000)
		a := mustBuild(t, c, m)
		for k, v := range m {
			for _, op := range []string{"version", "missing"} {
				b := mustBuild(t, c, m)
				if op == "version" {
					if err := b.Update(k.tenant, k.key, v, randVersion(r)); err != nil {
						t.Fatal(err)
					}
				} else if err := b.Delete(k.tenant, k.key, v); err != nil {
					t.Fatal(err)
				}
				got, st, err := Diff(Local{a}, Local{b})
				if err != nil {
					t.Fatal(err)
				}
				if want := []uint32{uint32(a.Bucket(k.tenant, k.key))}; !slices.Equal(got, want) {
					t.Fatalf("%+v %s of %v: diff %v, want %v", c, op, k, got, want)
				}
				if st.Rounds != c.Depth+1 || st.Compared != 1+c.Depth*c.FanOut {
					t.Fatalf("%+v: %+v, want %d rounds and %d hashes", c, st, c.Depth+1, 1+c.Depth*c.FanOut)
				}
			}
			break // one key per config; the random sets vary it
		}
	}
}

// For random divergence, Diff returns exactly the buckets holding a key
// the two sides disagree on, and agrees with a full leaf comparison.
func TestDiffRandomDivergence(t *testing.T) {
	for seed := range uint64(30) {
		r := rand.New(rand.NewPCG(seed, 12))
		c := configs[int(seed)%len(configs)]
		ma := randomSet(r, 1+r.IntN(5000))
		mb := model{}
		want := map[uint32]bool{}
		tr := mustNew(t, c)
		rate := r.Float64() * 0.2
		for k, v := range ma {
			switch x := r.Float64(); {
			case x < rate/3: // missing on b
				want[uint32(tr.Bucket(k.tenant, k.key))] = true
			case x < 2*rate/3: // another version on b
				mb[k] = randVersion(r)
				want[uint32(tr.Bucket(k.tenant, k.key))] = true
			default:
				mb[k] = v
			}
		}
		for i := range r.IntN(50) { // only on b
			k := kv{"t9", fmt.Sprintf("extra-%d", i)}
			mb[k] = randVersion(r)
			want[uint32(tr.Bucket(k.tenant, k.key))] = true
		}
		a, b := mustBuild(t, c, ma), mustBuild(t, c, mb)
		got, st, err := Diff(Local{a}, Local{b})
		if err != nil {
			t.Fatal(err)
		}
		wantList := make([]uint32, 0, len(want))
		for bk := range want {
			wantList = append(wantList, bk)
		}
		slices.Sort(wantList)
		if !slices.Equal(got, wantList) {
			t.Fatalf("seed %d %+v: diff %d buckets, want %d", seed, c, len(got), len(wantList))
		}
		var leaves []uint32
		for i := range c.Leaves() {
			if a.Leaf(i) != b.Leaf(i) {
				leaves = append(leaves, uint32(i))
			}
		}
		if !slices.Equal(got, leaves) {
			t.Fatalf("seed %d: diff disagrees with a full leaf comparison", seed)
		}
		if len(got) == 0 && st.Rounds != 1 {
			t.Fatalf("equal roots took %d rounds", st.Rounds)
		}
		// Diff is symmetric.
		back, _, err := Diff(Local{b}, Local{a})
		if err != nil || !slices.Equal(back, got) {
			t.Fatalf("diff(b, a) = %v, %v", back, err)
		}
	}
}

func TestDiffEqualTreesStopsAtRoot(t *testing.T) {
	m := randomSet(rand.New(rand.NewPCG(1, 1)), 100)
	got, st, err := Diff(Local{mustBuild(t, DefaultConfig(), m)}, Local{mustBuild(t, DefaultConfig(), m)})
	if err != nil || got != nil || st.Rounds != 1 || st.Compared != 1 {
		t.Fatalf("got %v %+v %v", got, st, err)
	}
}

func TestDiffShapesMustMatch(t *testing.T) {
	_, _, err := Diff(Local{mustNew(t, DefaultConfig())}, Local{mustNew(t, Config{FanOut: 16, Depth: 2})})
	if err == nil {
		t.Fatal("diff of different shapes accepted")
	}
}

// failing is a Source whose Children fails, as a peer that times out would.
type failing struct{ Local }

var errPeer = errors.New("peer gone")

func (f failing) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	return dst, errPeer
}

// short is a Source that answers with too few hashes, as a buggy peer might.
type short struct{ Local }

func (s short) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	dst, err := s.Local.Children(dst, l, parents)
	return dst[:len(dst)-1], err
}

func TestDiffPeerErrors(t *testing.T) {
	a := mustNew(t, DefaultConfig())
	b := mustNew(t, DefaultConfig())
	b.Insert("t", "k", Hash{1})
	if _, _, err := Diff(Local{a}, failing{Local{b}}); !errors.Is(err, errPeer) {
		t.Fatalf("got %v, want the peer's error", err)
	}
	if _, _, err := Diff(Local{a}, short{Local{b}}); err == nil {
		t.Fatal("short reply accepted")
	}
}

// changing is a Source whose tree takes a write after its root was
// answered, as a peer serving an exchange from its live tree would.
type changing struct {
	Local
	done bool
}

func (c *changing) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	if !c.done {
		c.done = true
		c.T.Insert("t", "late write", Hash{9})
	}
	return c.Local.Children(dst, l, parents)
}

func TestDiffSideChangedDuringExchange(t *testing.T) {
	m := randomSet(rand.New(rand.NewPCG(2, 2)), 200)
	a := mustBuild(t, DefaultConfig(), m)
	b := mustBuild(t, DefaultConfig(), m)
	b.Insert("t", "only on b", Hash{1})
	_, _, err := Diff(Local{a}, &changing{Local: Local{b}})
	if !errors.Is(err, ErrInconsistent) {
		t.Fatalf("got %v, want ErrInconsistent", err)
	}
	// Served from a snapshot taken before the exchange, it is consistent.
	b = mustBuild(t, DefaultConfig(), m)
	b.Insert("t", "only on b", Hash{1})
	snap := b.Clone()
	b.Insert("t", "later", Hash{2})
	got, _, err := Diff(Local{a}, Local{snap})
	if err != nil || !slices.Equal(got, []uint32{uint32(a.Bucket("t", "only on b"))}) {
		t.Fatalf("snapshot diff: %v %v", got, err)
	}
}

// bytesPeer answers an exchange from arbitrary bytes, as a broken or
// hostile peer might: any number of hashes, any values.
type bytesPeer struct {
	cfg Config
	b   []byte
}

func (p *bytesPeer) Config() Config { return p.cfg }

func (p *bytesPeer) next() (Hash, bool) {
	if len(p.b) < 16 {
		return Hash{}, false
	}
	h := readHash(p.b)
	p.b = p.b[16:]
	return h, true
}

func (p *bytesPeer) Root() (Hash, error) {
	h, _ := p.next()
	return h, nil
}

func (p *bytesPeer) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	if len(p.b) == 0 {
		return dst, nil
	}
	n := int(p.b[0]) % (len(parents)*p.cfg.FanOut + 2) // sometimes the right count
	p.b = p.b[1:]
	for range n {
		h, ok := p.next()
		if !ok {
			break
		}
		dst = append(dst, h)
	}
	return dst, nil
}

// FuzzDiffPeer: whatever a peer answers, Diff does not panic, and what it
// returns are distinct leaf buckets in increasing order.
func FuzzDiffPeer(f *testing.F) {
	f.Add([]byte{}, uint8(0))
	f.Add(make([]byte, 200), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, shape uint8) {
		cfg := []Config{{FanOut: 2, Depth: 1}, {FanOut: 2, Depth: 3}, {FanOut: 4, Depth: 2}}[int(shape)%3]
		a := mustNew(t, cfg)
		for i := range 20 {
			a.Insert("t", fmt.Sprint(i), Hash{uint64(i)})
		}
		got, _, err := Diff(Local{a}, &bytesPeer{cfg, b})
		if err != nil {
			return
		}
		for i, bk := range got {
			if int(bk) >= cfg.Leaves() || (i > 0 && got[i-1] >= bk) {
				t.Fatalf("buckets %v", got)
			}
		}
	})
}
