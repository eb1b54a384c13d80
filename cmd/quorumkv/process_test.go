package main

import (
	"log/slog"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/proctest"
	"github.com/quorumkv/quorumkv/storage"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestStorageStopsCleanlyOnSIGTERM runs `quorumkv storage` as a process,
// checks it serves, sends SIGTERM and expects exit 0 with Pebble closed
// (its directory opens again at once).
func TestStorageStopsCleanlyOnSIGTERM(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	dir := filepath.Join(t.TempDir(), "node")
	p := proctest.Start(t, "storage", "--nats", s.ClientURL(), "--id", "proc-1", "--data", dir, "--log-format", "json")
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Tenant: "t"})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := nc.Request(subjects.StorageNode("proc-1", subjects.NodeOpDump), req, 200*time.Millisecond); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage process never served; output:\n%s", p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Signal(syscall.SIGTERM)
	if err := p.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v; output:\n%s", err, p.Output())
	}
	if !strings.Contains(p.Output(), "storage node stopped") {
		t.Fatalf("output lacks the clean stop:\n%s", p.Output())
	}
	n, err := storage.Open(storage.Config{NodeID: "proc-1", DataDir: dir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("reopen after SIGTERM: %v", err)
	}
	_ = n.Stop()
}
