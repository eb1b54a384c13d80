package bench

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/storage"
)

// TestRunSmoke runs a tiny matrix end to end: three clustered servers, all
// three systems, both durability pairs and a scale run, then checks the
// rows and that every goroutine the run started has stopped.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two 3-server clusters")
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{
		Dir:           t.TempDir(),
		Records:       300,
		Workloads:     []string{"write-only", "ycsb-c"},
		Distributions: []string{DistZipfian},
		Concurrency:   []int{1, 4},
		Warmup:        50 * time.Millisecond,
		Duration:      150 * time.Millisecond,
		ScaleRecords:  600,
		Mode:          "test",
	})
	if err != nil {
		t.Fatal(err)
	}
	// nats-reqrep: 2 workloads × 2 client counts; the stores: 2 systems ×
	// 2 durabilities × 2 workloads × 2 client counts.
	if len(rep.Rows) != 4+16 {
		t.Fatalf("%d rows", len(rep.Rows))
	}
	for _, r := range rep.Rows {
		if r.Ops == 0 || r.Errors > 0 || r.OpsPerSec <= 0 || r.P50US <= 0 || r.P999US < r.P50US {
			t.Errorf("row %+v", r)
		}
	}
	if rep.Scale == nil || len(rep.Scale.Rows) != 2 || rep.Scale.BytesPerKeyPerReplica <= 0 || rep.PeakRSSBytes <= 0 {
		t.Fatalf("scale %+v, rss %d", rep.Scale, rep.PeakRSSBytes)
	}
	var out bytes.Buffer
	if err := rep.WriteTable(&out); err != nil || !bytes.Contains(out.Bytes(), []byte("targets")) {
		t.Fatalf("table: %v\n%s", err, out.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left running, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSettleCellChargesLeftoverWork: CPU the process burns after a cell
// (as a compaction would) is added to the cell's CPU per operation, and the
// wait ends at the first idle window. The process's CPU is a fake here: a
// real spinner competes with the machine's other load, and a starved one
// looks idle, which would test the machine instead of settleCell.
func TestSettleCellChargesLeftoverWork(t *testing.T) {
	var samples int
	busyWindows := 3
	var cpu time.Duration
	orig := settleUsage
	t.Cleanup(func() { settleUsage = orig })
	// Each window is two samples; the first busyWindows windows use a full
	// CPU each, then the process is idle.
	settleUsage = func() time.Duration {
		samples++
		if samples%2 == 0 && samples/2 <= busyWindows {
			cpu += 200 * time.Millisecond
		}
		return cpu
	}
	row := Row{Ops: 1000, CPUSecPer1kOps: 0.5}
	settleCell(context.Background(), &row)
	// 3 windows of 200ms of CPU over 1000 ops: 0.6 s per 1k ops more.
	if got, want := row.CPUSecPer1kOps, 0.5+0.6; got < want-1e-9 || got > want+1e-9 {
		t.Fatalf("CPU per 1k ops %.3f, want %.3f: the leftover work was not charged exactly", got, want)
	}
	// Three busy windows and the idle one that ended the wait.
	if samples != 2*(busyWindows+1) {
		t.Fatalf("settle sampled %d times, want %d: it did not stop at the first idle window", samples, 2*(busyWindows+1))
	}
	if row.SettleSeconds < 0.8 || row.SettleSeconds > cellSettleMax.Seconds() {
		t.Fatalf("settled after %.2fs; four 200ms windows were sampled", row.SettleSeconds)
	}
}

// TestMembershipSmoke runs the membership cell alone (--matrix
// membership) with a few thousand records: a 4th node joins under a YCSB
// A load, receives its share and becomes active, and the report has both
// windows, the transfer and the cell's two targets, nothing else.
func TestMembershipSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-server cluster")
	}
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg := Config{
		Dir:                   t.TempDir(),
		Systems:               []string{SysQuorumKV},
		Durabilities:          []string{"async"},
		Warmup:                100 * time.Millisecond,
		Duration:              500 * time.Millisecond,
		MembershipRecords:     3000,
		MembershipConcurrency: 8,
		NoCells:               true,
		Mode:                  "test",
	}
	rep, err := Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 0 || rep.Scale != nil || len(rep.Config.Durabilities) != 0 || len(rep.Targets) != 2 {
		t.Errorf("a membership-only run has %d rows, scale %v, durabilities %v, %d targets", len(rep.Rows), rep.Scale, rep.Config.Durabilities, len(rep.Targets))
	}
	m := rep.Membership
	if m == nil {
		t.Fatal("no membership figures")
	}
	x := m.Transfer
	t.Logf("before %+v\nduring %+v\ntransfer %+v", m.Before, m.During, x)
	if x.Node != "node-4" || x.RateLimit != storage.DefaultTransferRate || x.ActiveSeconds <= 0 || x.Seconds <= 0 || x.Seconds > x.ActiveSeconds {
		t.Errorf("transfer %+v", x)
	}
	// node-4 serves about 3/4 of the keys and pulls them from each replica.
	if x.Keys < int64(cfg.MembershipRecords)/2 || x.Bytes < x.Keys*int64(cfg.ValueSize) || x.PartitionsTotal == 0 || x.MBPerSec <= 0 || x.KeysPerSec <= 0 {
		t.Errorf("node-4 received %d keys, %d bytes, %d partitions (%.2f MB/s) of %d records", x.Keys, x.Bytes, x.PartitionsTotal, x.MBPerSec, cfg.MembershipRecords)
	}
	for _, r := range []Row{m.Before, m.During} {
		if r.Cell != "membership" || r.Workload != "ycsb-a" || r.Ops == 0 || r.OpsPerSec <= 0 || r.P99US < r.P50US || r.Concurrency != 8 {
			t.Errorf("row %+v", r)
		}
		// Adding a node must not fail the load: writes go to the write
		// set, and a not_owner is retried under the new map.
		if r.Errors > 0 {
			t.Errorf("%s: %d errors, e.g. %s", r.Phase, r.Errors, r.SampleError)
		}
	}
	if d := m.During.Seconds - x.ActiveSeconds; d < -0.5 || d > 0.5 {
		t.Errorf("during window %.2fs, node active after %.2fs", m.During.Seconds, x.ActiveSeconds)
	}
	var out bytes.Buffer
	if err := rep.WriteTable(&out); err != nil || !bytes.Contains(out.Bytes(), []byte("membership: transfer rate")) {
		t.Fatalf("table: %v\n%s", err, out.String())
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+2 {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines left running, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(50 * time.Millisecond)
	}
}
