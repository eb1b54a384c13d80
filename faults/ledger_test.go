package faults

// The continuous writer and checker of the membership scenarios (issue
// 14, "What must hold"): writers put unique keys, overwrite others and
// delete some at quorum, recording every outcome in a ledger; checkers
// read keys back at quorum, during and after each membership change, and
// judge each answer against what was acknowledged before the read began.
//
// The judgement is linearizability per key, loosened exactly where lww
// allows it: a read that starts after write #a of key k was acknowledged
// must return #a or a later write of k (one the read overlapped, or one
// not acknowledged, which may take effect at any time after it was sent);
// "not found" is right only when that write is a delete. Anything older
// and acknowledged is a lost overwrite or, for a delete, a resurrection;
// a value never written is a phantom.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// keyOp is one write of a key: a put of "<key>#<index>" or a delete.
type keyOp struct {
	del    bool
	acked  bool      // the coordinator answered success
	failed bool      // it answered an error (the write may still take effect)
	sent   time.Time // when the request went out
	ackAt  time.Time
}

// keyHist is every write of one key, in the order its writer sent them
// (one writer per key, one write at a time).
type keyHist struct {
	ops     []keyOp
	lastAck int // index of the last acknowledged write, -1 before any
}

// ledger is what the writers did, for the checkers.
type ledger struct {
	mu    sync.Mutex
	keys  map[string]*keyHist
	order []string // keys in the order of their first write
}

func newLedger() *ledger { return &ledger{keys: map[string]*keyHist{}} }

// opValue is the value write idx of key puts: the judge recognises it.
func opValue(key string, idx int) string { return key + "#" + strconv.Itoa(idx) }

// begin records that write idx of key is about to be sent.
func (l *ledger) begin(key string, del bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.keys[key]
	if h == nil {
		h = &keyHist{lastAck: -1}
		l.keys[key] = h
		l.order = append(l.order, key)
	}
	h.ops = append(h.ops, keyOp{del: del, sent: time.Now()})
	return len(h.ops) - 1
}

// end records the outcome of write idx of key.
func (l *ledger) end(key string, idx int, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.keys[key]
	if err != nil {
		h.ops[idx].failed = true
		return
	}
	h.ops[idx].acked, h.ops[idx].ackAt = true, time.Now()
	if idx > h.lastAck {
		h.lastAck = idx
	}
}

// lastAcked is the index of key's last acknowledged write (-1: none), to
// take before a read is sent.
func (l *ledger) lastAcked(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.keys[key]; h != nil {
		return h.lastAck
	}
	return -1
}

// snapshotKeys returns the keys written so far.
func (l *ledger) snapshotKeys() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.order...)
}

// counts returns how many keys have an acknowledged write, and of those
// how many read as deleted.
func (l *ledger) counts() (acked, deleted int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, h := range l.keys {
		if h.lastAck >= 0 {
			acked++
			if h.ops[h.lastAck].del {
				deleted++
			}
		}
	}
	return acked, deleted
}

// verdicts of a judged read.
const (
	readOK        = "ok"
	readAmbiguous = "ambiguous" // an older write that was never acknowledged: allowed under lww
	readStale     = "stale"     // an older acknowledged write: a lost overwrite or a resurrected delete
	readLost      = "lost"      // not found although the acknowledged write is a put
	readPhantom   = "phantom"   // a value no writer sent for this key
)

// observed is what a read returned.
type observed struct {
	found    bool
	value    string
	siblings int
}

func (o observed) String() string {
	if !o.found {
		return "not found"
	}
	if o.siblings > 1 {
		return fmt.Sprintf("%q (and %d siblings)", o.value, o.siblings-1)
	}
	return strconv.Quote(o.value)
}

// judge checks a read of key that began when write a was key's last
// acknowledged one (lastAcked before the read was sent) and has returned
// got. It returns the verdict and, unless ok, what was expected.
func (l *ledger) judge(key string, a int, got observed) (verdict, expected string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.keys[key]
	if h == nil {
		return readPhantom, "no write of this key"
	}
	n := len(h.ops) // every write sent by now, including the ones the read overlapped
	expected = "anything written (nothing acknowledged before the read)"
	if a >= 0 {
		op := h.ops[a]
		what := strconv.Quote(opValue(key, a))
		if op.del {
			what = "not found (delete"
		} else {
			what = "value " + what + " (put"
		}
		expected = fmt.Sprintf("%s #%d acknowledged %s before the read) or a later write of the %d sent",
			what, a, time.Since(op.ackAt).Round(time.Millisecond), n)
	}
	if got.siblings > 1 {
		return readPhantom, expected + "; one value (the tenant is lww)"
	}
	lo := max(a, 0)
	if !got.found {
		if a < 0 {
			return readOK, ""
		}
		for j := lo; j < n; j++ {
			if h.ops[j].del {
				return readOK, ""
			}
		}
		for j := 0; j < lo; j++ {
			if h.ops[j].del && !h.ops[j].acked {
				return readAmbiguous, expected
			}
		}
		return readLost, expected
	}
	idx, ok := parseOpValue(key, got.value)
	if !ok || idx >= n || h.ops[idx].del {
		return readPhantom, expected
	}
	switch {
	case idx >= lo:
		return readOK, ""
	case !h.ops[idx].acked:
		return readAmbiguous, expected
	}
	return readStale, expected
}

func parseOpValue(key, value string) (int, bool) {
	value, _, _ = strings.Cut(value, "|") // padding (preload)
	rest, ok := strings.CutPrefix(value, key+"#")
	if !ok {
		return 0, false
	}
	idx, err := strconv.Atoi(rest)
	return idx, err == nil && idx >= 0
}

// readFailure is one wrong answer, with where the scenario was.
type readFailure struct {
	phase, key, verdict, expected, got string
	at                                 time.Duration
}

func (f readFailure) String() string {
	return fmt.Sprintf("[%s +%s] %s: key %q: expected %s; got %s", f.phase, f.at.Round(time.Millisecond), f.verdict, f.key, f.expected, f.got)
}

// phaseStats counts the reads and writes of one phase of a scenario.
type phaseStats struct {
	Name        string         `json:"phase"`
	Writes      int            `json:"writes"`
	WriteErrors int            `json:"write_errors"`
	Reads       int            `json:"reads"`
	ReadErrors  int            `json:"read_errors"` // no answer (e.g. 503): not counted as wrong, reported
	Ambiguous   int            `json:"ambiguous"`
	Wrong       int            `json:"wrong"`
	Errors      map[string]int `json:"errors,omitempty"`
	started     time.Time
	DurationMS  int64 `json:"duration_ms"`
}

// scenarioLoad runs the writers and the continuous checkers of one scenario.
type scenarioLoad struct {
	t      *testing.T
	kv     *client.Client
	led    *ledger
	start  time.Time
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	rounds atomic.Int64 // full read rounds of the continuous checkers

	mu       sync.Mutex
	phases   []*phaseStats
	failures []readFailure
	writers  bool // writers still running
}

// loadConfig sizes a workload. Every writer owns its keys, so the
// writes of one key are sequential.
type loadConfig struct {
	writers   int           // writer goroutines
	unique    int           // keys written once, per writer
	overwrite int           // keys overwritten again and again, per writer
	deletes   int           // keys put and deleted in turn, per writer
	pace      time.Duration // pause between one writer's writes
	checkers  int           // continuous reader goroutines
}

var defaultLoad = loadConfig{writers: 3, unique: 60, overwrite: 20, deletes: 20, pace: 15 * time.Millisecond, checkers: 2}

// startWorkload starts the writers and checkers on kv; stopWorkload (or
// the test's end) stops them.
func startWorkload(t *testing.T, kv *client.Client, cfg loadConfig) *scenarioLoad {
	ctx, cancel := context.WithCancel(context.Background())
	w := &scenarioLoad{t: t, kv: kv, led: newLedger(), start: time.Now(), ctx: ctx, cancel: cancel, writers: true}
	w.phase("start")
	for i := range cfg.writers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.write(i, cfg)
		}()
	}
	for range cfg.checkers {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.check()
		}()
	}
	t.Cleanup(w.stop)
	return w
}

// stop ends every goroutine of the workload and waits for them.
func (w *scenarioLoad) stop() {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	w.writers = false
	w.closePhase()
	w.mu.Unlock()
}

// phase starts a new phase: the counters and failures from now on are
// attributed to name.
func (w *scenarioLoad) phase(name string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closePhase()
	w.phases = append(w.phases, &phaseStats{Name: name, Errors: map[string]int{}, started: time.Now()})
	w.t.Logf("%8s  phase: %s", time.Since(w.start).Round(time.Millisecond), name)
}

func (w *scenarioLoad) closePhase() {
	if n := len(w.phases); n > 0 && w.phases[n-1].DurationMS == 0 {
		w.phases[n-1].DurationMS = max(time.Since(w.phases[n-1].started).Milliseconds(), 1)
	}
}

func (w *scenarioLoad) cur() *phaseStats { return w.phases[len(w.phases)-1] }

func (w *scenarioLoad) write(id int, cfg loadConfig) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	nextUnique := 0
	for w.ctx.Err() == nil {
		var key string
		del := false
		switch r := rng.IntN(10); {
		case r < 4 && nextUnique < cfg.unique:
			key = fmt.Sprintf("u%d-%d", id, nextUnique)
			nextUnique++
		case r < 7:
			key = fmt.Sprintf("o%d-%d", id, rng.IntN(cfg.overwrite))
		default:
			key = fmt.Sprintf("d%d-%d", id, rng.IntN(cfg.deletes))
			// Put and delete in turn, starting with a put.
			w.led.mu.Lock()
			if h := w.led.keys[key]; h != nil {
				del = !h.ops[len(h.ops)-1].del
			}
			w.led.mu.Unlock()
		}
		idx := w.led.begin(key, del)
		var err error
		if del {
			_, err = w.kv.Delete(w.ctx, key, client.WithConsistency(subjects.Quorum), client.WithTimeout(2*time.Second))
		} else {
			_, err = w.kv.Put(w.ctx, key, []byte(opValue(key, idx)), client.WithConsistency(subjects.Quorum), client.WithTimeout(2*time.Second))
		}
		w.led.end(key, idx, err)
		w.mu.Lock()
		p := w.cur()
		p.Writes++
		if err != nil && w.ctx.Err() == nil {
			p.WriteErrors++
			p.Errors["write "+errClass(err)]++
		}
		w.mu.Unlock()
		select {
		case <-w.ctx.Done():
		case <-time.After(cfg.pace):
		}
	}
}

// check reads every key written so far, in a random order, round after
// round, until the workload stops.
func (w *scenarioLoad) check() {
	for w.ctx.Err() == nil {
		keys := w.led.snapshotKeys()
		rand.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		for _, key := range keys {
			if w.ctx.Err() != nil {
				return
			}
			w.readOnce(w.ctx, key)
		}
		w.rounds.Add(1)
		if len(keys) == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// readOnce reads key at quorum and judges the answer; it reports whether
// the read got an answer (right or wrong).
func (w *scenarioLoad) readOnce(ctx context.Context, key string) bool {
	a := w.led.lastAcked(key)
	res, err := w.kv.Get(ctx, key, client.WithConsistency(subjects.Quorum), client.WithTimeout(2*time.Second))
	var got observed
	switch {
	case errors.Is(err, client.ErrNotFound):
	case err != nil:
		w.mu.Lock()
		if ctx.Err() == nil {
			p := w.cur()
			p.Reads++
			p.ReadErrors++
			p.Errors["read "+errClass(err)]++
		}
		w.mu.Unlock()
		return false
	default:
		got = observed{found: true, value: string(res.Value), siblings: len(res.Siblings)}
	}
	verdict, expected := w.led.judge(key, a, got)
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.cur()
	p.Reads++
	switch verdict {
	case readOK:
	case readAmbiguous:
		p.Ambiguous++
	default:
		p.Wrong++
		f := readFailure{phase: p.Name, key: key, verdict: verdict, expected: expected, got: got.String(), at: time.Since(w.start)}
		w.failures = append(w.failures, f)
		w.t.Errorf("%s", f)
	}
	return true
}

// preload writes n keys "p-<i>" once each at quorum, with values padded
// to size bytes, from par goroutines: data for a transfer to take a while.
// Every write is in the ledger like the writers' ones.
func (w *scenarioLoad) preload(n, size, par int) {
	w.t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < n && w.ctx.Err() == nil; i += par {
				key := fmt.Sprintf("p-%d", i)
				idx := w.led.begin(key, false)
				v := opValue(key, idx) + "|"
				v += strings.Repeat("x", max(size-len(v), 0))
				_, err := w.kv.Put(w.ctx, key, []byte(v), client.WithConsistency(subjects.Quorum), client.WithTimeout(2*time.Second))
				w.led.end(key, idx, err)
				if err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	w.t.Logf("%8s  preloaded %d keys of %d bytes (%d writes failed)", time.Since(w.start).Round(time.Millisecond), n, size, failed.Load())
}

// fullPass reads every key written so far once, at quorum, retrying a
// read that got no answer for up to d in all, and returns how many keys
// it checked. Keys that never got an answer fail the test: a quorum of
// RF 3 must answer with one node down.
func (w *scenarioLoad) fullPass(what string, d time.Duration) int {
	w.t.Helper()
	deadline := time.Now().Add(d)
	keys := w.led.snapshotKeys()
	sort.Strings(keys)
	var unanswered []string
	for _, key := range keys {
		for !w.readOnce(context.Background(), key) {
			if time.Now().After(deadline) {
				unanswered = append(unanswered, key)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if len(unanswered) > 0 {
		w.t.Errorf("%s: %d of %d keys got no answer at quorum within %s: %s", what, len(unanswered), len(keys), d, firstN(unanswered, 20))
	}
	acked, deleted := w.led.counts()
	w.t.Logf("%8s  %s: checked %d keys (%d acknowledged, %d of them deleted); %d wrong answers so far",
		time.Since(w.start).Round(time.Millisecond), what, len(keys), acked, deleted, w.wrong())
	return len(keys)
}

// waitAcked waits until n keys have an acknowledged write.
func (w *scenarioLoad) waitAcked(n int, d time.Duration) {
	w.t.Helper()
	if err := waitUntil(d, func() error {
		if acked, _ := w.led.counts(); acked < n {
			return fmt.Errorf("%d of %d keys acknowledged", acked, n)
		}
		return nil
	}); err != nil {
		w.t.Fatalf("workload: %v; %s", err, w.summary())
	}
}

// waitRounds waits until the continuous checkers finished k more rounds.
func (w *scenarioLoad) waitRounds(k int64, d time.Duration) {
	w.t.Helper()
	want := w.rounds.Load() + k
	if err := waitUntil(d, func() error {
		if r := w.rounds.Load(); r < want {
			return fmt.Errorf("%d of %d checker rounds", r, want)
		}
		return nil
	}); err != nil {
		w.t.Errorf("workload: %v", err)
	}
}

func (w *scenarioLoad) wrong() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.failures)
}

// summary is one line per phase, for the log and docs/RELIABILITY.md.
func (w *scenarioLoad) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%-44s %7s %6s %7s %6s %5s %5s  %s\n", "phase", "writes", "w-err", "reads", "r-err", "ambig", "wrong", "errors")
	for _, p := range w.phases {
		errs := make([]string, 0, len(p.Errors))
		for k, v := range p.Errors {
			errs = append(errs, fmt.Sprintf("%s=%d", k, v))
		}
		sort.Strings(errs)
		fmt.Fprintf(&b, "%-44s %7d %6d %7d %6d %5d %5d  %s\n", truncate(p.Name, 44), p.Writes, p.WriteErrors, p.Reads, p.ReadErrors, p.Ambiguous, p.Wrong, strings.Join(errs, " "))
	}
	return b.String()
}

func firstN(ss []string, n int) string {
	if len(ss) > n {
		return strings.Join(ss[:n], ", ") + fmt.Sprintf(" … (%d more)", len(ss)-n)
	}
	return strings.Join(ss, ", ")
}
