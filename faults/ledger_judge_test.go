package faults

import (
	"errors"
	"testing"
)

// TestLedgerJudge feeds the membership checker right and wrong answers:
// it must flag a lost overwrite, a resurrected delete, a lost put and a
// phantom, and accept what lww allows.
func TestLedgerJudge(t *testing.T) {
	fail := errors.New("unavailable")
	l := newLedger()
	// k: put #0 acked, put #1 acked, delete #2 acked, put #3 failed, put #4 in flight.
	for i, err := range []error{nil, nil, nil, fail} {
		idx := l.begin("k", i == 2)
		l.end("k", idx, err)
	}
	l.begin("k", false)
	// d: put #0 acked, delete #1 failed.
	l.end("d", l.begin("d", false), nil)
	l.end("d", l.begin("d", true), fail)
	// e: put #0 acked, delete #1 failed, put #2 acked.
	l.end("e", l.begin("e", false), nil)
	l.end("e", l.begin("e", true), fail)
	l.end("e", l.begin("e", false), nil)

	val := func(key string, idx int) observed { return observed{found: true, value: opValue(key, idx)} }
	for _, tc := range []struct {
		name string
		key  string
		a    int // last acknowledged write when the read began
		got  observed
		want string
	}{
		{"acknowledged value", "k", 1, val("k", 1), readOK},
		{"newer overlapping write", "k", 1, val("k", 4), readOK},
		{"acknowledged delete", "k", 2, observed{}, readOK},
		{"delete not yet acknowledged at the start", "k", 1, observed{}, readOK},
		{"unacknowledged later put", "k", 2, val("k", 3), readOK},
		{"lost overwrite", "k", 1, val("k", 0), readStale},
		{"resurrected delete", "k", 2, val("k", 1), readStale},
		{"failed later delete", "d", 0, observed{}, readOK}, // delete #1 failed: it may have taken effect
		{"failed older delete", "e", 2, observed{}, readAmbiguous},
		{"nothing acknowledged yet", "k", -1, observed{}, readOK},
		{"value never written", "k", 1, observed{found: true, value: "k#9"}, readPhantom},
		{"value of another key", "k", 1, val("d", 0), readPhantom},
		{"a delete's index as a value", "k", 1, val("k", 2), readPhantom},
		{"siblings under lww", "k", 1, observed{found: true, value: opValue("k", 1), siblings: 2}, readPhantom},
		{"unknown key", "x", -1, observed{}, readPhantom},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, expected := l.judge(tc.key, tc.a, tc.got)
			if got != tc.want {
				t.Fatalf("judge(%s, %d, %s) = %s (%s), want %s", tc.key, tc.a, tc.got, got, expected, tc.want)
			}
			if got != readOK && expected == "" {
				t.Errorf("verdict %s says nothing of what was expected", got)
			}
		})
	}

	l2 := newLedger()
	l2.end("p", l2.begin("p", false), nil)
	if v, _ := l2.judge("p", 0, observed{}); v != readLost {
		t.Errorf("a put acknowledged before the read, then not found: %s, want %s", v, readLost)
	}
	if a, _ := l.counts(); a != 3 {
		t.Errorf("counts: %d keys acknowledged, want 3", a)
	}
}
