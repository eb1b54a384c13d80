package ring

import (
	"cmp"
	"math/bits"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// DefaultVirtualNodes is the number of points a member gets on the ring when
// its VirtualNodes is zero or negative.
const DefaultVirtualNodes = 128

// Member is a storage node as the ring sees it.
type Member struct {
	ID           string // node id, non-empty
	VirtualNodes int    // points on the ring; <= 0 means DefaultVirtualNodes
	Active       bool   // only active members appear in preference lists
}

// Ring is a consistent-hash ring over a set of members.
//
// A Ring is immutable after New and safe for concurrent use. The zero value
// is not usable; build rings with New.
type Ring struct {
	// members holds every member, active or not, sorted by ID, with unique
	// IDs and VirtualNodes normalised to the effective count.
	members []Member
	// active holds the IDs of the active members, sorted. owners index it.
	active []string
	// points holds the hashes of the active members' virtual nodes in
	// ascending order; equal hashes are ordered by owner ID.
	points []uint64
	// owners[i] is the index in active of the member owning points[i].
	owners []int32
}

// keyHashStackBuf bounds tenant+1+key lengths that KeyHash hashes in one
// shot from a stack buffer; longer inputs are streamed through a Digest.
const keyHashStackBuf = 256

// KeyHash returns the ring position of key within tenant:
// xxhash64(tenant + "\x00" + key), with xxhash's zero seed.
//
// It does not allocate and is safe for concurrent use. The value is part of
// the cluster protocol: every node must compute it identically.
func KeyHash(tenant, key string) uint64 {
	if n := len(tenant) + 1 + len(key); n <= keyHashStackBuf {
		var buf [keyHashStackBuf]byte
		copy(buf[:], tenant)
		buf[len(tenant)] = 0
		copy(buf[len(tenant)+1:], key)
		return xxhash.Sum64(buf[:n])
	}
	var d xxhash.Digest
	d.Reset()
	d.WriteString(tenant)
	d.WriteString("\x00")
	d.WriteString(key)
	return d.Sum64()
}

// New builds a ring from members.
//
// Members with an empty ID are ignored. When several members share an ID,
// the last one in the slice wins. Apart from that, the result does not
// depend on the order of members. New does not retain members.
//
// New allocates memory proportional to the total VirtualNodes of the active
// members (12 bytes per point); callers must bound VirtualNodes.
func New(members []Member) *Ring {
	return newRing(members, xxhash.Sum64)
}

// newRing is New with the point hash function as a parameter; pointHash
// receives ID + "#" + strconv.Itoa(i) and must not retain it. Tests use it to
// force hash collisions.
func newRing(members []Member, pointHash func([]byte) uint64) *Ring {
	r := &Ring{}

	// Deduplicate (last wins) and normalise.
	pos := make(map[string]int, len(members))
	for _, m := range members {
		if m.ID == "" {
			continue
		}
		if m.VirtualNodes <= 0 {
			m.VirtualNodes = DefaultVirtualNodes
		}
		if i, ok := pos[m.ID]; ok {
			r.members[i] = m
			continue
		}
		pos[m.ID] = len(r.members)
		r.members = append(r.members, m)
	}
	slices.SortFunc(r.members, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })

	total := 0
	for _, m := range r.members {
		if m.Active {
			r.active = append(r.active, m.ID)
			total += m.VirtualNodes
		}
	}
	if total == 0 {
		return r
	}

	// Place the points. Owner indexes follow ID order, so sorting by
	// (hash, owner) breaks hash ties by member ID.
	type point struct {
		hash  uint64
		owner int32
	}
	pts := make([]point, 0, total)
	var buf []byte
	owner := int32(0)
	for _, m := range r.members {
		if !m.Active {
			continue
		}
		buf = append(buf[:0], m.ID...)
		buf = append(buf, '#')
		prefix := len(buf)
		for i := 0; i < m.VirtualNodes; i++ {
			buf = strconv.AppendInt(buf[:prefix], int64(i), 10)
			pts = append(pts, point{hash: pointHash(buf), owner: owner})
		}
		owner++
	}
	slices.SortFunc(pts, func(a, b point) int {
		if c := cmp.Compare(a.hash, b.hash); c != 0 {
			return c
		}
		return cmp.Compare(a.owner, b.owner)
	})

	r.points = make([]uint64, len(pts))
	r.owners = make([]int32, len(pts))
	for i, p := range pts {
		r.points[i] = p.hash
		r.owners[i] = p.owner
	}
	return r
}

// PreferenceList appends to dst[:0] up to n distinct active member IDs,
// walking clockwise from KeyHash(tenant, key), skipping repeats and inactive
// members, and returns the extended slice.
//
// The result has min(n, r.ActiveCount()) entries; it is empty when n <= 0 or
// no member is active. The first entry is the key's primary. It does not
// allocate when cap(dst) >= min(n, r.ActiveCount()); otherwise it allocates
// a new slice once. The returned strings are shared with the ring and may be
// kept.
func (r *Ring) PreferenceList(tenant, key string, n int, dst []string) []string {
	return r.PreferenceListHash(KeyHash(tenant, key), n, dst)
}

// PreferenceListHash is PreferenceList for a key whose ring position h has
// already been computed with KeyHash.
func (r *Ring) PreferenceListHash(h uint64, n int, dst []string) []string {
	want := min(n, len(r.active))
	if want <= 0 {
		return dst[:0]
	}
	if cap(dst) < want {
		dst = make([]string, 0, want)
	} else {
		dst = dst[:0]
	}

	// First point at or clockwise after h; past the end wraps to 0.
	i, _ := slices.BinarySearch(r.points, h)
	if i == len(r.points) {
		i = 0
	}

	if len(r.active) <= 256 {
		// Track collected members in a stack bitset.
		var seen [4]uint64
		for {
			o := r.owners[i]
			if seen[o>>6]&(1<<(o&63)) == 0 {
				seen[o>>6] |= 1 << (o & 63)
				dst = append(dst, r.active[o])
				if len(dst) == want {
					return dst
				}
			}
			if i++; i == len(r.points) {
				i = 0
			}
		}
	}

	// Many active members: compare against what was collected. IDs in dst
	// come from r.active, so equal IDs share their backing array and the
	// comparison short-circuits.
	for {
		id := r.active[r.owners[i]]
		if !slices.Contains(dst, id) {
			dst = append(dst, id)
			if len(dst) == want {
				return dst
			}
		}
		if i++; i == len(r.points) {
			i = 0
		}
	}
}

// Members returns a copy of the ring's members, active or not, sorted by ID,
// with duplicates and empty IDs removed as New did, and VirtualNodes set to
// the effective count (DefaultVirtualNodes where it was <= 0). The caller owns
// the returned slice.
func (r *Ring) Members() []Member {
	return slices.Clone(r.members)
}

// ActiveCount returns the number of active members, which is the longest
// preference list the ring can produce.
func (r *Ring) ActiveCount() int { return len(r.active) }

// Len returns the number of members, active or not.
func (r *Ring) Len() int { return len(r.members) }

// Owns reports whether a member with this id exists, active or not.
func (r *Ring) Owns(id string) bool {
	_, ok := slices.BinarySearchFunc(r.members, id, func(m Member, id string) int {
		return cmp.Compare(m.ID, id)
	})
	return ok
}

// Shares returns, for each active member, the fraction of the 64-bit hash
// space for which it is the first entry of the preference list. The fractions
// sum to 1 (up to float64 rounding) when any member is active; the map is
// empty otherwise. Every active member has an entry, possibly 0.
//
// Shares is meant for an operator's status view; it costs O(points) and
// allocates a new map, which the caller owns.
func (r *Ring) Shares() map[string]float64 {
	shares := make(map[string]float64, len(r.active))
	for _, id := range r.active {
		shares[id] = 0
	}
	if len(r.points) == 0 {
		return shares
	}
	// Point i is the first point at or after every h in (points[i-1],
	// points[i]], an arc of points[i]-points[i-1] hashes. Point 0's arc wraps
	// around: (points[last], 2^64) plus [0, points[0]], i.e. points[0] -
	// points[last] mod 2^64 hashes, or the whole space when that is 0 (all
	// points equal, so every hash maps to point 0).
	//
	// Arcs are summed exactly in uint64. The arcs total 2^64, so a member's
	// sum overflows only when it is exactly 2^64: it owns everything.
	arcs := make([]uint64, len(r.active))
	whole := int32(-1)
	add := func(o int32, d uint64) {
		var carry uint64
		arcs[o], carry = bits.Add64(arcs[o], d, 0)
		if carry != 0 {
			whole = o
		}
	}
	if d := r.points[0] - r.points[len(r.points)-1]; d == 0 {
		whole = r.owners[0]
	} else {
		add(r.owners[0], d)
	}
	for i := 1; i < len(r.points); i++ {
		add(r.owners[i], r.points[i]-r.points[i-1])
	}
	if whole >= 0 {
		shares[r.active[whole]] = 1
		return shares
	}
	for o, a := range arcs {
		shares[r.active[o]] = float64(a) / 0x1p64
	}
	return shares
}
