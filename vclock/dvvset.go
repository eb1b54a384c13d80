package vclock

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/vmihailenco/msgpack/v5"
)

// This file implements the siblings policy: dotted version vector sets
// (DVVSet) after Almeida et al., "Scalable and Accurate Causality Tracking
// for Eventually Consistent Stores" (2014), and Riak KV 2.0's dvvset.erl,
// restricted to what a server stores: there are no anonymous (dot-less)
// values, because the coordinating replica mints a dot for every value it
// accepts.

// DVVContextPrefix starts every non-empty context of the siblings policy
// (see [EncodeDVVContext]). It differs from [LWWContextPrefix], so a context
// of one policy is rejected, not misread, by the other.
const DVVContextPrefix = "d1."

var (
	// ErrBadDVVSet is wrapped by every error [DVVSet.Validate] and
	// [DVVSet.DecodeMsgpack] return, and by [Update]'s when its state
	// argument is malformed.
	ErrBadDVVSet = errors.New("vclock: malformed dvvset")

	// ErrCounterExhausted is returned by [Update] when the coordinating
	// actor's counter for the key is already math.MaxUint64, so no new dot
	// can be minted. Well-behaved actors never get there (one per write);
	// only a forged context can claim such a counter.
	ErrCounterExhausted = errors.New("vclock: dvvset counter exhausted")
)

// Value is the content of one sibling: a value, or a tombstone when
// Tombstone is set (a delete). Tombstones are siblings like any other value,
// so a delete that carries a context removes exactly what its client saw,
// and a delete concurrent with a write is kept beside it.
//
// A nil and an empty Data are the same value. Treat Data as immutable once it
// is in a [DVVSet]: states share it without copying.
//
// Expires (node protocol 3) is when the value expires, in Unix
// milliseconds, 0 = never; a tombstone carries the wall time of its delete
// (0 in tombstones written before protocol 3). It is part of the sibling:
// every replica holds the same Expires for the same dot. A value whose
// Expires has passed reads as a tombstone does (see [Value.ExpiredAt]), so
// a write with the context of such a read drops it like a tombstone.
//
// Value encodes with msgpack as the array [Data, Tombstone] when Expires is
// 0 (the form from before Expires existed, so old states and their hashes
// are unchanged) and [Data, Tombstone, Expires] otherwise.
type Value struct {
	_msgpack  struct{} `msgpack:",as_array"`
	Data      []byte
	Tombstone bool
	Expires   int64 `json:",omitempty"`
}

// ExpiredAt reports whether v is a value (not a tombstone) whose Expires
// has passed at nowMs (Unix milliseconds).
func (v Value) ExpiredAt(nowMs int64) bool {
	return !v.Tombstone && v.Expires != 0 && nowMs >= v.Expires
}

// DeadAt reports whether a read at nowMs must not return v: it is a
// tombstone or [Value.ExpiredAt] nowMs.
func (v Value) DeadAt(nowMs int64) bool { return v.Tombstone || v.ExpiredAt(nowMs) }

// EncodeMsgpack implements msgpack.CustomEncoder: [Data, Tombstone], with
// Expires appended only when it is not 0.
func (v Value) EncodeMsgpack(enc *msgpack.Encoder) error { return encodeValue(enc, v) }

// DecodeMsgpack implements msgpack.CustomDecoder: it reads the 2- and the
// 3-element form (nil or an empty array as the zero Value).
func (v *Value) DecodeMsgpack(dec *msgpack.Decoder) error {
	*v = Value{}
	out, err := decodeValue(dec)
	if err != nil {
		return err
	}
	*v = out
	return nil
}

func encodeValue(enc *msgpack.Encoder, v Value) error {
	n := 2
	if v.Expires != 0 {
		n = 3
	}
	if err := enc.EncodeArrayLen(n); err != nil {
		return err
	}
	if err := enc.EncodeBytes(v.Data); err != nil {
		return err
	}
	if err := enc.EncodeBool(v.Tombstone); err != nil {
		return err
	}
	if n == 3 {
		return enc.EncodeInt(v.Expires)
	}
	return nil
}

// decodeValue reads what encodeValue writes, with a bounded allocation for
// Data (decodeBytesBounded).
func decodeValue(dec *msgpack.Decoder) (Value, error) {
	var v Value
	k, err := dec.DecodeArrayLen()
	switch {
	case err != nil:
		return v, err
	case k <= 0:
		return v, nil
	case k != 2 && k != 3:
		return v, fmt.Errorf("value is an array of %d elements, want 2 or 3", k)
	}
	if v.Data, err = decodeBytesBounded(dec); err != nil {
		return v, err
	}
	if v.Tombstone, err = dec.DecodeBool(); err != nil {
		return v, err
	}
	if k == 3 {
		if v.Expires, err = dec.DecodeInt64(); err != nil {
			return v, err
		}
	}
	return v, nil
}

// compareValue orders Values totally: a tombstone after a value, then by
// Expires, then by bytes.Compare of Data. [Sync] uses it only to stay
// deterministic on malformed input, where one dot carries two different
// Values.
func compareValue(a, b Value) int {
	if a.Tombstone != b.Tombstone {
		if a.Tombstone {
			return 1
		}
		return -1
	}
	if a.Expires != b.Expires {
		if a.Expires > b.Expires {
			return 1
		}
		return -1
	}
	if len(a.Data) == len(b.Data) && (len(a.Data) == 0 || &a.Data[0] == &b.Data[0]) {
		return 0 // same bytes in memory
	}
	return bytes.Compare(a.Data, b.Data)
}

// DVVEntry is what a [DVVSet] knows of one actor (Riak's {I, N, L}): every
// dot (Actor, 1) … (Actor, Counter) has been seen, and Values are the live
// values among them, newest first: Values[i] has the dot
// (Actor, Counter-i). So the live dots of an actor are always the contiguous
// range Counter-len(Values)+1 … Counter, and the dots at or below
// Counter-len(Values) (the entry's floor) are known obsolete.
//
// A valid entry has a non-empty Actor, Counter ≥ 1 and
// len(Values) ≤ Counter.
//
// DVVEntry encodes with msgpack as the array [Actor, Counter, Values].
type DVVEntry struct {
	_msgpack struct{} `msgpack:",as_array"`
	Actor    string
	Counter  uint64
	Values   []Value
}

// floor returns the greatest counter of e's actor that e knows to be
// obsolete (0 when none). It does not underflow on malformed entries.
func (e DVVEntry) floor() uint64 {
	if uint64(len(e.Values)) >= e.Counter {
		return 0
	}
	return e.Counter - uint64(len(e.Values))
}

// DVVSet is the state of one key under the siblings policy: its live
// siblings (values and tombstones), each with its dot, and the causal
// history that made them (a version vector). The zero DVVSet is the state of
// a key never written.
//
// Entries are sorted by Actor (bytewise), one per actor; see [DVVEntry] and
// [DVVSet.Validate]. Every function in this file treats its DVVSet arguments
// as immutable and never modifies them; results may share memory (Entries,
// Values and Data) with the arguments, so treat results as immutable too.
// No function panics on a malformed DVVSet, but results are meaningful only
// for valid ones: validate every state decoded from storage or the wire.
//
// DVVSet encodes with msgpack as the array [Entries], the layout its
// as_array tags describe, with integers in their most compact form; see
// [DVVSet.EncodeMsgpack] and [DVVSet.DecodeMsgpack]. The zero DVVSet
// round-trips.
type DVVSet struct {
	_msgpack struct{} `msgpack:",as_array"`
	Entries  []DVVEntry
}

// Sibling is one live value of a [DVVSet] with its dot.
//
// Sibling encodes with msgpack as the array [Dot, Value].
type Sibling struct {
	_msgpack struct{} `msgpack:",as_array"`
	Dot      Dot
	Value    Value
}

// ReplicaActor returns the actor id of a storage node's data directory:
// nodeID, a dot, then epoch in lower-case hexadecimal without leading zeros
// ("n1.1f"). The epoch must change whenever the data directory is created or
// wiped, so a rebuilt node never mints a dot it minted before (see the
// package documentation). Since the hex epoch contains no dot, the last dot
// separates the two parts even when nodeID contains dots. Other functions
// treat actors as opaque strings.
func ReplicaActor(nodeID string, epoch uint64) string {
	return nodeID + "." + strconv.FormatUint(epoch, 16)
}

// Validate reports whether s is well formed: actors non-empty, strictly
// increasing (so distinct), every Counter ≥ 1 and len(Values) ≤ Counter.
// The error wraps [ErrBadDVVSet]. Every state built from the zero DVVSet by
// [Update], [Discard] and [Sync] is valid.
func (s DVVSet) Validate() error {
	for i, e := range s.Entries {
		switch {
		case e.Actor == "":
			return fmt.Errorf("%w: entry %d: empty actor", ErrBadDVVSet, i)
		case i > 0 && s.Entries[i-1].Actor >= e.Actor:
			return fmt.Errorf("%w: entry %d: actors not sorted and distinct", ErrBadDVVSet, i)
		case e.Counter == 0:
			return fmt.Errorf("%w: entry %d: zero counter", ErrBadDVVSet, i)
		case uint64(len(e.Values)) > e.Counter:
			return fmt.Errorf("%w: entry %d: %d values above counter %d", ErrBadDVVSet, i, len(e.Values), e.Counter)
		}
	}
	return nil
}

// Size returns the number of live siblings of s, tombstones included (the
// number the 100-sibling cap limits).
func (s DVVSet) Size() int {
	n := 0
	for _, e := range s.Entries {
		n += len(e.Values)
	}
	return n
}

// Deleted reports whether a read of s should report not found: s holds no
// sibling that is not a tombstone (it is empty, or every sibling is a
// tombstone). Such a read still returns the context of s, so that a later
// write supersedes the tombstones.
func (s DVVSet) Deleted() bool {
	for _, e := range s.Entries {
		for _, v := range e.Values {
			if !v.Tombstone {
				return false
			}
		}
	}
	return true
}

// DeletedAt is [DVVSet.Deleted] at nowMs (Unix milliseconds): s holds no
// sibling that is neither a tombstone nor [Value.ExpiredAt] nowMs. A read
// at nowMs reports such a key not found (with its context).
func (s DVVSet) DeletedAt(nowMs int64) bool {
	for _, e := range s.Entries {
		for _, v := range e.Values {
			if !v.DeadAt(nowMs) {
				return false
			}
		}
	}
	return true
}

// DeadSince reports whether s is dead at nowMs (Unix milliseconds), that
// is [DVVSet.DeletedAt] nowMs, and since when: the latest time one of its
// siblings died, where a sibling with an Expires died at it (for a
// tombstone, the wall time of its delete) and a tombstone written before
// Expires existed (Expires 0) has no known time and counts 0. So ms is 0
// when every sibling is such a tombstone, or when s holds no sibling at
// all. A state with a live sibling is not dead (0, false).
func (s DVVSet) DeadSince(nowMs int64) (ms int64, dead bool) {
	for _, e := range s.Entries {
		for _, v := range e.Values {
			if !v.DeadAt(nowMs) {
				return 0, false
			}
			ms = max(ms, v.Expires)
		}
	}
	return ms, true
}

// Siblings returns every live sibling of s with its dot, greatest dot first
// by [Dot.Compare] (counter, then actor). Equal states list their siblings
// in the same order. The Values share Data with s. It returns nil when s has
// no sibling.
func (s DVVSet) Siblings() []Sibling {
	n := s.Size()
	if n == 0 {
		return nil
	}
	out := make([]Sibling, 0, n)
	for _, e := range s.Entries {
		for i, v := range e.Values {
			out = append(out, Sibling{Dot: Dot{Counter: e.Counter - uint64(i), Actor: e.Actor}, Value: v})
		}
	}
	slices.SortStableFunc(out, func(a, b Sibling) int { return b.Dot.Compare(a.Dot) })
	return out
}

// Values returns the Values of [DVVSet.Siblings], in the same order (greatest
// dot first), or nil when s has none. They share Data with s.
func (s DVVSet) Values() []Value {
	sib := s.Siblings()
	if sib == nil {
		return nil
	}
	out := make([]Value, len(sib))
	for i, x := range sib {
		out[i] = x.Value
	}
	return out
}

// Last returns the sibling with the greatest dot by [Dot.Compare] (greatest
// counter, then greatest actor bytewise), tombstones included, and false
// when s has no sibling. It is the first of [DVVSet.Siblings]. The live
// siblings of a state are pairwise concurrent, so this is a deterministic
// pick for clients that want one value, not a causal "latest": replicas with
// equal states pick the same one.
func (s DVVSet) Last() (Sibling, bool) {
	return s.last(false)
}

// LastLive is [DVVSet.Last] restricted to siblings that are not tombstones:
// the greatest dot among them, and false when there is none (exactly when
// [DVVSet.Deleted]).
func (s DVVSet) LastLive() (Sibling, bool) {
	return s.last(true)
}

// LastLiveAt is [DVVSet.LastLive] at nowMs (Unix milliseconds): the
// greatest dot among the siblings that are neither tombstones nor
// [Value.ExpiredAt] nowMs, and false when there is none (exactly when
// [DVVSet.DeletedAt] nowMs).
func (s DVVSet) LastLiveAt(nowMs int64) (Sibling, bool) {
	return s.lastAt(true, nowMs)
}

func (s DVVSet) last(liveOnly bool) (Sibling, bool) {
	return s.lastAt(liveOnly, math.MinInt64)
}

// lastAt is last with values expired at nowMs counted as tombstones
// (math.MinInt64: none is).
func (s DVVSet) lastAt(liveOnly bool, nowMs int64) (Sibling, bool) {
	var best Sibling
	found := false
	for _, e := range s.Entries {
		for i, v := range e.Values {
			if liveOnly && v.DeadAt(nowMs) {
				continue
			}
			d := Dot{Counter: e.Counter - uint64(i), Actor: e.Actor}
			if !found || d.Compare(best.Dot) > 0 {
				best, found = Sibling{Dot: d, Value: v}, true
			}
			break // later values of this entry have smaller dots
		}
	}
	return best, found
}

// Equal reports whether s and o are the same state: the same actors,
// counters and Values (Data compared with bytes.Equal, so nil equals empty).
func (s DVVSet) Equal(o DVVSet) bool {
	if len(s.Entries) != len(o.Entries) {
		return false
	}
	for i, x := range s.Entries {
		y := o.Entries[i]
		if x.Actor != y.Actor || x.Counter != y.Counter || len(x.Values) != len(y.Values) {
			return false
		}
		for j, v := range x.Values {
			w := y.Values[j]
			if v.Tombstone != w.Tombstone || v.Expires != w.Expires || !bytes.Equal(v.Data, w.Data) {
				return false
			}
		}
	}
	return true
}

// Join returns the causal context of s: for each actor, the greatest
// counter s has seen. A read returns it (encoded with [EncodeDVVContext])
// beside the siblings, and a write that hands it back to [Update] replaces
// exactly those siblings. The result is valid when s is; it is nil when s
// is empty.
func (s DVVSet) Join() DVVContext {
	if len(s.Entries) == 0 {
		return nil
	}
	out := make(DVVContext, 0, len(s.Entries))
	for _, e := range s.Entries {
		if e.Counter > 0 {
			out = append(out, ActorCounter{Actor: e.Actor, Counter: e.Counter})
		}
	}
	return out
}

// mergeEntry merges what two states know of one actor (a.Actor ==
// b.Actor); it is dvvset:merge/5 made deterministic on malformed input.
// The result has the greater counter and the greater floor, so it keeps
// exactly the dots above both floors; each such dot's Value comes from the
// argument(s) with the greater counter (the greater Value by compareValue
// when the counters tie, which only matters if one dot carries two
// different Values). It is commutative, associative and idempotent up to
// [DVVSet.Equal], and allocates only in that malformed case.
func mergeEntry(a, b DVVEntry) DVVEntry {
	if a.Counter < b.Counter {
		a, b = b, a
	}
	fa, fb := a.floor(), b.floor()
	if a.Counter > b.Counter {
		if fa >= fb {
			return a
		}
		// Keep the values above b's floor: dots fb+1 … a.Counter.
		// a.Counter-fb < len(a.Values) because fb > fa.
		a.Values = a.Values[:a.Counter-fb]
		return a
	}
	// Equal counters: keep the shorter list (the greater floor).
	n := min(len(a.Values), len(b.Values))
	fromA, fromB := true, true
	for i := range n {
		switch c := compareValue(a.Values[i], b.Values[i]); {
		case c > 0:
			fromB = false
		case c < 0:
			fromA = false
		}
	}
	switch {
	case fromA:
		a.Values = a.Values[:n]
	case fromB:
		a.Values = b.Values[:n]
	default:
		vals := make([]Value, n)
		for i := range n {
			vals[i] = a.Values[i]
			if compareValue(b.Values[i], vals[i]) > 0 {
				vals[i] = b.Values[i]
			}
		}
		a.Values = vals
	}
	return a
}

// Sync merges two replicas' states of one key (dvvset:sync/2). The result
// has seen everything either has seen (its [DVVSet.Join] is the
// element-wise maximum of theirs) and keeps a sibling of either exactly when
// the other state also has it or has not seen its dot; so a sibling that one
// replica has discarded (its dot covered by a later write's context) is
// dropped, and every sibling neither has discarded survives.
//
// Sync is commutative, associative and idempotent up to [DVVSet.Equal], so
// replicas that exchange states in any order, any number of times,
// converge. It holds even for valid states that disagree on a dot's Value
// (two nodes misconfigured with one actor id): the greater Value by
// Tombstone, then Data, wins. Sync allocates one Entries slice (none when
// either state is empty, in which case it returns the other).
func Sync(a, b DVVSet) DVVSet {
	if len(a.Entries) == 0 {
		return b
	}
	if len(b.Entries) == 0 {
		return a
	}
	x, y := a.Entries, b.Entries
	out := make([]DVVEntry, 0, len(x)+len(y))
	i, j := 0, 0
	for i < len(x) && j < len(y) {
		switch c := strings.Compare(x[i].Actor, y[j].Actor); {
		case c < 0:
			out = append(out, x[i])
			i++
		case c > 0:
			out = append(out, y[j])
			j++
		default:
			out = append(out, mergeEntry(x[i], y[j]))
			i++
			j++
		}
	}
	out = append(out, x[i:]...)
	out = append(out, y[j:]...)
	return DVVSet{Entries: out}
}

// SyncAll returns the [Sync] of all the states (the zero DVVSet when there
// are none), for example the replies of a quorum read.
func SyncAll(states ...DVVSet) DVVSet {
	var acc DVVSet
	for _, s := range states {
		acc = Sync(acc, s)
	}
	return acc
}

// Discard drops from s every sibling whose dot ctx covers and records ctx
// in its history: the result is the [Sync] of s with a state that has seen
// ctx and holds no sibling. So its Join is the element-wise maximum of
// s.Join() and ctx, and its siblings are exactly those of s whose dots ctx
// does not cover. Context entries with Counter 0 are ignored.
func Discard(s DVVSet, ctx DVVContext) DVVSet {
	if len(ctx) == 0 {
		return s
	}
	return DVVSet{Entries: discardInto(make([]DVVEntry, 0, len(s.Entries)+len(ctx)+1), s.Entries, ctx)}
}

// discardInto appends to out the entries of Discard(s, ctx).
func discardInto(out []DVVEntry, x []DVVEntry, ctx DVVContext) []DVVEntry {
	i, j := 0, 0
	for i < len(x) || j < len(ctx) {
		if j < len(ctx) && ctx[j].Counter == 0 {
			j++
			continue
		}
		var c int
		switch {
		case i == len(x):
			c = 1
		case j == len(ctx):
			c = -1
		default:
			c = strings.Compare(x[i].Actor, ctx[j].Actor)
		}
		switch {
		case c < 0:
			out = append(out, x[i])
			i++
		case c > 0:
			out = append(out, DVVEntry{Actor: ctx[j].Actor, Counter: ctx[j].Counter})
			j++
		default:
			out = append(out, mergeEntry(x[i], DVVEntry{Actor: ctx[j].Actor, Counter: ctx[j].Counter}))
			i++
			j++
		}
	}
	return out
}

// Update is the write of the coordinating replica (dvvset:update/3): given
// the key's stored state s, the client's context ctx (nil for a write
// without one), the replica's own actor id and the new value v, it returns
// the new state and the dot minted for v. The new state is
// Discard(s, ctx) plus v with the dot (actor, n+1), where n is the greater
// of actor's counters in s and ctx. So every sibling of s whose dot ctx
// covers is dropped (the client saw it and replaces it), every other sibling
// is kept beside v (it is concurrent with this write), and the new state's
// Join covers s.Join(), ctx and the new dot. To delete, write a tombstone
// Value.
//
// s must be the replica's complete stored state for the key, and actor the
// replica's own id, never used by another replica: the dot is fresh only
// because this replica's state always holds the greatest counter of its
// own actor. v.Data is stored without copying.
//
// Update does not modify s or ctx. It returns an error wrapping
// [ErrBadDVVSet] when s is invalid or actor is empty, wrapping
// [ErrBadContext] when ctx is invalid, and [ErrCounterExhausted] when the
// counter cannot be incremented; then the state is the zero DVVSet.
func Update(s DVVSet, ctx DVVContext, actor string, v Value) (DVVSet, Dot, error) {
	if actor == "" {
		return DVVSet{}, Dot{}, fmt.Errorf("%w: empty actor", ErrBadDVVSet)
	}
	if err := s.Validate(); err != nil {
		return DVVSet{}, Dot{}, err
	}
	if err := ctx.Validate(); err != nil {
		return DVVSet{}, Dot{}, err
	}
	out := discardInto(make([]DVVEntry, 0, len(s.Entries)+len(ctx)+1), s.Entries, ctx)
	pos, found := slices.BinarySearchFunc(out, actor, func(e DVVEntry, a string) int {
		return strings.Compare(e.Actor, a)
	})
	if !found {
		out = slices.Insert(out, pos, DVVEntry{Actor: actor, Counter: 1, Values: []Value{v}})
		return DVVSet{Entries: out}, Dot{Counter: 1, Actor: actor}, nil
	}
	e := out[pos]
	if e.Counter == math.MaxUint64 {
		return DVVSet{}, Dot{}, ErrCounterExhausted
	}
	vals := make([]Value, 0, len(e.Values)+1)
	vals = append(vals, v)
	vals = append(vals, e.Values...)
	out[pos] = DVVEntry{Actor: actor, Counter: e.Counter + 1, Values: vals}
	return DVVSet{Entries: out}, Dot{Counter: e.Counter + 1, Actor: actor}, nil
}

// ActorCounter is one element of a [DVVContext]: Actor has had Counter
// events seen.
//
// ActorCounter encodes with msgpack as the array [Actor, Counter].
type ActorCounter struct {
	_msgpack struct{} `msgpack:",as_array"`
	Actor    string
	Counter  uint64
}

// DVVContext is the causal context of the siblings policy: a version
// vector, the greatest counter seen of each actor, sorted by Actor with
// distinct, non-empty actors and counters ≥ 1 (see [DVVContext.Validate]).
// nil is the empty context: it covers no dot. Clients see it only as the
// opaque string of [EncodeDVVContext].
type DVVContext []ActorCounter

// Validate reports whether c is well formed: actors non-empty and strictly
// increasing, counters ≥ 1. The error wraps [ErrBadContext].
func (c DVVContext) Validate() error {
	for i, e := range c {
		switch {
		case e.Actor == "":
			return fmt.Errorf("%w: entry %d: empty actor", ErrBadContext, i)
		case i > 0 && c[i-1].Actor >= e.Actor:
			return fmt.Errorf("%w: entry %d: actors not sorted and distinct", ErrBadContext, i)
		case e.Counter == 0:
			return fmt.Errorf("%w: entry %d: zero counter", ErrBadContext, i)
		}
	}
	return nil
}

// Get returns the counter of actor in c, 0 when c has none. c must be
// sorted (valid).
func (c DVVContext) Get(actor string) uint64 {
	i, ok := slices.BinarySearchFunc(c, actor, func(e ActorCounter, a string) int {
		return strings.Compare(e.Actor, a)
	})
	if !ok {
		return 0
	}
	return c[i].Counter
}

// Covers reports whether c has seen the dot d: d.Counter ≥ 1 and
// d.Counter ≤ c.Get(d.Actor).
func (c DVVContext) Covers(d Dot) bool {
	return d.Counter >= 1 && d.Counter <= c.Get(d.Actor)
}

// EncodeDVVContext returns the opaque context string of c: "" for the
// empty context, otherwise [DVVContextPrefix] followed by the unpadded
// URL-safe base64 of, for each entry in order, the uvarint length of Actor,
// the Actor bytes and the uvarint Counter. It uses only the characters
// A-Z a-z 0-9 . _ -, so it needs no escaping in URLs, headers or JSON. c
// should be valid; [DecodeDVVContext] rejects the encoding of an invalid
// context.
func EncodeDVVContext(c DVVContext) string {
	if len(c) == 0 {
		return ""
	}
	n := 0
	for _, e := range c {
		n += len(e.Actor) + 2*binary.MaxVarintLen64
	}
	raw := make([]byte, 0, n)
	for _, e := range c {
		raw = binary.AppendUvarint(raw, uint64(len(e.Actor)))
		raw = append(raw, e.Actor...)
		raw = binary.AppendUvarint(raw, e.Counter)
	}
	out := make([]byte, 0, len(DVVContextPrefix)+ctxEncoding.EncodedLen(len(raw)))
	out = append(out, DVVContextPrefix...)
	out = ctxEncoding.AppendEncode(out, raw)
	return string(out)
}

// DecodeDVVContext parses a context made by [EncodeDVVContext] of a valid
// context. The empty string decodes to the empty (nil) context. Any other
// string EncodeDVVContext could not have produced from a valid context — a
// wrong or missing prefix, bad or non-canonical base64, a truncated entry,
// a non-minimal varint, unsorted or repeated or empty actors, a zero
// counter, or a non-empty encoding of the empty context — yields a nil
// context and an error wrapping [ErrBadContext]. So whenever it succeeds,
// EncodeDVVContext of the result is s. It never panics and allocates in
// proportion to len(s).
//
// A decoded context is untrusted: see the package documentation.
func DecodeDVVContext(s string) (DVVContext, error) {
	if s == "" {
		return nil, nil
	}
	payload, ok := strings.CutPrefix(s, DVVContextPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: unknown policy prefix", ErrBadContext)
	}
	// The base64 decoder skips CR and LF even in strict mode.
	if strings.ContainsAny(payload, "\r\n") {
		return nil, fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	raw, err := ctxEncoding.DecodeString(payload)
	if err != nil {
		return nil, fmt.Errorf("%w: bad base64", ErrBadContext)
	}
	if len(raw) == 0 {
		return nil, fmt.Errorf("%w: non-empty empty context", ErrBadContext)
	}
	var c DVVContext
	for len(raw) > 0 {
		alen, k := binary.Uvarint(raw)
		if k <= 0 || alen > uint64(len(raw)-k) {
			return nil, fmt.Errorf("%w: truncated actor", ErrBadContext)
		}
		raw = raw[k:]
		actor := string(raw[:alen])
		raw = raw[alen:]
		counter, k := binary.Uvarint(raw)
		if k <= 0 {
			return nil, fmt.Errorf("%w: truncated counter", ErrBadContext)
		}
		raw = raw[k:]
		c = append(c, ActorCounter{Actor: actor, Counter: counter})
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	// Uvarint accepts non-minimal encodings; allow only the canonical one.
	if EncodeDVVContext(c) != s {
		return nil, fmt.Errorf("%w: non-canonical encoding", ErrBadContext)
	}
	return c, nil
}

// decodeChunk bounds what a decoder allocates ahead of the bytes it has
// read: an array or byte string header may claim up to 2³² elements.
const decodeChunk = 64

// EncodeMsgpack implements msgpack.CustomEncoder. It writes the layout of
// the as_array struct tags, [[[Actor, Counter, [[Data, Tombstone] …]] …]]
// (nil slices as nil), with Counter in the fewest bytes, and a Value's
// Expires appended as a third element only when it is not 0.
func (s DVVSet) EncodeMsgpack(enc *msgpack.Encoder) error {
	if err := enc.EncodeArrayLen(1); err != nil {
		return err
	}
	if s.Entries == nil {
		return enc.EncodeNil()
	}
	if err := enc.EncodeArrayLen(len(s.Entries)); err != nil {
		return err
	}
	for _, e := range s.Entries {
		if err := enc.EncodeArrayLen(3); err != nil {
			return err
		}
		if err := enc.EncodeString(e.Actor); err != nil {
			return err
		}
		if err := enc.EncodeUint(e.Counter); err != nil {
			return err
		}
		if e.Values == nil {
			if err := enc.EncodeNil(); err != nil {
				return err
			}
			continue
		}
		if err := enc.EncodeArrayLen(len(e.Values)); err != nil {
			return err
		}
		for _, v := range e.Values {
			if err := encodeValue(enc, v); err != nil {
				return err
			}
		}
	}
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder. It reads what
// [DVVSet.EncodeMsgpack] writes (and any integer width for Counter),
// allocating in proportion to the bytes actually read whatever lengths the
// input claims (msgpack v5.4.x preallocates a slice of the claimed length,
// so a few bytes can demand gigabytes), and then validates the state. Every
// error wraps [ErrBadDVVSet]; on error *s is the zero DVVSet.
func (s *DVVSet) DecodeMsgpack(dec *msgpack.Decoder) error {
	*s = DVVSet{}
	out, err := decodeDVVSet(dec)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadDVVSet, err)
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*s = out
	return nil
}

func decodeDVVSet(dec *msgpack.Decoder) (DVVSet, error) {
	n, err := decodeArrayHeader(dec, 1)
	if err != nil || n == 0 {
		return DVVSet{}, err
	}
	m, err := dec.DecodeArrayLen()
	if err != nil || m < 0 {
		return DVVSet{}, err
	}
	entries := make([]DVVEntry, 0, min(m, decodeChunk))
	for range m {
		e, err := decodeDVVEntry(dec)
		if err != nil {
			return DVVSet{}, err
		}
		entries = append(entries, e)
	}
	return DVVSet{Entries: entries}, nil
}

func decodeDVVEntry(dec *msgpack.Decoder) (DVVEntry, error) {
	var e DVVEntry
	n, err := decodeArrayHeader(dec, 3)
	if err != nil || n == 0 {
		return e, err
	}
	if e.Actor, err = dec.DecodeString(); err != nil {
		return e, err
	}
	if e.Counter, err = dec.DecodeUint64(); err != nil {
		return e, err
	}
	m, err := dec.DecodeArrayLen()
	if err != nil || m < 0 {
		return e, err
	}
	e.Values = make([]Value, 0, min(m, decodeChunk))
	for range m {
		v, err := decodeValue(dec)
		if err != nil {
			return e, err
		}
		e.Values = append(e.Values, v)
	}
	return e, nil
}

// decodeArrayHeader reads the header of an as_array struct of fields
// fields: it returns 0 for nil or an empty array (the zero struct, as the
// tag-driven decoder does) and fields when the length matches.
func decodeArrayHeader(dec *msgpack.Decoder, fields int) (int, error) {
	n, err := dec.DecodeArrayLen()
	switch {
	case err != nil:
		return 0, err
	case n <= 0:
		return 0, nil
	case n != fields:
		return 0, fmt.Errorf("array of %d elements, want %d", n, fields)
	}
	return n, nil
}

// decodeBytesBounded reads a byte string (bin or str; nil for msgpack nil)
// in chunks, so that a claimed length beyond the input costs at most a
// chunk more than the input. (Decoder.DecodeBytes allocates the claimed
// length first.)
func decodeBytesBounded(dec *msgpack.Decoder) ([]byte, error) {
	n, err := dec.DecodeBytesLen()
	if err != nil || n < 0 {
		return nil, err
	}
	const chunk = 64 << 10
	b := make([]byte, 0, min(n, chunk))
	for len(b) < n {
		k := min(n-len(b), max(chunk, len(b)))
		b = slices.Grow(b, k)[:len(b)+k]
		if err := dec.ReadFull(b[len(b)-k:]); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// DecodeMsgpack implements msgpack.CustomDecoder for the layout of the
// as_array tags, [[Actor, Counter] …], allocating in proportion to the
// bytes read (see [DVVSet.DecodeMsgpack]), then validates the context.
// Errors wrap [ErrBadContext]; on error *c is nil.
func (c *DVVContext) DecodeMsgpack(dec *msgpack.Decoder) error {
	*c = nil
	n, err := dec.DecodeArrayLen()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadContext, err)
	}
	if n < 0 {
		return nil
	}
	out := make(DVVContext, 0, min(n, decodeChunk))
	for range n {
		var e ActorCounter
		k, err := decodeArrayHeader(dec, 2)
		if err == nil && k > 0 {
			if e.Actor, err = dec.DecodeString(); err == nil {
				e.Counter, err = dec.DecodeUint64()
			}
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadContext, err)
		}
		out = append(out, e)
	}
	if err := out.Validate(); err != nil {
		return err
	}
	*c = out
	return nil
}
