package faults

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

// ReportEnv names the environment variable holding the path the fault
// schedule writes its JSON report to (none when unset).
const ReportEnv = "QUORUMKV_FAULT_REPORT"

// event is one line of the fault timeline.
type event struct {
	AtMS  int64  `json:"at_ms"` // since the workload started
	Event string `json:"event"`
}

// timeline records what happened when, relative to its start.
type timeline struct {
	start  time.Time
	mu     sync.Mutex
	events []event
	log    func(string, ...any)
}

func newTimeline(log func(string, ...any)) *timeline {
	return &timeline{start: time.Now(), log: log}
}

func (tl *timeline) since() int64 { return time.Since(tl.start).Milliseconds() }

func (tl *timeline) add(format string, args ...any) {
	e := event{AtMS: tl.since(), Event: fmt.Sprintf(format, args...)}
	tl.mu.Lock()
	tl.events = append(tl.events, e)
	tl.mu.Unlock()
	if tl.log != nil {
		tl.log("%6dms  %s", e.AtMS, e.Event)
	}
}

func (tl *timeline) list() []event {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return append([]event(nil), tl.events...)
}

// window counts the outcomes of the workload's writes in one second of
// the run, so the report shows where the faults hurt.
type window struct {
	FromMS     int64 `json:"from_ms"`
	SetOK      int   `json:"set_writes_ok"`
	SetFailed  int   `json:"set_writes_failed"`
	ReadFailed int   `json:"set_reads_failed"`
	LWWOK      int   `json:"lww_writes_ok"`
	LWWFailed  int   `json:"lww_writes_failed"`
}

// opStats are the workload's counters.
type opStats struct {
	SetReads         int            `json:"set_reads"`
	SetReadFailures  int            `json:"set_read_failures"`  // the element was then not attempted
	SetWriteRequests int            `json:"set_write_requests"` // first tries and retries
	SetWriteFailures int            `json:"set_write_failures"` // requests that failed
	Retries          int            `json:"retries"`            // retries with the same idempotency key
	AckedOnRetry     int            `json:"acknowledged_on_retry"`
	Duplicates       int            `json:"duplicates"` // acknowledged as is_duplicate (idempotency store answered)
	LWWWrites        int            `json:"lww_write_requests"`
	LWWFailures      int            `json:"lww_write_failures"`
	Errors           map[string]int `json:"errors"` // failed requests by error kind
}

type repairReport struct {
	DrainMS      int64 `json:"drain_ms"` // from heal until the backlog stayed 0
	FinalDrainMS int64 `json:"final_drain_ms"`
	ConvergeMS   int64 `json:"converge_ms"` // from the final reads until the dumps agreed
	// ConvergeNoReadsMS: from the drained backlog until the dumps agreed
	// with no read at all (anti-entropy alone).
	ConvergeNoReadsMS int64  `json:"converge_no_reads_ms"`
	DeadLetters       uint64 `json:"dead_letters"`
	Redelivered       uint64 `json:"redelivered"`
	WorkerApplied     uint64 `json:"worker_applied"` // counters of the running worker since its last start
	WorkerFailed      uint64 `json:"worker_failed"`
	WorkerDeadLetters uint64 `json:"worker_dead_lettered"`
}

type convergenceReport struct {
	// BeforeFinalReads is the verdict once the repair backlog drained
	// after healing, before the final reads (whose read repair heals what
	// no hint covered); reported, not asserted.
	BeforeFinalReads convergence `json:"before_final_reads"`
	// CausesBeforeFinalReads sorts those divergent keys by cause
	// (divergenceCauses).
	CausesBeforeFinalReads map[string]int      `json:"causes_before_final_reads"`
	CauseExamples          map[string][]string `json:"cause_examples,omitempty"` // the first keys of each cause
	// Final is the verdict after the final reads and their repairs: every
	// key identical on all its primaries. Asserted.
	Final convergence `json:"final"`
}

// faultReport is the JSON report of one run of the fault schedule.
type faultReport struct {
	Test        string                       `json:"test"`
	Mode        string                       `json:"mode"` // full or short
	Race        bool                         `json:"race"`
	Sabotage    []string                     `json:"sabotage,omitempty"` // SabotageEnv: the run must fail
	Passed      bool                         `json:"passed"`
	Started     time.Time                    `json:"started"`
	TotalMS     int64                        `json:"total_ms"`
	WorkloadMS  int64                        `json:"workload_ms"`
	Topology    map[string]int               `json:"topology"`
	Workload    map[string]int               `json:"workload"`
	Set         setResult                    `json:"set"`
	LWW         lwwResult                    `json:"lww"`
	Ops         opStats                      `json:"ops"`
	Repair      repairReport                 `json:"repair"`
	Convergence map[string]convergenceReport `json:"convergence"`
	Crashes     []string                     `json:"crashes,omitempty"`
	// Storage restarts: each SIGKILLed storage node's dump from before the
	// kill compared with its dump after the restart.
	StorageRestarts    int      `json:"storage_restarts_checked"` // per tenant
	StorageKeysChecked int      `json:"storage_keys_checked"`
	StorageRegressions []string `json:"storage_regressions,omitempty"` // keys lost or gone back: must be none
	// CoordinatorCounters sums the coordinators' hint and replica-failure
	// counters over every incarnation (each scraped just before its kill).
	CoordinatorCounters map[string]float64 `json:"coordinator_counters"`
	// LogLines counts the warnings and errors the processes logged, by
	// role, message and error (log lines, not events: some are rate
	// limited to one a second).
	LogLines map[string]int `json:"log_lines"`
	Timeline []event        `json:"timeline"`
	Windows  []window       `json:"windows"`

	tl *timeline
}

// write logs the summary and writes the JSON file when ReportEnv is set.
func (r *faultReport) write(t *testing.T) {
	r.Passed = !t.Failed()
	r.TotalMS = time.Since(r.Started).Milliseconds()
	if r.tl != nil {
		r.Timeline = r.tl.list()
	}
	t.Logf("report: set attempted %d, acknowledged %d, lost %d, unexpectedly present %d, phantoms %d; lww keys %d, writes acknowledged %d of %d, lost %d",
		r.Set.Attempted, r.Set.Acknowledged, r.Set.Lost, r.Set.UnexpectedlyPresent, r.Set.Phantoms,
		r.LWW.Keys, r.LWW.Acknowledged, r.LWW.Attempted, r.LWW.Lost)
	for _, name := range sortedKeys(r.Convergence) {
		cv := r.Convergence[name]
		t.Logf("report: convergence %s: %d keys, %d divergent before the final reads %v, %d after", name, cv.Final.Keys, cv.BeforeFinalReads.Divergent, cv.CausesBeforeFinalReads, cv.Final.Divergent)
	}
	t.Logf("report: repair drained %dms after healing; dead letters %d; workload %dms, total %dms", r.Repair.DrainMS, r.Repair.DeadLetters, r.WorkloadMS, r.TotalMS)
	path := os.Getenv(ReportEnv)
	if path == "" {
		return
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		t.Errorf("encode report: %v", err)
		return
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		t.Errorf("write report %s: %v", path, err)
		return
	}
	t.Logf("report written to %s", path)
}
