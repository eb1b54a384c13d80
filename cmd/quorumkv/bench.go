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
)

func runBench(args []string) error {
	fs := newFlags("bench", "", "Measure quorumkv (RF 3, quorum) against JetStream KV (R3) and raw NATS request-reply, in one\n"+
		"process and one run, on an embedded 3-server NATS cluster: YCSB-style workloads, uniform and zipfian\n"+
		"keys, several client counts, two matched durability settings. Prints a table with ratios;\n"+
		"--json and --html write the rows and a report with charts.")
	quick := fs.Bool("quick", false, "smoke run in under a minute: 10k records, write-only and YCSB C, uniform, 1 and 64 clients, 1s cells, no scale run")
	matrix := fs.String("matrix", "full", "full (every workload, distribution and client count) or targets (write-only and YCSB C, uniform, 1 and 64 clients)")
	jsonOut := fs.String("json", "", "write the rows as JSON to `FILE`")
	htmlOut := fs.String("html", "", "write a self-contained HTML report with charts to `FILE`")
	records := fs.Uint64("records", 100_000, "records preloaded into each system")
	valueSize := fs.Int("value-size", 256, "bytes per value")
	duration := fs.Duration("duration", 2500*time.Millisecond, "measured time per cell")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "unmeasured warm-up per cell")
	systems := fs.String("systems", strings.Join(bench.Systems, ","), "systems to measure")
	workloads := fs.String("workloads", "", "workloads (write-only, ycsb-c, ycsb-b, ycsb-a); default per --matrix")
	dists := fs.String("distributions", "", "key distributions (uniform, zipfian); default per --matrix")
	durability := fs.String("durability", "async,fsync", "durability pairs: async (quorumkv --fsync=false vs JetStream default), fsync (fsync per batch vs sync_interval always)")
	concurrency := fs.String("concurrency", "", "closed-loop clients per cell, comma-separated; default per --matrix")
	scaleRecords := fs.Uint64("scale-records", 1_000_000, "records of the scale run (quorumkv, 64 clients); 0 skips it")
	coordinators := fs.Int("coordinators", 1, "quorumkv coordinators, one per server (1..3)")
	nodeInflight := fs.Int("node-inflight", 0, "coordinator: batches in flight per storage node and operation (0 = default)")
	maxBatch := fs.Int("max-batch", 0, "coordinator: replica messages per batch at most (0 = default)")
	dataDir := fs.String("data", "", "scratch directory (default: a new temporary directory, removed afterwards)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `FILE`")
	memProfile := fs.String("memprofile", "", "write an allocation profile of the whole run to `FILE` at the end")
	var lf logFlags
	lf.register(fs)
	lf.level = "error"
	fs.Lookup("log-level").DefValue = "error"
	if _, err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	cfg := bench.Config{
		Records: *records, ValueSize: *valueSize, Warmup: *warmup, Duration: *duration,
		Durabilities: splitList(*durability), Systems: splitList(*systems),
		ScaleRecords: *scaleRecords, Coordinators: *coordinators,
		Coordinator: coordinator.Config{NodeInflight: *nodeInflight, MaxBatch: *maxBatch},
		Progress:    os.Stderr, Mode: *matrix,
	}
	switch *matrix {
	case "full":
	case "targets":
		cfg.Workloads, cfg.Distributions, cfg.Concurrency = []string{"write-only", "ycsb-c"}, []string{bench.DistUniform}, []int{1, 64}
	default:
		return usagef("--matrix %q: use full or targets", *matrix)
	}
	if *quick {
		cfg.Mode = "quick"
		cfg.Workloads, cfg.Distributions, cfg.Concurrency = []string{"write-only", "ycsb-c"}, []string{bench.DistUniform}, []int{1, 64}
		if !set["records"] {
			cfg.Records = 10_000
		}
		if !set["duration"] {
			cfg.Duration = time.Second
		}
		if !set["warmup"] {
			cfg.Warmup = 300 * time.Millisecond
		}
		if !set["scale-records"] {
			cfg.ScaleRecords = 0
		}
	}
	if *workloads != "" {
		cfg.Workloads = splitList(*workloads)
	}
	if *dists != "" {
		cfg.Distributions = splitList(*dists)
	}
	if *concurrency != "" {
		cfg.Concurrency = nil
		for _, s := range splitList(*concurrency) {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				return usagef("--concurrency %q: want positive integers, comma-separated", *concurrency)
			}
			cfg.Concurrency = append(cfg.Concurrency, n)
		}
	}
	if *coordinators < 1 || *coordinators > 3 {
		return usagef("--coordinators %d: use 1..3", *coordinators)
	}
	log, err := lf.logger(os.Stderr)
	if err != nil {
		return err
	}
	cfg.Logger = log

	cfg.Dir = *dataDir
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "quorumkv-bench-")
		if err != nil {
			return fmt.Errorf("scratch directory: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	} else if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("scratch directory: %w", err)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, stop := signalContext()
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("bench interrupted: %w", err)
		}
		return fmt.Errorf("bench: %w", err)
	}
	if *memProfile != "" {
		if err := writeFile(*memProfile, func(w io.Writer) error { return pprof.Lookup("allocs").WriteTo(w, 0) }); err != nil {
			return err
		}
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	if *jsonOut != "" {
		if err := writeFile(*jsonOut, rep.WriteJSON); err != nil {
			return err
		}
	}
	if *htmlOut != "" {
		if err := writeFile(*htmlOut, rep.WriteHTML); err != nil {
			return err
		}
	}
	return nil
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
