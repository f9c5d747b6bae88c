package streamtest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy between a client and a server (NATS, PostgreSQL),
// for tests of what a broken network does. While Blackhole is set it drops
// what the server sends, and while Swallow is set what the client sends (a
// network that loses the tail of a TCP stream before the connection
// breaks). Cut closes every connection, after which a client reconnects
// through it; Close also stops it listening, until Restore.
type Proxy struct {
	Blackhole atomic.Bool
	Swallow   atomic.Bool

	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener // nil while closed
	conns  []net.Conn
}

// NewProxy starts a proxy to target (host:port); it stops with the test.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{target: target, addr: ln.Addr().String(), ln: ln}
	t.Cleanup(p.Close)
	go p.serve(ln)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.addr }

// URL is the proxy's nats:// URL.
func (p *Proxy) URL() string { return "nats://" + p.addr }

func (p *Proxy) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(c, up, &p.Swallow)
		go p.pipe(up, c, &p.Blackhole)
	}
}

// pipe copies from to to, dropping what comes while drop is set.
func (p *Proxy) pipe(from, to net.Conn, drop *atomic.Bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !drop.Load() {
			if _, werr := to.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	from.Close()
	to.Close()
}

// Cut closes every connection through the proxy.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Close stops listening and cuts every connection: the server is out of
// reach until Restore.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	p.mu.Unlock()
	p.Cut()
}

// Restore listens again on the same address after Close.
func (p *Proxy) Restore(t testing.TB) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 {
		if ln, err = net.Listen("tcp", p.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("proxy: listen again on %s: %v", p.addr, err)
	}
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.serve(ln)
}
