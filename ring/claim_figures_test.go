package ring

import (
	"fmt"
	"strings"
	"testing"
)

// TestClaimFigures prints the balance and movement figures that
// docs/PERFORMANCE.md quotes (go test -run TestClaimFigures -v ./ring/).
// Movement ratios are moved / ideal, the worst over RF 1..R: ideal is
// Q·r/(N+1) when a node joins N and the departing node's count when one of
// N leaves.
func TestClaimFigures(t *testing.T) {
	q := DefaultPartitions
	var b strings.Builder
	fmt.Fprintf(&b, "Q=%d\n%4s %12s %12s %12s %12s\n", q, "N", "max dev", "max dev %", "join ratio", "leave ratio")
	for n := 3; n <= 64; n++ {
		m := mustClaim(t, nil, claimNodes(seq(1, n)...), q)
		abs, rel := balanceDev(m)
		joined := mustClaim(t, m, claimNodes(seq(1, n+1)...), q)
		join := 0.0
		for r := 1; r <= min(m.Replicas(), joined.Replicas()); r++ {
			ideal := float64(q*r) / float64(n+1)
			join = max(join, float64(moved(m, joined, r))/ideal)
		}
		left := mustClaim(t, m, claimNodes(seq(2, n)...), q)
		leave := 0.0
		for r := 1; r <= min(m.Replicas(), left.Replicas()); r++ {
			ideal := float64(m.Load(r)["node-1"])
			leave = max(leave, float64(moved(m, left, r))/ideal)
		}
		fmt.Fprintf(&b, "%4d %12.2f %11.2f%% %12.3f %12.3f\n", n, abs, 100*rel, join, leave)
	}
	t.Log("\n" + b.String())
}
