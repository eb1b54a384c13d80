package coordinator

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func TestRestampDecision(t *testing.T) {
	ctx := vclock.Dot{Counter: 100, Actor: "client-read"}
	lost := func(c uint64, a string) *lostWrite {
		return &lostWrite{node: "node-1", by: vclock.Dot{Counter: c, Actor: a}}
	}
	cases := []struct {
		name    string
		floor   vclock.Dot
		lost    *lostWrite
		within  bool
		attempt int
		want    vclock.Dot
		err     string // substring of the 503's message; "" = re-stamp
	}{
		{"blind write lost: stamp past the winner", vclock.Dot{}, lost(500, "x"), true, 0, vclock.Dot{Counter: 500, Actor: "x"}, ""},
		{"with a context, lost to a newer dot", ctx, lost(500, "x"), true, 0, vclock.Dot{Counter: 500, Actor: "x"}, ""},
		{"same counter, greater actor", vclock.Dot{Counter: 500, Actor: "a"}, lost(500, "b"), true, 0, vclock.Dot{Counter: 500, Actor: "b"}, ""},
		{"floor already above the winner stays", vclock.Dot{Counter: 900, Actor: "y"}, lost(500, "x"), true, 0, vclock.Dot{Counter: 900, Actor: "y"}, ""},
		{"last re-stamp allowed", ctx, lost(500, "x"), true, maxRestamps - 1, vclock.Dot{Counter: 500, Actor: "x"}, ""},
		{"retries exhausted", ctx, lost(500, "x"), true, maxRestamps, ctx, "kept receiving newer versions"},
		{"winner beyond the skew", ctx, lost(vclock.CounterAt(time.Now().AddDate(1, 0, 0)), "rogue"), false, 0, ctx, "beyond the allowed clock skew"},
	}
	for _, tc := range cases {
		got, err := restamp(tc.floor, tc.lost, tc.within, tc.attempt)
		if tc.err == "" {
			if err != nil || got != tc.want {
				t.Errorf("%s: restamp = %v, %v; want %v", tc.name, got, err, tc.want)
			}
			continue
		}
		var e *subjects.Error
		if !errors.As(err, &e) || e.Kind != subjects.KindUnavailable || !strings.Contains(e.Message, tc.err) {
			t.Errorf("%s: restamp error %v, want unavailable containing %q", tc.name, err, tc.err)
		}
		if got != tc.floor {
			t.Errorf("%s: floor moved to %v on error", tc.name, got)
		}
	}
}

// A dot stamped past the restamp floor beats the version the write lost
// to, whatever the actors.
func TestRestampedDotBeatsTheWinner(t *testing.T) {
	now := time.Now()
	h := vclock.NewHLC(func() time.Time { return now })
	winner := vclock.Dot{Counter: vclock.CounterAt(now.Add(10 * time.Second)), Actor: "zzzz"}
	floor, err := restamp(vclock.Dot{}, &lostWrite{by: winner}, h.ObserveBounded(winner.Counter, maxClockSkew), 0)
	if err != nil {
		t.Fatal(err)
	}
	d, err := h.TryStamp("aaaa", floor)
	if err != nil || d.Compare(winner) <= 0 {
		t.Fatalf("re-stamped dot %v (%v) does not beat %v", d, err, winner)
	}
}

func TestTenantClocksAreIndependent(t *testing.T) {
	now := time.Now()
	cl := newTenantClocks(func() time.Time { return now })
	a, b := cl.get("a"), cl.get("b")
	if a == b || cl.get("a") != a {
		t.Fatal("want one clock per tenant, stable across calls")
	}
	a.Observe(vclock.CounterAt(now.Add(4 * time.Minute)))
	if got := b.Next(); got >= vclock.CounterAt(now.Add(time.Second)) {
		t.Fatalf("tenant b's clock moved with a's: %s", vclock.Physical(got))
	}
}

func TestSkewLogOncePerMinute(t *testing.T) {
	var l skewLog
	t0 := time.Unix(1_700_000_000, 0)
	steps := []struct {
		at   time.Duration
		want bool
	}{{0, true}, {time.Second, false}, {59 * time.Second, false}, {time.Minute, true}, {time.Minute + time.Second, false}, {3 * time.Minute, true}}
	for _, s := range steps {
		if got := l.allow(t0.Add(s.at)); got != s.want {
			t.Fatalf("at +%s: allow = %v, want %v", s.at, got, s.want)
		}
	}
}
