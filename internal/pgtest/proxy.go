package pgtest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Proxy is a TCP proxy on 127.0.0.1 in front of a PostgreSQL server, for
// fault tests. Cut severs every proxied connection and refuses new ones
// (they are accepted and closed at once, so clients see the server hang up);
// Restore makes it forward again. The proxy never touches the server itself.
//
// Its goroutines (an accept loop and two copiers per connection) all stop in
// Close, which tb.Cleanup calls.
type Proxy struct {
	ln      net.Listener
	network string // to the server: "tcp" or "unix"
	target  string
	dsn     string // the caller's DSN, pointed at the proxy

	mu     sync.Mutex
	cut    bool
	closed bool
	conns  map[net.Conn]struct{} // both ends of every live link
	wg     sync.WaitGroup
}

// NewProxy starts a proxy to the server dsn names (its first host; a unix
// socket directory works too) and stops it in tb.Cleanup.
func NewProxy(tb testing.TB, dsn string) *Proxy {
	tb.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("pgtest: proxy: parse dsn %q: %v", redact(dsn), err)
	}
	network, target := "tcp", net.JoinHostPort(cfg.Host, fmt.Sprint(cfg.Port))
	if strings.HasPrefix(cfg.Host, "/") {
		network, target = "unix", filepath.Join(cfg.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.Port))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtest: proxy: listen: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	proxied, err := WithHostPort(dsn, "127.0.0.1", port)
	if err != nil {
		_ = ln.Close()
		tb.Fatalf("pgtest: proxy: %v", err)
	}
	p := &Proxy{
		ln:      ln,
		network: network,
		target:  target,
		dsn:     proxied,
		conns:   make(map[net.Conn]struct{}),
	}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's listening address.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// DSN returns the DSN given to NewProxy, pointed at the proxy.
func (p *Proxy) DSN() string { return p.dsn }

// Cut closes every proxied connection and refuses new ones until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.closeConnsLocked()
}

// Restore makes the proxy forward new connections again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
}

// Close stops the proxy, closes all its connections and waits for its
// goroutines. It is safe to call more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		_ = p.ln.Close()
		p.closeConnsLocked()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) closeConnsLocked() {
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // transient, e.g. EMFILE
			continue
		}
		p.mu.Lock()
		if p.cut || p.closed {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.link(c)
	}
}

// link dials the server for client c and copies both ways until either side
// closes or the proxy cuts them.
func (p *Proxy) link(c net.Conn) {
	defer p.wg.Done()
	up, err := net.DialTimeout(p.network, p.target, 5*time.Second)
	if err != nil {
		p.drop(c)
		return
	}
	p.mu.Lock()
	if _, live := p.conns[c]; !live || p.cut || p.closed {
		// Cut (or closed) while we were dialling.
		p.mu.Unlock()
		_ = up.Close()
		_ = c.Close()
		return
	}
	p.conns[up] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()

	go func() {
		defer p.wg.Done()
		_, _ = io.Copy(up, c)
		p.drop(c, up)
	}()
	_, _ = io.Copy(c, up)
	p.drop(c, up)
}

func (p *Proxy) drop(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}
