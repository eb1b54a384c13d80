package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/storage"
	"github.com/quorumkv/quorumkv/subjects"
)

// The membership cell (issue 14, "What it is measured by"): a fresh
// quorumkv with MembershipRecords on 3 storage nodes, RF 3, runs a YCSB A
// load of MembershipConcurrency clients; after a window without a
// transfer a 4th storage node starts, registers (joining), receives its
// partitions and becomes active while the load goes on. The same run
// measures the foreground before and during the transfer, side by side,
// and the joining node's transfer rate from its TransferStatus.

// Membership is what the membership cell measured.
type Membership struct {
	Records     uint64
	ValueSize   int
	Concurrency int
	Workload    string // ycsb-a
	Durability  string
	// Before is the load's window before the 4th node starts; During runs
	// from its registration to its status active. Both are rows of the
	// same closed loop (the clients never stop in between).
	Before, During Row
	Transfer       MembershipTransfer
}

// MembershipTransfer is the joining node's transfer, from its
// TransferStatus. In JSON it rides on the "during" row.
type MembershipTransfer struct {
	Node string `json:"node"`
	// RateLimit is the configured --transfer-rate in bytes per second
	// (storage.Unlimited: none).
	RateLimit       int64 `json:"rate_limit_bytes"`
	PartitionsTotal int   `json:"partitions_total"`
	Bytes           int64 `json:"bytes"`
	Keys            int64 `json:"keys"`
	// Seconds is the span from the first to the last byte received, as
	// sampled every membershipPoll (the time to active when that span is
	// empty).
	Seconds    float64 `json:"seconds"`
	MBPerSec   float64 `json:"mb_per_sec"` // Bytes / Seconds / 1e6
	KeysPerSec float64 `json:"keys_per_sec"`
	// PeakRateBytes is the highest TransferStatus.RateBytes (bytes/s over
	// the node's last ~10 s) seen while polling.
	PeakRateBytes float64 `json:"peak_rate_bytes"`
	// ActiveSeconds is the time from the node's start (it registers at
	// once) to node list showing it active.
	ActiveSeconds float64 `json:"active_seconds"`
	// CPUSeconds estimates the process CPU the transfer took: the during
	// window's CPU less its operations at the before window's CPU per
	// operation (0 when a window measured none). MBPerCPUSecond is Bytes
	// ÷ 10⁶ ÷ CPUSeconds: what a transfer costs, whatever the rate cap and
	// the machine's share the run got (transferCPU).
	CPUSeconds     float64 `json:"cpu_s"`
	MBPerCPUSecond float64 `json:"mb_per_cpu_s"`
}

// transferCPU fills t.CPUSeconds and t.MBPerCPUSecond from the windows.
// It is an estimate: it takes the foreground's CPU per operation to stay
// what it was before the transfer, which a join's forwarded writes and
// joint reads raise a little (those count as the transfer's).
func (t *MembershipTransfer) transferCPU(before, during *Row) {
	t.CPUSeconds, t.MBPerCPUSecond = 0, 0
	if before.OpsPerSec <= 0 || during.OpsPerSec <= 0 || during.Seconds <= 0 {
		return
	}
	ops := during.OpsPerSec * during.Seconds
	cpu := ops / 1000 * (during.CPUSecPer1kOps - before.CPUSecPer1kOps)
	if cpu <= 0 {
		return
	}
	t.CPUSeconds = cpu
	t.MBPerCPUSecond = float64(t.Bytes) / 1e6 / cpu
}

// Phases of the membership cell: Row.Phase ("phase" in JSON).
const (
	PhaseBefore = "before"
	PhaseDuring = "during"
)

const (
	// membershipPoll is how often the joining node's transfer figures are
	// sampled; membershipListEvery how often node list is asked for its
	// status.
	membershipPoll      = 50 * time.Millisecond
	membershipListEvery = 200 * time.Millisecond
	// membershipMaxWait bounds the wait for the joining node to be active.
	membershipMaxWait = 30 * time.Minute
)

// transferTargetMBps is issue 14's goal for the transfer rate; a
// foreground at membershipRatioGoal of its value before the transfer, at
// least.
const (
	transferTargetMBps  = 50.0
	membershipRatioGoal = 0.7
)

// runMembership measures the membership cell on a fresh cluster with the
// first configured durability.
func runMembership(ctx context.Context, cfg *Config, rep *Report, p *progress) error {
	dur, _ := durabilityByName(cfg.Durabilities[0])
	dir := filepath.Join(cfg.Dir, "membership")
	e, err := setup(ctx, cfg, rep, p, dir, dur, []string{SysQuorumKV}, cfg.MembershipRecords)
	if err != nil {
		return err
	}
	defer func() {
		e.close()
		_ = os.RemoveAll(dir)
	}()
	wl, _ := workloadByName("ycsb-a")
	m := &Membership{Records: cfg.MembershipRecords, ValueSize: cfg.ValueSize, Concurrency: cfg.MembershipConcurrency,
		Workload: wl.Name, Durability: dur.Name}
	m.Transfer.Node = devcluster.NodeID(clusterSize + 1)
	m.Transfer.RateLimit = cfg.TransferRate
	if m.Transfer.RateLimit == 0 {
		m.Transfer.RateLimit = storage.DefaultTransferRate
	}
	label := func(r *Row, phase string) {
		r.System, r.Workload, r.Distribution, r.Durability, r.Records = SysQuorumKV, wl.Name, DistUniform, dur.Name, cfg.MembershipRecords
		r.Cell, r.Phase = "membership", phase
	}

	ld, err := startLoad(e.systems[SysQuorumKV], e.conns, cellSpec{
		workload: wl, gen: NewUniform(cfg.MembershipRecords), concurrency: cfg.MembershipConcurrency,
		valueSize: cfg.ValueSize, seed: 1 << 33,
	}, 2)
	if err != nil {
		return err
	}
	defer ld.stop()
	p.step("%s %s uniform %s c=%d, %d records, before adding %s", SysQuorumKV, wl.Name, dur.Name, cfg.MembershipConcurrency, cfg.MembershipRecords, m.Transfer.Node)
	sleep(ctx, cfg.Warmup)
	ld.begin(0)
	stopBefore, err := StartCPUProfile(beforeProfile(cfg.MembershipCPUProfile))
	if err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	sleep(ctx, cfg.Duration)
	stopBefore()
	if err := ctx.Err(); err != nil {
		return err
	}
	p.cellDone()

	// The node registers as it starts: the transfer window opens with it.
	p.step("%s %s uniform %s c=%d, adding %s (--transfer-rate %s)", SysQuorumKV, wl.Name, dur.Name, cfg.MembershipConcurrency, m.Transfer.Node, fmtRateLimit(m.Transfer.RateLimit))
	ld.begin(1)
	stopProfile, err := StartCPUProfile(cfg.MembershipCPUProfile)
	if err != nil {
		return fmt.Errorf("membership: %w", err)
	}
	start := time.Now()
	if err := e.deploy.StartNode(m.Transfer.Node); err != nil {
		stopProfile()
		return fmt.Errorf("membership: start %s: %w", m.Transfer.Node, err)
	}
	err = waitJoined(ctx, e.deploy, client.NewAdmin(e.conns[0]), m, start)
	stopProfile()
	if err != nil {
		return err
	}
	m.Before, m.During = ld.finish()
	label(&m.Before, PhaseBefore)
	label(&m.During, PhaseDuring)
	m.Transfer.transferCPU(&m.Before, &m.During)
	p.cellDone()
	rep.Membership = m
	return nil
}

// waitJoined polls the joining node's transfer status and node list until
// the node is active, and fills m.Transfer.
func waitJoined(ctx context.Context, d *deployment, admin *client.Admin, m *Membership, start time.Time) error {
	id := m.Transfer.Node
	var (
		firstByte, lastByte time.Time
		lastBytes           int64
		lastList            time.Time
	)
	t := &m.Transfer
	sample := func(now time.Time) {
		n := d.Node(id)
		if n == nil {
			return
		}
		st := n.TransferStatus()
		if st == nil {
			return
		}
		if st.Bytes > lastBytes {
			if firstByte.IsZero() {
				firstByte = now
			}
			lastByte, lastBytes = now, st.Bytes
		}
		t.Bytes, t.Keys, t.PartitionsTotal = st.Bytes, st.Keys, st.PartitionsTotal
		t.PeakRateBytes = max(t.PeakRateBytes, st.RateBytes)
	}
	for {
		now := time.Now()
		sample(now)
		if now.Sub(lastList) >= membershipListEvery {
			lastList = now
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			nodes, err := admin.ListNodes(lctx)
			cancel()
			if err == nil && nodeStatus(nodes, id) == "active" {
				t.ActiveSeconds = time.Since(start).Seconds()
				sample(time.Now())
				break
			}
		}
		if now.Sub(start) > membershipMaxWait {
			return fmt.Errorf("membership: %s not active after %s (transferred %d bytes, %d keys)", id, membershipMaxWait, t.Bytes, t.Keys)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		sleep(ctx, membershipPoll)
	}
	t.Seconds = lastByte.Sub(firstByte).Seconds()
	if t.Seconds <= 0 {
		t.Seconds = t.ActiveSeconds
	}
	if t.Seconds > 0 {
		t.MBPerSec = float64(t.Bytes) / t.Seconds / 1e6
		t.KeysPerSec = float64(t.Keys) / t.Seconds
	}
	return nil
}

// load is a closed loop that keeps running across measured phases: each
// operation is recorded in the phase it started and ended in (none while
// the phase is -1, between and before phases).
type load struct {
	workers []worker
	hists   [][]Histogram // [phase][worker]
	errs    []atomic.Uint64
	phase   atomic.Int32
	halt    atomic.Bool
	wg      sync.WaitGroup
	// window of each phase, and the process CPU over it
	t0, t1     []time.Time
	cpu0, cpu1 []time.Duration

	mu     sync.Mutex
	sample error
}

// startLoad starts spec's clients against sys with phases measured
// phases; none is measured until begin.
func startLoad(sys system, conns []*nats.Conn, spec cellSpec, phases int) (*load, error) {
	l := &load{
		hists: make([][]Histogram, phases), errs: make([]atomic.Uint64, phases),
		t0: make([]time.Time, phases), t1: make([]time.Time, phases),
		cpu0: make([]time.Duration, phases), cpu1: make([]time.Duration, phases),
	}
	l.phase.Store(-1)
	for i := range phases {
		l.hists[i] = make([]Histogram, spec.concurrency)
	}
	for i := range spec.concurrency {
		w, err := sys.worker(i, conns[i%len(conns)])
		if err != nil {
			return nil, err
		}
		l.workers = append(l.workers, w)
	}
	for i, w := range l.workers {
		value := makeValue(spec.valueSize, spec.seed<<16+uint64(i))
		r := newPCG(spec.seed<<16 + uint64(i))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var kb []byte
			for !l.halt.Load() {
				ph := l.phase.Load()
				kb = appendRecordKey(kb[:0], spec.gen.Next(r))
				key := string(kb)
				start := time.Now()
				var err error
				if r.Float64() < spec.workload.Reads {
					err = w.get(key)
				} else {
					err = w.put(key, value)
				}
				el := time.Since(start)
				if err != nil {
					if ph >= 0 {
						l.errs[ph].Add(1)
					}
					l.mu.Lock()
					if l.sample == nil {
						l.sample = err
					}
					l.mu.Unlock()
					time.Sleep(time.Millisecond) // an error must not become a busy loop
					continue
				}
				if ph >= 0 && l.phase.Load() == ph {
					l.hists[ph][i].Record(el)
				}
			}
		}()
	}
	return l, nil
}

// begin ends the phase being measured, if any, and starts phase ph.
func (l *load) begin(ph int) {
	now := time.Now()
	cpu, _ := processUsage()
	if prev := l.phase.Load(); prev >= 0 {
		l.t1[prev], l.cpu1[prev] = now, cpu
	}
	l.t0[ph], l.cpu0[ph] = now, cpu
	l.phase.Store(int32(ph))
}

// finish ends the last phase, stops the clients and returns each phase's
// row (without the labels).
func (l *load) finish() (Row, Row) {
	now := time.Now()
	cpu, _ := processUsage()
	if prev := l.phase.Load(); prev >= 0 {
		l.t1[prev], l.cpu1[prev] = now, cpu
	}
	l.phase.Store(-1)
	l.stop()
	rows := make([]Row, len(l.hists))
	for ph := range rows {
		rows[ph] = l.row(ph)
	}
	return rows[0], rows[1]
}

// stop halts the clients and waits for them; safe to call twice.
func (l *load) stop() {
	l.halt.Store(true)
	l.wg.Wait()
}

func (l *load) row(ph int) Row {
	var all Histogram
	for i := range l.hists[ph] {
		all.Merge(&l.hists[ph][i])
	}
	secs := l.t1[ph].Sub(l.t0[ph]).Seconds()
	row := Row{
		Concurrency: len(l.workers),
		Ops:         all.Count(),
		Errors:      l.errs[ph].Load(),
		Seconds:     secs,
		P50US:       us(all.Quantile(0.50)),
		P99US:       us(all.Quantile(0.99)),
		P999US:      us(all.Quantile(0.999)),
		MeanUS:      us(all.Mean()),
		MaxUS:       us(all.Max()),
	}
	if secs > 0 {
		row.OpsPerSec = float64(all.Count()) / secs
	}
	if all.Count() > 0 {
		row.CPUSecPer1kOps = (l.cpu1[ph] - l.cpu0[ph]).Seconds() / float64(all.Count()) * 1000
	}
	if row.Errors > 0 && l.sample != nil {
		row.SampleError = l.sample.Error()
	}
	return row
}

func nodeStatus(nodes []subjects.Node, id string) string {
	for _, n := range nodes {
		if n.ID == id {
			return n.Status
		}
	}
	return ""
}

// fmtRateLimit shows a --transfer-rate in bytes/s as the flag takes it.
func fmtRateLimit(b int64) string {
	if b <= 0 {
		return "unlimited"
	}
	return fmt.Sprintf("%g MiB/s", float64(b)/(1<<20))
}

// beforeProfile is where the before window's profile goes when the
// transfer window's goes to path: path with ".before" added ("" for "").
func beforeProfile(path string) string {
	if path == "" {
		return ""
	}
	return path + ".before"
}

// StartCPUProfile writes a CPU profile into path until stop; an empty
// path profiles nothing. The runtime keeps one profile at a time.
func StartCPUProfile(path string) (stop func(), err error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile %s: %w", path, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
