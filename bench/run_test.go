package bench

import (
	"bytes"
	"context"
	"runtime"
	"testing"
	"time"
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
// (here a goroutine spinning for 600ms, as a compaction would) is added
// to the cell's CPU per operation, and the wait ends once it stops.
func TestSettleCellChargesLeftoverWork(t *testing.T) {
	if runtime.GOOS != "linux" && runtime.GOOS != "darwin" {
		t.Skip("process CPU comes from getrusage")
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		x := 0
		for deadline := time.Now().Add(600 * time.Millisecond); time.Now().Before(deadline); {
			for i := range 1000 {
				x += i
			}
		}
		_ = x
		<-stop
	}()
	row := Row{Ops: 1000, CPUSecPer1kOps: 0.5}
	settleCell(context.Background(), &row)
	close(stop)
	<-done
	if row.CPUSecPer1kOps <= 0.5 {
		t.Fatalf("CPU per 1k ops %.3f: the spinning work was not charged", row.CPUSecPer1kOps)
	}
	// Charged work means at least one busy sampling window (200ms) and one
	// idle window that ended the wait, whatever the machine's load: 0.4s is
	// that floor, not a measurement of the machine.
	if row.SettleSeconds < 0.4 || row.SettleSeconds > cellSettleMax.Seconds() {
		t.Fatalf("settled after %.2fs; the work ran for 0.6s", row.SettleSeconds)
	}
}
