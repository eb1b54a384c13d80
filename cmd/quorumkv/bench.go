package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/quorumkv/quorumkv/bench"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/storage"
)

func runBench(args []string) error {
	fs := newFlags("bench", "", "Measure quorumkv (RF 3, quorum) against JetStream KV (R3) and raw NATS request-reply, in one\n"+
		"process and one run, on an embedded 3-server NATS cluster: YCSB-style workloads, uniform and zipfian\n"+
		"keys, several client counts, two matched durability settings. Prints a table with ratios;\n"+
		"--json and --html write the rows and a report with charts.")
	var bf benchFlags
	bf.register(fs)
	var lf logFlags
	lf.register(fs)
	lf.level = "error"
	fs.Lookup("log-level").DefValue = "error"
	if _, err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := bf.config(fs)
	if err != nil {
		return err
	}
	if cfg.Logger, err = lf.logger(os.Stderr); err != nil {
		return err
	}
	cleanup, err := scratchDir(&cfg.Dir)
	if err != nil {
		return err
	}
	defer cleanup()
	stopProfile, err := bench.StartCPUProfile(bf.cpuProfile)
	if err != nil {
		return err
	}
	defer stopProfile()

	ctx, stop := signalContext()
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bench interrupted: %w", err)
		}
		return fmt.Errorf("bench: %w", err)
	}
	if bf.memProfile != "" {
		if err := writeFile(bf.memProfile, func(w io.Writer) error { return pprof.Lookup("allocs").WriteTo(w, 0) }); err != nil {
			return err
		}
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	for _, out := range []struct {
		path  string
		write func(io.Writer) error
	}{{bf.jsonOut, rep.WriteJSON}, {bf.htmlOut, rep.WriteHTML}} {
		if out.path != "" {
			if err := writeFile(out.path, out.write); err != nil {
				return err
			}
		}
	}
	return nil
}

// benchFlags are the flags of quorumkv bench.
type benchFlags struct {
	quick                                 bool
	matrix, jsonOut, htmlOut              string
	systems, workloads, dists, durability string
	concurrency, dataDir                  string
	cpuProfile, memProfile                string
	transferRate                          float64 // MiB/s; 0 = unlimited
	cfg                                   bench.Config
}

func (b *benchFlags) register(fs *flag.FlagSet) {
	b.cfg = bench.Config{Records: 100_000, ValueSize: 256, Duration: 2500 * time.Millisecond, Warmup: 500 * time.Millisecond,
		ScaleRecords: 1_000_000, MembershipRecords: 1_000_000, MembershipConcurrency: 64,
		Coordinators: 1, Coordinator: coordinator.DefaultConfig()}
	c := &b.cfg
	fs.BoolVar(&b.quick, "quick", false, "smoke run in under a minute: 10k records, write-only and YCSB C, uniform, 1 and 64 clients, 1s cells, no scale run, no membership cell")
	fs.StringVar(&b.matrix, "matrix", "full", "full (every workload, distribution and client count), targets (write-only and YCSB C, uniform, 1 and 64 clients) or membership (only the membership cell)")
	fs.StringVar(&b.jsonOut, "json", "", "write the rows as JSON to `FILE`")
	fs.StringVar(&b.htmlOut, "html", "", "write a self-contained HTML report with charts to `FILE`")
	fs.Uint64Var(&c.Records, "records", c.Records, "records preloaded into each system")
	fs.IntVar(&c.ValueSize, "value-size", c.ValueSize, "bytes per value")
	fs.DurationVar(&c.Duration, "duration", c.Duration, "measured time per cell")
	fs.DurationVar(&c.Warmup, "warmup", c.Warmup, "unmeasured warm-up per cell")
	fs.StringVar(&b.systems, "systems", strings.Join(bench.Systems, ","), "systems to measure")
	fs.StringVar(&b.workloads, "workloads", "", "workloads (write-only, ycsb-c, ycsb-b, ycsb-a); default per --matrix")
	fs.StringVar(&b.dists, "distributions", "", "key distributions (uniform, zipfian); default per --matrix")
	fs.StringVar(&b.durability, "durability", "async,fsync", "durability pairs: async (quorumkv --fsync=false vs JetStream default), fsync (fsync per batch vs sync_interval always)")
	fs.StringVar(&b.concurrency, "concurrency", "", "closed-loop clients per cell, comma-separated; default per --matrix")
	fs.Uint64Var(&c.ScaleRecords, "scale-records", c.ScaleRecords, "records of the scale run (quorumkv, 64 clients); 0 skips it")
	fs.Uint64Var(&c.MembershipRecords, "membership-records", c.MembershipRecords, "records of the membership cell (quorumkv on 3 nodes, a 4th added under a YCSB A load); 0 skips it")
	fs.IntVar(&c.MembershipConcurrency, "membership-concurrency", c.MembershipConcurrency, "closed-loop YCSB A clients of the membership cell")
	fs.Float64Var(&b.transferRate, "transfer-rate", float64(storage.DefaultTransferRate)/(1<<20), "storage nodes: MiB per second a partition transfer into a node pulls at most, as storage --transfer-rate; 0 = unlimited")
	fs.IntVar(&c.Coordinators, "coordinators", c.Coordinators, "quorumkv coordinators, one per server (1..3)")
	fs.IntVar(&c.Coordinator.NodeInflight, "node-inflight", c.Coordinator.NodeInflight, "coordinator: batches in flight per storage node and operation")
	fs.IntVar(&c.Coordinator.MaxBatch, "max-batch", c.Coordinator.MaxBatch, "coordinator: replica messages per batch at most")
	fs.StringVar(&b.dataDir, "data", "", "scratch directory (default: a new temporary directory, removed afterwards)")
	fs.StringVar(&b.cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to `FILE`")
	fs.StringVar(&c.MembershipCPUProfile, "membership-cpuprofile", "", "write a CPU profile of the membership cell's transfer window (the 4th node's start to its active status) to `FILE`, and of its before window to FILE.before; not with --cpuprofile")
	fs.StringVar(&b.memProfile, "memprofile", "", "write an allocation profile of the whole run to `FILE` at the end")
}

// config is the run the parsed flags of fs ask for: --matrix and --quick
// choose the cells, and flags given explicitly override them. bench.Run
// checks the rest.
func (b *benchFlags) config(fs *flag.FlagSet) (bench.Config, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg := b.cfg
	if b.cpuProfile != "" && cfg.MembershipCPUProfile != "" {
		return cfg, usagef("bench: --cpuprofile and --membership-cpuprofile cannot both be given (the runtime keeps one CPU profile at a time)")
	}
	cfg.Durabilities, cfg.Systems, cfg.Dir = splitList(b.durability), splitList(b.systems), b.dataDir
	cfg.Progress, cfg.Mode = os.Stderr, b.matrix
	targets := func() {
		cfg.Workloads, cfg.Distributions, cfg.Concurrency = []string{"write-only", "ycsb-c"}, []string{bench.DistUniform}, []int{1, 64}
	}
	switch b.matrix {
	case "full":
	case "targets":
		targets()
	case "membership":
		cfg.NoCells = true
		if !set["scale-records"] {
			cfg.ScaleRecords = 0
		}
	default:
		return cfg, usagef("--matrix %q: use full, targets or membership", b.matrix)
	}
	if b.quick {
		cfg.Mode = "quick"
		targets()
		for name, apply := range map[string]func(){
			"records":            func() { cfg.Records = 10_000 },
			"duration":           func() { cfg.Duration = time.Second },
			"warmup":             func() { cfg.Warmup = 300 * time.Millisecond },
			"scale-records":      func() { cfg.ScaleRecords = 0 },
			"membership-records": func() { cfg.MembershipRecords = 0 },
		} {
			if !set[name] {
				apply()
			}
		}
	}
	switch {
	case b.transferRate < 0:
		return cfg, usagef("--transfer-rate %v is negative (0 = unlimited)", b.transferRate)
	case b.transferRate == 0:
		cfg.TransferRate = storage.Unlimited
	default:
		cfg.TransferRate = max(int64(b.transferRate*(1<<20)), 1)
	}
	if b.workloads != "" {
		cfg.Workloads = splitList(b.workloads)
	}
	if b.dists != "" {
		cfg.Distributions = splitList(b.dists)
	}
	if b.concurrency != "" {
		cfg.Concurrency = nil
		for _, s := range splitList(b.concurrency) {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return cfg, usagef("--concurrency %q: want positive integers, comma-separated", b.concurrency)
			}
			cfg.Concurrency = append(cfg.Concurrency, n)
		}
	}
	return cfg, nil
}

// scratchDir makes *dir, or a new temporary directory when it is empty;
// cleanup removes the temporary one.
func scratchDir(dir *string) (cleanup func(), err error) {
	if *dir != "" {
		if err := os.MkdirAll(*dir, 0o755); err != nil {
			return nil, fmt.Errorf("scratch directory: %w", err)
		}
		return func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "quorumkv-bench-")
	if err != nil {
		return nil, fmt.Errorf("scratch directory: %w", err)
	}
	*dir = tmp
	return func() { _ = os.RemoveAll(tmp) }, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
