// Package bench measures quorumkv against what a user would otherwise pick
// on the same NATS: JetStream KV with three replicas, and the floor, raw
// NATS request-reply. Everything runs in one process and one run on an
// embedded 3-server NATS cluster, with quorumkv's storage nodes and the
// clients spread over the three servers as in production, so the ratios
// compare like with like on the same machine at the same moment.
//
// Loads are closed-loop clients (each issues its next operation when the
// previous one is answered) running YCSB core-style mixes over preloaded
// records, for a fixed time per cell after a warm-up. Latencies go into
// log-bucketed histograms (see [Histogram]); CPU cost is the process's
// user+system time over the cell (getrusage), divided by operations.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/storage"
)

// Config describes a benchmark run. Zero values take the defaults shown.
type Config struct {
	Dir           string   // scratch directory for every store (required)
	Records       uint64   // records preloaded into each system (100000)
	ValueSize     int      // bytes per value (256)
	Systems       []string // subset of Systems (all)
	Workloads     []string // names from Workloads (all)
	Distributions []string // subset of Distributions (all)
	Durabilities  []string // names from Durabilities (all)
	Concurrency   []int    // closed-loop clients per cell (1, 16, 64, 256)

	Warmup   time.Duration // per cell, not measured (1s)
	Duration time.Duration // measured per cell (3s)

	PreloadConcurrency int // clients writing the preload (256)
	ConnsPerServer     int // client connections per server, shared by the clients (2)

	// ScaleRecords > 0 adds a scale run: a fresh quorumkv (durability
	// "async") preloaded with that many records, measured at
	// ScaleConcurrency clients, uniform, write-only and YCSB C, against the
	// same cells at Records.
	ScaleRecords     uint64
	ScaleConcurrency int // (64)

	// MembershipRecords > 0 adds the membership cell (issue 14): a fresh
	// quorumkv (the first durability) preloaded with that many records on
	// 3 storage nodes, RF 3, adds a 4th node under a YCSB A load of
	// MembershipConcurrency clients, uniform keys: the foreground before
	// and during the transfer, and the transfer rate.
	MembershipRecords     uint64
	MembershipConcurrency int // (64)
	// MembershipCPUProfile, when set, is a file the membership cell writes
	// a CPU profile of its during window to (from the 4th node's start to
	// its active status), so the transfer's cost is not mixed with the
	// preload's; the before window's goes to the same name with ".before"
	// added, for a side-by-side comparison. It cannot be combined with a
	// whole-run profile.
	MembershipCPUProfile string
	// TransferRate is the storage nodes' --transfer-rate in bytes/s (0:
	// storage.DefaultTransferRate; storage.Unlimited: no cap).
	TransferRate int64
	// NoCells skips the matrix cells: only the scale run and the
	// membership cell run (quorumkv bench --matrix membership).
	NoCells bool

	Coordinators int                // quorumkv coordinators, one per server from server 0 (1)
	Coordinator  coordinator.Config // tuning (NodeInflight, MaxBatch, …); stores are filled in

	Progress io.Writer    // progress bar; nil for none
	Logger   *slog.Logger // for the servers under test; default discards below error
	Mode     string       // label of the run ("full", "quick"), for the report
}

// knownNames sets an empty *names to all, and refuses a name not in all
// (what names the kind, for the error).
func knownNames(what string, names *[]string, all []string) error {
	if len(*names) == 0 {
		*names = all
	}
	for _, n := range *names {
		if !slices.Contains(all, n) {
			return fmt.Errorf("bench: unknown %s %q", what, n)
		}
	}
	return nil
}

func (c *Config) validate() error {
	if c.Dir == "" {
		return errors.New("bench: a scratch directory is required")
	}
	if c.Records == 0 {
		c.Records = 100_000
	}
	if c.ValueSize <= 0 {
		c.ValueSize = 256
	}
	for _, err := range []error{
		knownNames("system", &c.Systems, Systems),
		knownNames("workload", &c.Workloads, workloadNames()),
		knownNames("distribution", &c.Distributions, Distributions),
		knownNames("durability", &c.Durabilities, durabilityNames()),
	} {
		if err != nil {
			return err
		}
	}
	if len(c.Concurrency) == 0 {
		c.Concurrency = []int{1, 16, 64, 256}
	}
	for _, n := range c.Concurrency {
		if n < 1 || n > 4096 {
			return fmt.Errorf("bench: concurrency %d out of range 1..4096", n)
		}
	}
	if c.Warmup <= 0 {
		c.Warmup = time.Second
	}
	if c.Duration <= 0 {
		c.Duration = 3 * time.Second
	}
	if c.PreloadConcurrency <= 0 {
		c.PreloadConcurrency = 256
	}
	if c.ConnsPerServer <= 0 {
		c.ConnsPerServer = 2
	}
	if c.ScaleConcurrency <= 0 {
		c.ScaleConcurrency = 64
	}
	if c.MembershipConcurrency <= 0 {
		c.MembershipConcurrency = 64
	}
	if c.MembershipConcurrency > 4096 {
		return fmt.Errorf("bench: membership concurrency %d out of range 1..4096", c.MembershipConcurrency)
	}
	if c.TransferRate < 0 && c.TransferRate != storage.Unlimited {
		return fmt.Errorf("bench: transfer rate %d bytes/s: want positive, 0 for the default or storage.Unlimited", c.TransferRate)
	}
	if c.Coordinators <= 0 {
		c.Coordinators = 1
	}
	if c.Coordinators > clusterSize {
		return fmt.Errorf("bench: %d coordinators; at most one per server (%d)", c.Coordinators, clusterSize)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return nil
}

// cells counts the cells the run will measure.
func (c *Config) cells() int {
	n := 0
	for di := range c.Durabilities {
		if c.NoCells {
			break
		}
		for range c.Workloads {
			for dsi := range c.Distributions {
				for range c.Concurrency {
					for _, s := range c.Systems {
						if s != SysNATS || (di == 0 && dsi == 0) {
							n++
						}
					}
				}
			}
		}
	}
	if c.ScaleRecords > 0 && slices.Contains(c.Systems, SysQuorumKV) {
		n += 2
	}
	if c.membership() {
		n += 2 // before and during
	}
	return n
}

// membership reports whether the run includes the membership cell.
func (c *Config) membership() bool {
	return c.MembershipRecords > 0 && slices.Contains(c.Systems, SysQuorumKV)
}

// Run measures every cell of cfg and returns the report.
//
// Cells run durability by durability, each on a fresh cluster (JetStream's
// sync setting is per server); within one, the systems of a (workload,
// distribution, concurrency) run back to back so that whatever else the
// machine does affects them alike. The raw NATS floor depends on neither
// keys nor durability: it is measured once per workload and concurrency,
// on the first cluster, and serves as the floor of every row.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now(), Machine: describeMachine(), Config: describeConfig(&cfg)}
	perCell := cfg.Warmup + cfg.Duration
	p := newProgress(cfg.Progress, cfg.cells(), perCell)
	defer p.close()
	hists := make([]Histogram, max(slices.Max(cfg.Concurrency), cfg.ScaleConcurrency))

	for di, dname := range cfg.Durabilities {
		if cfg.NoCells {
			break
		}
		dur, _ := durabilityByName(dname)
		if err := runDurability(ctx, &cfg, rep, p, hists, dur, di == 0); err != nil {
			return rep, err
		}
	}
	if cfg.ScaleRecords > 0 && slices.Contains(cfg.Systems, SysQuorumKV) {
		if err := runScale(ctx, &cfg, rep, p, hists); err != nil {
			return rep, err
		}
	}
	if cfg.membership() {
		if err := runMembership(ctx, &cfg, rep, p); err != nil {
			return rep, err
		}
	}
	_, rep.PeakRSSBytes = processUsage()
	rep.Elapsed = time.Since(rep.Started)
	rep.Targets = evaluateTargets(rep)
	return rep, nil
}

// env is one cluster with the systems under test on it.
type env struct {
	c       *cluster
	conns   []*nats.Conn // client connections, round-robin over the servers
	systems map[string]system
	deploy  *deployment
}

func (e *env) close() {
	if e.deploy != nil {
		e.deploy.Close()
	}
	e.c.close()
}

// setup starts a cluster under dir and the systems wanted on it, preloading
// records into the stores.
func setup(ctx context.Context, cfg *Config, rep *Report, p *progress, dir string, dur Durability, systems []string, records uint64) (*env, error) {
	p.step("starting 3-server NATS cluster (%s)", dur.Name)
	c, err := startCluster(ctx, filepath.Join(dir, "nats"), dur.Fsync, cfg.Logger)
	if err != nil {
		return nil, err
	}
	e := &env{c: c, systems: map[string]system{}}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	for i := range cfg.ConnsPerServer * clusterSize {
		nc, err := c.connect(i%clusterSize, fmt.Sprintf("bench-client-%d", i))
		if err != nil {
			return nil, err
		}
		e.conns = append(e.conns, nc)
	}
	for _, s := range systems {
		var sys system
		switch s {
		case SysNATS:
			if sys, err = startNATSEcho(c, cfg.ValueSize); err != nil {
				return nil, err
			}
		case SysJetKV:
			p.step("creating JetStream KV bucket (R3, file)")
			if sys, err = startJetKV(ctx, c, "BENCH"); err != nil {
				return nil, err
			}
		case SysQuorumKV:
			p.step("starting quorumkv (3 storage nodes, %d coordinator(s))", cfg.Coordinators)
			d, err := deploy(ctx, c, deployOptions{
				Tenant: "bench", NodeDirs: filepath.Join(dir, "quorumkv"), Fsync: dur.Fsync,
				Coordinators: cfg.Coordinators, Coordinator: cfg.Coordinator, TransferRate: cfg.TransferRate,
			})
			if err != nil {
				return nil, err
			}
			e.deploy = d
			sys = &quorumKV{d: d}
		}
		if s != SysNATS {
			p.step("preloading %d records into %s (%s)", records, s, dur.Name)
			start := time.Now()
			if err := preload(ctx, sys, e.conns, records, cfg.PreloadConcurrency, cfg.ValueSize, p.fraction); err != nil {
				return nil, err
			}
			el := time.Since(start)
			p.step("letting %s settle after the preload (flushes, compactions)", s)
			settled := settle(ctx, settleIdle, settleMax)
			rep.Preloads = append(rep.Preloads, Preload{System: s, Durability: dur.Name, Records: records,
				Seconds: el.Seconds(), OpsPerSec: float64(records) / el.Seconds(), SettleSeconds: settled.Seconds()})
		}
		e.systems[s] = sys
	}
	ok = true
	return e, nil
}

func runDurability(ctx context.Context, cfg *Config, rep *Report, p *progress, hists []Histogram, dur Durability, first bool) error {
	dir := filepath.Join(cfg.Dir, dur.Name)
	var systems []string
	for _, s := range cfg.Systems {
		if s != SysNATS || first {
			systems = append(systems, s)
		}
	}
	e, err := setup(ctx, cfg, rep, p, dir, dur, systems, cfg.Records)
	if err != nil {
		return err
	}
	defer func() {
		e.close()
		_ = os.RemoveAll(dir)
	}()
	for _, wname := range cfg.Workloads {
		wl, _ := workloadByName(wname)
		for dsi, dist := range cfg.Distributions {
			gen, err := NewKeyGen(dist, cfg.Records)
			if err != nil {
				return err
			}
			for _, conc := range cfg.Concurrency {
				for _, s := range systems {
					if s == SysNATS && dsi != 0 {
						continue
					}
					durName := dur.Name
					if s == SysNATS {
						durName = "none"
					}
					p.step("%s %s %s %s c=%d", s, wl.Name, dist, durName, conc)
					row, err := runCell(ctx, e.systems[s], e.conns, cellSpec{
						workload: wl, gen: gen, concurrency: conc, warmup: cfg.Warmup, duration: cfg.Duration,
						valueSize: cfg.ValueSize, seed: uint64(len(rep.Rows) + 1),
					}, hists)
					if err != nil {
						return err
					}
					row.System, row.Workload, row.Distribution, row.Durability, row.Records = s, wl.Name, dist, durName, cfg.Records
					settleCell(ctx, &row)
					rep.Rows = append(rep.Rows, row)
					p.cellDone()
				}
			}
		}
	}
	return nil
}

// runScale preloads ScaleRecords into a fresh quorumkv and measures the
// scale cells.
func runScale(ctx context.Context, cfg *Config, rep *Report, p *progress, hists []Histogram) error {
	dur := Durabilities[0]
	dir := filepath.Join(cfg.Dir, "scale")
	e, err := setup(ctx, cfg, rep, p, dir, dur, []string{SysQuorumKV}, cfg.ScaleRecords)
	if err != nil {
		return err
	}
	defer func() {
		e.close()
		_ = os.RemoveAll(dir)
	}()
	gen := NewUniform(cfg.ScaleRecords)
	sc := &Scale{Records: cfg.ScaleRecords, BaseRecords: cfg.Records, Concurrency: cfg.ScaleConcurrency, Durability: dur.Name}
	for _, wname := range []string{"write-only", "ycsb-c"} {
		wl, _ := workloadByName(wname)
		p.step("%s %s uniform %s c=%d, %d records", SysQuorumKV, wl.Name, dur.Name, cfg.ScaleConcurrency, cfg.ScaleRecords)
		row, err := runCell(ctx, e.systems[SysQuorumKV], e.conns, cellSpec{
			workload: wl, gen: gen, concurrency: cfg.ScaleConcurrency, warmup: cfg.Warmup, duration: cfg.Duration,
			valueSize: cfg.ValueSize, seed: 1 << 32,
		}, hists)
		if err != nil {
			return err
		}
		row.System, row.Workload, row.Distribution, row.Durability, row.Records = SysQuorumKV, wl.Name, DistUniform, dur.Name, cfg.ScaleRecords
		settleCell(ctx, &row)
		sc.Rows = append(sc.Rows, row)
		p.cellDone()
	}
	for _, d := range e.deploy.nodeDirs() {
		b, err := dirBytes(d)
		if err != nil {
			return err
		}
		sc.StorageBytes += b
	}
	// Every one of the three nodes holds a replica of every key (RF 3).
	sc.BytesPerKeyPerReplica = float64(sc.StorageBytes) / float64(cfg.ScaleRecords) / clusterSize
	_, sc.PeakRSSBytes = processUsage()
	rep.Scale = sc
	return nil
}

// After a preload the stores still flush and compact what they took in;
// measuring then would charge that debt to the first cells. settle waits
// until the process has used less than settleIdle of a CPU over half a
// second, or settleMax passed.
const (
	settleIdle = 0.15
	settleMax  = 60 * time.Second
)

// settle waits for the process to go idle and returns how long it waited.
func settle(ctx context.Context, idle float64, limit time.Duration) time.Duration {
	waited, _ := settleCPU(ctx, idle, 500*time.Millisecond, limit)
	return waited
}

// settleUsage is the process CPU time settleCPU samples; a test replaces
// it to drive settleCPU without depending on the machine's load.
var settleUsage = func() time.Duration { cpu, _ := processUsage(); return cpu }

// settleCPU waits, window by window, until the process used less than
// idle of a CPU over one, or limit passed. It returns how long it waited
// and the CPU the process used while not yet idle (every window but the
// last, idle one).
func settleCPU(ctx context.Context, idle float64, window, limit time.Duration) (waited, busy time.Duration) {
	start := time.Now()
	for time.Since(start) < limit && ctx.Err() == nil {
		cpu0 := settleUsage()
		sleep(ctx, window)
		cpu1 := settleUsage()
		if float64(cpu1-cpu0)/float64(window) < idle {
			break
		}
		busy += cpu1 - cpu0
	}
	return time.Since(start), busy
}

// cellSettleMax bounds the wait after a cell.
const cellSettleMax = 30 * time.Second

// settleCell waits after a cell until the process is idle again and
// charges the CPU used meanwhile to row's CPU per operation. Work the
// cell's operations left behind (memtable flushes and compactions,
// replication, syncs) is part of their cost, and in this one process it
// would otherwise slow down whichever cell runs next, often another
// system's.
func settleCell(ctx context.Context, row *Row) {
	waited, busy := settleCPU(ctx, settleIdle, 200*time.Millisecond, cellSettleMax)
	row.SettleSeconds = waited.Seconds()
	if row.Ops > 0 {
		row.CPUSecPer1kOps += busy.Seconds() / float64(row.Ops) * 1000
	}
}

// cellSpec is what one cell measures.
type cellSpec struct {
	workload    Workload
	gen         KeyGen
	concurrency int
	warmup      time.Duration
	duration    time.Duration
	valueSize   int
	seed        uint64
}

// Phases of a cell.
const (
	phaseWarmup int32 = iota
	phaseMeasure
	phaseStop
)

// runCell runs spec's closed loop against sys and returns its row (without
// the labels). Operations that start and end inside the measured window
// count; the rest are warm-up or tail.
func runCell(ctx context.Context, sys system, conns []*nats.Conn, spec cellSpec, hists []Histogram) (Row, error) {
	workers := make([]worker, spec.concurrency)
	for i := range workers {
		w, err := sys.worker(i, conns[i%len(conns)])
		if err != nil {
			return Row{}, err
		}
		workers[i] = w
	}
	var (
		phase  atomic.Int32
		errs   atomic.Uint64
		errMu  sync.Mutex
		sample error
		wg     sync.WaitGroup
	)
	for i, w := range workers {
		h := &hists[i]
		h.Reset()
		value := makeValue(spec.valueSize, spec.seed<<16+uint64(i))
		r := newPCG(spec.seed<<16 + uint64(i))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var kb []byte
			for {
				p := phase.Load()
				if p == phaseStop {
					return
				}
				kb = appendRecordKey(kb[:0], spec.gen.Next(r))
				key := string(kb)
				read := r.Float64() < spec.workload.Reads
				start := time.Now()
				var err error
				if read {
					err = w.get(key)
				} else {
					err = w.put(key, value)
				}
				el := time.Since(start)
				if err != nil {
					if p == phaseMeasure {
						errs.Add(1)
					}
					errMu.Lock()
					if sample == nil {
						sample = err
					}
					errMu.Unlock()
					time.Sleep(time.Millisecond) // an error must not become a busy loop
					continue
				}
				if p == phaseMeasure && phase.Load() == phaseMeasure {
					h.Record(el)
				}
			}
		}()
	}
	sleep(ctx, spec.warmup)
	q, _ := sys.(*quorumKV)
	var rep0 uint64
	if q != nil {
		rep0 = q.repairs()
	}
	cpu0, _ := processUsage()
	t0 := time.Now()
	phase.Store(phaseMeasure)
	sleep(ctx, spec.duration)
	phase.Store(phaseStop)
	t1 := time.Now()
	cpu1, _ := processUsage()
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return Row{}, err
	}
	var all Histogram
	for i := range workers {
		all.Merge(&hists[i])
	}
	secs := t1.Sub(t0).Seconds()
	row := Row{
		Concurrency: spec.concurrency,
		Ops:         all.Count(),
		Errors:      errs.Load(),
		Seconds:     secs,
		OpsPerSec:   float64(all.Count()) / secs,
		P50US:       us(all.Quantile(0.50)),
		P99US:       us(all.Quantile(0.99)),
		P999US:      us(all.Quantile(0.999)),
		MeanUS:      us(all.Mean()),
		MaxUS:       us(all.Max()),
	}
	if all.Count() > 0 {
		row.CPUSecPer1kOps = (cpu1 - cpu0).Seconds() / float64(all.Count()) * 1000
	}
	if sample != nil {
		row.SampleError = sample.Error()
	}
	if q != nil {
		row.Repairs = q.repairs() - rep0
	}
	return row, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// newPCG returns a deterministic random source for seed.
func newPCG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }

// describeMachine records what the numbers were measured on.
func describeMachine() Machine {
	m := Machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if k, v, ok := cutField(line); ok && k == "model name" {
				m.CPUModel = v
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range splitLines(string(b)) {
			if k, v, ok := cutField(line); ok && k == "MemTotal" {
				m.Memory = v
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil && len(b) > 0 {
		m.LoadAvg = string(b[:len(b)-1])
	}
	return m
}

func describeConfig(c *Config) RunConfig {
	if c.NoCells {
		// Nothing of the matrix was measured: no tables, no targets for it.
		cc := *c
		cc.Workloads, cc.Distributions, cc.Durabilities, cc.Concurrency = nil, nil, nil, nil
		cc.Records = c.MembershipRecords // what the header's record count describes
		c = &cc
	}
	return RunConfig{
		Mode: c.Mode, Records: c.Records, ValueSize: c.ValueSize, Systems: c.Systems, Workloads: c.Workloads,
		Distributions: c.Distributions, Durabilities: c.Durabilities, Concurrency: c.Concurrency,
		WarmupSeconds: c.Warmup.Seconds(), DurationSeconds: c.Duration.Seconds(),
		ScaleRecords: c.ScaleRecords, ScaleConcurrency: c.ScaleConcurrency, Coordinators: c.Coordinators,
		ConnsPerServer: c.ConnsPerServer, MembershipRecords: c.MembershipRecords, MembershipConcurrency: c.MembershipConcurrency,
		TransferRate: c.TransferRate,
	}
}
