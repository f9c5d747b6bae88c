package streamtest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Proxy is a TCP proxy between a client and a NATS server, for tests of
// what a broken network does. While Blackhole is set it drops what the
// server sends, and while Swallow is set what the client sends (a network
// that loses the tail of a TCP stream before the connection breaks); Cut
// closes every connection, after which a client reconnects through it;
// Close also stops it listening.
type Proxy struct {
	Blackhole atomic.Bool
	Swallow   atomic.Bool

	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
}

// NewProxy starts a proxy to target (host:port); it stops with the test.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{target: target, ln: ln}
	t.Cleanup(p.Close)
	go p.serve()
	return p
}

// URL is the proxy's nats:// URL.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
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
// reach until the test ends.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Cut()
}
