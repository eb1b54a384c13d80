package faults

// The membership scenarios of issue 14 ("What must hold"), with separate
// processes: storage nodes, coordinators and a repair worker are
// `quorumkv storage|coordinator|repair` children (cluster_test.go), the
// operator's commands are `quorumkv node …` children, and a continuous
// writer and checker (ledger_test.go) run throughout. At every moment of
// adding two nodes, draining two and replacing a killed one, every
// acknowledged write must read back at quorum with its acknowledged value
// and no acknowledged delete may come back; after each step, killing any
// one node must still lose nothing (RF 3).
//
// These are normal tests, run by -short as well: a scenario that cannot
// run fails, it never skips.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/proctest"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

const (
	memberTenant = "members"
	// memberPartitions keeps transfers short: Q is a cluster setting
	// (coordinator --partitions) that storage nodes must match.
	memberPartitions = "128"
	// transitionTimeout bounds one join, drain or replace, race-built
	// children on a shared 2-core machine included.
	transitionTimeout = 3 * time.Minute
)

// memberEnv is every storage node's environment: a short heartbeat, so a
// killed node shows as down within seconds, and a short handoff grace, so
// former owners hand off and drop within the test.
var memberEnv = []string{
	"QUORUMKV_PARTITIONS=" + memberPartitions,
	"QUORUMKV_HEARTBEAT=1s",
	"QUORUMKV_HANDOFF_GRACE=1s",
}

// coordMemberEnv is every coordinator's: the same Q, and the storage
// nodes' heartbeat, which tells a coordinator when a node is down
// (silent for 3 heartbeats).
var coordMemberEnv = []string{
	"QUORUMKV_PARTITIONS=" + memberPartitions,
	"QUORUMKV_NODE_HEARTBEAT=1s",
}

// startMembership starts n storage nodes, two coordinators and a repair
// worker, and creates the lww tenant of RF 3 the scenarios write to.
func startMembership(t *testing.T, n int, storageArgs ...string) (*cluster, *client.Client) {
	t.Helper()
	return startMembershipEnv(t, n, memberEnv, storageArgs...)
}

// startMembershipEnv is startMembership with the storage nodes'
// environment given.
func startMembershipEnv(t *testing.T, n int, storageEnv []string, storageArgs ...string) (*cluster, *client.Client) {
	t.Helper()
	c := startCluster(t, clusterConfig{storageNodes: n, coordinators: 2, storageEnv: storageEnv, storageArgs: storageArgs,
		coordEnv: coordMemberEnv})
	// A new cluster settles first: nodes after the first join one by one
	// (streaming nothing), and the scenarios start from all active.
	settled := map[string]string{}
	for i := 1; i <= n; i++ {
		settled[fmt.Sprintf("node-%d", i)] = "active"
	}
	c.waitStatuses(t, transitionTimeout, settled)
	ctx := context.Background()
	r, quorum, lww := 3, subjects.Quorum, subjects.PolicyLWW
	if _, err := c.admin.CreateTenant(ctx, memberTenant, client.TenantSpec{ReplicationFactor: &r, DefaultConsistency: &quorum, ConflictPolicy: &lww}); err != nil {
		t.Fatalf("create tenant %s: %v\n%s", memberTenant, err, c.logs())
	}
	kv, err := client.New(c.nc, memberTenant)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 { // several, so both coordinators (queue group) serve one
		if err := waitUntil(30*time.Second, func() error {
			_, err := kv.Put(ctx, "probe-"+strconv.Itoa(i), []byte("probe"), client.WithConsistency(subjects.All))
			return err
		}); err != nil {
			t.Fatalf("tenant %s never took a write at consistency all: %v\n%s", memberTenant, err, c.logs())
		}
	}
	// Registered before the processes added later, so it runs after their
	// cleanups killed them: crashes are checked in finish, not here.
	c.watch = c.watchPlacement(t, r)
	t.Cleanup(func() {
		if t.Failed() || envSet("QUORUMKV_FAULT_LOGS") {
			t.Logf("process output:\n%s", c.logs())
		}
	})
	return c, kv
}

// storageProc returns the storage process named id.
func (c *cluster) storageProc(t *testing.T, id string) *proc {
	t.Helper()
	for _, p := range c.storage {
		if p.name == id {
			return p
		}
	}
	t.Fatalf("no storage process %s", id)
	return nil
}

// addStorage starts a new storage node process with a new id and the
// extra flags given; it joins by itself unless they hold it back.
func (c *cluster) addStorage(id string, extra ...string) *proc {
	p := c.newStorage(id)
	p.args = append(p.args, extra...)
	c.mu.Lock()
	c.storage = append(c.storage, p)
	c.mu.Unlock()
	c.start(p)
	return p
}

// stopStorage stops p with SIGTERM, as an operator stops a drained node.
func (c *cluster) stopStorage(t *testing.T, p *proc) {
	t.Helper()
	c.noteCrashes()
	c.mu.Lock()
	p.down = true
	c.mu.Unlock()
	p.p.Signal(syscall.SIGTERM)
	if err := p.p.Wait(30 * time.Second); err != nil {
		t.Logf("%s exited after SIGTERM: %v", p.name, err)
	}
}

// cliResult is what one `quorumkv` command did.
type cliResult struct {
	args           []string
	stdout, stderr string
	code           int // exit status; -1 when it did not finish in time
	took           time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("quorumkv %s: exit %d after %s\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, tail(r.stderr, 6000))
}

// cli runs `quorumkv args… --nats URL` and waits up to d for it.
func (c *cluster) cli(d time.Duration, args ...string) cliResult {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	full := append(append([]string(nil), args...), "--nats", c.url)
	cmd := exec.CommandContext(ctx, proctest.Binary(c.t), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := cliResult{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.code = -1
	case errors.As(err, &exit):
		r.code = exit.ExitCode()
	case err != nil:
		r.code, r.stderr = -1, r.stderr+"\n"+err.Error()
	}
	return r
}

// statuses is node id → STATUS of `node list` (through the admin API,
// which prints the same as `quorumkv node list --json`).
func (c *cluster) statuses() (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ns, err := c.admin.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, n := range ns {
		out[n.ID] = n.Status
	}
	return out, nil
}

// waitStatuses waits until every node in want shows its status, logging
// `quorumkv node list` every few seconds, and returns how long it took.
func (c *cluster) waitStatuses(t *testing.T, d time.Duration, want map[string]string) time.Duration {
	t.Helper()
	start, lastLog := time.Now(), time.Now()
	var last map[string]string
	err := waitUntil(d, func() error {
		got, err := c.statuses()
		if err != nil {
			return err
		}
		last = got
		if time.Since(lastLog) > 5*time.Second {
			lastLog = time.Now()
			t.Logf("waiting for %v:\n%s", want, c.cli(10*time.Second, "node", "list").stdout)
		}
		for id, s := range want {
			if got[id] != s {
				return fmt.Errorf("node %s is %q, want %q", id, got[id], s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after %s: %v (all: %v)\n%s", d, err, last, c.cli(10*time.Second, "node", "list").stdout)
	}
	return time.Since(start)
}

// victims draws every victim of one test from one seed:
// QUORUMKV_SCENARIO_SEED when set, else the clock; the seed is logged, so
// a failing run's picks can be repeated.
var victims sync.Map // *testing.T → *rand.Rand

// victim picks one of ids to kill.
func victim(t *testing.T, ids ...string) string {
	r, ok := victims.Load(t)
	if !ok {
		seed := uint64(time.Now().UnixNano())
		if s := os.Getenv("QUORUMKV_SCENARIO_SEED"); s != "" {
			v, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				t.Fatalf("QUORUMKV_SCENARIO_SEED=%q: %v", s, err)
			}
			seed = v
		}
		t.Logf("victims drawn with QUORUMKV_SCENARIO_SEED=%d", seed)
		r = rand.New(rand.NewPCG(seed, 14))
		victims.Store(t, r)
		t.Cleanup(func() { victims.Delete(t) })
	}
	id := ids[r.(*rand.Rand).IntN(len(ids))]
	t.Logf("victim %s of %v", id, ids)
	return id
}

// finish stops the workload, checks every key once more, and logs the
// figures of each phase.
func finish(t *testing.T, w *scenarioLoad, c *cluster) {
	t.Helper()
	w.stop()
	w.phase("final check, writers stopped")
	w.fullPass("final check, writers stopped", 30*time.Second)
	t.Logf("per phase:\n%s", w.summary())
	t.Logf("node list at the end:\n%s", c.cli(10*time.Second, "node", "list").stdout)
	c.watch.check(t)
	c.noteCrashes()
	for _, cr := range c.crashes {
		t.Errorf("crash: %s", cr)
	}
	if n := w.wrong(); n > 0 {
		t.Errorf("%d reads answered wrong (first ones above, each with key, expected and got)", n)
	}
}

// TestMembershipAddTwoNodes is scenario A: RF 3 on three nodes with the
// writer running; two new storage processes start with new ids and join
// by themselves; reads are checked all along until both are active; then
// any one node is SIGKILLed and nothing may be lost.
func TestMembershipAddTwoNodes(t *testing.T) {
	c, kv := startMembership(t, 3)
	w := startWorkload(t, kv, defaultLoad)
	w.waitAcked(150, time.Minute)
	w.waitRounds(1, time.Minute)

	w.phase("start node-4 and node-5 (join by themselves)")
	c.addStorage("node-4")
	c.addStorage("node-5")
	took := c.waitStatuses(t, transitionTimeout, map[string]string{"node-4": "active", "node-5": "active"})
	t.Logf("node-4 and node-5 active %s after their start", took.Round(time.Millisecond))
	w.phase("5 nodes active")
	w.fullPass("after the join", time.Minute)
	w.waitRounds(1, time.Minute)

	id := victim(t, "node-1", "node-2", "node-3", "node-4", "node-5")
	w.phase("SIGKILL " + id)
	c.kill(c.storageProc(t, id))
	w.fullPass("after SIGKILL of "+id, time.Minute)
	w.waitRounds(1, time.Minute)
	finish(t, w, c)
}

// TestMembershipDrainTwoNodes is scenario B: five nodes with the writer
// overwriting and deleting; `quorumkv node drain ID --wait` for two of
// them at once (two drains at once: the map's optimistic locking
// serialises them); both are stopped and removed; then an original node
// is SIGKILLed: nothing lost, no delete resurrected.
func TestMembershipDrainTwoNodes(t *testing.T) {
	c, kv := startMembership(t, 5)
	w := startWorkload(t, kv, defaultLoad)
	w.waitAcked(150, time.Minute)
	w.waitRounds(1, time.Minute)

	w.phase("node drain node-4 and node-5 --wait, at once")
	var wg sync.WaitGroup
	results := make([]cliResult, 2)
	for i, id := range []string{"node-4", "node-5"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.cli(transitionTimeout, "node", "drain", id, "--wait")
		}()
	}
	wg.Wait()
	for _, r := range results {
		if r.code != 0 {
			t.Fatalf("drain did not finish: %s\n%s", r, w.summary())
		}
		t.Logf("%s", r)
	}
	c.waitStatuses(t, 30*time.Second, map[string]string{"node-4": "left", "node-5": "left"})
	w.phase("node-4 and node-5 left")
	w.fullPass("after the drains", time.Minute)

	w.phase("stop and remove node-4 and node-5")
	for _, id := range []string{"node-4", "node-5"} {
		c.stopStorage(t, c.storageProc(t, id))
		if r := c.cli(30*time.Second, "node", "remove", id); r.code != 0 {
			t.Errorf("remove of left node %s: %s", id, r)
		}
	}
	w.fullPass("after the removes", time.Minute)
	w.waitRounds(1, time.Minute)

	id := victim(t, "node-1", "node-2", "node-3")
	w.phase("SIGKILL " + id)
	c.kill(c.storageProc(t, id))
	w.fullPass("after SIGKILL of "+id, time.Minute)
	w.waitRounds(1, time.Minute)
	finish(t, w, c)
}

// TestMembershipReplaceKilledNode is scenario C: three nodes, one is
// SIGKILLed; a fresh node starts held back (--join=false) and `quorumkv
// node replace DEAD NEW --wait` gives it the dead node's partitions,
// streamed from the survivors; then another original node is SIGKILLed:
// nothing lost.
func TestMembershipReplaceKilledNode(t *testing.T) {
	c, kv := startMembership(t, 3)
	w := startWorkload(t, kv, defaultLoad)
	w.waitAcked(150, time.Minute)
	w.waitRounds(1, time.Minute)

	dead := victim(t, "node-1", "node-2", "node-3")
	w.phase("SIGKILL " + dead)
	c.kill(c.storageProc(t, dead))
	took := c.waitStatuses(t, 90*time.Second, map[string]string{dead: "down"})
	t.Logf("%s shown down %s after its SIGKILL", dead, took.Round(time.Millisecond))
	w.fullPass("with "+dead+" down", time.Minute)

	w.phase("start node-4 --join=false; node replace " + dead + " node-4 --wait")
	c.addStorage("node-4", "--join=false")
	c.waitStatuses(t, 30*time.Second, map[string]string{"node-4": "standby"})
	r := c.cli(transitionTimeout, "node", "replace", dead, "node-4", "--wait")
	if r.code != 0 {
		t.Fatalf("replace did not finish: %s\n%s", r, w.summary())
	}
	t.Logf("%s", r)
	c.waitStatuses(t, 30*time.Second, map[string]string{"node-4": "active"})
	w.phase("node-4 active in place of " + dead)
	w.fullPass("after the replace", time.Minute)
	w.waitRounds(1, time.Minute)

	var others []string
	for _, id := range []string{"node-1", "node-2", "node-3"} {
		if id != dead {
			others = append(others, id)
		}
	}
	second := victim(t, others...)
	w.phase("SIGKILL " + second)
	c.kill(c.storageProc(t, second))
	w.fullPass("after SIGKILL of "+second, time.Minute)
	w.waitRounds(1, time.Minute)
	finish(t, w, c)
}

// clusterState is what a refused admin command must leave unchanged: the
// placement map's version and every node's status.
type clusterState struct {
	version uint64
	nodes   string // "id=status ..." sorted
}

func (c *cluster) state(t *testing.T) clusterState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := c.admin.Placement(ctx)
	if err != nil {
		t.Fatalf("placement: %v", err)
	}
	st, err := c.statuses()
	if err != nil {
		t.Fatalf("node list: %v", err)
	}
	var ns []string
	for id, s := range st {
		ns = append(ns, id+"="+s)
	}
	sort.Strings(ns)
	return clusterState{version: m.Version(), nodes: strings.Join(ns, " ")}
}

// refused runs a command that must fail with exit code (3: 404, 4: 409)
// and say mention on stderr, and checks that it changed nothing.
func (c *cluster) refused(t *testing.T, code int, mention string, args ...string) {
	t.Helper()
	before := c.state(t)
	r := c.cli(30*time.Second, args...)
	if r.code != code || !strings.Contains(r.stderr, mention) {
		t.Errorf("want exit %d saying %q; %s", code, mention, r)
	} else {
		t.Logf("refused as it should be: quorumkv %s: exit %d: %s", strings.Join(args, " "), r.code, strings.TrimSpace(r.stderr))
	}
	time.Sleep(300 * time.Millisecond) // a change would be stored by now
	if after := c.state(t); after != before {
		t.Errorf("quorumkv %s changed the cluster:\nbefore: %+v\nafter:  %+v", strings.Join(args, " "), before, after)
	}
}

// TestMembershipBadInput: drain of an unknown node, remove of an active
// node, replace onto an id in use, and a removed id that registers again
// (a storage process joining with it): each a clear 4xx, nothing changed.
func TestMembershipBadInput(t *testing.T) {
	c, kv := startMembership(t, 4)
	w := startWorkload(t, kv, loadConfig{writers: 1, unique: 30, overwrite: 10, deletes: 10, pace: 20 * time.Millisecond, checkers: 1})
	w.waitAcked(40, time.Minute)

	w.phase("bad input: drain unknown, remove active")
	c.refused(t, 3, subjects.KindNoSuchNode, "node", "drain", "node-nope")
	c.refused(t, 4, subjects.KindNodeActive, "node", "remove", "node-1")

	w.phase("drain, stop and remove node-4")
	if r := c.cli(transitionTimeout, "node", "drain", "node-4", "--wait"); r.code != 0 {
		t.Fatalf("drain node-4: %s", r)
	}
	c.stopStorage(t, c.storageProc(t, "node-4"))
	if r := c.cli(30*time.Second, "node", "remove", "node-4"); r.code != 0 {
		t.Fatalf("remove left node-4: %s", r)
	}

	w.phase("bad input: a removed id registers again")
	before := c.state(t)
	p := c.storageProc(t, "node-4")
	c.start(p) // same id, same data: its registration must be refused
	time.Sleep(2 * time.Second)
	if after := c.state(t); after != before {
		t.Errorf("a storage process with removed id node-4 changed the cluster:\nbefore: %+v\nafter:  %+v", before, after)
	}
	// The same register a storage node sends, straight to the admin API.
	req, err := wire.Marshal(false, &subjects.NodeRequest{NodeID: "node-4", Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := c.nc.Request(subjects.AdminNodeRegister, req, 5*time.Second)
	if err != nil {
		t.Fatalf("register of removed node-4: %v", err)
	}
	switch e := subjects.ErrorFromHeaders(msg.Header.Get); {
	case e == nil:
		t.Errorf("register of removed node-4 succeeded: %s", msg.Data)
	case e.Kind != subjects.KindNodeRemoved || e.Code/100 != 4:
		t.Errorf("register of removed node-4: %d %s: %s, want 409 %s", e.Code, e.Kind, e.Message, subjects.KindNodeRemoved)
	default:
		t.Logf("register of removed node-4 refused: %d %s: %s", e.Code, e.Kind, e.Message)
	}
	if after := c.state(t); after != before {
		t.Errorf("a register of removed id node-4 changed the cluster:\nbefore: %+v\nafter:  %+v", before, after)
	}
	c.stopStorage(t, p)

	w.phase("bad input: replace onto an id in use")
	c.kill(c.storageProc(t, "node-3"))
	c.waitStatuses(t, 90*time.Second, map[string]string{"node-3": "down"})
	// NEW must be standby or joining and own nothing; node-2 is active.
	c.refused(t, 4, "node-2", "node", "replace", "node-3", "node-2")
	// DEAD must be down; node-1 is live (which check comes first is the
	// admin API's choice: both are 409).
	c.refused(t, 4, "", "node", "replace", "node-1", "node-2")
	c.refused(t, 3, subjects.KindNoSuchNode, "node", "replace", "node-3", "node-nope")
	finish(t, w, c)
}

// placementWatch polls the placement map through the admin API for the
// whole scenario and records every map in which a partition has fewer
// current owners than the tenant's RF, or the version goes back. A
// partition's owners holding data is what the reads check.
type placementWatch struct {
	mu         sync.Mutex
	versions   int    // distinct versions seen
	last       uint64 // newest version seen
	maxMoving  int    // most partitions moving in one map
	violations []string
}

// watchPlacement starts the watch; it stops at the test's end, and
// finish reports it.
func (c *cluster) watchPlacement(t *testing.T, rf int) *placementWatch {
	pw := &placementWatch{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var owners []string
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			m, err := c.admin.Placement(rctx)
			rcancel()
			if err == nil && m.Version() > 0 {
				pw.mu.Lock()
				if v := m.Version(); v != pw.last {
					if v < pw.last {
						pw.violations = append(pw.violations, fmt.Sprintf("map version went back from %d to %d", pw.last, v))
					}
					pw.versions++
					pw.last = v
					moving := 0
					var short []string
					for p := range uint32(m.Partitions()) {
						if m.Moving(p) {
							moving++
						}
						if owners = m.Owners(p, owners[:0]); len(owners) < rf {
							short = append(short, fmt.Sprintf("%d:%v", p, owners))
						}
					}
					pw.maxMoving = max(pw.maxMoving, moving)
					if len(short) > 0 {
						pw.violations = append(pw.violations, fmt.Sprintf("map version %d: %d partitions with fewer than %d current owners: %s", v, len(short), rf, firstN(short, 8)))
					}
				}
				pw.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return pw
}

// check fails t for every violation seen so far and logs the figures.
func (pw *placementWatch) check(t *testing.T) {
	t.Helper()
	pw.mu.Lock()
	defer pw.mu.Unlock()
	t.Logf("placement: %d map versions seen (last %d), at most %d partitions moving at once", pw.versions, pw.last, pw.maxMoving)
	for _, v := range pw.violations {
		t.Errorf("placement: %s", v)
	}
}

// TestMembershipJoinDuringDrain: a concurrent admin change. Four nodes
// with preloaded data and slowed transfers; `node drain node-4 --wait`
// runs while node-5 joins by itself. The map's optimistic locking must
// serialise them: node-4 ends left, node-5 active, no map ever has a
// partition with fewer than RF current owners, nothing is lost, also
// after one more SIGKILL.
func TestMembershipJoinDuringDrain(t *testing.T) {
	c, kv := startMembership(t, 4, "--transfer-rate", "0.25")
	w := startWorkload(t, kv, defaultLoad)
	w.preload(600, 1024, 4)
	w.waitAcked(700, time.Minute)

	w.phase("node drain node-4 --wait; node-5 joins 1s later")
	var wg sync.WaitGroup
	var drain cliResult
	wg.Add(1)
	go func() {
		defer wg.Done()
		drain = c.cli(transitionTimeout, "node", "drain", "node-4", "--wait")
	}()
	time.Sleep(time.Second)
	c.addStorage("node-5")
	wg.Wait()
	if drain.code != 0 {
		t.Fatalf("drain did not finish: %s", drain)
	}
	t.Logf("%s", drain)
	c.waitStatuses(t, transitionTimeout, map[string]string{"node-4": "left", "node-5": "active"})
	w.phase("node-4 left, node-5 active")
	w.fullPass("after the drain and the join", time.Minute)
	w.waitRounds(1, 2*time.Minute)

	id := victim(t, "node-1", "node-2", "node-3", "node-5")
	w.phase("SIGKILL " + id)
	c.kill(c.storageProc(t, id))
	w.fullPass("after SIGKILL of "+id, time.Minute)
	finish(t, w, c)
}
