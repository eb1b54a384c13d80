package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/ring"
	"github.com/quorumkv/quorumkv/subjects"
)

// Tenants of the fault schedule.
const (
	setTenant = "fset" // siblings: the set workload
	lwwTenant = "flww" // lww: the smaller sequence workload
	rf        = 3
)

// faultAEInterval is the storage nodes' anti-entropy interval in the
// schedule, and aeConvergeTimeout how long anti-entropy alone may take to
// make every key's primaries agree once the repair backlog drained.
const (
	faultAEInterval   = 2 * time.Second
	aeConvergeTimeout = 2 * time.Minute
)

// SabotageEnv breaks quorumkv's contract on purpose, to prove that the
// checkers catch it; the test must then fail. Values (comma-separated):
//
//	union   set clients write only their own element (still with the
//	        read's context), superseding elements acknowledged before:
//	        lost acknowledged writes
//	repair  coordinators run with --repair=false (no hints, no read
//	        repair): replicas that missed writes stay behind
const SabotageEnv = "QUORUMKV_FAULT_SABOTAGE"

// scheduleConfig sizes one run; -short runs a smaller one.
type scheduleConfig struct {
	mode             string
	storageNodes     int
	setClients       int
	setKeys          int
	lwwWriters       int
	lwwKeysPerWriter int
	// rounds of the fault schedule, each with other victims.
	rounds int
	// scale multiplies every pause of the schedule.
	scale float64
	// killRepairWorker SIGKILLs the repair worker while it holds a batch;
	// the server redelivers that batch only after the consumer's AckWait
	// (30s, which the coordinators fix), so the quick run leaves it out.
	killRepairWorker bool
	// doubleFault ends the schedule with two storage nodes out at once.
	doubleFault bool
}

var (
	fullSchedule  = scheduleConfig{mode: "full", storageNodes: 4, setClients: 8, setKeys: 4, lwwWriters: 2, lwwKeysPerWriter: 6, rounds: 2, scale: 1, killRepairWorker: true, doubleFault: true}
	shortSchedule = scheduleConfig{mode: "short", storageNodes: 4, setClients: 4, setKeys: 3, lwwWriters: 2, lwwKeysPerWriter: 3, rounds: 1, scale: 0.5, doubleFault: true}
)

// TestFaultSchedule is Jepsen's set workload on quorumkv running as
// separate OS processes (4 storage nodes, 2 coordinators, a repair worker,
// a 3-server NATS cluster, a private Redis for idempotency). While clients
// add unique elements to a few keys of a siblings tenant (read, union of
// the siblings, add, write with the read's context), and a smaller lww
// workload runs alongside, each round of the fault schedule:
//
//   - SIGKILLs a storage node and restarts it;
//   - SIGSTOPs another for 2s (and, in the full run, SIGKILLs the repair
//     worker meanwhile, which is then holding repairs for the paused node,
//     and restarts it);
//   - SIGKILLs a coordinator mid-request and restarts it;
//   - SIGSTOPs the other coordinator for 2s;
//   - shuts a NATS server down and starts it again on the same ports and
//     store directory;
//   - flushes the idempotency Redis;
//   - takes two storage nodes out at once (SIGKILL one, SIGSTOP another),
//     so that some keys lose their quorum.
//
// The full run does two rounds with different victims; -short one round at
// half the pace. Clients move to fresh keys every generation (2s), so keys
// written during a fault are not rewritten after it.
//
// After healing and once the repair backlog has drained, a read at
// consistency all of every key must hold every acknowledged element (no
// lost acknowledged write) and nothing never written; then, once the
// repairs those reads asked for are done, every key's primaries must hold
// identical version sets in their own dumps (convergence), under both
// policies. The report (t.Logf, and JSON at $QUORUMKV_FAULT_REPORT)
// counts what was attempted, acknowledged, lost and unexpectedly present,
// and names the fault timeline.
func TestFaultSchedule(t *testing.T) {
	cfg := fullSchedule
	if testing.Short() {
		cfg = shortSchedule
	}
	rep := &faultReport{
		Test: t.Name(), Mode: cfg.mode, Race: raceEnabled, Started: time.Now(),
		Topology: map[string]int{"nats_servers": 3, "storage_nodes": cfg.storageNodes, "coordinators": 2, "repair_workers": 1, "replication_factor": rf},
		Workload: map[string]int{"set_clients": cfg.setClients, "set_keys_per_generation": cfg.setKeys, "lww_writers": cfg.lwwWriters,
			"lww_keys_per_writer_per_generation": cfg.lwwKeysPerWriter, "generation_ms": int(2000 * cfg.scale), "rounds": cfg.rounds},
		Convergence: map[string]convergenceReport{},
	}
	defer rep.write(t)

	sabotage := map[string]bool{}
	for _, s := range strings.Split(os.Getenv(SabotageEnv), ",") {
		if s != "" {
			sabotage[s] = true
			rep.Sabotage = append(rep.Sabotage, s)
			t.Logf("SABOTAGE %q: this run must fail", s)
		}
	}
	// Anti-entropy runs on every storage node, so replicas converge with
	// no read at all (the check below, before the final reads). The repair
	// sabotage turns it off too: no repair of any kind.
	ae := faultAEInterval
	if sabotage["repair"] {
		ae = 0
	}
	c := startCluster(t, clusterConfig{storageNodes: cfg.storageNodes, coordinators: 2, noRepair: sabotage["repair"],
		storageEnv: []string{"QUORUMKV_ANTI_ENTROPY_INTERVAL=" + ae.String()}})
	t.Cleanup(func() {
		if t.Failed() || envSet("QUORUMKV_FAULT_LOGS") {
			t.Logf("process output:\n%s", c.logs())
		}
	})
	ctx := context.Background()
	createTenants(t, c)

	// The workload.
	tl := newTimeline(t.Logf)
	rep.tl = tl
	w := newWorkload(tl)
	w.dropUnion = sabotage["union"]
	w.generation = time.Duration(float64(2*time.Second) * cfg.scale)
	var setKVs, lwwKVs []*client.Client
	for i := range cfg.setClients + cfg.lwwWriters {
		nc, err := c.connect(fmt.Sprintf("faults-client-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if i < cfg.setClients {
			kv, _ := client.New(nc, setTenant)
			setKVs = append(setKVs, kv)
		} else {
			kv, _ := client.New(nc, lwwTenant)
			lwwKVs = append(lwwKVs, kv)
		}
	}
	t.Cleanup(w.halt) // when the test ends early; runs before the connections close
	for i, kv := range setKVs {
		w.run(func() { w.setClient(ctx, kv, i, cfg.setKeys) })
	}
	for i, kv := range lwwKVs {
		w.run(func() { w.lwwWriter(ctx, kv, i, cfg.lwwKeysPerWriter) })
	}
	tl.add("workload started: %d set clients on %d keys, %d lww writers on %d keys each; new keys every %s",
		cfg.setClients, cfg.setKeys, cfg.lwwWriters, cfg.lwwKeysPerWriter, w.generation)

	for round := range cfg.rounds {
		runSchedule(t, c, tl, cfg, round)
	}

	w.halt()
	rep.WorkloadMS = tl.since()
	tl.add("workload stopped")
	c.heal(tl)
	rep.Crashes = append(rep.Crashes, c.crashes...)
	for _, cr := range c.crashes {
		t.Errorf("crash: %s", cr)
	}

	// Repair: wait until the backlog stays empty.
	healed := time.Now()
	st, err := c.waitRepairDrained(2 * time.Minute)
	rep.Repair.DrainMS = time.Since(healed).Milliseconds()
	if err != nil {
		t.Fatalf("the repair backlog never drained after healing: %v", err)
	}
	tl.add("repair backlog drained (redelivered %d, dead letters %d)", st.Redelivered, st.Dead)

	rg := c.ring(t)
	before, causes, examples := map[string]convergence{}, map[string]map[string]int{}, map[string]map[string][]string{}
	for _, tn := range []struct{ tenant, policy string }{{setTenant, subjects.PolicySiblings}, {lwwTenant, subjects.PolicyLWW}} {
		dumps := c.dumps(t, tn.tenant)
		before[tn.tenant] = checkConvergence(tn.policy, tn.tenant, rf, rg, dumps)
		causes[tn.tenant], examples[tn.tenant] = divergenceCausesWithKeys(tn.policy, tn.tenant, rf, rg, dumps, w.lww, w.set)
	}
	// Convergence with no read: anti-entropy alone must bring every key's
	// primaries to identical version sets (issue 15), within a few passes.
	noReads := time.Now()
	unread := map[string]convergence{}
	unreadErr := waitUntil(aeConvergeTimeout, func() error {
		n := 0
		for _, tn := range []struct{ tenant, policy string }{{setTenant, subjects.PolicySiblings}, {lwwTenant, subjects.PolicyLWW}} {
			cv := checkConvergence(tn.policy, tn.tenant, rf, rg, c.dumps(t, tn.tenant))
			unread[tn.tenant] = cv
			n += cv.Divergent
		}
		if n > 0 {
			time.Sleep(500 * time.Millisecond)
			return fmt.Errorf("%d keys divergent", n)
		}
		return nil
	})
	rep.Repair.ConvergeNoReadsMS = time.Since(noReads).Milliseconds()
	tl.add("anti-entropy convergence with no reads checked (%s)", time.Since(noReads).Round(time.Millisecond))
	for _, tn := range []string{setTenant, lwwTenant} {
		t.Run("convergence-without-reads/"+tn, func(t *testing.T) {
			cv := unread[tn]
			if cv.Keys == 0 {
				t.Fatal("no keys to compare")
			}
			if unreadErr != nil {
				t.Errorf("anti-entropy left %d of %d keys differing between their primaries after %s with no reads: %v", cv.Divergent, cv.Keys, aeConvergeTimeout, cv.Details)
			}
		})
	}

	// Final reads at consistency all: every key any replica holds (their
	// read repair heals what no hint covered) and every workload key.
	finalSet := map[string]map[string]bool{}
	finalLWW := map[string]lwwFinal{}
	readers := map[string]*client.Client{}
	for _, tenant := range []string{setTenant, lwwTenant} {
		kv, _ := client.New(c.nc, tenant)
		readers[tenant] = kv
	}
	keysOf := func(tenant string, known []string) []string {
		all := map[string]bool{}
		for _, k := range known {
			all[k] = true
		}
		for _, es := range c.dumps(t, tenant) {
			for _, e := range es {
				all[e.Key] = true
			}
		}
		return sortedKeys(all)
	}
	// The workload's keys; the dumps add the probes createTenants wrote.
	setKeys, lwwKeys := sortedKeys(w.set), sortedKeys(w.lww)
	for _, key := range keysOf(setTenant, setKeys) {
		g := c.readAll(t, readers[setTenant], key)
		if _, ok := w.set[key]; ok {
			finalSet[key] = unionOf(g)
		}
	}
	for _, key := range keysOf(lwwTenant, lwwKeys) {
		g := c.readAll(t, readers[lwwTenant], key)
		if _, ok := w.lww[key]; ok {
			finalLWW[key] = lwwFinal{Found: g.Found, Value: string(g.Value)}
		}
	}
	tl.add("final reads at consistency all done")

	w.mu.Lock()
	rep.Set = checkSet(w.set, finalSet)
	rep.LWW = checkLWW(w.lww, finalLWW)
	rep.Ops = w.stats
	rep.Windows = w.windows
	w.mu.Unlock()

	t.Run("set/no-lost-acknowledged-writes", func(t *testing.T) {
		r := rep.Set
		if r.Acknowledged == 0 {
			t.Fatal("no write was acknowledged; the run proves nothing")
		}
		if r.Lost > 0 {
			t.Errorf("%d of %d acknowledged elements lost, e.g. %v", r.Lost, r.Acknowledged, r.LostElements)
		}
		if r.Phantoms > 0 {
			t.Errorf("%d elements in the final read were never written, e.g. %v", r.Phantoms, r.PhantomElements)
		}
	})
	t.Run("lww/no-lost-acknowledged-writes", func(t *testing.T) {
		r := rep.LWW
		if r.Acknowledged == 0 {
			t.Fatal("no lww write was acknowledged")
		}
		if r.Lost > 0 || r.Phantoms > 0 {
			t.Errorf("%d keys lost their last acknowledged write, %d hold a value never written: %v", r.Lost, r.Phantoms, r.Details)
		}
	})

	// Convergence: once the final reads' repairs are done, every key's
	// primaries hold identical version sets in their own dumps.
	finalReads := time.Now()
	if st, err = c.waitRepairDrained(2 * time.Minute); err != nil {
		t.Fatalf("the repair backlog never drained after the final reads: %v", err)
	}
	rep.Repair.FinalDrainMS = time.Since(finalReads).Milliseconds()
	final := map[string]convergence{}
	err = waitUntil(time.Minute, func() error {
		n := 0
		for _, tn := range []struct{ tenant, policy string }{{setTenant, subjects.PolicySiblings}, {lwwTenant, subjects.PolicyLWW}} {
			cv := checkConvergence(tn.policy, tn.tenant, rf, rg, c.dumps(t, tn.tenant))
			final[tn.tenant] = cv
			n += cv.Divergent
		}
		if n > 0 {
			time.Sleep(500 * time.Millisecond)
			return fmt.Errorf("%d keys divergent", n)
		}
		return nil
	})
	rep.Repair.ConvergeMS = time.Since(finalReads).Milliseconds()
	tl.add("convergence checked")
	for tenant, cv := range final {
		rep.Convergence[tenant] = convergenceReport{BeforeFinalReads: before[tenant], CausesBeforeFinalReads: causes[tenant], CauseExamples: examples[tenant], Final: cv}
	}
	if st, err := c.readRepairStatus(); err == nil {
		rep.Repair.DeadLetters, rep.Repair.Redelivered = st.Dead, st.Redelivered
		rep.Repair.WorkerApplied, rep.Repair.WorkerFailed, rep.Repair.WorkerDeadLetters = st.Applied, st.Failed, st.DeadLettered
	}
	for _, tn := range []string{setTenant, lwwTenant} {
		t.Run("convergence/"+tn, func(t *testing.T) {
			cv := final[tn]
			if cv.Keys == 0 {
				t.Fatal("no keys to compare")
			}
			if cv.Divergent > 0 {
				t.Errorf("%d of %d keys differ between their primaries after repair: %v", cv.Divergent, cv.Keys, cv.Details)
			}
		})
	}
	rep.StorageRestarts, rep.StorageKeysChecked, rep.StorageRegressions = c.restarts, c.checkedKeys, c.regressed
	t.Run("storage/nothing-lost-across-sigkill", func(t *testing.T) {
		if c.restarts == 0 || c.checkedKeys == 0 {
			t.Fatal("no storage restart was checked")
		}
		if len(c.regressed) > 0 {
			t.Errorf("%d keys lost or went back after a storage node's SIGKILL and restart (fsync on): %v", len(c.regressed), c.regressed[:min(len(c.regressed), maxDetails)])
		}
	})
	for _, p := range c.coords {
		c.scrape(p)
	}
	rep.CoordinatorCounters = c.counters
	rep.LogLines = c.logSummary()
	c.noteCrashes()
	for _, cr := range c.crashes[len(rep.Crashes):] {
		rep.Crashes = append(rep.Crashes, cr)
		t.Errorf("crash: %s", cr)
	}
}

func envSet(name string) bool {
	v, ok := os.LookupEnv(name)
	return ok && v != "" && v != "0"
}

// createTenants creates the two tenants and waits until a write at
// consistency all goes through both coordinators' views.
func createTenants(t *testing.T, c *cluster) {
	t.Helper()
	ctx := context.Background()
	r, quorum := rf, subjects.Quorum
	for _, tn := range []struct{ id, policy string }{{setTenant, subjects.PolicySiblings}, {lwwTenant, subjects.PolicyLWW}} {
		policy := tn.policy
		if _, err := c.admin.CreateTenant(ctx, tn.id, client.TenantSpec{ReplicationFactor: &r, DefaultConsistency: &quorum, ConflictPolicy: &policy}); err != nil {
			t.Fatalf("create tenant %s: %v\n%s", tn.id, err, c.logs())
		}
	}
	for _, tenant := range []string{setTenant, lwwTenant} {
		kv, _ := client.New(c.nc, tenant)
		// Several puts, so that both coordinators (queue group) serve one.
		for i := range 4 {
			if err := waitUntil(30*time.Second, func() error {
				_, err := kv.Put(ctx, "probe-"+strconv.Itoa(i), []byte("probe"), client.WithConsistency(subjects.All))
				return err
			}); err != nil {
				t.Fatalf("tenant %s never took a write at consistency all: %v\n%s", tenant, err, c.logs())
			}
		}
	}
}

// runSchedule is one round of the fault schedule. Each round picks its
// victims one further along (storage nodes, coordinators, NATS servers),
// so that rounds hit different primaries. Every step is logged on the
// timeline; the workload runs throughout.
func runSchedule(t *testing.T, c *cluster, tl *timeline, cfg scheduleConfig, round int) {
	t.Helper()
	pause := func(ms int) { time.Sleep(time.Duration(float64(ms)*cfg.scale) * time.Millisecond) }
	node := func(i int) *proc { return c.storage[(i-1+round)%len(c.storage)] }
	coord := func(i int) *proc { return c.coords[(i+round)%len(c.coords)] }
	natsVictim := (1 + round) % len(c.nats)
	tl.add("round %d of the fault schedule", round+1)

	pause(1500)
	tl.add("SIGKILL storage %s", node(1).name)
	c.killStorage(t, node(1))
	pause(2500)
	tl.add("restart storage %s", node(1).name)
	c.restartStorage(t, node(1))
	tl.add("storage %s serving again", node(1).name)

	pause(1000)
	tl.add("SIGSTOP storage %s", node(2).name)
	c.pause(node(2))
	if cfg.killRepairWorker {
		// The worker is now likely stuck writing a repair to the paused
		// node: it dies holding that batch.
		pause(1000)
		held := "unknown"
		if st, err := c.readRepairStatus(); err == nil {
			held = strconv.FormatUint(st.AckPending, 10)
		}
		c.kill(c.repair)
		tl.add("SIGKILL repair worker (consumer had %s messages delivered and unacknowledged)", held)
		pause(1000)
	} else {
		pause(2000)
	}
	tl.add("SIGCONT storage %s", node(2).name)
	c.resume(node(2))
	if cfg.killRepairWorker {
		pause(500)
		tl.add("restart repair worker")
		c.start(c.repair)
		tl.add("repair worker serving again")
	}

	pause(1000)
	tl.add("SIGKILL %s (mid-request: the clients never pause)", coord(0).name)
	c.kill(coord(0))
	pause(2000)
	tl.add("restart %s", coord(0).name)
	c.start(coord(0))
	tl.add("%s serving again", coord(0).name)

	pause(1000)
	// A paused coordinator holds the requests it was given; clients time
	// out and retry through the other one, and after SIGCONT it carries
	// out those stale requests (idempotency keys meet their retries).
	tl.add("SIGSTOP %s", coord(1).name)
	c.pause(coord(1))
	pause(2000)
	tl.add("SIGCONT %s", coord(1).name)
	c.resume(coord(1))

	pause(1000)
	tl.add("shut down NATS server %s", c.nats[natsVictim].name)
	c.stopNATS(natsVictim)
	pause(3000)
	tl.add("restart NATS server %s (same ports and store)", c.nats[natsVictim].name)
	if err := c.restartNATS(natsVictim); err != nil {
		t.Fatalf("%v", err)
	}
	tl.add("NATS server %s healthy again", c.nats[natsVictim].name)

	pause(1000)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := c.flushRedis(ctx)
	cancel()
	if err != nil {
		t.Fatalf("flush Redis: %v", err)
	}
	tl.add("flushed the idempotency Redis")

	if cfg.doubleFault {
		pause(1000)
		tl.add("SIGKILL storage %s and SIGSTOP storage %s together", node(3).name, node(4).name)
		c.killStorage(t, node(3))
		c.pause(node(4))
		pause(2000)
		tl.add("SIGCONT storage %s, restart storage %s", node(4).name, node(3).name)
		c.resume(node(4))
		c.restartStorage(t, node(3))
		tl.add("storage %s serving again", node(3).name)
	}
	pause(1500)
}

// ---- the workload ----

type workload struct {
	tl       *timeline
	stop     chan struct{}
	stopOnce sync.Once
	wg       sync.WaitGroup

	dropUnion bool // sabotage: write only the new element
	// generation is how long the clients use one set of keys before they
	// move to fresh ones, so that keys written during a fault are not
	// rewritten after it: their convergence depends on repair alone.
	generation time.Duration

	mu      sync.Mutex
	set     setHistory
	lww     map[string]*lwwHistory
	stats   opStats
	windows []window
}

func newWorkload(tl *timeline) *workload {
	return &workload{tl: tl, stop: make(chan struct{}), set: setHistory{}, lww: map[string]*lwwHistory{}, stats: opStats{Errors: map[string]int{}}}
}

func (w *workload) run(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// halt stops the clients and waits for their last operation (retries
// included) to finish.
func (w *workload) halt() {
	w.stopOnce.Do(func() { close(w.stop) })
	w.wg.Wait()
}

func (w *workload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

// gen is the current key generation.
func (w *workload) gen() int { return int(w.tl.since() / w.generation.Milliseconds()) }

// window returns the current second's counters; w.mu must be held.
func (w *workload) window() *window {
	i := int(w.tl.since() / 1000)
	for len(w.windows) <= i {
		w.windows = append(w.windows, window{FromMS: int64(len(w.windows)) * 1000})
	}
	return &w.windows[i]
}

func (w *workload) failed(err error) {
	w.stats.Errors[errClass(err)]++
}

// setClient adds unique elements to random keys: read (quorum), union of
// every sibling, add the element, write with the read's context. A write
// that fails is retried with the same idempotency key, value and context;
// an element counts as acknowledged when any try was.
func (w *workload) setClient(ctx context.Context, kv *client.Client, id, keys int) {
	rng := rand.New(rand.NewPCG(uint64(id), 0x5e7))
	for i := 0; !w.stopped(); i++ {
		key := fmt.Sprintf("set-g%d-%d", w.gen(), rng.IntN(keys))
		elem := fmt.Sprintf("c%de%d", id, i)
		cur, err := kv.Get(ctx, key, client.WithTimeout(time.Second))
		w.mu.Lock()
		w.stats.SetReads++
		if err != nil && !errors.Is(err, client.ErrNotFound) {
			w.stats.SetReadFailures++
			w.window().ReadFailed++
			w.failed(err)
			w.mu.Unlock()
			time.Sleep(50 * time.Millisecond)
			continue
		}
		w.mu.Unlock()
		set := unionOf(cur)
		if w.dropUnion {
			set = map[string]bool{}
		}
		set[elem] = true
		value := encodeSet(set)
		acked := false
		for try := 0; try < 4 && !acked; try++ {
			if try > 0 {
				time.Sleep(time.Duration(try) * 150 * time.Millisecond)
			}
			res, err := kv.Put(ctx, key, value, client.WithContext(cur.Context), client.WithIdempotencyKey(elem), client.WithTimeout(1500*time.Millisecond))
			w.mu.Lock()
			w.stats.SetWriteRequests++
			if try > 0 {
				w.stats.Retries++
			}
			if err == nil {
				acked = true
				w.window().SetOK++
				if try > 0 {
					w.stats.AckedOnRetry++
				}
				if res.IsDuplicate {
					w.stats.Duplicates++
				}
			} else {
				w.stats.SetWriteFailures++
				w.window().SetFailed++
				w.failed(err)
			}
			w.mu.Unlock()
			if err != nil && (errors.Is(err, client.ErrTooManySiblings) || errors.Is(err, client.ErrInvalid) || errors.Is(err, client.ErrNoSuchTenant)) {
				break // refused outright: retrying cannot help
			}
		}
		w.mu.Lock()
		w.set.add(key, elem, acked)
		w.mu.Unlock()
	}
}

// lwwWriter writes increasing sequence numbers to the keys it owns, each
// write with the context of the key's last acknowledged write.
func (w *workload) lwwWriter(ctx context.Context, kv *client.Client, id, keys int) {
	seqs, ctxs := map[string]int{}, map[string]string{}
	for i := 0; !w.stopped(); i++ {
		key := fmt.Sprintf("w%d-g%d-k%d", id, w.gen(), i%keys)
		seqs[key]++
		seq := seqs[key]
		res, err := kv.Put(ctx, key, []byte(strconv.Itoa(seq)), client.WithContext(ctxs[key]), client.WithTimeout(1500*time.Millisecond))
		if err == nil {
			ctxs[key] = res.Context
		}
		w.mu.Lock()
		if w.lww[key] == nil {
			w.lww[key] = &lwwHistory{}
		}
		w.lww[key].add(seq, err == nil)
		w.stats.LWWWrites++
		if err != nil {
			w.stats.LWWFailures++
			w.window().LWWFailed++
			w.failed(err)
		} else {
			w.window().LWWOK++
		}
		w.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- storage durability across SIGKILL, under the real workload ----

// killStorage dumps what storage node p holds, then SIGKILLs it, so that
// restartStorage can check that the restarted node lost nothing it had
// stored: with fsync on, whatever a dump saw was committed.
func (c *cluster) killStorage(t *testing.T, p *proc) {
	t.Helper()
	snap := map[string][]subjects.DumpEntry{}
	for _, tenant := range []string{setTenant, lwwTenant} {
		es, err := c.admin.DumpAll(context.Background(), p.name, tenant)
		if err != nil {
			t.Fatalf("dump %s before its SIGKILL: %v", p.name, err)
		}
		snap[tenant] = es
	}
	c.kill(p)
	c.mu.Lock()
	c.snapshots[p.name] = snap
	c.mu.Unlock()
}

// restartStorage starts p again and compares what it holds with its dump
// from before the kill: no key may be missing or hold less.
func (c *cluster) restartStorage(t *testing.T, p *proc) {
	t.Helper()
	c.start(p)
	c.mu.Lock()
	snap := c.snapshots[p.name]
	delete(c.snapshots, p.name)
	c.mu.Unlock()
	for tenant, before := range snap {
		after, err := c.admin.DumpAll(context.Background(), p.name, tenant)
		if err != nil {
			t.Fatalf("dump %s after its restart: %v", p.name, err)
		}
		bad := regressions(before, after)
		c.mu.Lock()
		c.restarts++
		c.checkedKeys += len(before)
		for _, b := range bad {
			c.regressed = append(c.regressed, p.name+" "+tenant+"/"+b)
		}
		c.mu.Unlock()
	}
}

// regressions names the keys of before that after lacks or holds less of:
// an older lww version, or a DVVSet whose clock does not cover before's.
func regressions(before, after []subjects.DumpEntry) []string {
	now := map[string]subjects.DumpEntry{}
	for _, e := range after {
		now[e.Key] = e
	}
	var out []string
	for _, b := range before {
		a, ok := now[b.Key]
		switch {
		case !ok:
			out = append(out, b.Key+": gone")
		case b.DVV != nil:
			if a.DVV == nil {
				out = append(out, b.Key+": DVVSet gone")
				continue
			}
			have := map[string]uint64{}
			for _, en := range a.DVV.Entries {
				have[en.Actor] = en.Counter
			}
			for _, en := range b.DVV.Entries {
				if have[en.Actor] < en.Counter {
					out = append(out, fmt.Sprintf("%s: %s back from %d to %d", b.Key, en.Actor, en.Counter, have[en.Actor]))
				}
			}
		case a.Counter < b.Counter || (a.Counter == b.Counter && a.Actor < b.Actor):
			out = append(out, fmt.Sprintf("%s: %d@%s back to %d@%s", b.Key, b.Counter, b.Actor, a.Counter, a.Actor))
		}
	}
	return out
}

// ---- observing the cluster ----

// ring is the placement map the coordinators route by.
func (c *cluster) ring(t *testing.T) *ring.Map {
	t.Helper()
	m, err := c.admin.Placement(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// dumps asks every storage node for everything it holds of tenant.
func (c *cluster) dumps(t *testing.T, tenant string) map[string][]subjects.DumpEntry {
	t.Helper()
	out := map[string][]subjects.DumpEntry{}
	for _, p := range c.storage {
		var es []subjects.DumpEntry
		if err := waitUntil(30*time.Second, func() error {
			var err error
			es, err = c.admin.DumpAll(context.Background(), p.name, tenant)
			return err
		}); err != nil {
			t.Fatalf("dump %s of %s: %v", tenant, p.name, err)
		}
		out[p.name] = es
	}
	return out
}

// readAll reads key at consistency all, retrying until every primary
// answers.
func (c *cluster) readAll(t *testing.T, kv *client.Client, key string) *client.GetResult {
	t.Helper()
	var g *client.GetResult
	if err := waitUntil(30*time.Second, func() error {
		var err error
		g, err = kv.Get(context.Background(), key, client.WithConsistency(subjects.All), client.WithTimeout(2*time.Second))
		if errors.Is(err, client.ErrNotFound) {
			return nil
		}
		return err
	}); err != nil {
		t.Fatalf("final read of %s/%s at consistency all: %v", kv.Tenant(), key, err)
	}
	return g
}

func (c *cluster) readRepairStatus() (*repair.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return repair.ReadStatus(ctx, c.nc, 300*time.Millisecond)
}

// waitRepairDrained waits until the repair backlog (pending plus
// unacknowledged) has been 0 for three polls in a row, past the
// coordinators' hint window, and returns the last status.
func (c *cluster) waitRepairDrained(d time.Duration) (*repair.Status, error) {
	time.Sleep(time.Second) // hints and read repairs are published up to HintWindow (500ms) after a reply
	var (
		last   *repair.Status
		stable int
	)
	err := waitUntil(d, func() error {
		st, err := c.readRepairStatus()
		if err != nil {
			stable = 0
			return err
		}
		last = st
		if st.Backlog != 0 {
			stable = 0
			return fmt.Errorf("backlog %d (pending %d, delivered and unacknowledged %d, redelivered %d)", st.Backlog, st.Pending, st.AckPending, st.Redelivered)
		}
		if stable++; stable < 3 {
			return errors.New("settling")
		}
		return nil
	})
	return last, err
}
