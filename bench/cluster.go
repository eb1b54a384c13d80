package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/internal/devcluster"
)

// clusterSize is the number of nats-servers, storage nodes and replicas.
const clusterSize = 3

// cluster is an embedded 3-server NATS cluster with JetStream, routed over
// loopback on random ports, as docker-compose.yml runs it in production.
type cluster struct {
	dir     string
	servers []*server.Server
	log     *slog.Logger

	mu    sync.Mutex
	conns []*nats.Conn
}

// startCluster starts three clustered nats-servers with their JetStream
// stores under dir and waits until JetStream has a meta leader. syncAlways
// sets sync_interval: always on every server.
//
// Clustered JetStream wants every server configured with routes, so the
// cluster ports are picked up front; should another process take one in
// between, the start is retried on fresh ports.
func startCluster(ctx context.Context, dir string, syncAlways bool, log *slog.Logger) (*cluster, error) {
	var err error
	for range 3 {
		var c *cluster
		if c, err = tryStartCluster(ctx, dir, syncAlways, log); err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, err
}

func tryStartCluster(ctx context.Context, dir string, syncAlways bool, log *slog.Logger) (*cluster, error) {
	c := &cluster{dir: dir, log: log}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	ports, err := freePorts(clusterSize)
	if err != nil {
		return nil, err
	}
	var routes []string
	for _, p := range ports {
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(p))
	}
	for i := range clusterSize {
		name := "bench-" + strconv.Itoa(i)
		opts := &server.Options{
			ServerName:         name,
			Host:               "127.0.0.1",
			Port:               -1,
			NoLog:              os.Getenv("NATS_LOGGING") == "",
			NoSigs:             true,
			JetStream:          true,
			StoreDir:           filepath.Join(dir, name),
			JetStreamMaxMemory: 256 << 20,
			JetStreamMaxStore:  64 << 30,
			MaxPayload:         8 << 20,
			MaxPending:         64 << 20,
			Cluster:            server.ClusterOpts{Name: "bench", Host: "127.0.0.1", Port: ports[i]},
			Routes:             server.RoutesFromStr(strings.Join(routes, ",")),
		}
		if syncAlways {
			opts.SyncAlways = true
			opts.SyncInterval = 2 * time.Minute // what sync_interval: always sets beside SyncAlways
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return nil, fmt.Errorf("nats-server %s: %w", name, err)
		}
		if os.Getenv("NATS_LOGGING") != "" {
			s.ConfigureLogger()
		}
		go s.Start()
		if !s.ReadyForConnections(15 * time.Second) {
			s.Shutdown()
			return nil, fmt.Errorf("nats-server %s did not start within 15s", name)
		}
		c.servers = append(c.servers, s)
	}
	if err := c.waitJetStream(ctx); err != nil {
		return nil, err
	}
	ok = true
	return c, nil
}

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitJetStream creates and deletes an R3 stream until JetStream accepts
// it: then the meta group has a leader and every server is a peer.
func (c *cluster) waitJetStream(ctx context.Context) error {
	nc, err := c.connect(0, "bench-probe")
	if err != nil {
		return err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var last error
	for {
		sctx, scancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.CreateStream(sctx, jetstream.StreamConfig{Name: "BENCH_PROBE", Subjects: []string{"bench.probe"}, Replicas: clusterSize, Storage: jetstream.MemoryStorage})
		scancel()
		if err == nil {
			dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
			err = js.DeleteStream(dctx, "BENCH_PROBE")
			dcancel()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("JetStream cluster not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// connect opens a connection to server i, closed with the cluster.
func (c *cluster) connect(i int, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(c.servers[i%len(c.servers)].ClientURL(), nats.Name(name), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect %s to server %d: %w", name, i, err)
	}
	c.mu.Lock()
	c.conns = append(c.conns, nc)
	c.mu.Unlock()
	return nc, nil
}

func (c *cluster) close() {
	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.mu.Unlock()
	for _, nc := range conns {
		nc.Close()
	}
	for _, s := range c.servers {
		s.Shutdown()
	}
	for _, s := range c.servers {
		s.WaitForShutdown()
	}
	c.servers = nil
}

// deployment is quorumkv on a cluster, assembled as `quorumkv dev`
// assembles it (internal/devcluster): one storage node per server, the
// coordinators, their stores on JetStream KV R3, a repair publisher and
// worker (R3 streams), and one tenant with RF 3.
type deployment struct {
	*devcluster.Cluster
	tenant string
}

// deployOptions tune the quorumkv deployment under test.
type deployOptions struct {
	Tenant       string
	NodeDirs     string // storage nodes keep their data below it
	Fsync        bool
	Coordinators int // 1..clusterSize; coordinator i connects to server i
	Coordinator  coordinator.Config
	TransferRate int64 // storage --transfer-rate in bytes/s (0: the default)
}

// deploy starts quorumkv on c and creates the tenant with RF 3.
func deploy(ctx context.Context, c *cluster, o deployOptions) (*deployment, error) {
	var urls []string
	for _, s := range c.servers {
		urls = append(urls, s.ClientURL())
	}
	dc, err := devcluster.Start(ctx, devcluster.Config{
		DataDir: o.NodeDirs, Nodes: clusterSize, Fsync: o.Fsync, DefaultTenant: o.Tenant,
		Servers: urls, Replicas: clusterSize, Coordinators: max(o.Coordinators, 1),
		Coordinator: o.Coordinator, Logger: c.log, TransferRate: o.TransferRate,
	})
	if err != nil {
		return nil, fmt.Errorf("quorumkv: %w", err)
	}
	return &deployment{Cluster: dc, tenant: o.Tenant}, nil
}

// nodeDirs lists the storage nodes' data directories.
func (d *deployment) nodeDirs() []string {
	var dirs []string
	for i := 1; i <= clusterSize; i++ {
		dirs = append(dirs, d.NodeDir(devcluster.NodeID(i)))
	}
	return dirs
}

// dirBytes is what du reports for dir: the allocated size of every file
// below it.
func dirBytes(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() {
			return nil
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		total += allocatedBytes(info)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("du %s: %w", dir, err)
	}
	return total, nil
}
