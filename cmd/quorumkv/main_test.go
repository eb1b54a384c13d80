package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/devcluster"
)

func TestParseInterleavedFlagsAndEnv(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	tenant := fs.String("tenant", "default", "")
	level := fs.String("consistency", "", "")
	t.Setenv("QUORUMKV_CONSISTENCY", "all")
	t.Setenv("QUORUMKV_TENANT", "from-env")
	pos, err := parse(fs, []string{"key", "--tenant", "acme", "value", "--", "--not-a-flag"})
	if err != nil {
		t.Fatal(err)
	}
	if *tenant != "acme" || *level != "all" {
		t.Fatalf("tenant %q level %q: the flag must win over the environment, which fills the rest", *tenant, *level)
	}
	if len(pos) != 3 || pos[0] != "key" || pos[1] != "value" || pos[2] != "--not-a-flag" {
		t.Fatalf("positional %q", pos)
	}
	t.Setenv("QUORUMKV_TIMEOUT", "soon")
	fs2 := flag.NewFlagSet("y", flag.ContinueOnError)
	fs2.Duration("timeout", time.Second, "")
	if _, err := parse(fs2, nil); err == nil {
		t.Fatal("a malformed environment value must be an error")
	}
}

// TestCLIExitCodes runs the client verbs in-process against a dev cluster
// and checks the exit code of each error class.
func TestCLIExitCodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	t.Setenv("QUORUMKV_NATS", c.URL)
	devnull, _ := os.Create(filepath.Join(t.TempDir(), "out"))
	stdout, stderr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = devnull, devnull
	t.Cleanup(func() { os.Stdout, os.Stderr = stdout, stderr })
	cases := []struct {
		args []string
		want int
	}{
		{[]string{"put", "greeting", "hello"}, exitOK},
		{[]string{"get", "greeting"}, exitOK},
		{[]string{"get", "--json", "greeting"}, exitOK},
		{[]string{"get", "missing"}, exitNotFound},
		{[]string{"get", "--tenant", "nosuch", "k"}, exitNotFound},
		{[]string{"put", "--consistency", "two", "k", "v"}, exitUsage},
		{[]string{"put"}, exitUsage},
		{[]string{"get", "a", "b"}, exitUsage},
		{[]string{"tenant", "create", "--rf", "9", "big"}, exitUsage},
		{[]string{"tenant", "create", "default"}, exitConflict},
		{[]string{"tenant", "list"}, exitOK},
		{[]string{"tenant", "get", "--json", "default"}, exitOK},
		{[]string{"tenant", "create", "--tombstone-grace", "2d", "graced"}, exitOK},
		{[]string{"tenant", "update", "--tombstone-grace", "90m", "graced"}, exitOK},
		{[]string{"tenant", "create", "--tombstone-grace", "500ms", "tooshort"}, exitUsage},
		{[]string{"tenant", "create", "--tombstone-grace", "soon", "bad"}, exitUsage},
		{[]string{"node", "list"}, exitOK},
		{[]string{"status"}, exitOK},
		{[]string{"status", "--json"}, exitOK},
		{[]string{"node", "dump", "node-1"}, exitOK},
		{[]string{"node", "drain", "ghost"}, exitNotFound},
		{[]string{"delete", "greeting"}, exitOK},
		{[]string{"get", "greeting"}, exitNotFound},
		{[]string{"frobnicate"}, exitUsage},
		{[]string{"put", "--help"}, exitOK},
	}
	for _, tc := range cases {
		if got := run(tc.args); got != tc.want {
			t.Errorf("quorumkv %q: exit %d, want %d", tc.args, got, tc.want)
		}
	}
	gnc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer gnc.Close()
	if g, err := client.NewAdmin(gnc).GetTenant(ctx, "graced"); err != nil || g.TombstoneGraceMS != 90*60*1000 {
		t.Errorf("tenant graced after update --tombstone-grace 90m: %+v %v", g, err)
	}
	if err := c.StopNode("node-1"); err != nil {
		t.Fatal(err)
	}
	if got := run([]string{"put", "--consistency", "all", "k", "v"}); got != exitUnavailable {
		t.Errorf("put at all with a node down: exit %d, want %d", got, exitUnavailable)
	}
	t.Setenv("QUORUMKV_NATS", "nats://127.0.0.1:1")
	if got := run([]string{"get", "k"}); got != exitUnavailable {
		t.Errorf("get with no NATS: exit %d, want %d", got, exitUnavailable)
	}
}

func TestStatusReport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := devcluster.Start(ctx, devcluster.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if _, err := c.AddCoordinator(ctx); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	rep, err := collectStatus(ctx, nc, client.NewAdmin(nc), 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Nodes) != 3 || len(rep.Coordinators) != 2 || rep.Tenants != 1 || rep.Repair == nil || len(rep.Repair.Workers) != 1 {
		t.Fatalf("status %+v", rep)
	}
	total := 0.0
	for _, n := range rep.Nodes {
		if n.RingShare < 0.2 || n.RingShare > 0.5 {
			t.Fatalf("node %s ring share %.2f", n.ID, n.RingShare)
		}
		total += n.RingShare
	}
	if total < 0.999 || total > 1.001 {
		t.Fatalf("ring shares add up to %f", total)
	}
	for _, co := range rep.Coordinators {
		if co.Actor == "" || co.Version == "" {
			t.Fatalf("coordinator %+v", co)
		}
	}
}

// TestCoordinatorContextSecretFlags: bad secrets stop the coordinator
// before it connects, with a message that says what to do, whether they
// come from the flags or the environment.
func TestCoordinatorContextSecretFlags(t *testing.T) {
	long := strings.Repeat("s", 32)
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--context-secret", "short"}, nil, "--context-secret is 5 bytes; use at least 32"},
		{nil, map[string]string{"QUORUMKV_CONTEXT_SECRET": "short"}, "--context-secret is 5 bytes; use at least 32"},
		{[]string{"--context-secret", long, "--context-secret-previous", "old"}, nil, "--context-secret-previous is 3 bytes"},
		{nil, map[string]string{"QUORUMKV_CONTEXT_SECRET_PREVIOUS": long}, "--context-secret-previous needs --context-secret"},
		{[]string{"--context-secret", long, "--context-secret-previous", long}, nil, "is the same as --context-secret"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := runCoordinator(append([]string{"--nats", "nats://127.0.0.1:1"}, tc.args...))
			var ue usageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a usage error containing %q", err, tc.want)
			}
		})
	}
	cur, prev, err := contextSecrets(long, "")
	if err != nil || string(cur) != long || prev != nil {
		t.Fatalf("contextSecrets(long, \"\") = %q, %q, %v", cur, prev, err)
	}
	if cur, prev, err := contextSecrets("", ""); err != nil || cur != nil || prev != nil {
		t.Fatalf("no secrets: %q, %q, %v (want the metadata store's)", cur, prev, err)
	}
}

// TestStorageMoveFlags: --handoff-grace, --join, --heartbeat and the
// anti-entropy flags parse from the flags and the environment; a value
// out of range stops the node before it connects.
func TestStorageMoveFlags(t *testing.T) {
	base := []string{"--nats", "nats://127.0.0.1:1", "--id", "node-1", "--data", t.TempDir()}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--handoff-grace", "0s"}, nil, "--handoff-grace 0s must be positive"},
		{nil, map[string]string{"QUORUMKV_HANDOFF_GRACE": "-1s"}, "--handoff-grace -1s must be positive"},
		{[]string{"--join=maybe"}, nil, "join"},
		{nil, map[string]string{"QUORUMKV_JOIN": "perhaps"}, "JOIN"},
		{[]string{"--heartbeat", "0s"}, nil, "--heartbeat 0s must be positive"},
		{nil, map[string]string{"QUORUMKV_HEARTBEAT": "-2s"}, "--heartbeat -2s must be positive"},
		{[]string{"--anti-entropy-interval", "-1s"}, nil, "--anti-entropy-interval -1s is negative (0 = off)"},
		{nil, map[string]string{"QUORUMKV_ANTI_ENTROPY_INTERVAL": "-5m"}, "--anti-entropy-interval -5m0s is negative"},
		{nil, map[string]string{"QUORUMKV_ANTI_ENTROPY_INTERVAL": "often"}, "ANTI_ENTROPY_INTERVAL"},
		{[]string{"--anti-entropy-rate", "-2"}, nil, "--anti-entropy-rate -2 is negative (0 = unlimited)"},
		{nil, map[string]string{"QUORUMKV_ANTI_ENTROPY_RATE": "-1"}, "--anti-entropy-rate -1 is negative"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := runStorage(append(base, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseGrace(t *testing.T) {
	for in, want := range map[string]time.Duration{"7d": 7 * 24 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute, "1s": time.Second} {
		if got, err := parseGrace(in); err != nil || got != want {
			t.Errorf("parseGrace(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "7 d", "1.5d", "week"} {
		if _, err := parseGrace(in); err == nil {
			t.Errorf("parseGrace(%q) accepted", in)
		}
	}
	if got := formatGrace(7 * 24 * 3600 * 1000); got != "7d" {
		t.Errorf("formatGrace(7 days) = %q", got)
	}
	if got := formatGrace(90 * 60 * 1000); got != "1h30m0s" {
		t.Errorf("formatGrace(90 minutes) = %q", got)
	}
}
