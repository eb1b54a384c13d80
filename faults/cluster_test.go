package faults

// A quorumkv deployment made of separate OS processes, for the fault
// schedule: a three-server NATS cluster (in this process, so a server can
// be shut down and started again on the same ports and store directory),
// a private Redis for idempotency, and the quorumkv binary as storage
// nodes, coordinators and a repair worker, each a child process that can
// be SIGKILLed, SIGSTOPped and restarted. deploy/cluster_test.go starts
// the same topology from nats.conf; here the servers run without
// authentication so the test can reach every subject.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	goredis "github.com/redis/go-redis/v9"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/proctest"
	"github.com/quorumkv/quorumkv/internal/redistest"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
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

// waitUntil polls f every 50ms until it returns nil or d has passed; it
// returns f's last error.
func waitUntil(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// natsNode is one server of the cluster. Its ports and store directory
// stay the same across restarts.
type natsNode struct {
	name        string
	port, route int
	storeDir    string
	routes      string
	s           *server.Server
}

func (n *natsNode) options(tb testing.TB) *server.Options {
	opts := natstest.Options(tb)
	opts.ServerName = n.name
	opts.Port = n.port
	opts.StoreDir = n.storeDir
	opts.Cluster = server.ClusterOpts{Name: "faults", Host: "127.0.0.1", Port: n.route}
	opts.Routes = server.RoutesFromStr(n.routes)
	return &opts
}

func (n *natsNode) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// proc is a quorumkv child process that the schedule may kill and
// restart with the same arguments.
type proc struct {
	name    string
	args    []string
	ready   func() error // nil once the process serves; polled after a start
	metrics string       // its /metrics URL, when it serves one
	env     []string     // added to its environment ("QUORUMKV_X=v")
	p       *proctest.Process
	down    bool     // killed on purpose and not restarted yet
	paused  bool     // SIGSTOPped and not yet continued
	crashed bool     // exited on its own; reported once
	past    []string // output of earlier incarnations
}

// cluster is the whole deployment.
type cluster struct {
	t   *testing.T
	dir string
	url string // every server, comma-separated

	nats []*natsNode

	redisURL    string
	redisPrefix string
	flushRedis  func(context.Context) error

	nc    *nats.Conn // the test's own connection (admin, dumps, repair status)
	admin *client.Admin

	mu      sync.Mutex
	storage []*proc
	coords  []*proc
	repair  *proc
	crashes []string // processes that exited on their own, with their output

	// Storage restarts checked against the node's dump from before its
	// SIGKILL (killStorage, restartStorage).
	snapshots   map[string]map[string][]subjects.DumpEntry
	restarts    int
	checkedKeys int
	regressed   []string

	// Coordinator counters (hints, replica failures), summed over every
	// incarnation: scraped before each kill and at the end.
	counters map[string]float64

	storageEnv, coordEnv []string        // environment of every storage node, coordinator (clusterConfig)
	storageArgs          []string        // flags of every storage node (clusterConfig)
	watch                *placementWatch // membership scenarios: the placement map's invariants
}

// clusterConfig sizes the deployment.
type clusterConfig struct {
	storageNodes int
	coordinators int
	noRepair     bool // coordinators publish no repairs (sabotage)
	// storageEnv is added to every storage node's environment, for
	// settings read from QUORUMKV_ variables (an unknown one is ignored,
	// so a test can name a setting that older binaries lack).
	storageEnv  []string
	coordEnv    []string // the same for every coordinator
	storageArgs []string // flags added to every storage node's command line
}

func startCluster(t *testing.T, cfg clusterConfig) *cluster {
	t.Helper()
	proctest.Binary(t) // build first, outside every timed wait
	c := &cluster{t: t, dir: t.TempDir(), snapshots: map[string]map[string][]subjects.DumpEntry{}, counters: map[string]float64{}, storageEnv: cfg.storageEnv, coordEnv: cfg.coordEnv, storageArgs: cfg.storageArgs}
	c.startNATS()
	c.startRedis()

	var err error
	c.nc, err = c.connect("faults-admin")
	if err != nil {
		t.Fatal(err)
	}
	c.admin = client.NewAdmin(c.nc)

	// One process at a time creates the JetStream objects (see
	// deploy/cluster_test.go): the first coordinator, then the rest.
	for i := 1; i <= cfg.coordinators; i++ {
		p := c.newCoordinator(i)
		if cfg.noRepair {
			p.args = append(p.args, "--repair=false")
		}
		c.coords = append(c.coords, p)
		c.start(c.coords[i-1])
	}
	c.repair = c.newRepairWorker()
	c.start(c.repair)
	for i := 1; i <= cfg.storageNodes; i++ {
		p := c.newStorage(fmt.Sprintf("node-%d", i))
		c.storage = append(c.storage, p)
		c.start(p)
	}
	if err := waitUntil(30*time.Second, func() error {
		// Placed, not only registered: a node's record is written before
		// the registration's placement map is stored.
		m, err := c.admin.Placement(context.Background())
		if err == nil && len(m.Nodes()) != cfg.storageNodes {
			err = fmt.Errorf("%d of %d storage nodes in the placement map", len(m.Nodes()), cfg.storageNodes)
		}
		return err
	}); err != nil {
		t.Fatalf("storage nodes: %v\n%s", err, c.logs())
	}
	return c
}

// startNATS starts three clustered servers and waits for a JetStream
// meta leader.
func (c *cluster) startNATS() {
	t := c.t
	// Free ports are found by binding and closing, so another process may
	// take one before a server binds it: try again with new ports.
	for attempt := 1; ; attempt++ {
		err := c.tryStartNATS()
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatalf("NATS cluster: %v", err)
		}
		t.Logf("NATS cluster, attempt %d: %v; retrying on other ports", attempt, err)
	}
	t.Cleanup(func() {
		for _, n := range c.nats {
			if n.s != nil {
				n.s.Shutdown()
				n.s.WaitForShutdown()
			}
		}
	})
	nc, err := c.connect("faults-setup")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitUntil(30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err
	}); err != nil {
		t.Fatalf("the NATS cluster has no JetStream meta leader: %v", err)
	}
}

// tryStartNATS picks six distinct free ports (held open together, so no
// two are the same) and starts the three servers on them; on failure it
// shuts down what it started.
func (c *cluster) tryStartNATS() error {
	var listeners []net.Listener
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			c.t.Fatal(err)
		}
		listeners = append(listeners, l)
		return l.Addr().(*net.TCPAddr).Port
	}
	var nodes []*natsNode
	var routes, urls []string
	for i := 1; i <= 3; i++ {
		n := &natsNode{name: fmt.Sprintf("nats-%d", i), port: port(), route: port(), storeDir: filepath.Join(c.dir, fmt.Sprintf("nats-%d", i))}
		nodes = append(nodes, n)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.route))
		urls = append(urls, n.url())
	}
	for _, l := range listeners {
		_ = l.Close()
	}
	for _, n := range nodes {
		n.routes = strings.Join(routes, ",")
		if err := c.startNATSNode(n); err != nil {
			for _, m := range nodes {
				if m.s != nil {
					m.s.Shutdown()
					m.s.WaitForShutdown()
					m.s = nil
				}
			}
			return err
		}
	}
	c.nats, c.url = nodes, strings.Join(urls, ",")
	return nil
}

func (c *cluster) runNATS(n *natsNode) {
	if err := c.startNATSNode(n); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) startNATSNode(n *natsNode) error {
	s, err := server.NewServer(n.options(c.t))
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}
	if os.Getenv("NATS_LOGGING") == "debug" {
		s.ConfigureLogger()
	}
	go s.Start()
	if !s.ReadyForConnections(15 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("%s not ready within 15s (port %d taken?)", n.name, n.port)
	}
	n.s = s
	return nil
}

// stopNATS shuts server i (0-based) down, as a crash would from its
// clients' view: connections drop, routes drop.
func (c *cluster) stopNATS(i int) {
	n := c.nats[i]
	n.s.Shutdown()
	n.s.WaitForShutdown()
	n.s = nil
}

// restartNATS starts server i again on its ports and store directory and
// waits until it reports healthy (JetStream caught up with the cluster).
func (c *cluster) restartNATS(i int) error {
	n := c.nats[i]
	c.runNATS(n)
	return waitUntil(60*time.Second, func() error {
		if h := n.s.Healthz(nil); h.Status != "ok" {
			return fmt.Errorf("%s: %s %s", n.name, h.Status, h.Error)
		}
		return nil
	})
}

// startRedis runs a private redis-server on a random port when one is on
// PATH, so flushing it touches nothing else; otherwise it uses the shared
// test Redis under a fresh prefix and "flushing" deletes that prefix.
func (c *cluster) startRedis() {
	t := c.t
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		rc, prefix := redistest.Client(t)
		c.redisURL, c.redisPrefix = redistest.URL(), prefix
		c.flushRedis = func(ctx context.Context) error { return redistest.DeletePrefix(ctx, rc, prefix) }
		t.Logf("redis-server is not on PATH; using the shared Redis at %s under prefix %s", c.redisURL, prefix)
		return
	}
	port := freePort(t)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	c.redisURL = fmt.Sprintf("redis://127.0.0.1:%d/0", port)
	c.redisPrefix = "faults:"
	rc := goredis.NewClient(&goredis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { _ = rc.Close() })
	if err := waitUntil(10*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return rc.Ping(ctx).Err()
	}); err != nil {
		t.Fatalf("private redis-server on port %d: %v\n%s", port, err, out.String())
	}
	c.flushRedis = func(ctx context.Context) error { return rc.FlushAll(ctx).Err() }
}

// connect opens a connection that knows every server and never gives up
// reconnecting; the cluster closes it at cleanup.
func (c *cluster) connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(c.url, nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	c.t.Cleanup(nc.Close)
	return nc, nil
}

func (c *cluster) common() []string {
	level := "warn"
	if l := os.Getenv("QUORUMKV_FAULT_LOG_LEVEL"); l != "" {
		level = l // e.g. info, to see what a process did before it failed
	}
	return []string{"--nats", c.url, "--log-format", "json", "--log-level", level}
}

func (c *cluster) newCoordinator(i int) *proc {
	metrics := fmt.Sprintf("127.0.0.1:%d", freePort(c.t))
	args := append([]string{"coordinator", "--metadata", "nats", "--idempotency", c.redisURL, "--redis-prefix", c.redisPrefix,
		"--kv-replicas", "3", "--repair-replicas", "3", "--id", fmt.Sprintf("coord-%d", i), "--metrics", metrics}, c.common()...)
	return &proc{name: fmt.Sprintf("coordinator-%d", i), args: args, env: c.coordEnv, metrics: "http://" + metrics + "/metrics", ready: func() error {
		c.mu.Lock()
		want := 0
		for _, p := range c.coords {
			if !p.down && !p.crashed {
				want++
			}
		}
		c.mu.Unlock()
		if n := c.coordinatorsServing(); n < want {
			return fmt.Errorf("%d of %d coordinators answer $SRV.PING", n, want)
		}
		return nil
	}}
}

// newRepairWorker retries fast: the schedule's outages are seconds long.
// Stream and consumer settings stay at their defaults, which the
// coordinators create (a mismatch would stop them).
func (c *cluster) newRepairWorker() *proc {
	args := append([]string{"repair", "--replicas", "3", "--backoff", "200ms", "--max-backoff", "2s", "--node-timeout", "2s", "--name", "faults-repair"}, c.common()...)
	return &proc{name: "repair", args: args, ready: func() error {
		ws, err := repair.GatherWorkerStats(context.Background(), c.nc, 300*time.Millisecond)
		if err == nil && len(ws) == 0 {
			err = errors.New("no repair worker answers")
		}
		return err
	}}
}

func (c *cluster) newStorage(id string) *proc {
	args := append([]string{"storage", "--id", id, "--data", filepath.Join(c.dir, id)}, c.common()...)
	args = append(args, c.storageArgs...)
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Tenant: "none", Limit: 1})
	return &proc{name: id, args: args, env: c.storageEnv, ready: func() error {
		_, err := c.nc.Request(subjects.StorageNode(id, subjects.NodeOpDump), req, 500*time.Millisecond)
		return err
	}}
}

// start runs p (again) and waits until it serves, when p says how to tell.
func (c *cluster) start(p *proc) {
	c.t.Helper()
	c.noteCrashes()
	c.mu.Lock()
	if p.p != nil {
		p.past = append(p.past, p.p.Output())
	}
	p.p = proctest.StartEnv(c.t, p.env, p.args...)
	p.down, p.paused, p.crashed = false, false, false
	c.mu.Unlock()
	if p.ready != nil {
		if err := waitUntil(30*time.Second, p.ready); err != nil {
			c.t.Fatalf("%s never served after its start: %v\n%s", p.name, err, p.p.Output())
		}
	}
}

// kill SIGKILLs p and marks it down.
func (c *cluster) kill(p *proc) {
	c.noteCrashes()
	c.scrape(p)
	c.mu.Lock()
	p.down, p.paused = true, false
	c.mu.Unlock()
	p.p.Kill()
}

// pause SIGSTOPs p and returns once it is stopped; resume SIGCONTs it. A
// process that crashed is left alone (noteCrashes has recorded it).
func (c *cluster) pause(p *proc) {
	c.noteCrashes()
	c.mu.Lock()
	defer c.mu.Unlock()
	if done, _ := p.p.Exited(); !done && !p.down {
		p.paused = true
		p.p.Signal(syscall.SIGSTOP)
		if err := p.p.WaitStopped(5 * time.Second); err != nil {
			c.t.Errorf("%s: %v", p.name, err)
		}
	}
}

func (c *cluster) resume(p *proc) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if done, _ := p.p.Exited(); !done && p.paused {
		p.p.Signal(syscall.SIGCONT)
	}
	p.paused = false
}

// countedMetrics are the coordinator series the report sums.
var countedMetrics = []string{"quorumkv_repair_hints_", "quorumkv_coordinator_replica_failures_total"}

// scrape adds p's counters (when it serves metrics) to c.counters. A
// killed process's counters since its last scrape are lost, so kill
// scrapes first; the end of the test scrapes the living.
func (c *cluster) scrape(p *proc) {
	if p.metrics == "" {
		return
	}
	hc := http.Client{Timeout: 2 * time.Second}
	res, err := hc.Get(p.metrics)
	if err != nil {
		return
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		for _, m := range countedMetrics {
			if strings.HasPrefix(name, m) {
				if v, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
					c.counters[name] += v
				}
			}
		}
	}
}

// noteCrashes records every process that exited without being killed by
// the schedule: a crash is a finding, never noise, and a later kill or
// restart must not hide it.
func (c *cluster) noteCrashes() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range c.all() {
		if p.down || p.crashed || p.p == nil {
			continue
		}
		if done, err := p.p.Exited(); done {
			p.crashed = true
			c.crashes = append(c.crashes, fmt.Sprintf("%s exited on its own (%v); output:\n%s", p.name, err, tail(p.p.Output(), 8000)))
		}
	}
}

// heal brings every process and server back: the ones the schedule left
// down or paused, and the ones that crashed (after recording the crash).
func (c *cluster) heal(tl *timeline) {
	c.t.Helper()
	c.noteCrashes()
	for i, n := range c.nats {
		if n.s == nil {
			tl.add("heal: restart %s", n.name)
			if err := c.restartNATS(i); err != nil {
				c.t.Fatalf("heal %s: %v", n.name, err)
			}
		}
	}
	for _, p := range c.all() {
		c.mu.Lock()
		paused, gone := p.paused, p.down || p.crashed
		c.mu.Unlock()
		switch {
		case paused:
			tl.add("heal: SIGCONT %s", p.name)
			c.resume(p)
		case gone:
			tl.add("heal: restart %s", p.name)
			c.start(p)
		}
	}
}

func (c *cluster) all() []*proc {
	ps := append(append([]*proc(nil), c.storage...), c.coords...)
	if c.repair != nil {
		ps = append(ps, c.repair)
	}
	return ps
}

// coordinatorsServing counts the coordinators that answer $SRV.PING.
func (c *cluster) coordinatorsServing() int {
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return 0
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := c.nc.PublishRequest("$SRV.PING."+subjects.ServiceName, inbox, nil); err != nil {
		return 0
	}
	n := 0
	for {
		if _, err := sub.NextMsg(300 * time.Millisecond); err != nil {
			return n
		}
		n++
	}
}

// logs is every process's output, for failure messages. Set
// QUORUMKV_FAULT_LOGS=1 to see it even when the test passes.
func (c *cluster) logs() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	ps := c.all()
	sort.Slice(ps, func(i, j int) bool { return ps[i].name < ps[j].name })
	for _, p := range ps {
		for i, o := range p.past {
			fmt.Fprintf(&b, "--- %s (incarnation %d)\n%s", p.name, i+1, tail(o, 4000))
		}
		if p.p != nil {
			fmt.Fprintf(&b, "--- %s (current)\n%s", p.name, tail(p.p.Output(), 4000))
		}
	}
	return b.String()
}

// logSummary counts the warnings and errors every process logged (JSON
// lines), by role, message and the start of the error, so the report
// says what the processes complained about during the schedule.
func (c *cluster) logSummary() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int{}
	for _, p := range c.all() {
		role := p.name
		if i := strings.LastIndex(role, "-"); i > 0 {
			role = role[:i]
		}
		outputs := append([]string(nil), p.past...)
		if p.p != nil {
			outputs = append(outputs, p.p.Output())
		}
		for _, o := range outputs {
			for _, line := range strings.Split(o, "\n") {
				var rec struct {
					Level string `json:"level"`
					Msg   string `json:"msg"`
					Err   string `json:"err"`
				}
				if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &rec) != nil || (rec.Level != "WARN" && rec.Level != "ERROR") {
					continue
				}
				k := role + " " + rec.Level + ": " + rec.Msg
				if rec.Err != "" {
					k += " (" + truncate(rec.Err, 90) + ")"
				}
				out[k]++
			}
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// errClass names an error for the report's counters.
func errClass(err error) string {
	var e *client.Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrConnectionReconnecting) {
		return "connection"
	}
	return "other"
}
