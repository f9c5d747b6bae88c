package load

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// The runner speaks HTTP/1.1 on its own keep-alive connections rather than
// through net/http's client: one connection per worker, requests written
// from a reused buffer in one write, answers parsed in place. That costs a
// fraction of net/http's client per request, so on a small machine the
// generator leaves the CPU to the server it measures.

// target is the parsed URL and the fixed parts of every request.
type target struct {
	addr      string      // host:port to dial
	tls       *tls.Config // nil for http
	postHead  []byte      // request line and headers up to "Content-Length: "
	getPrefix []byte      // "GET /path?" (or "GET /path?q&")
	getTail   []byte      // " HTTP/1.1\r\n" and headers, blank line included
}

func newTarget(rawURL, token string, tlsConf *tls.Config) (*target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("url %q: want http:// or https:// and a host", redactURL(rawURL))
	}
	if u.User != nil {
		return nil, errors.New("url: credentials in the URL are not supported; use the token")
	}
	t := &target{addr: u.Host}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		t.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		if tlsConf == nil {
			tlsConf = &tls.Config{}
		} else {
			tlsConf = tlsConf.Clone()
		}
		if tlsConf.ServerName == "" {
			tlsConf.ServerName = u.Hostname()
		}
		tlsConf.NextProtos = []string{"http/1.1"}
		t.tls = tlsConf
	}
	if containsCtl(token) {
		return nil, errors.New("token: must not contain control characters")
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	var hdr bytes.Buffer
	hdr.WriteString("Host: " + u.Host + "\r\nUser-Agent: ubiqo-simulator\r\n")
	if token != "" {
		hdr.WriteString("Authorization: Bearer " + token + "\r\n")
	}
	reqURI := path
	if u.RawQuery != "" {
		reqURI += "?" + u.RawQuery
	}
	t.postHead = []byte("POST " + reqURI + " HTTP/1.1\r\n" + hdr.String() + "Content-Type: application/json\r\nContent-Length: ")
	if u.RawQuery != "" {
		t.getPrefix = []byte("GET " + reqURI + "&")
	} else {
		t.getPrefix = []byte("GET " + path + "?")
	}
	t.getTail = []byte(" HTTP/1.1\r\n" + hdr.String() + "\r\n")
	return t, nil
}

func containsCtl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// redactURL drops the query (which may carry ?token=) and any userinfo.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	u.User = nil
	if u.RawQuery != "" {
		u.RawQuery = "…"
	}
	return u.String()
}

// maxKeptBody is how much of an answer body is kept for parsing; the counts
// the bridge answers come first, the rest is drained.
const maxKeptBody = 4 << 10

// answer is a parsed HTTP response; body is reused between requests.
type answer struct {
	status int
	body   []byte // up to maxKeptBody bytes
	close  bool   // the server closes the connection after this answer
}

// conn is one keep-alive HTTP/1.1 connection, used by one worker at a time.
// abort may be called from another goroutine.
type conn struct {
	t      *target
	mu     sync.Mutex // guards nc against abort while it is replaced
	nc     net.Conn
	br     *bufio.Reader
	used   bool // a request has been answered on nc: it may have gone stale
	closed bool // aborted: no new connection
}

var errAborted = errors.New("aborted")

// dial opens a new connection unless the conn was aborted.
func (c *conn) dial(ctx context.Context, deadline time.Time) error {
	d := net.Dialer{Deadline: deadline, KeepAlive: -1}
	nc, err := d.DialContext(ctx, "tcp", c.t.addr)
	if err != nil {
		return err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if c.t.tls != nil {
		tc := tls.Client(nc, c.t.tls)
		_ = tc.SetDeadline(deadline)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return err
		}
		nc = tc
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		nc.Close()
		return errAborted
	}
	c.nc = nc
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, 16<<10)
	} else {
		c.br.Reset(nc)
	}
	c.used = false
	return nil
}

// drop closes the current connection; the next request dials a new one.
func (c *conn) drop() {
	c.mu.Lock()
	if c.nc != nil {
		c.nc.Close()
		c.nc = nil
	}
	c.mu.Unlock()
}

// abort closes the connection for good, interrupting a request in flight.
func (c *conn) abort() {
	c.mu.Lock()
	c.closed = true
	if c.nc != nil {
		c.nc.Close()
	}
	c.mu.Unlock()
}

// roundTrip writes req (a whole HTTP/1.1 request) and reads the answer into
// a. A request on a kept-alive connection that the server had closed is
// sent once more on a new one, as HTTP clients do.
func (c *conn) roundTrip(ctx context.Context, req []byte, deadline time.Time, a *answer) error {
	for attempt := 0; ; attempt++ {
		if c.nc == nil {
			if err := c.dial(ctx, deadline); err != nil {
				return err
			}
		}
		stale := c.used
		err := c.exchange(req, deadline, a)
		if err == nil {
			c.used = true
			if a.close {
				c.drop()
			}
			return nil
		}
		c.drop()
		var ne nothingRead
		if !errors.As(err, &ne) || !stale || attempt > 0 {
			return unwrapNothingRead(err)
		}
	}
}

// nothingRead marks an error that came before any byte of the answer: on a
// reused connection, a sign that the server had closed it while idle.
type nothingRead struct{ err error }

func (e nothingRead) Error() string { return e.err.Error() }
func (e nothingRead) Unwrap() error { return e.err }

func unwrapNothingRead(err error) error {
	var ne nothingRead
	if errors.As(err, &ne) {
		return ne.err
	}
	return err
}

func (c *conn) exchange(req []byte, deadline time.Time, a *answer) error {
	if err := c.nc.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := c.nc.Write(req); err != nil {
		return nothingRead{err}
	}
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			if len(line) == 0 {
				return nothingRead{err}
			}
			return err
		}
		status, minor, ok := parseStatusLine(line)
		if !ok {
			return fmt.Errorf("malformed status line %q", shorten(line))
		}
		a.status = status
		a.close = minor == 0 // HTTP/1.0: close unless it says keep-alive
		length, chunked, err := c.readHeaders(a, minor)
		if err != nil {
			return err
		}
		if status >= 100 && status < 200 {
			continue // interim answer (103 Early Hints); the real one follows
		}
		a.body = a.body[:0]
		switch {
		case status == 204 || status == 304:
			return nil
		case chunked:
			return c.readChunked(a)
		case length >= 0:
			return c.readN(a, length)
		default: // no length: the body runs to the end of the connection
			a.close = true
			return c.readN(a, -1)
		}
	}
}

// readHeaders reads the header block and returns Content-Length (-1 when
// absent) and whether the body is chunked; it sets a.close.
func (c *conn) readHeaders(a *answer, minor int) (length int64, chunked bool, err error) {
	length = -1
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return 0, false, fmt.Errorf("reading headers: %w", err)
		}
		line = trimCRLF(line)
		if len(line) == 0 {
			return length, chunked, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case asciiEqualFold(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return 0, false, fmt.Errorf("bad Content-Length %q", shorten(value))
			}
			length = n
		case asciiEqualFold(name, "transfer-encoding"):
			chunked = asciiEqualFold(value, "chunked")
		case asciiEqualFold(name, "connection"):
			if asciiEqualFold(value, "close") {
				a.close = true
			} else if minor == 0 && asciiEqualFold(value, "keep-alive") {
				a.close = false
			}
		}
	}
}

// readN reads n body bytes (n < 0: to EOF), keeping the first maxKeptBody.
func (c *conn) readN(a *answer, n int64) error {
	if n < 0 {
		_, err := io.Copy(keeper{a}, c.br)
		return err
	}
	keep := min(n, int64(maxKeptBody-len(a.body)))
	if keep > 0 {
		if cap(a.body) < maxKeptBody {
			a.body = append(make([]byte, 0, maxKeptBody), a.body...)
		}
		start := len(a.body)
		a.body = a.body[:start+int(keep)]
		if _, err := io.ReadFull(c.br, a.body[start:]); err != nil {
			return fmt.Errorf("reading body: %w", err)
		}
	}
	if rest := n - keep; rest > 0 {
		if _, err := c.br.Discard(int(rest)); err != nil {
			return fmt.Errorf("reading body: %w", err)
		}
	}
	return nil
}

// keeper appends what it is given to the answer body, up to maxKeptBody.
type keeper struct{ a *answer }

func (k keeper) Write(p []byte) (int, error) {
	if room := maxKeptBody - len(k.a.body); room > 0 {
		k.a.body = append(k.a.body, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *conn) readChunked(a *answer) error {
	for {
		line, err := c.br.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("reading chunk size: %w", err)
		}
		line = trimCRLF(line)
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			return fmt.Errorf("bad chunk size %q", shorten(line))
		}
		if size == 0 {
			for { // trailers, up to the blank line
				line, err := c.br.ReadSlice('\n')
				if err != nil {
					return fmt.Errorf("reading trailers: %w", err)
				}
				if len(trimCRLF(line)) == 0 {
					return nil
				}
			}
		}
		if err := c.readN(a, size); err != nil {
			return err
		}
		if _, err := c.br.Discard(2); err != nil { // CRLF after the chunk
			return fmt.Errorf("reading chunk: %w", err)
		}
	}
}

// parseStatusLine reads "HTTP/1.x NNN reason".
func parseStatusLine(line []byte) (status, minor int, ok bool) {
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
		return 0, 0, false
	}
	minor = int(line[7] - '0')
	s := line[9:12]
	for _, b := range s {
		if b < '0' || b > '9' {
			return 0, 0, false
		}
	}
	return int(s[0]-'0')*100 + int(s[1]-'0')*10 + int(s[2]-'0'), minor, true
}

func trimCRLF(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// asciiEqualFold compares b with the lower-case ASCII s, ignoring case.
func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func shorten(b []byte) string {
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}
