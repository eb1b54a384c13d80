package hashtree

import (
	"errors"
	"fmt"
	"slices"
)

// ErrInconsistent reports a side whose children do not hash to the parent
// it answered before: a tree that changed during the exchange, or a peer
// answering from something else. The exchange should be retried; a side
// serves an exchange from a snapshot ([Tree.Clone]) to avoid it.
var ErrInconsistent = errors.New("hashtree: children do not hash to their parent")

// Source is one side of an exchange: a tree, local or behind a
// request-reply subject. Children has the contract of [Tree.Children];
// a network Source sends the level and the parent indices and gets back
// the children's hashes. Root may be Children of a virtual level -1; it is
// kept separate because an exchange that finds equal roots stops there.
type Source interface {
	Config() Config
	Root() (Hash, error)
	Children(dst []Hash, l int, parents []uint32) ([]Hash, error)
}

// Local adapts a [Tree] to [Source].
type Local struct{ T *Tree }

// Config returns the tree's shape.
func (s Local) Config() Config { return s.T.Config() }

// Root returns the tree's root.
func (s Local) Root() (Hash, error) { return s.T.Root(), nil }

// Children calls [Tree.Children].
func (s Local) Children(dst []Hash, l int, parents []uint32) ([]Hash, error) {
	return s.T.Children(dst, l, parents)
}

// Wire-size model of the exchange, for [DiffStats]: a request carries a
// level and a count (8 bytes) and 4 bytes per parent index; a reply
// carries 16 bytes per hash. Message headers and subjects are not counted.
const (
	reqHeaderBytes = 8
	reqIndexBytes  = 4
	hashBytes      = 16
)

// DiffStats is what an exchange costs, counted as if both sides were
// remote: one request-reply to each side per round.
type DiffStats struct {
	// Rounds is the number of breadth-first rounds: 1 for the roots, plus
	// one per level descended. Each round is one request-reply per side,
	// which can go in parallel.
	Rounds int
	// Compared is the number of hash pairs compared.
	Compared int
	// RequestBytes and ReplyBytes are the bytes sent to and received from
	// one side, by the model above; double them for both sides.
	RequestBytes, ReplyBytes int
}

// Diff compares two trees breadth-first, as Riak's hashtree exchange does:
// the roots, then the children of the nodes that differ, level by level,
// descending only into differing subtrees. It returns the leaf buckets
// whose hashes differ, in increasing order, and what the exchange cost.
// The keys of those buckets are the candidates to exchange; keys of equal
// buckets are equal on both sides (up to a 128-bit collision).
//
// Every level a side returns is checked against the parents it returned
// before ([HashChildren]); a mismatch is ErrInconsistent, so a side that
// changed during the exchange is an error, not a partial answer.
//
// The configs must be equal. A side's error is returned wrapped, with the
// stats so far.
func Diff(a, b Source) ([]uint32, DiffStats, error) {
	var st DiffStats
	cfg := a.Config()
	if cb := b.Config(); cb != cfg {
		return nil, st, fmt.Errorf("hashtree: diff of trees of different shapes %+v and %+v", cfg, cb)
	}
	if err := cfg.Validate(); err != nil {
		return nil, st, err
	}
	ra, err := a.Root()
	if err != nil {
		return nil, st, fmt.Errorf("hashtree: root of a: %w", err)
	}
	rb, err := b.Root()
	if err != nil {
		return nil, st, fmt.Errorf("hashtree: root of b: %w", err)
	}
	st.Rounds, st.Compared = 1, 1
	st.RequestBytes, st.ReplyBytes = reqHeaderBytes, hashBytes
	if ra == rb {
		return nil, st, nil
	}
	parents := []uint32{0}
	// pha and phb hold the two sides' hashes of parents, to check their
	// children against.
	pha, phb := []Hash{ra}, []Hash{rb}
	var ha, hb []Hash
	buf := make([]byte, 0, hashBytes*cfg.FanOut)
	for l := 0; l < cfg.Depth; l++ {
		ha, err = a.Children(ha[:0], l, parents)
		if err != nil {
			return nil, st, fmt.Errorf("hashtree: level %d of a: %w", l+1, err)
		}
		hb, err = b.Children(hb[:0], l, parents)
		if err != nil {
			return nil, st, fmt.Errorf("hashtree: level %d of b: %w", l+1, err)
		}
		want := len(parents) * cfg.FanOut
		if len(ha) != want || len(hb) != want {
			return nil, st, fmt.Errorf("hashtree: level %d: got %d and %d hashes, want %d", l+1, len(ha), len(hb), want)
		}
		st.Rounds++
		st.Compared += want
		st.RequestBytes += reqHeaderBytes + reqIndexBytes*len(parents)
		st.ReplyBytes += hashBytes * want
		next := make([]uint32, 0, len(parents))
		nha, nhb := make([]Hash, 0, len(parents)), make([]Hash, 0, len(parents))
		for i, p := range parents {
			ca, cb := ha[i*cfg.FanOut:(i+1)*cfg.FanOut], hb[i*cfg.FanOut:(i+1)*cfg.FanOut]
			if HashChildren(buf[:0], ca) != pha[i] {
				return nil, st, fmt.Errorf("level %d node %d of a: %w", l, p, ErrInconsistent)
			}
			if HashChildren(buf[:0], cb) != phb[i] {
				return nil, st, fmt.Errorf("level %d node %d of b: %w", l, p, ErrInconsistent)
			}
			for c := range cfg.FanOut {
				if ca[c] != cb[c] {
					next = append(next, p*uint32(cfg.FanOut)+uint32(c))
					nha, nhb = append(nha, ca[c]), append(nhb, cb[c])
				}
			}
		}
		parents, pha, phb = next, nha, nhb
		if len(parents) == 0 {
			// Equal children under unequal parents, both checked: only a
			// 128-bit collision gets here. Nothing to descend into.
			return nil, st, nil
		}
	}
	slices.Sort(parents)
	return parents, st, nil
}
