package deploy_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestAddTenantByReload follows docs/OPERATIONS.md's "Adding a tenant" on
// a real nats-server started from the shipped nats.conf: add the tenant's
// account and its export to a copy of the file, reload twice, and a
// request from the new tenant must reach a coordinator (a coordinator-user
// responder in the coordinators' queue group) without a restart.
func TestAddTenantByReload(t *testing.T) {
	text, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, text, 0o600); err != nil {
		t.Fatal(err)
	}
	setConfEnv(t, nil)
	load := func() *server.Options {
		opts, err := server.ProcessConfigFile(conf)
		if err != nil {
			t.Fatalf("nats.conf: %v", err)
		}
		opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
		opts.Cluster, opts.Routes, opts.ServerName = server.ClusterOpts{}, nil, "test"
		opts.NoLog, opts.NoSigs = os.Getenv("NATS_LOGGING") == "", true
		return opts
	}
	opts := load()
	opts.StoreDir = t.TempDir()
	s := startServer(t, opts)

	co := dial(t, s.ClientURL(), "coordinator")
	if _, err := co.QueueSubscribe("kv.v1.*.get", "coordinators", func(m *nats.Msg) {
		_ = m.Respond([]byte("served " + m.Subject))
	}); err != nil {
		t.Fatal(err)
	}
	if err := co.Flush(); err != nil {
		t.Fatal(err)
	}

	// The documented steps: an export line in QUORUMKV and a copy of
	// TENANT_DEFAULT with the id replaced, then reload.
	add := string(text)
	add = strings.Replace(add,
		`{service: "kv.v1.default.>", accounts: [TENANT_DEFAULT]}`,
		`{service: "kv.v1.default.>", accounts: [TENANT_DEFAULT]}`+"\n      "+`{service: "kv.v1.newt.>", accounts: [TENANT_NEWT]}`, 1)
	start := strings.Index(add, "  TENANT_DEFAULT: {")
	end := strings.Index(add[start:], "\n  }\n") + start + len("\n  }\n")
	account := strings.NewReplacer("TENANT_DEFAULT", "TENANT_NEWT", "default", "newt", "DEFAULT", "NEWT").Replace(add[start:end])
	add = add[:end] + "\n" + account + add[end:]
	if err := os.WriteFile(conf, []byte(add), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("QKV_TENANT_NEWT_PASSWORD", secret("QKV_TENANT_NEWT_PASSWORD"))
	newOpts := load()
	newOpts.Port = s.Addr().(*net.TCPAddr).Port
	newOpts.StoreDir = opts.StoreDir
	if err := s.ReloadOptions(newOpts); err != nil {
		t.Fatalf("reload: %v", err)
	}
	// nats-server 2.15.2 wires a service import only for an account that
	// existed before the reload (server.go configureAccounts: a new
	// account's import subscriptions are created "only if not reloading",
	// and the re-subscription after a reload covers existing accounts
	// only), so after one reload the new tenant still gets no responders.
	// A second reload finds the account existing and subscribes its
	// import: that is the documented step.
	if probe, err := tryDial(s.ClientURL(), "newt", secret("QKV_TENANT_NEWT_PASSWORD")); err == nil {
		if _, err := probe.Request("kv.v1.newt.get", nil, time.Second); err == nil {
			t.Log("one reload was enough: this nats-server wires a new account's imports; docs/OPERATIONS.md's second reload can go")
		}
		probe.Close()
	}
	again := load()
	again.Port, again.StoreDir = newOpts.Port, opts.StoreDir
	if err := s.ReloadOptions(again); err != nil {
		t.Fatalf("second reload: %v", err)
	}

	newt, err := tryDial(s.ClientURL(), "newt", secret("QKV_TENANT_NEWT_PASSWORD"))
	if err != nil {
		t.Fatalf("connect as the new tenant after reload: %v", err)
	}
	defer newt.Close()
	msg, err := newt.Request("kv.v1.newt.get", nil, 5*time.Second)
	if err != nil {
		t.Fatalf("the new tenant's request after reload: %v (a restart should not be needed)", err)
	}
	if got := string(msg.Data); got != "served kv.v1.newt.get" {
		t.Fatalf("the new tenant got %q", got)
	}
	def := dial(t, s.ClientURL(), "default")
	if _, err := def.Request("kv.v1.default.get", nil, 5*time.Second); err != nil {
		t.Fatalf("an existing tenant after reload: %v", err)
	}
}
