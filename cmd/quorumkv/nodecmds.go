package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// The node verbs: list, the lifecycle changes (drain, join, replace,
// remove) with --wait, and dump.

// Node statuses as node list shows them (DESIGN.md §3).
const (
	statusStandby = "standby"
	statusJoining = "joining"
	statusActive  = "active"
	statusLeaving = "leaving"
	statusLeft    = "left"
	statusDown    = "down" // computed by node list: silent for three heartbeats
)

func runNode(args []string) error {
	const verbs = "list|drain|join|replace|remove|dump"
	verb, err := verbArg(args, "node", verbs, "[NODE] [NEW]")
	if err != nil {
		return err
	}
	fs := newFlags("node "+verb, "NODE [NEW]", "Manage storage nodes. "+
		"drain makes a node leaving: its partitions stream to their next owners, and it is left when it owns nothing; "+
		"join brings a standby (storage --join=false) or leaving node into the placement, or re-admits a removed id; "+
		"replace DEAD NEW gives a down node's partitions to a standby node, which streams them from the surviving replicas; "+
		"remove forgets a left node whose process is stopped (--force: a down node in any status, losing writes only it held), "+
		"and its id is then refused at registration until join re-admits it; "+
		"dump lists what one node stores for a tenant, read from the node itself.")
	var a adminFlags
	a.register(fs)
	tenant := fs.String("tenant", "default", "dump: the tenant to list")
	limit := fs.Int("limit", 0, "dump: keys to list at most (0 = all)")
	force := fs.Bool("force", false, "remove: remove a node that is down even though it is not left; writes acknowledged only by it are lost")
	wait := fs.Bool("wait", false, "drain, join, replace: wait until the node is left (drain) or active (join, replace), showing progress on stderr")
	stall := fs.Duration("stall", 2*time.Minute, "with --wait: give up when the transfer makes no progress for this long")
	poll := fs.Duration("poll", time.Second, "with --wait: how often to ask for progress")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	if *stall <= 0 || *poll <= 0 {
		return usagef("--stall and --poll must be positive")
	}
	want := 1
	switch verb {
	case "list":
		want = 0
	case "replace":
		want = 2
	}
	if len(pos) != want {
		return usagef("node %s takes %d operand(s): quorumkv node %s [flags] %s", verb, want, verb,
			map[int]string{0: "", 1: "NODE", 2: "DEAD NEW"}[want])
	}
	ad, nc, err := a.admin()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := signalContext()
	defer cancel()
	w := waiter{ad: ad, out: os.Stderr, tty: isTerminal(os.Stderr), stall: *stall, poll: *poll}
	switch verb {
	case "list":
		ns, err := ad.ListNodes(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return printJSON(subjects.NodeList{Nodes: ns})
		}
		return printNodes(false, ns...)
	case "drain":
		n, err := ad.DrainNode(ctx, pos[0])
		if err != nil {
			return err
		}
		if *wait {
			return w.wait(ctx, pos[0], statusLeft)
		}
		return printNodes(a.json, *n)
	case "join":
		n, err := ad.Join(ctx, pos[0])
		if err != nil {
			return err
		}
		if n == nil {
			fmt.Printf("re-admitted node %s: it registers at its next heartbeat as joining\n", pos[0])
			if !*wait {
				return nil
			}
		}
		if *wait {
			return w.wait(ctx, pos[0], statusActive)
		}
		return printNodes(a.json, *n)
	case "replace":
		n, err := ad.Replace(ctx, pos[0], pos[1])
		if err != nil {
			return err
		}
		if *wait {
			return w.wait(ctx, pos[1], statusActive)
		}
		return printNodes(a.json, *n)
	case "remove":
		warning, err := ad.Remove(ctx, pos[0], *force)
		if err != nil {
			return err
		}
		if warning != "" {
			fmt.Fprintf(os.Stderr, "warning: %s\n", warning)
		}
		fmt.Printf("removed node %s (its id is refused until 'quorumkv node join %s')\n", pos[0], pos[0])
		return nil
	case "dump":
		return dumpNode(ctx, ad, a.json, pos[0], *tenant, *limit)
	}
	return usagef("unknown node verb %q: use %s", verb, verbs)
}

func dumpNode(ctx context.Context, ad *client.Admin, asJSON bool, node, tenant string, limit int) error {
	var entries []subjects.DumpEntry
	if limit > 0 {
		d, err := ad.Dump(ctx, node, tenant, "", limit)
		if err != nil {
			return err
		}
		entries = d.Entries
	} else {
		var err error
		if entries, err = ad.DumpAll(ctx, node, tenant); err != nil {
			return err
		}
	}
	if asJSON {
		return printJSON(subjects.DumpReply{NodeID: node, Entries: entries})
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tVALUE\tWRITTEN\tBY")
	for _, e := range entries {
		v := strconv.Quote(string(e.Value))
		switch {
		case e.Tombstone:
			v = "(deleted)"
		case e.DVV != nil && e.DVV.DeletedAt(time.Now().UnixMilli()), e.DVV == nil && e.Expires != 0 && time.Now().UnixMilli() >= e.Expires:
			v = "(expired)"
		}
		if len(v) > 60 {
			v = v[:57] + "..."
		}
		written := vclock.Physical(e.Counter).UTC().Format("2006-01-02T15:04:05.000Z")
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", strconv.Quote(e.Key), v, written, e.Actor)
	}
	return w.Flush()
}

func printNodes(asJSON bool, ns ...subjects.Node) error {
	if asJSON {
		if len(ns) == 1 {
			return printJSON(ns[0])
		}
		return printJSON(subjects.NodeList{Nodes: ns})
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tSTATUS\tSHARE\tPRIMARIES\tTRANSFER\tPROTO\tEPOCH\tLAST SEEN")
	for _, n := range ns {
		var sh subjects.NodeShare
		if n.Share != nil {
			sh = *n.Share
		}
		proto := max(n.Protocol, 1)
		fmt.Fprintf(w, "%s\t%s\t%.1f%%\t%d\t%s\t%d\t%016x\t%s ago\n", n.ID, n.Status, 100*sh.Fraction, sh.Primaries,
			transferColumn(n.Transfer), proto, n.Epoch, time.Since(n.LastSeen).Round(time.Second))
	}
	return w.Flush()
}

// transferColumn is node list's TRANSFER: "done/total  bytes  rate", or
// "-" when the node receives nothing.
func transferColumn(t *subjects.TransferStatus) string {
	if t != nil && t.RebuildTotal > 0 && t.RebuildDone < t.RebuildTotal {
		return fmt.Sprintf("rebuilding %d/%d  %s", t.RebuildDone, t.RebuildTotal, byteSize(float64(t.Bytes)))
	}
	if t == nil || t.PartitionsTotal == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d  %s  %s/s", t.PartitionsDone, t.PartitionsTotal, byteSize(float64(t.Bytes)), byteSize(t.RateBytes))
}

// byteSize formats n bytes with a binary unit.
func byteSize(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", n, units[i])
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// errWait is what a --wait that cannot finish wraps (with a reason).
var errWait = errors.New("cannot finish")

// waiter polls node list and the placement map until a node reaches a
// status, drawing progress on out: a bar redrawn in place on a terminal,
// a plain line per change otherwise.
type waiter struct {
	ad    *client.Admin
	out   io.Writer
	tty   bool
	stall time.Duration
	poll  time.Duration
	now   func() time.Time // time.Now when nil
}

// progress is one poll's view of a transition.
type progress struct {
	status    string   // the node's status as node list shows it
	pending   int      // (partition, receiver) pairs not reported done
	receivers []string // nodes still receiving
	down      []string // receivers node list shows down
	inTarget  bool     // the node is in the map's target
	bytes     int64    // the receivers' reported bytes
	rate      float64  // and rate, bytes/s
}

func (w *waiter) clock() time.Time {
	if w.now != nil {
		return w.now()
	}
	return time.Now()
}

// observe takes one poll.
func (w *waiter) observe(ctx context.Context, id string) (progress, error) {
	var pr progress
	ns, err := w.ad.ListNodes(ctx)
	if err != nil {
		return pr, err
	}
	m, err := w.ad.Placement(ctx)
	if err != nil {
		return pr, err
	}
	byID := map[string]subjects.Node{}
	for _, n := range ns {
		byID[n.ID] = n
	}
	n, ok := byID[id]
	if !ok {
		return pr, fmt.Errorf("node %s: %w: it is no longer registered (removed?)", id, errWait)
	}
	pr.status = n.Status
	pr.inTarget = m.Partitions() > 0 && slices.Contains(m.TargetNodes(), id)
	if m.Partitions() == 0 {
		return pr, nil
	}
	for _, r := range m.Nodes() {
		ps := m.Receiving(r, nil)
		if len(ps) == 0 {
			continue
		}
		pr.pending += len(ps)
		pr.receivers = append(pr.receivers, r)
		if rn, ok := byID[r]; ok {
			if rn.Status == statusDown {
				pr.down = append(pr.down, r)
			}
			if t := rn.Transfer; t != nil {
				pr.bytes += t.Bytes
				pr.rate += t.RateBytes
			}
		}
	}
	return pr, nil
}

// wait polls until node id shows goal; it fails (errWait) when the node
// cannot get there: a drained node the target still names (a tenant's RF
// above the nodes left), a node whose status moved away from the goal, or
// no progress for w.stall.
func (w *waiter) wait(ctx context.Context, id, goal string) error {
	var (
		most       int // the most pending pairs seen: the bar's total
		last       = -1
		lastChange = w.clock()
		stuck      int // polls the drained node stayed in the target
		line       string
	)
	defer func() {
		if w.tty && line != "" {
			fmt.Fprintln(w.out)
		}
	}()
	for {
		pr, err := w.observe(ctx, id)
		if err != nil {
			return err
		}
		if pr.status == goal {
			line = w.draw(id, goal, pr, most, line)
			if !w.tty {
				fmt.Fprintf(w.out, "node %s is %s\n", id, goal)
			}
			return nil
		}
		switch {
		case goal == statusLeft && pr.status == statusLeaving && pr.inTarget:
			if stuck++; stuck >= 3 {
				return fmt.Errorf("node %s: %w: the placement target still includes it; a tenant's replication factor exceeds the nodes that would remain", id, errWait)
			}
		case goal == statusLeft && (pr.status == statusJoining || pr.status == statusActive || pr.status == statusStandby):
			return fmt.Errorf("node %s: %w: it is %s again (joined by another change?)", id, errWait, pr.status)
		case goal == statusActive && (pr.status == statusLeaving || pr.status == statusLeft || pr.status == statusStandby):
			return fmt.Errorf("node %s: %w: it is %s (drained by another change?)", id, errWait, pr.status)
		}
		most = max(most, pr.pending)
		if pr.pending != last {
			last, lastChange = pr.pending, w.clock()
		} else if w.clock().Sub(lastChange) > w.stall {
			why := "no receiver reported progress"
			if goal == statusLeft && pr.pending == 0 && pr.status == statusLeaving {
				why = "node " + id + " has not reported its handoff done (it pushes what it still holds to the owners after its --handoff-grace)"
			}
			if len(pr.down) > 0 {
				why = "receiver(s) " + strings.Join(pr.down, ", ") + " down"
			} else if pr.status == statusDown {
				why = "node " + id + " is down"
			}
			return fmt.Errorf("node %s: %w: %s for longer than --stall %s (%d partition transfers pending)", id, errWait, why, w.stall, pr.pending)
		}
		line = w.draw(id, goal, pr, most, line)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(w.poll):
		}
	}
}

// draw shows pr and returns the line drawn; on a terminal it redraws the
// bar in place, otherwise it prints a line only when it changed.
func (w *waiter) draw(id, goal string, pr progress, most int, prev string) string {
	done := most - pr.pending
	if pr.status == goal || most == 0 {
		done, most = max(most, 1), max(most, 1)
	}
	const width = 30
	fill := width * done / most
	line := fmt.Sprintf("%s %s → %s [%s%s] %d/%d partitions  %s  %s/s", id, pr.status, goal,
		strings.Repeat("#", fill), strings.Repeat(".", width-fill), done, most, byteSize(float64(pr.bytes)), byteSize(pr.rate))
	if w.tty {
		fmt.Fprintf(w.out, "\r%s\033[K", line)
		return line
	}
	if line != prev {
		fmt.Fprintln(w.out, line)
	}
	return line
}
