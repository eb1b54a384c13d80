package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
)

// nodeCLI is a coordinator without storage processes: the test registers
// nodes (keeping the live ones heartbeating) and plays the receivers by
// sending their transfer reports, so the node verbs run against every
// lifecycle step.
type nodeCLI struct {
	t     *testing.T
	admin *client.Admin
	out   string // the file stdout and stderr go to

	mu    sync.Mutex
	alive map[string]bool
}

func startNodeCLI(t *testing.T) *nodeCLI {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler),
		Nodes: -1, DefaultTenant: "-", Coordinator: coordinator.Config{NodeHeartbeat: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	t.Setenv("QUORUMKV_NATS", c.URL)
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	l := &nodeCLI{t: t, admin: client.NewAdmin(nc), alive: map[string]bool{}, out: filepath.Join(t.TempDir(), "out")}
	f, err := os.Create(l.out)
	if err != nil {
		t.Fatal(err)
	}
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = f, f
	hbCtx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-hbCtx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			l.mu.Lock()
			var ids []string
			for id := range l.alive {
				ids = append(ids, id)
			}
			l.mu.Unlock()
			// A node the map names nowhere reports its handoff done, as a
			// storage node holding nothing does (a leaving node becomes
			// left only then).
			m, err := l.admin.Placement(hbCtx)
			for _, id := range ids {
				var st *subjects.TransferStatus
				if err == nil && m.Partitions() > 0 && !m.HasNode(id) {
					st = &subjects.TransferStatus{HandoffDone: m.Version()}
				}
				_, _ = l.admin.Register(hbCtx, subjects.NodeRequest{NodeID: id, Epoch: 1, Protocol: 2, Transfer: st})
			}
		}
	}()
	t.Cleanup(func() { stop(); <-done; os.Stdout, os.Stderr = stdout, stderr; f.Close() })
	return l
}

func (l *nodeCLI) register(id string, hold bool) {
	l.t.Helper()
	if _, err := l.admin.Register(context.Background(), subjects.NodeRequest{NodeID: id, Epoch: 1, Protocol: 2, Hold: hold}); err != nil {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	l.alive[id] = true
	l.mu.Unlock()
}

func (l *nodeCLI) kill(id string) {
	l.mu.Lock()
	delete(l.alive, id)
	l.mu.Unlock()
}

// transfer reports every receiving partition done, once.
func (l *nodeCLI) transfer() (moving bool) {
	l.t.Helper()
	ctx := context.Background()
	m, err := l.admin.Placement(ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, id := range m.Nodes() {
		ps := m.Receiving(id, nil)
		if len(ps) == 0 {
			continue
		}
		moving = true
		st := &subjects.TransferStatus{MapVersion: m.Version(), PartitionsDone: len(ps), PartitionsTotal: len(ps), Bytes: 1 << 20, RateBytes: 1 << 19}
		if _, err := l.admin.ReportTransfer(ctx, subjects.TransferReport{NodeID: id, MapVersion: m.Version(), Done: ps, Status: st}); err != nil {
			l.t.Fatal(err)
		}
	}
	return moving
}

func (l *nodeCLI) settle() {
	for range 20 {
		if !l.transfer() {
			return
		}
	}
	l.t.Fatal("partitions still move")
}

// runWhileTransferring runs the CLI with args while a goroutine plays the
// receivers, and returns its exit code.
func (l *nodeCLI) runWhileTransferring(args ...string) int {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			l.transfer()
		}
	}()
	code := run(args)
	close(stop)
	<-done
	return code
}

func (l *nodeCLI) output() string {
	b, err := os.ReadFile(l.out)
	if err != nil {
		l.t.Fatal(err)
	}
	return string(b)
}

// TestNodeVerbs runs the node verbs in-process: list (table and JSON),
// drain/join/replace --wait to their end, remove --force with its warning,
// and the exit code of each refusal.
func TestNodeVerbs(t *testing.T) {
	l := startNodeCLI(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		l.register(id, false)
	}
	l.settle()
	if code := run([]string{"tenant", "create", "--rf", "3", "t"}); code != exitOK {
		t.Fatalf("tenant create: exit %d\n%s", code, l.output())
	}

	// Refusals and their exit codes.
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"node", "drain", "ghost"}, exitNotFound},
		{[]string{"node", "remove", "n1"}, exitConflict},
		{[]string{"node", "remove", "--force", "n1"}, exitConflict},
		{[]string{"node", "replace", "n1"}, exitUsage},
		{[]string{"node", "replace", "n1", "n2"}, exitConflict},
		{[]string{"node", "join", "ghost"}, exitNotFound},
		{[]string{"node", "drain", "--stall", "0s", "n1"}, exitUsage},
	} {
		if got := run(tc.args); got != tc.want {
			t.Errorf("quorumkv %q: exit %d, want %d", tc.args, got, tc.want)
		}
	}

	// drain --wait: plain progress lines (stderr is a file), exit 0 at left.
	if code := l.runWhileTransferring("node", "drain", "--wait", "--poll", "50ms", "n4"); code != exitOK {
		t.Fatalf("drain --wait: exit %d\n%s", code, l.output())
	}
	if out := l.output(); !strings.Contains(out, "node n4 is left") || !strings.Contains(out, "partitions") || strings.Contains(out, "\r") {
		t.Fatalf("drain --wait output:\n%s", out)
	}
	// A second drain would leave 2 nodes for RF 3.
	if got := run([]string{"node", "drain", "--wait", "n3"}); got != exitConflict {
		t.Fatalf("drain below RF: exit %d", got)
	}

	// node list --json: statuses, shares, protocol.
	os.Stdout.Truncate(0)
	os.Stdout.Seek(0, 0)
	if code := run([]string{"node", "list", "--json"}); code != exitOK {
		t.Fatalf("node list --json: exit %d", code)
	}
	var list struct {
		Nodes []struct {
			ID       string          `json:"node_id"`
			Status   string          `json:"status"`
			Protocol int             `json:"protocol"`
			Share    json.RawMessage `json:"share"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(l.output()), &list); err != nil {
		t.Fatalf("node list --json: %v\n%s", err, l.output())
	}
	got := map[string]string{}
	for _, n := range list.Nodes {
		got[n.ID] = n.Status
		if n.Protocol != 2 || len(n.Share) == 0 {
			t.Fatalf("node list --json entry %+v", n)
		}
	}
	if got["n4"] != "left" || got["n1"] != "active" || len(got) != 4 {
		t.Fatalf("statuses %v", got)
	}
	os.Stdout.Truncate(0)
	os.Stdout.Seek(0, 0)
	if code := run([]string{"node", "list"}); code != exitOK || !strings.Contains(l.output(), "STATUS") ||
		!strings.Contains(l.output(), "TRANSFER") || !strings.Contains(l.output(), "SHARE") {
		t.Fatalf("node list: exit %d\n%s", code, l.output())
	}

	// join --wait brings a standby node in; it stalls (exit 5) while no
	// receiver reports.
	l.register("n5", true)
	if code := run([]string{"node", "join", "--wait", "--poll", "50ms", "--stall", "300ms", "n5"}); code != exitUnavailable {
		t.Fatalf("join --wait without transfers: exit %d, want %d\n%s", code, exitUnavailable, l.output())
	}
	if !strings.Contains(l.output(), "--stall") {
		t.Fatalf("a stalled wait does not say why:\n%s", l.output())
	}
	if code := l.runWhileTransferring("node", "join", "--wait", "--poll", "50ms", "n5"); code != exitOK {
		t.Fatalf("join --wait: exit %d\n%s", code, l.output())
	}

	// replace --wait onto a standby node, of a node that is down.
	l.register("n6", true)
	l.kill("n2")
	waitDown := time.Now().Add(15 * time.Second)
	for {
		ns, _ := l.admin.ListNodes(context.Background())
		down := false
		for _, n := range ns {
			down = down || (n.ID == "n2" && n.Status == "down")
		}
		if down {
			break
		}
		if time.Now().After(waitDown) {
			t.Fatal("n2 never shows down")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code := l.runWhileTransferring("node", "replace", "--wait", "--poll", "50ms", "n2", "n6"); code != exitOK {
		t.Fatalf("replace --wait: exit %d\n%s", code, l.output())
	}

	// remove --force of a down node warns.
	l.kill("n3")
	time.Sleep(3500 * time.Millisecond)
	os.Stdout.Truncate(0)
	os.Stdout.Seek(0, 0)
	if code := run([]string{"node", "remove", "--force", "n3"}); code != exitOK {
		t.Fatalf("remove --force: exit %d\n%s", code, l.output())
	}
	if !strings.Contains(l.output(), "warning:") || !strings.Contains(l.output(), "lost") {
		t.Fatalf("remove --force printed no warning:\n%s", l.output())
	}
}

// TestAELine: status prints one anti-entropy line per node, saying when
// nothing was reported and when no pass completed yet.
func TestAELine(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		n    subjects.Node
		want string
	}{
		{subjects.Node{ID: "n1"}, "anti-entropy n1: not reported"},
		{subjects.Node{ID: "n2", AntiEntropy: &subjects.AEStatus{Exchanges: 3}}, "anti-entropy n2: last pass never, oldest partition pass never; 3 exchanges, 0 keys repaired, 0.0 MiB, 0 errors"},
		{subjects.Node{ID: "n3", AntiEntropy: &subjects.AEStatus{Exchanges: 9, KeysRepaired: 4, Bytes: 3 << 20, Errors: 1,
			LastPass: now.Add(-90 * time.Second), OldestPartitionPass: now.Add(-5 * time.Minute)}},
			"anti-entropy n3: last pass 1m30s ago, oldest partition pass 5m0s ago; 9 exchanges, 4 keys repaired, 3.0 MiB, 1 errors"},
	} {
		if got := aeLine(tc.n, now); !strings.HasPrefix(got, tc.want) {
			t.Errorf("aeLine(%s) = %q, want %q", tc.n.ID, got, tc.want)
		}
	}
}

// TestTransferColumnShowsRebuild: node list's TRANSFER column says a node
// is rebuilding, with its progress, until the rebuild is done.
func TestTransferColumnShowsRebuild(t *testing.T) {
	for _, tc := range []struct {
		st   *subjects.TransferStatus
		want string
	}{
		{nil, "-"},
		{&subjects.TransferStatus{RebuildTotal: 16, RebuildDone: 5, Bytes: 2048}, "rebuilding 5/16  2.0 KiB"},
		{&subjects.TransferStatus{RebuildTotal: 16, RebuildDone: 16}, "-"},
		{&subjects.TransferStatus{PartitionsDone: 1, PartitionsTotal: 4, RebuildTotal: 16, RebuildDone: 16}, "1/4  0 B  0 B/s"},
	} {
		if got := transferColumn(tc.st); got != tc.want {
			t.Errorf("transferColumn(%+v) = %q, want %q", tc.st, got, tc.want)
		}
	}
}
