// Package tcpproxy is a loopback TCP proxy for fault tests: it forwards
// connections to a target until Cut, which drops every connection and
// refuses new ones, and Restore, which accepts them again on the same
// address.
package tcpproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// dialTimeout bounds each upstream dial.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections from Addr to a target. Its methods are safe
// for concurrent use; it owns every goroutine it starts and stops them all
// by the end of the test (t.Cleanup).
type Proxy struct {
	tb     testing.TB
	target string
	addr   string

	mu     sync.Mutex
	ln     net.Listener // nil while cut or closed
	conns  map[*pair]struct{}
	closed bool

	wg sync.WaitGroup // accept loops and copy goroutines
}

// pair is one proxied connection; down is nil until the upstream dial
// succeeds.
type pair struct {
	up, down net.Conn
}

// New starts a proxy on 127.0.0.1 (a random port) to target. It is closed by
// tb.Cleanup, which waits for all of its goroutines.
func New(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("tcpproxy: listen: %v", err)
	}
	p := &Proxy{
		tb:     tb,
		target: target,
		addr:   ln.Addr().String(),
		ln:     ln,
		conns:  make(map[*pair]struct{}),
	}
	p.wg.Add(1)
	go p.accept(ln)
	tb.Cleanup(p.close)
	return p
}

// Addr returns the host:port clients should dial. It stays the same across
// Cut and Restore.
func (p *Proxy) Addr() string { return p.addr }

// Cut closes every proxied connection and stops listening, so new
// connections are refused until Restore. Cutting a cut proxy does nothing.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutLocked()
}

func (p *Proxy) cutLocked() {
	if p.ln != nil {
		_ = p.ln.Close() // ends its accept loop
		p.ln = nil
	}
	for c := range p.conns {
		c.closeLocked()
		delete(p.conns, c)
	}
}

// Restore listens on Addr again after Cut. It fails the test (tb.Fatalf, so
// call it from the test goroutine) if the address cannot be bound again.
// Restoring a proxy that is not cut does nothing.
func (p *Proxy) Restore() {
	p.tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.ln != nil {
		return
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.tb.Fatalf("tcpproxy: restore %s: %v", p.addr, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
}

// close cuts the proxy for good and waits for its goroutines.
func (p *Proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.cutLocked()
	p.mu.Unlock()
	p.wg.Wait()
}

// accept serves ln until it is closed.
func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.tb.Logf("tcpproxy: accept on %s: %v", p.addr, err)
			}
			return
		}
		p.mu.Lock()
		if p.ln != ln { // cut since Accept returned
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		pr := &pair{up: c}
		p.conns[pr] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(pr)
	}
}

// serve dials the target for pr and copies both ways until either side
// ends or the proxy cuts pr.
func (p *Proxy) serve(pr *pair) {
	defer p.wg.Done()
	down, err := net.DialTimeout("tcp", p.target, dialTimeout)
	p.mu.Lock()
	if _, live := p.conns[pr]; !live || err != nil {
		// Cut while dialing, or the target is down: drop the client.
		if err == nil {
			_ = down.Close()
		}
		if live {
			pr.closeLocked()
			delete(p.conns, pr)
		}
		p.mu.Unlock()
		return
	}
	pr.down = down
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(down, pr.up)
	go pipe(pr.up, down)
	<-done
	// One direction ended: close both so the other copy ends too.
	p.mu.Lock()
	pr.closeLocked()
	delete(p.conns, pr)
	p.mu.Unlock()
	<-done
}

func (pr *pair) closeLocked() {
	_ = pr.up.Close()
	if pr.down != nil {
		_ = pr.down.Close()
	}
}
