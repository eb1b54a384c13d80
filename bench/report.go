package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is everything a run measured.
type Report struct {
	Started      time.Time
	Elapsed      time.Duration
	Machine      Machine
	Config       RunConfig
	Rows         []Row
	Preloads     []Preload
	Scale        *Scale
	Membership   *Membership // adding a 4th node under load (issue 14)
	PeakRSSBytes int64       // getrusage ru_maxrss of the one process that ran everything
	Targets      []Target
}

// Row is one measured cell. The JSON names are the report's contract.
type Row struct {
	System         string  `json:"system"`
	Workload       string  `json:"workload"`
	Distribution   string  `json:"distribution"`
	Durability     string  `json:"durability"`
	Concurrency    int     `json:"concurrency"`
	OpsPerSec      float64 `json:"ops_per_sec"`
	P50US          float64 `json:"p50_us"`
	P99US          float64 `json:"p99_us"`
	P999US         float64 `json:"p999_us"`
	MeanUS         float64 `json:"mean_us"`
	MaxUS          float64 `json:"max_us"`
	CPUSecPer1kOps float64 `json:"cpu_s_per_1k_ops"`
	Records        uint64  `json:"records"`
	Ops            uint64  `json:"ops"`
	Errors         uint64  `json:"errors"`
	Seconds        float64 `json:"seconds"`
	SampleError    string  `json:"sample_error,omitempty"`
	// Repairs is how many read repairs and hints quorumkv's coordinators
	// asked for during the measured window (replicas that lagged).
	Repairs uint64 `json:"repairs,omitempty"`
	// SettleSeconds is how long the process took to go idle after the
	// cell; the CPU it used meanwhile is in CPUSecPer1kOps.
	SettleSeconds float64 `json:"settle_seconds"`
	// Cell and Phase name the rows of the membership cell: cell
	// "membership", phase "before" (3 nodes, no transfer) or "during"
	// (from the 4th node's registration to its status active), which
	// carries the joining node's Transfer.
	Cell     string              `json:"cell,omitempty"`
	Phase    string              `json:"phase,omitempty"`
	Transfer *MembershipTransfer `json:"transfer,omitempty"`
}

// Preload is how long loading the records took.
type Preload struct {
	System        string
	Durability    string
	Records       uint64
	Seconds       float64
	OpsPerSec     float64
	SettleSeconds float64 // waited afterwards for the process to go idle
}

// Scale is the large-record-count run.
type Scale struct {
	Records               uint64
	BaseRecords           uint64
	Concurrency           int
	Durability            string
	Rows                  []Row
	StorageBytes          int64   // du of the three storage nodes' data directories
	BytesPerKeyPerReplica float64 // StorageBytes / records / 3
	PeakRSSBytes          int64   // process peak RSS when the scale run ended
}

// Machine describes where the run happened.
type Machine struct {
	OS, Arch   string
	CPUs       int
	GOMAXPROCS int
	CPUModel   string
	Memory     string
	Go         string
	LoadAvg    string // /proc/loadavg at the start
}

// RunConfig is the part of Config a report shows.
type RunConfig struct {
	Mode             string
	Records          uint64
	ValueSize        int
	Systems          []string
	Workloads        []string
	Distributions    []string
	Durabilities     []string
	Concurrency      []int
	WarmupSeconds    float64
	DurationSeconds  float64
	ScaleRecords     uint64
	ScaleConcurrency int
	Coordinators     int
	ConnsPerServer   int
	// The membership cell: records (0: not run), clients, and the storage
	// nodes' transfer rate cap in bytes/s (0: the storage default;
	// storage.Unlimited: none).
	MembershipRecords     uint64
	MembershipConcurrency int
	TransferRate          int64
}

// Target is one goal (issues 6 and 14), checked against the run.
type Target struct {
	Name     string
	Goal     string // "≥ 1.00×"
	Measured float64
	Unit     string // of Measured: "" for a ratio (shown as 0.85×), else e.g. "MB/s"
	Met      bool
	Missing  bool // the run did not measure the cells it needs
	Detail   string
}

// find returns the row of a cell, or nil.
func (r *Report) find(system, workload, dist, durability string, conc int) *Row {
	if system == SysNATS {
		dist, durability = "", "none"
	}
	for i := range r.Rows {
		x := &r.Rows[i]
		if x.System == system && x.Workload == workload && (dist == "" || x.Distribution == dist) && x.Durability == durability && x.Concurrency == conc {
			return x
		}
	}
	return nil
}

// ratios returns quorumkv/jetstream-kv and system/nats-reqrep throughput
// ratios for row x (0 when not applicable).
func (r *Report) ratios(x *Row) (vsJS, vsNATS float64) {
	if x.System == SysQuorumKV {
		if js := r.find(SysJetKV, x.Workload, x.Distribution, x.Durability, x.Concurrency); js != nil && js.OpsPerSec > 0 {
			vsJS = x.OpsPerSec / js.OpsPerSec
		}
	}
	if x.System != SysNATS {
		if n := r.find(SysNATS, x.Workload, "", "", x.Concurrency); n != nil && n.OpsPerSec > 0 {
			vsNATS = x.OpsPerSec / n.OpsPerSec
		}
	}
	return vsJS, vsNATS
}

func evaluateTargets(r *Report) []Target {
	var ts []Target
	ratio := func(name, goal string, atLeast bool, limit float64, a, b *Row, m metric, what string) {
		t := Target{Name: name, Goal: goal}
		if a == nil || b == nil || m.get(b) == 0 {
			t.Missing = true
			t.Detail = "not measured in this run"
			ts = append(ts, t)
			return
		}
		t.Measured = m.get(a) / m.get(b)
		if atLeast {
			t.Met = t.Measured >= limit
		} else {
			t.Met = t.Measured <= limit
		}
		t.Detail = fmt.Sprintf("%s: %s %s vs %s %s", what, a.System, m.show(m.get(a)), b.System, m.show(m.get(b)))
		ts = append(ts, t)
	}
	ops := metric{func(x *Row) float64 { return x.OpsPerSec }, func(v float64) string { return fmt.Sprintf("%.0f ops/s", v) }}
	p50 := metric{func(x *Row) float64 { return x.P50US }, func(v float64) string { return "p50 " + fmtUS(v) }}
	// Throughput against JetStream KV is a target per matched durability
	// pair. The raw NATS floor has no storage, so the targets against it
	// are taken with durability "async": with fsync, a single put's latency
	// is the disk's (JetStream's too), and gets do not depend on it.
	for _, d := range r.Config.Durabilities {
		q := func(w string, c int) *Row { return r.find(SysQuorumKV, w, DistUniform, d, c) }
		ratio("["+d+"] quorum put vs JetStream KV R3 put, 64 clients", "≥ 1.00×", true, 1.0,
			q("write-only", 64), r.find(SysJetKV, "write-only", DistUniform, d, 64), ops, "write-only uniform")
		ratio("["+d+"] quorum get vs JetStream KV R3 get, 64 clients", "≥ 1.00×", true, 1.0,
			q("ycsb-c", 64), r.find(SysJetKV, "ycsb-c", DistUniform, d, 64), ops, "YCSB C uniform")
		if d != Durabilities[0].Name {
			continue
		}
		ratio("["+d+"] quorum get vs raw NATS request-reply, 64 clients", "≥ 0.50×", true, 0.5,
			q("ycsb-c", 64), r.find(SysNATS, "ycsb-c", "", "", 64), ops, "YCSB C uniform")
		ratio("["+d+"] single-client put p50 vs raw NATS p50", "≤ 3.00×", false, 3.0,
			q("write-only", 1), r.find(SysNATS, "write-only", "", "", 1), p50, "write-only, 1 client")
		ratio("["+d+"] single-client get p50 vs raw NATS p50", "≤ 2.50×", false, 2.5,
			q("ycsb-c", 1), r.find(SysNATS, "ycsb-c", "", "", 1), p50, "YCSB C, 1 client")
	}
	if s := r.Scale; s != nil {
		for _, sr := range s.Rows {
			base := r.find(SysQuorumKV, sr.Workload, DistUniform, s.Durability, s.Concurrency)
			ratio(fmt.Sprintf("[%s] %s at %s records vs %s records, %d clients", s.Durability, sr.Workload, count(s.Records), count(s.BaseRecords), s.Concurrency),
				"≥ 0.80×", true, 0.8, &sr, base, ops, sr.Workload+" uniform")
		}
	}
	if m := r.Membership; m != nil {
		ts = append(ts, membershipTargets(m)...)
	}
	return ts
}

// membershipTargets are issue 14's goals for adding a 4th node under a
// YCSB A load: the transfer runs at 50 MB/s or more, and the foreground
// keeps at least 0.7× of its throughput without a transfer.
func membershipTargets(m *Membership) []Target {
	x := &m.Transfer
	rate := Target{Name: fmt.Sprintf("[%s] membership: transfer rate adding a 4th node, %d clients", m.Durability, m.Concurrency),
		Goal: fmt.Sprintf("≥ %.0f MB/s", transferTargetMBps), Unit: "MB/s"}
	if x.Bytes <= 0 || x.Seconds <= 0 {
		rate.Missing, rate.Detail = true, "the joining node reported no bytes received"
	} else {
		rate.Measured = x.MBPerSec
		rate.Met = rate.Measured >= transferTargetMBps
		rate.Detail = fmt.Sprintf("%s, %d keys in %.1fs (%.0f keys/s), --transfer-rate %s; active %.1fs after registering",
			bytesIEC(x.Bytes), x.Keys, x.Seconds, x.KeysPerSec, fmtRateLimit(x.RateLimit), x.ActiveSeconds)
	}
	fg := Target{Name: fmt.Sprintf("[%s] membership: %s throughput during the transfer vs before, %d clients", m.Durability, m.Workload, m.Concurrency),
		Goal: fmt.Sprintf("≥ %.2f×", membershipRatioGoal)}
	if m.Before.OpsPerSec <= 0 || m.During.Seconds <= 0 {
		fg.Missing, fg.Detail = true, "not measured in this run"
	} else {
		fg.Measured = m.During.OpsPerSec / m.Before.OpsPerSec
		fg.Met = fg.Measured >= membershipRatioGoal
		fg.Detail = fmt.Sprintf("during %.0f ops/s, p99 %s vs before %.0f ops/s, p99 %s", m.During.OpsPerSec, fmtUS(m.During.P99US), m.Before.OpsPerSec, fmtUS(m.Before.P99US))
	}
	return []Target{rate, fg}
}

// value shows t's measured figure.
func (t *Target) value() string {
	switch {
	case t.Missing:
		return "-"
	case t.Unit != "":
		return fmt.Sprintf("%.1f %s", t.Measured, t.Unit)
	}
	return fmt.Sprintf("%.2f×", t.Measured)
}

// metric is what a target compares: a row's value and how to show it.
type metric struct {
	get  func(*Row) float64
	show func(float64) string
}

// WriteJSON writes the rows, scale and membership rows included, as a
// JSON array. The membership rows carry cell "membership" and a phase;
// the "during" row carries the joining node's transfer figures.
func (r *Report) WriteJSON(w io.Writer) error {
	rows := append([]Row(nil), r.Rows...)
	if r.Scale != nil {
		rows = append(rows, r.Scale.Rows...)
	}
	if m := r.Membership; m != nil {
		during := m.During
		during.Transfer = &m.Transfer
		rows = append(rows, m.Before, during)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rows); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}

// WriteTable writes the report for a terminal.
func (r *Report) WriteTable(w io.Writer) error {
	ew := &errWriter{w: w}
	m := r.Machine
	fmt.Fprintf(ew, "quorumkv bench (%s): %d records of %d bytes, %gs per cell after %gs warm-up, one process, embedded 3-server NATS cluster\n",
		r.Config.Mode, r.Config.Records, r.Config.ValueSize, r.Config.DurationSeconds, r.Config.WarmupSeconds)
	fmt.Fprintf(ew, "machine: %s/%s, %d CPUs (GOMAXPROCS %d) %s, %s, %s; load at start %s\n", m.OS, m.Arch, m.CPUs, m.GOMAXPROCS, m.CPUModel, m.Memory, m.Go, m.LoadAvg)
	if len(r.Config.Durabilities) > 0 { // matrix cells were measured
		fmt.Fprintf(ew, "quorumkv: RF 3, consistency quorum, %d coordinator(s); JetStream KV: R3, file storage; nats-reqrep: echo queue group, one responder per server\n", r.Config.Coordinators)
		fmt.Fprintf(ew, "cpu s/1k = process CPU (user+sys, getrusage) per 1000 operations; ×js = quorumkv/jetstream-kv ops/s; ×nats = system/nats-reqrep ops/s\n")
	}
	for _, d := range r.Config.Durabilities {
		dur, _ := durabilityByName(d)
		fmt.Fprintf(ew, "\ndurability %s: %s\n", d, dur.Label)
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tkeys\tclients\tsystem\tops/s\tp50\tp99\tp99.9\tcpu s/1k\t×js\t×nats\terrors\t")
		prev := ""
		for _, wl := range r.Config.Workloads {
			for _, dist := range r.Config.Distributions {
				for _, c := range r.Config.Concurrency {
					for _, s := range r.Config.Systems {
						x := r.find(s, wl, dist, d, c)
						if x == nil {
							continue
						}
						group := wl + dist + fmt.Sprint(c)
						if prev != "" && group != prev {
							fmt.Fprintln(tw, "\t\t\t\t\t\t\t\t\t\t\t\t")
						}
						prev = group
						vsJS, vsNATS := r.ratios(x)
						fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.0f\t%s\t%s\t%s\t%.3f\t%s\t%s\t%s\t\n",
							wl, dist, c, s, x.OpsPerSec, fmtUS(x.P50US), fmtUS(x.P99US), fmtUS(x.P999US), x.CPUSecPer1kOps,
							fmtRatio(vsJS), fmtRatio(vsNATS), fmtErrors(x))
					}
				}
			}
		}
		_ = tw.Flush()
	}
	if len(r.Preloads) > 0 {
		fmt.Fprintf(ew, "\npreload:")
		for _, p := range r.Preloads {
			fmt.Fprintf(ew, "  %s/%s %s in %.1fs (%.0f/s, then %.1fs to settle);", p.System, p.Durability, count(p.Records), p.Seconds, p.OpsPerSec, p.SettleSeconds)
		}
		fmt.Fprintln(ew)
	}
	if s := r.Scale; s != nil {
		fmt.Fprintf(ew, "\nscale: quorumkv with %s records (%s), %d clients, uniform\n", count(s.Records), s.Durability, s.Concurrency)
		for _, x := range s.Rows {
			base := r.find(SysQuorumKV, x.Workload, DistUniform, s.Durability, s.Concurrency)
			rel := "-"
			if base != nil && base.OpsPerSec > 0 {
				rel = fmt.Sprintf("%.2f× the %s-record %.0f ops/s", x.OpsPerSec/base.OpsPerSec, count(s.BaseRecords), base.OpsPerSec)
			}
			fmt.Fprintf(ew, "  %-10s %8.0f ops/s  p50 %s  p99 %s  p99.9 %s  cpu s/1k %.3f  (%s)%s\n", x.Workload, x.OpsPerSec, fmtUS(x.P50US), fmtUS(x.P99US), fmtUS(x.P999US), x.CPUSecPer1kOps, rel, errNote(x))
		}
		fmt.Fprintf(ew, "  storage: %s in the 3 node data dirs (du) = %.0f bytes per key per replica\n", bytesIEC(s.StorageBytes), s.BytesPerKeyPerReplica)
		fmt.Fprintf(ew, "  peak RSS: %s — of the one process running all three nats-servers, JetStream, the storage nodes, the coordinator(s) and the clients (getrusage ru_maxrss)\n", bytesIEC(s.PeakRSSBytes))
	}
	if m := r.Membership; m != nil {
		r.writeMembership(ew, m)
	}
	fmt.Fprintf(ew, "\nprocess peak RSS over the whole run: %s (getrusage ru_maxrss; one process runs everything)\n", bytesIEC(r.PeakRSSBytes))
	if len(r.Targets) > 0 {
		fmt.Fprintln(ew, "\ntargets (issues 6 and 14):")
		for _, t := range r.Targets {
			mark := "MET   "
			switch {
			case t.Missing:
				mark = "n/a   "
			case !t.Met:
				mark = "MISSED"
			}
			fmt.Fprintf(ew, "  %s %-62s %6s (goal %s)  %s\n", mark, t.Name, t.value(), t.Goal, t.Detail)
		}
	}
	fmt.Fprintf(ew, "\nran %s\n", r.Elapsed.Round(time.Second))
	return ew.err
}

// writeMembership writes the membership cell: the foreground before and
// during the transfer side by side, then the transfer.
func (r *Report) writeMembership(ew io.Writer, m *Membership) {
	x := &m.Transfer
	fmt.Fprintf(ew, "\nmembership: quorumkv (%s) with %s records of %d bytes on 3 storage nodes, RF 3; %s added under %s, %d clients, uniform; --transfer-rate %s\n",
		m.Durability, count(m.Records), m.ValueSize, x.Node, m.Workload, m.Concurrency, fmtRateLimit(x.RateLimit))
	for _, row := range []struct {
		name string
		x    *Row
	}{{"before", &m.Before}, {"during", &m.During}} {
		rel := ""
		if row.x == &m.During && m.Before.OpsPerSec > 0 {
			rel = fmt.Sprintf("  (%.2f× before)", m.During.OpsPerSec/m.Before.OpsPerSec)
		}
		// The CPUs the whole process used: on a shared machine, what it got.
		cores := row.x.CPUSecPer1kOps * row.x.OpsPerSec / 1000
		fmt.Fprintf(ew, "  %-7s %5.1fs %8.0f ops/s  p50 %s  p99 %s  p99.9 %s  cpu s/1k %.3f (%.2f CPUs)%s%s\n", row.name, row.x.Seconds, row.x.OpsPerSec,
			fmtUS(row.x.P50US), fmtUS(row.x.P99US), fmtUS(row.x.P999US), row.x.CPUSecPer1kOps, cores, rel, errNote(*row.x))
	}
	fmt.Fprintf(ew, "  transfer into %s: %s (%d keys, %d partitions) in %.1fs = %.1f MB/s, %.0f keys/s (peak over 10s %.1f MB/s); active %.1fs after registering\n",
		x.Node, bytesIEC(x.Bytes), x.Keys, x.PartitionsTotal, x.Seconds, x.MBPerSec, x.KeysPerSec, x.PeakRateBytes/1e6, x.ActiveSeconds)
	if x.CPUSeconds > 0 {
		// Both goals at once need the transfer's rate within the CPU the
		// foreground may give up: 0.3 of what the before window used.
		need := 0.0
		if cores := m.Before.CPUSecPer1kOps * m.Before.OpsPerSec / 1000; cores > 0 {
			need = 50 / (0.3 * cores)
		}
		fmt.Fprintf(ew, "  transfer CPU ≈ %.1f s (during less its operations at the before cost) = %.0f MB per CPU s; both goals at once need ≈ %.0f here\n", x.CPUSeconds, x.MBPerCPUSecond, need)
	}
}

func fmtRatio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", v)
}

func fmtErrors(x *Row) string {
	if x.Errors == 0 {
		return "0"
	}
	return fmt.Sprintf("%d", x.Errors)
}

func errNote(x Row) string {
	if x.Errors == 0 {
		return ""
	}
	return fmt.Sprintf("  %d errors, e.g. %s", x.Errors, x.SampleError)
}

// fmtUS formats microseconds for people.
func fmtUS(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v < 1000:
		return fmt.Sprintf("%.0fµs", v)
	case v < 10_000:
		return fmt.Sprintf("%.2fms", v/1000)
	case v < 1_000_000:
		return fmt.Sprintf("%.1fms", v/1000)
	}
	return fmt.Sprintf("%.2fs", v/1e6)
}

func count(n uint64) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

func bytesIEC(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := int64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

func splitLines(s string) []string { return strings.Split(s, "\n") }

// cutField splits "key : value" lines of /proc files.
func cutField(line string) (k, v string, ok bool) {
	k, v, ok = strings.Cut(line, ":")
	return strings.TrimSpace(k), strings.TrimSpace(v), ok
}

// errWriter remembers the first write error.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return len(p), nil
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, nil
}
