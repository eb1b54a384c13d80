package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"strings"
	"testing"
	"time"
)

// sampleReport is a small report with every kind of row.
func sampleReport() *Report {
	r := &Report{
		Started: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
		Elapsed: 42 * time.Second,
		Machine: Machine{OS: "linux", Arch: "amd64", CPUs: 2, GOMAXPROCS: 2, Go: "go1.26"},
		Config: RunConfig{Mode: "test", Records: 1000, ValueSize: 256, Systems: Systems,
			Workloads: []string{"write-only", "ycsb-c"}, Distributions: []string{DistUniform},
			Durabilities: []string{"async"}, Concurrency: []int{1, 64}, WarmupSeconds: 1, DurationSeconds: 2, Coordinators: 1},
	}
	add := func(sys, wl, dur string, c int, ops, p50 float64) {
		r.Rows = append(r.Rows, Row{System: sys, Workload: wl, Distribution: DistUniform, Durability: dur, Concurrency: c,
			OpsPerSec: ops, P50US: p50, P99US: p50 * 3, P999US: p50 * 9, CPUSecPer1kOps: 0.05, Records: 1000})
	}
	for _, wl := range []string{"write-only", "ycsb-c"} {
		add(SysNATS, wl, "none", 1, 10000, 100)
		add(SysNATS, wl, "none", 64, 80000, 700)
		add(SysJetKV, wl, "async", 1, 3000, 330)
		add(SysJetKV, wl, "async", 64, 20000, 3000)
	}
	add(SysQuorumKV, "write-only", "async", 1, 4000, 250)    // p50 2.5× nats: met
	add(SysQuorumKV, "write-only", "async", 64, 30000, 2000) // 1.5× js: met
	add(SysQuorumKV, "ycsb-c", "async", 1, 3000, 320)        // 3.2× nats: missed
	add(SysQuorumKV, "ycsb-c", "async", 64, 18000, 3500)     // 0.9× js: missed
	r.Scale = &Scale{Records: 1_000_000, BaseRecords: 1000, Concurrency: 64, Durability: "async",
		Rows:         []Row{{System: SysQuorumKV, Workload: "write-only", Distribution: DistUniform, Durability: "async", Concurrency: 64, OpsPerSec: 27000, Records: 1_000_000}},
		StorageBytes: 1 << 30, BytesPerKeyPerReplica: 357, PeakRSSBytes: 900 << 20}
	r.Membership = sampleMembership(60e6, 9000, 6000) // 60 MB/s: met; 0.67×: missed
	r.Targets = evaluateTargets(r)
	return r
}

func TestTargets(t *testing.T) {
	r := sampleReport()
	want := map[string]bool{
		"[async] quorum put vs JetStream KV R3 put, 64 clients":                           true,
		"[async] quorum get vs JetStream KV R3 get, 64 clients":                           false,
		"[async] quorum get vs raw NATS request-reply, 64 clients":                        false, // 18000/80000
		"[async] single-client put p50 vs raw NATS p50":                                   true,
		"[async] single-client get p50 vs raw NATS p50":                                   false,
		"[async] write-only at 1M records vs 1k records, 64 clients":                      true, // 0.9×
		"[async] membership: transfer rate adding a 4th node, 64 clients":                 true,
		"[async] membership: ycsb-a throughput during the transfer vs before, 64 clients": false,
	}
	if len(r.Targets) != len(want) {
		t.Fatalf("%d targets, want %d: %+v", len(r.Targets), len(want), r.Targets)
	}
	for _, tg := range r.Targets {
		met, ok := want[tg.Name]
		if !ok {
			t.Errorf("unexpected target %q", tg.Name)
			continue
		}
		if tg.Missing || tg.Met != met {
			t.Errorf("%s: met=%v missing=%v (%.2f), want met=%v", tg.Name, tg.Met, tg.Missing, tg.Measured, met)
		}
	}
}

func TestWriteJSONRows(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var rows []map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rows); err != nil {
		t.Fatalf("not a JSON array of rows: %v", err)
	}
	if len(rows) != 15 {
		t.Fatalf("%d rows, want 12 + 1 scale row + 2 membership rows", len(rows))
	}
	// The membership rows say which phase they are; the one during the
	// transfer carries the joining node's figures.
	before, during := rows[13], rows[14]
	if before["cell"] != "membership" || before["phase"] != "before" || before["transfer"] != nil {
		t.Errorf("membership row before: %v", before)
	}
	xfer, _ := during["transfer"].(map[string]any)
	if during["phase"] != "during" || xfer == nil || xfer["mb_per_sec"] != 60.0 || xfer["rate_limit_bytes"] != float64(128<<20) || xfer["active_seconds"] != 12.5 {
		t.Errorf("membership row during: %v", during)
	}
	if _, ok := rows[0]["cell"]; ok {
		t.Errorf("a matrix row names a cell: %v", rows[0])
	}
	for _, k := range []string{"system", "workload", "distribution", "durability", "concurrency", "ops_per_sec", "p50_us", "p99_us", "p999_us"} {
		if _, ok := rows[0][k]; !ok {
			t.Errorf("row lacks %q: %v", k, rows[0])
		}
	}
}

func TestWriteTable(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"1.50×", "0.90×", "MISSED", "MET", "bytes per key per replica", "peak RSS", "ycsb-c",
		"membership:", "--transfer-rate 128 MiB/s", "60.0 MB/s", "(0.67× before)", "active 12.5s after registering"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

// sampleMembership is a membership cell whose transfer ran 25 s at
// bytesPerSec and whose foreground ran at before, then during ops/s.
func sampleMembership(bytesPerSec, before, during float64) *Membership {
	row := func(phase string, ops float64) Row {
		return Row{System: SysQuorumKV, Workload: "ycsb-a", Distribution: DistUniform, Durability: "async", Concurrency: 64,
			OpsPerSec: ops, P50US: 5000, P99US: 20000, P999US: 40000, Ops: uint64(ops * 10), Seconds: 10, Records: 1_000_000,
			Cell: "membership", Phase: phase}
	}
	secs := 25.0
	return &Membership{Records: 1_000_000, ValueSize: 256, Concurrency: 64, Workload: "ycsb-a", Durability: "async",
		Before: row(PhaseBefore, before), During: row(PhaseDuring, during),
		Transfer: MembershipTransfer{Node: "node-4", RateLimit: 128 << 20, PartitionsTotal: 1024,
			Bytes: int64(bytesPerSec * secs), Keys: 2_250_000, Seconds: secs, MBPerSec: bytesPerSec * secs / secs / 1e6,
			KeysPerSec: 2_250_000 / secs, PeakRateBytes: bytesPerSec * 1.2, ActiveSeconds: 12.5}}
}

// TestMembershipTargets checks issue 14's two goals at and around their
// limits, and that a cell that moved nothing is "not measured", not met.
func TestMembershipTargets(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		bps, before, during        float64
		rateMet, fgMet, rateAbsent bool
	}{
		{"both met at the limits", 50e6, 10000, 7000, true, true, false},
		{"slow transfer", 49.9e6, 10000, 9000, false, true, false},
		{"foreground hurt", 200e6, 10000, 6999, true, false, false},
		{"nothing moved", 0, 10000, 10000, false, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := sampleMembership(tc.bps, tc.before, tc.during)
			if tc.bps == 0 {
				m.Transfer.Bytes, m.Transfer.MBPerSec = 0, 0
			}
			ts := membershipTargets(m)
			if len(ts) != 2 {
				t.Fatalf("%d targets: %+v", len(ts), ts)
			}
			rate, fg := ts[0], ts[1]
			if rate.Met != tc.rateMet || rate.Missing != tc.rateAbsent || rate.Unit != "MB/s" || rate.Goal != "≥ 50 MB/s" {
				t.Errorf("rate target %+v", rate)
			}
			if !tc.rateAbsent && (rate.value() != fmt.Sprintf("%.1f MB/s", tc.bps/1e6) || !strings.Contains(rate.Detail, "--transfer-rate 128 MiB/s")) {
				t.Errorf("rate target shows %q, detail %q", rate.value(), rate.Detail)
			}
			if fg.Met != tc.fgMet || fg.Missing || fg.Unit != "" || fg.Goal != "≥ 0.70×" {
				t.Errorf("foreground target %+v", fg)
			}
			if want := fmt.Sprintf("%.2f×", tc.during/tc.before); fg.value() != want {
				t.Errorf("foreground target shows %q, want %q", fg.value(), want)
			}
		})
	}
	// A cell whose windows measured nothing reports both as not measured.
	ts := membershipTargets(&Membership{Durability: "async", Workload: "ycsb-a", Concurrency: 64})
	for _, tg := range ts {
		if !tg.Missing || tg.Met || tg.value() != "-" {
			t.Errorf("empty cell: %+v", tg)
		}
	}
}

func TestWriteHTMLSelfContained(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteHTML(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	if n := strings.Count(out, "<svg"); n < 4 {
		t.Errorf("%d charts, want several", n)
	}
	if strings.Count(out, "<svg") != strings.Count(out, "</svg>") {
		t.Error("unbalanced svg elements")
	}
	// Nothing is fetched: the only URL is the SVG namespace.
	urls := regexp.MustCompile(`(?i)(src|href)=|https?://`).FindAllString(out, -1)
	for _, u := range urls {
		if !strings.EqualFold(u, "http://") {
			t.Errorf("external reference %q", u)
		}
	}
	if strings.Count(out, "http://") != strings.Count(out, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Error("a URL other than the SVG namespace")
	}
	for _, want := range []string{"Membership: adding a 4th node", "60.0 MB/s", "0.67×", "128 MiB/s"} {
		if !strings.Contains(out, want) {
			t.Errorf("HTML lacks %q", want)
		}
	}
	if strings.Contains(out, "<script") {
		t.Error("report carries a script")
	}
	if strings.Contains(out, "NaN") || strings.Contains(out, "Inf") {
		t.Error("a NaN or Inf reached the SVG")
	}
}

func TestNiceScale(t *testing.T) {
	for _, v := range []float64{0.3, 7, 42, 999, 12345, 87000} {
		top, step := niceScale(v)
		if top < v || step <= 0 || top/step > 6.01 || top/step < 2 {
			t.Errorf("niceScale(%v) = %v, %v", v, top, step)
		}
	}
}

func TestRecordKey(t *testing.T) {
	if got := RecordKey(42); got != "user000000000042" {
		t.Fatalf("RecordKey(42) = %q", got)
	}
	if got := string(appendRecordKey(nil, 123456789)); got != RecordKey(123456789) {
		t.Fatalf("appendRecordKey = %q", got)
	}
}

// TestTransferCPU: the transfer's CPU is the during window's CPU less its
// operations at the before window's cost, and the report prints it with
// what both goals need; a window that measured nothing gives none.
func TestTransferCPU(t *testing.T) {
	m := sampleMembership(40e6, 10000, 5000) // 1000 MB in 25 s
	m.Before.CPUSecPer1kOps, m.During.CPUSecPer1kOps = 0.18, 0.38
	m.Transfer.transferCPU(&m.Before, &m.During)
	// 50k operations during: 19 CPU s, of which 9 at the before cost.
	if got := m.Transfer.CPUSeconds; math.Abs(got-10) > 1e-9 {
		t.Errorf("transfer CPU %v s, want 10", got)
	}
	if got := m.Transfer.MBPerCPUSecond; math.Abs(got-100) > 1e-9 {
		t.Errorf("%v MB per CPU s, want 100", got)
	}
	var buf bytes.Buffer
	r := sampleReport()
	r.Membership = m
	r.writeMembership(&buf, m)
	// 1.8 CPUs before: 50 MB/s within 0.3 of them is 93 MB per CPU s.
	if out := buf.String(); !strings.Contains(out, "transfer CPU ≈ 10.0 s") || !strings.Contains(out, "= 100 MB per CPU s") || !strings.Contains(out, "need ≈ 93 here") {
		t.Errorf("report:\n%s", out)
	}
	for _, tc := range []struct{ before, during, cpuBefore, cpuDuring float64 }{
		{0, 5000, 0.18, 0.38}, {10000, 0, 0.18, 0.38}, {10000, 5000, 0.38, 0.18},
	} {
		m := sampleMembership(40e6, tc.before, tc.during)
		m.Before.CPUSecPer1kOps, m.During.CPUSecPer1kOps = tc.cpuBefore, tc.cpuDuring
		m.Transfer.transferCPU(&m.Before, &m.During)
		if m.Transfer.CPUSeconds != 0 || m.Transfer.MBPerCPUSecond != 0 {
			t.Errorf("%+v: transfer CPU %v s, %v MB per CPU s, want none", tc, m.Transfer.CPUSeconds, m.Transfer.MBPerCPUSecond)
		}
		buf.Reset()
		r.writeMembership(&buf, m)
		if strings.Contains(buf.String(), "transfer CPU") {
			t.Errorf("%+v: report prints a transfer CPU:\n%s", tc, buf.String())
		}
	}
}
