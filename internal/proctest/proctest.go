// Package proctest runs the quorumkv binary as separate OS processes in
// tests: storage nodes that can be SIGKILLed, SIGSTOPped and restarted.
package proctest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildOut  []byte
)

// Binary builds ./cmd/quorumkv once per test process and returns its path.
// The binary lives at a fixed path per checkout under the temp dir, so
// repeated runs reuse (and incrementally rebuild) one file instead of
// leaving one behind per run.
//
// When the test binary runs under the race detector (go test -race), the
// product is built with -race as well, so the multi-process suites check
// the product's own concurrency; [Start] then fails the test when a child
// reports a data race.
func Binary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		sum := sha256.Sum256([]byte(root))
		name := "quorumkv-test-" + hex.EncodeToString(sum[:6])
		args := []string{"build", "-o"}
		if raceEnabled {
			name += "-race"
			args = append(args, filepath.Join(os.TempDir(), name), "-race")
		} else {
			args = append(args, filepath.Join(os.TempDir(), name))
		}
		binPath = filepath.Join(os.TempDir(), name)
		cmd := exec.Command("go", append(args, "./cmd/quorumkv")...)
		cmd.Dir = root
		buildOut, buildErr = cmd.CombinedOutput()
	})
	if buildErr != nil {
		tb.Fatalf("proctest: build quorumkv: %v\n%s", buildErr, buildOut)
	}
	return binPath
}

// Process is a quorumkv subcommand running as a child process. Its
// combined output is kept for failure messages.
type Process struct {
	tb   testing.TB
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
	err  error
}

// Start runs `quorumkv args...`; tb.Cleanup kills it if it still runs.
func Start(tb testing.TB, args ...string) *Process {
	tb.Helper()
	return StartEnv(tb, nil, args...)
}

// StartEnv is Start with env ("NAME=value") added to the test process's
// environment, for settings a child reads from QUORUMKV_ variables.
func StartEnv(tb testing.TB, env []string, args ...string) *Process {
	tb.Helper()
	p := &Process{tb: tb, args: args, out: &syncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(Binary(tb), args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("proctest: start quorumkv %v: %v", args, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	tb.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Kill()
		<-p.done
		p.checkRaces()
	})
	return p
}

// raceReport starts every report of the race detector.
const raceReport = "WARNING: DATA RACE"

// checkRaces fails the test when the child (built with -race) reported a
// data race. A race-enabled child keeps running after a report and exits
// with status 66 only when it exits by itself, which a SIGKILLed child
// never does, so the output is the only reliable sign.
func (p *Process) checkRaces() {
	if out := p.Output(); strings.Contains(out, raceReport) {
		p.tb.Errorf("proctest: quorumkv %v reported a data race:\n%s", p.args, out)
	}
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) {
	p.tb.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.tb.Fatalf("proctest: signal %v: %v", sig, err)
	}
}

// Kill SIGKILLs the process and waits for it to be gone.
func (p *Process) Kill() {
	p.tb.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	p.Wait(10 * time.Second)
}

// Wait waits up to d for the process to exit and returns its error.
func (p *Process) Wait(d time.Duration) error {
	p.tb.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		p.tb.Fatalf("proctest: quorumkv %v still running after %s; output:\n%s", p.args, d, p.Output())
		return nil
	}
}

// Exited reports whether the process has ended and, if so, how (the
// error of exec.Cmd.Wait). It never blocks, so a test can notice a child
// that crashed on its own.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// WaitStopped waits up to d until the process is stopped (state T in
// /proc/<pid>/stat), so that a test knows a SIGSTOP has taken effect
// before it goes on: under load the kernel may stop a busy process a
// little later than kill(2) returns. Where /proc is missing it waits 100ms.
func (p *Process) WaitStopped(d time.Duration) error {
	path := "/proc/" + strconv.Itoa(p.cmd.Process.Pid) + "/stat"
	if _, err := os.Stat(path); err != nil {
		time.Sleep(100 * time.Millisecond)
		return nil
	}
	deadline := time.Now().Add(d)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		// pid (comm) state ...; comm may hold spaces and parentheses.
		if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && (b[i+2] == 'T' || b[i+2] == 't') {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proctest: quorumkv %v not stopped after %s", p.args, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// Output is everything the process wrote so far.
func (p *Process) Output() string { return p.out.String() }

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
