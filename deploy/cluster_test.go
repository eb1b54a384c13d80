package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/proctest"
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// runCluster starts three nats-servers from nats.conf, clustered through
// authenticated routes the way docker-compose.yml sets them up, and waits
// until JetStream has a meta leader.
func runCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://route:%s@127.0.0.1:%d", secret("QKV_ROUTE_PASSWORD"), p))
	}
	servers := make([]*server.Server, 3)
	for i := range servers {
		opts := loadConf(t, routes)
		opts.ServerName = fmt.Sprintf("nats-%d", i+1)
		opts.Cluster.Host = "127.0.0.1"
		opts.Cluster.Port = ports[i]
		servers[i] = startServer(t, opts)
	}
	nc := dial(t, clusterURL(servers), "coordinator")
	js, err := jetstream.New(nc.Conn)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the NATS cluster from nats.conf has no JetStream meta leader: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	nc.Close()
	return servers
}

func clusterURL(servers []*server.Server) string {
	var urls []string
	for _, s := range servers {
		if s.Running() {
			urls = append(urls, s.ClientURL())
		}
	}
	return strings.Join(urls, ",")
}

// role returns the connection flags of a nats.conf user.
func role(t *testing.T, url, user string) []string {
	args := []string{"--nats", url, "--user", user, "--password", password(t, user), "--log-format", "json", "--log-level", "warn"}
	if p := inboxPrefix(user); p != "" {
		args = append(args, "--inbox-prefix", p)
	}
	return args
}

// cli runs a short-lived quorumkv command and returns its standard output.
func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(proctest.Binary(t), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("quorumkv %s: %w: %s", args[0], err, stderr.String())
	}
	return string(out), nil
}

// TestClusterOfProcesses runs quorumkv as the separate processes of a
// deployment (three storage nodes, two coordinators, a repair worker, each
// logged in as its role) on a three-server NATS cluster from nats.conf,
// then kills a storage node and a NATS server and keeps going.
func TestClusterOfProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a NATS cluster and six processes")
	}
	servers := runCluster(t)
	url := clusterURL(servers)
	dir := t.TempDir()

	storage := map[string]*proctest.Process{}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("node-%d", i)
		storage[id] = proctest.Start(t, append([]string{"storage", "--id", id, "--data", filepath.Join(dir, id)}, role(t, url, "storage")...)...)
	}
	// One process at a time creates the JetStream objects: two first-time
	// creations of one R3 stream at once can stall (docker-compose.yml
	// orders its services the same way).
	adminConn := dial(t, url, "admin")
	admin := client.NewAdmin(adminConn.Conn)
	coordinatorArgs := append([]string{"coordinator", "--metadata", "nats", "--idempotency", "nats", "--kv-replicas", "3", "--repair-replicas", "3"}, role(t, url, "coordinator")...)
	coords := []*proctest.Process{proctest.Start(t, coordinatorArgs...)}
	var worker *proctest.Process
	logs := func() string {
		var b strings.Builder
		for id, p := range storage {
			fmt.Fprintf(&b, "--- storage %s\n%s", id, p.Output())
		}
		for i, p := range coords {
			fmt.Fprintf(&b, "--- coordinator %d\n%s", i+1, p.Output())
		}
		if worker != nil {
			fmt.Fprintf(&b, "--- repair\n%s", worker.Output())
		}
		return b.String()
	}
	retry := func(what string, f func() error) {
		t.Helper()
		deadline := time.Now().Add(45 * time.Second)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v\n%s", what, err, logs())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	retry("the first coordinator answers", func() error {
		_, err := admin.ListTenants(context.Background())
		return err
	})
	coords = append(coords, proctest.Start(t, coordinatorArgs...))
	worker = proctest.Start(t, append([]string{"repair", "--replicas", "3"}, role(t, url, "repair")...)...)

	retry("both coordinators answer micro discovery", func() error {
		if n := pingServices(t, adminConn, "quorumkv"); n != 2 {
			return fmt.Errorf("%d coordinators answered $SRV.PING", n)
		}
		return nil
	})

	// The admin creates the tenant once every storage node has registered.
	retry("storage nodes register", func() error {
		nodes, err := admin.ListNodes(context.Background())
		if err == nil && len(nodes) != 3 {
			err = fmt.Errorf("%d nodes", len(nodes))
		}
		return err
	})
	rf := 3
	if _, err := admin.CreateTenant(context.Background(), "default", client.TenantSpec{ReplicationFactor: &rf}); err != nil {
		t.Fatalf("create tenant: %v\n%s", err, logs())
	}

	tenant := append([]string{"--tenant", "default"}, role(t, url, "default")[:6]...)
	// The coordinators see all three nodes once the ring event reached them.
	retry("put through the CLI", func() error {
		_, err := cli(t, append([]string{"put", "greeting", "hello", "--consistency", "all"}, tenant...)...)
		return err
	})
	out, err := cli(t, append([]string{"get", "greeting", "--consistency", "all"}, tenant...)...)
	if err != nil || strings.TrimSpace(out) != "hello" {
		t.Fatalf("get through the CLI: %q, %v\n%s", out, err, logs())
	}

	// The three nodes joined one by one, and a partition still moving from
	// a row of two needs both of them (a row that shrank may hold a quorum
	// write on one only): let every move finish before a node is lost.
	retry("every partition moved", func() error {
		m, err := admin.Placement(context.Background())
		if err != nil {
			return err
		}
		for p := range uint32(m.Partitions()) {
			if m.Moving(p) {
				return fmt.Errorf("partition %d still moves (map version %d)", p, m.Version())
			}
		}
		return nil
	})

	// Lose a storage node (SIGKILL) and a NATS server: quorum traffic goes on.
	storage["node-1"].Kill()
	servers[1].Shutdown()
	servers[1].WaitForShutdown()
	survivors := clusterURL(servers)
	nc := dial(t, survivors, "default", nats.MaxReconnects(-1))
	kv, err := client.New(nc.Conn, "default")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		key := fmt.Sprintf("after-%d", i)
		retry("put after the failures", func() error {
			_, err := kv.Put(context.Background(), key, []byte(key), client.WithConsistency("quorum"))
			return err
		})
	}
	for i := range 20 {
		key := fmt.Sprintf("after-%d", i)
		retry("get after the failures", func() error {
			got, err := kv.Get(context.Background(), key, client.WithConsistency("quorum"))
			if err == nil && string(got.Value) != key {
				err = fmt.Errorf("got %q", got.Value)
			}
			return err
		})
	}
	tenant = append([]string{"--tenant", "default"}, role(t, survivors, "default")[:6]...)
	out, err = cli(t, append([]string{"get", "greeting"}, tenant...)...)
	if err != nil || strings.TrimSpace(out) != "hello" {
		t.Fatalf("get through the CLI after the failures: %q, %v\n%s", out, err, logs())
	}
	if _, err := kv.Get(context.Background(), "greeting", client.WithConsistency("all")); !errors.Is(err, client.ErrUnavailable) {
		t.Errorf("consistency all with a node down: %v, want unavailable", err)
	}
}

// pingServices counts the instances of micro service name that answer
// $SRV.PING within half a second.
func pingServices(t *testing.T, c *conn, name string) int {
	t.Helper()
	inbox := c.NewRespInbox()
	sub, err := c.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.PublishRequest("$SRV.PING."+name, inbox, nil); err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		if _, err := sub.NextMsg(500 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}
