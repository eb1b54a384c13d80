package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
)

// statusReport is what `quorumkv status` shows; --json prints it as is.
type statusReport struct {
	NATS         string              `json:"nats"`
	Nodes        []nodeStatus        `json:"nodes"`
	Coordinators []coordinatorStatus `json:"coordinators"`
	Tenants      int                 `json:"tenants"`
	// Repair is the repair stream's backlog and dead letters; nil when it
	// could not be read (no coordinator or worker created it yet).
	Repair      *repair.Status `json:"repair,omitempty"`
	RepairError string         `json:"repair_error,omitempty"`
}

type nodeStatus struct {
	subjects.Node
	RingShare float64 `json:"ring_share"` // fraction of partitions (so of keys) this node is first replica for
}

type coordinatorStatus struct {
	ID       string `json:"id"`
	Actor    string `json:"actor"`
	Version  string `json:"version"`
	Requests int    `json:"requests"`
	Errors   int    `json:"errors"`
}

func runStatus(args []string) error {
	fs := newFlags("status", "", "Show the storage nodes (state, ring share), the running coordinators, the tenants and the repair backlog.")
	var a adminFlags
	a.register(fs)
	wait := fs.Duration("wait", 500*time.Millisecond, "how long to collect answers from coordinators")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	ad, nc, err := a.admin()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := collectStatus(ctx, nc, ad, *wait)
	if err != nil {
		return err
	}
	if a.json {
		return printJSON(rep)
	}
	fmt.Printf("NATS: %s\n\n", rep.NATS)
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NODE\tSTATUS\tPRIMARY SHARE\tREPLICAS (RF 3)\tLAST SEEN")
	for _, n := range rep.Nodes {
		replicas := 0
		if n.Share != nil {
			replicas = n.Share.Replicas
		}
		fmt.Fprintf(w, "%s\t%s\t%.1f%%\t%d\t%s ago\n", n.ID, n.Status, 100*n.RingShare, replicas, time.Since(n.LastSeen).Round(time.Second))
	}
	fmt.Fprintln(w)
	for _, n := range rep.Nodes {
		fmt.Fprintln(w, aeLine(n.Node, time.Now()))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "COORDINATOR\tACTOR\tVERSION\tREQUESTS\tERRORS")
	for _, c := range rep.Coordinators {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\n", c.ID, c.Actor, c.Version, c.Requests, c.Errors)
	}
	fmt.Fprintf(w, "\ntenants: %d\n", rep.Tenants)
	if r := rep.Repair; r != nil {
		fmt.Fprintf(w, "repair:  backlog %d, dead letters %d, %d workers (quorumkv repair status for more)\n", r.Backlog, r.Dead, len(r.Workers))
	} else {
		fmt.Fprintf(w, "repair:  unknown (%s)\n", rep.RepairError)
	}
	return w.Flush()
}

func collectStatus(ctx context.Context, nc *nats.Conn, ad *client.Admin, wait time.Duration) (*statusReport, error) {
	rep := &statusReport{NATS: nc.ConnectedUrlRedacted()}
	nodes, err := ad.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	// Every partition has one primary, so the primaries add up to Q.
	q := 0
	for _, n := range nodes {
		if n.Share != nil {
			q += n.Share.Primaries
		}
	}
	for _, n := range nodes {
		ns := nodeStatus{Node: n}
		if n.Share != nil && q > 0 {
			ns.RingShare = float64(n.Share.Primaries) / float64(q)
		}
		rep.Nodes = append(rep.Nodes, ns)
	}
	tenants, err := ad.ListTenants(ctx)
	if err != nil {
		return nil, err
	}
	rep.Tenants = len(tenants)

	// Every coordinator answers micro's $SRV.STATS discovery request.
	subject, err := micro.ControlSubject(micro.StatsVerb, subjects.ServiceName, "")
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe for coordinator stats: %w", err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, fmt.Errorf("ask coordinators for stats: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break // timeout: everyone who answers in time has
		}
		var st micro.Stats
		if json.Unmarshal(m.Data, &st) != nil {
			continue
		}
		cs := coordinatorStatus{ID: st.ID, Actor: st.Metadata["actor"], Version: st.Version}
		for _, e := range st.Endpoints {
			cs.Requests += e.NumRequests
			cs.Errors += e.NumErrors
		}
		rep.Coordinators = append(rep.Coordinators, cs)
	}
	sort.Slice(rep.Coordinators, func(i, j int) bool { return rep.Coordinators[i].ID < rep.Coordinators[j].ID })
	if st, err := repair.ReadStatus(ctx, nc, wait); err != nil {
		rep.RepairError = err.Error()
	} else {
		rep.Repair = st
	}
	return rep, nil
}

// aeLine is the line status prints for a node's anti-entropy: when its
// last full pass ended, the oldest partition pass, and the figures since
// the node started, as of its last heartbeat the answering coordinator
// saw.
func aeLine(n subjects.Node, now time.Time) string {
	a := n.AntiEntropy
	if a == nil {
		return fmt.Sprintf("anti-entropy %s: not reported (off, an older node, or no heartbeat since the coordinator started)", n.ID)
	}
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	}
	return fmt.Sprintf("anti-entropy %s: last pass %s, oldest partition pass %s; %d exchanges, %d keys repaired, %.1f MiB, %d errors",
		n.ID, ago(a.LastPass), ago(a.OldestPartitionPass), a.Exchanges, a.KeysRepaired, float64(a.Bytes)/(1<<20), a.Errors)
}
