package coordinator

import "testing"

func TestRequired(t *testing.T) {
	cases := []struct {
		level string
		rf    int
		want  int
	}{
		{"one", 1, 1}, {"quorum", 1, 1}, {"all", 1, 1},
		{"one", 2, 1}, {"quorum", 2, 2}, {"all", 2, 2},
		{"one", 3, 1}, {"quorum", 3, 2}, {"all", 3, 3},
		{"quorum", 4, 3}, {"quorum", 5, 3}, {"all", 5, 5},
		{"quorum", 6, 4}, {"quorum", 7, 4}, {"all", 7, 7},
		{"two", 3, 0}, {"", 3, 0}, {"quorum", 0, 0},
	}
	for _, c := range cases {
		if got := Required(c.level, c.rf); got != c.want {
			t.Errorf("Required(%q, %d) = %d, want %d", c.level, c.rf, got, c.want)
		}
	}
}

// TestTallyExhaustive walks every order of outcomes for every level and
// replication factor and checks that the tally decides exactly when the
// level is met or has become unreachable, never both.
func TestTallyExhaustive(t *testing.T) {
	for rf := 1; rf <= 7; rf++ {
		for _, level := range []string{"one", "quorum", "all"} {
			req := Required(level, rf)
			for mask := 0; mask < 1<<rf; mask++ { // bit i set = replica i acks
				tl := tally{required: req, total: rf}
				decided, success := false, false
				for i := 0; i < rf && !decided; i++ {
					if mask&(1<<i) != 0 {
						decided, success = tl.ack(), true
					} else if tl.fail() {
						decided, success = true, false
					}
				}
				acks := 0
				for i := 0; i < rf; i++ {
					if mask&(1<<i) != 0 {
						acks++
					}
				}
				if !decided {
					t.Fatalf("rf=%d %s mask=%b: undecided after all replies", rf, level, mask)
				}
				if success != (acks >= req) {
					t.Fatalf("rf=%d %s mask=%b: success=%v with %d acks of %d required", rf, level, mask, success, acks, req)
				}
				if tl.met() && tl.impossible() {
					t.Fatalf("rf=%d %s mask=%b: met and impossible at once", rf, level, mask)
				}
			}
		}
	}
}
