package main

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/storage"
	"github.com/quorumkv/quorumkv/subjects"
)

var (
	buildOnce sync.Once
	binDir    string // removed by TestMain
	binPath   string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// binary builds the quorumkv binary once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "quorumkv-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir, binPath = dir, filepath.Join(dir, "quorumkv")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = err
			binPath = string(out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build quorumkv: %v\n%s", buildErr, binPath)
	}
	return binPath
}

// TestStorageStopsCleanlyOnSIGTERM runs `quorumkv storage` as a process,
// checks it serves, sends SIGTERM and expects exit 0 with Pebble closed
// (its directory opens again at once).
func TestStorageStopsCleanlyOnSIGTERM(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	dir := filepath.Join(t.TempDir(), "node")
	var logs strings.Builder
	cmd := exec.Command(binary(t), "storage", "--nats", s.ClientURL(), "--id", "proc-1", "--data", dir, "--log-format", "json")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Tenant: "t"})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := nc.Request(subjects.StorageNode("proc-1", subjects.NodeOpDump), req, 200*time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage process never served; log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v; log:\n%s", err, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no exit 15s after SIGTERM; log:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "storage node stopped") {
		t.Fatalf("log lacks the clean stop:\n%s", logs.String())
	}
	n, err := storage.Open(storage.Config{NodeID: "proc-1", DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("reopen after SIGTERM: %v", err)
	}
	_ = n.Close()
}
