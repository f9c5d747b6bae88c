package bridge_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
)

func nested(open, close string, depth int) string {
	return strings.Repeat(open, depth) + strings.Repeat(close, depth)
}

func manyItems(n int, item string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(item)
	}
	b.WriteByte(']')
	return b.String()
}

// TestHostileInput sends malformed and hostile requests: each gets its
// documented 4xx with a clear JSON message, never a 5xx, and nothing
// reaches the stream.
func TestHostileInput(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) {
		o.MaxBodyBytes = 1 << 20
		o.MaxBatch = 1000
	})
	const js = "application/json"
	const form = "application/x-www-form-urlencoded"
	okItem := `{"device_id":"d","lat":1,"lon":2}`
	tests := []struct {
		name        string
		method      string
		query       string
		contentType string
		hdr         map[string]string
		body        string
		status      int
		msg         string // the error message contains this
	}{
		{"broken json", "POST", "", js, nil, `{"device_id":`, 400, "malformed"},
		{"trailing garbage", "POST", "", js, nil, okItem + ` xyz`, 400, "malformed"},
		{"two objects", "POST", "", js, nil, okItem + okItem, 400, "malformed"},
		{"unquoted key", "POST", "", js, nil, `{device_id:"d","lat":1,"lon":2}`, 400, "malformed"},
		{"single quotes", "POST", "", js, nil, `{'device_id':'d'}`, 400, "malformed"},
		{"deep arrays", "POST", "", js, nil, nested("[", "]", 100000), 400, "malformed"},
		{"deep objects", "POST", "", js, nil, strings.Repeat(`{"a":`, 50000) + "1" + strings.Repeat("}", 50000), 400, ""},
		{"deep nesting inside an item", "POST", "", js, nil, `{"device_id":"d","lat":1,"lon":2,"x":` + nested("[", "]", 20000) + `}`, 400, ""},
		{"NaN literal", "POST", "", js, nil, `{"device_id":"d","lat":NaN,"lon":2}`, 400, "malformed"},
		{"Infinity literal", "POST", "", js, nil, `{"device_id":"d","lat":Infinity,"lon":2}`, 400, "malformed"},
		{"NaN string", "POST", "", js, nil, `{"device_id":"d","lat":"NaN","lon":2}`, 422, "lat"},
		{"header injection in the device id", "POST", "", js, nil, `{"device_id":"d\r\nNats-Msg-Id: forged","lat":1,"lon":2}`, 422, "control character"},
		{"device id as query with a newline", "GET", "?device_id=d%0Ax&lat=1&lon=2", "", nil, "", 422, "control character"},
		{"huge number", "POST", "", js, nil, `{"device_id":"d","lat":1e400,"lon":2}`, 422, "lat"},
		{"huge integer digits", "POST", "", js, nil, `{"device_id":"d","lat":` + strings.Repeat("9", 5000) + `,"lon":2}`, 422, "lat"},
		{"lat 91", "POST", "", js, nil, `{"device_id":"d","lat":91,"lon":2}`, 422, "lat"},
		{"lat -90.0001", "POST", "", js, nil, `{"device_id":"d","lat":-90.0001,"lon":2}`, 422, "lat"},
		{"lon 181", "POST", "", js, nil, `{"device_id":"d","lat":1,"lon":181}`, 422, "lon"},
		{"lat missing", "POST", "", js, nil, `{"device_id":"d","lon":2}`, 422, "lat"},
		{"lat bool", "POST", "", js, nil, `{"device_id":"d","lat":true,"lon":2}`, 422, "lat"},
		{"lat object", "POST", "", js, nil, `{"device_id":"d","lat":{"v":1},"lon":2}`, 422, "lat"},
		{"empty id", "POST", "", js, nil, `{"device_id":"","lat":1,"lon":2}`, 422, "device"},
		{"blank id", "POST", "", js, nil, `{"device_id":"   ","lat":1,"lon":2}`, 422, "device"},
		{"no id", "POST", "", js, nil, `{"lat":1,"lon":2}`, 422, "device"},
		{"id 129 bytes", "POST", "", js, nil, `{"device_id":"` + strings.Repeat("x", 129) + `","lat":1,"lon":2}`, 422, "device"},
		// Stray bytes beside UTF-8 text: not a legacy charset (see
		// bridge.toUTF8), so the id is not valid text.
		{"id invalid utf-8", "POST", "", js, nil, "{\"device_id\":\"a\xff\xfeb\",\"lat\":1,\"lon\":2,\"note\":\"ñ\"}", 0, ""},
		{"body invalid utf-8 outside strings", "POST", "", js, nil, "{\"device_id\":\"a\",\xff\"lat\":1}", 400, "malformed"},
		// UTF-16 is read by its byte order mark (bridge.toUTF8): "{}".
		{"utf-16 body", "POST", "", js, nil, "\xff\xfe{\x00}\x00", 422, "device_id missing"},
		{"utf-16 body cut in half", "POST", "", js, nil, "\xff\xfe{\x00}", 400, "malformed"},
		{"future time", "POST", "", js, nil, `{"device_id":"d","lat":1,"lon":2,"ts":"2099-01-01T00:00:00Z"}`, 422, "ahead of the receive time"},
		{"unparseable time", "POST", "", js, nil, `{"device_id":"d","lat":1,"lon":2,"ts":"yesterday"}`, 422, "time"},
		{"empty object", "POST", "", js, nil, `{}`, 422, ""},
		{"empty array", "POST", "", js, nil, `[]`, 422, ""},
		{"null", "POST", "", js, nil, `null`, 400, "malformed"},
		{"string body", "POST", "", js, nil, `"hello"`, 400, "malformed"},
		{"number body", "POST", "", js, nil, `42`, 400, "malformed"},
		{"array of numbers", "POST", "", js, nil, `[1,2,3]`, 400, "malformed"},
		{"mixed array", "POST", "", js, nil, `[` + okItem + `,1]`, 400, "malformed"},
		{"array of arrays", "POST", "", js, nil, `[[` + okItem + `]]`, 400, "malformed"},
		{"10 MB body", "POST", "", js, nil, `{"device_id":"d","lat":1,"lon":2,"pad":"` + strings.Repeat("x", 10<<20) + `"}`, 413, "http.max_body_bytes"},
		{"100000-item array", "POST", "", js, nil, manyItems(100000, `{}`), 413, "http.max_batch"},
		{"1001 valid items", "POST", "", js, nil, manyItems(1001, okItem), 413, "http.max_batch"},
		{"xml", "POST", "", "application/xml", nil, `<coord lat="1"/>`, 415, "media type"},
		{"text/html", "POST", "", "text/html", nil, `<p>hi</p>`, 415, "media type"},
		{"multipart", "POST", "", "multipart/form-data; boundary=x", nil, "--x\r\nContent-Disposition: form-data; name=\"lat\"\r\n\r\n1\r\n--x--\r\n", 415, "media type"},
		{"json declared, form sent", "POST", "", js, nil, `device_id=d&lat=1&lon=2`, 400, "malformed"},
		{"form declared, broken json sent", "POST", "", form, nil, `{"device_id":`, 400, "malformed"},
		{"bad percent-encoding in form drops that pair", "POST", "", form, nil, `device_id=d&lat=%ZZ&lon=2`, 422, "lat"},
		{"form of which no pair parses", "POST", "", form, nil, `%ZZ`, 400, "malformed"},
		{"gzip garbage", "POST", "", js, map[string]string{"Content-Encoding": "gzip"}, "\x1f\x8b\x08\x00garbage", 400, "gzip"},
		{"gzip bomb", "POST", "", js, map[string]string{"Content-Encoding": "gzip"}, gzipped(`{"device_id":"d","lat":1,"lon":2,"pad":"` + strings.Repeat("0", 20<<20) + `"}`), 413, "http.max_body_bytes"},
		{"brotli not supported", "POST", "", js, map[string]string{"Content-Encoding": "br"}, "\x0b\x02\x80", 415, "Content-Encoding"},
		{"query without lat", "GET", "?device_id=d&lon=2", "", nil, "", 422, "lat"},
		{"query lat 91", "GET", "?device_id=d&lat=91&lon=2", "", nil, "", 422, "lat"},
		{"query empty", "GET", "", "", nil, "", 422, ""},
		{"location garbage", "GET", "?device_id=d&location=abc", "", nil, "", 422, "lat"},
		{"PUT", "PUT", "", js, nil, okItem, 405, "method"},
		{"DELETE", "DELETE", "", "", nil, "", 405, "method"},
		{"PATCH", "PATCH", "", js, nil, okItem, 405, "method"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			a := e.do(t, tt.method, "/webhook/ubiqo"+tt.query, tt.contentType, body, tt.hdr)
			if a.Status >= 500 {
				t.Fatalf("5xx for hostile input: %d %s", a.Status, a.Raw)
			}
			if tt.status == 0 { // either answer is right, but it must be a clear 4xx
				if a.Status < 400 {
					t.Fatalf("accepted: %d %s", a.Status, a.Raw)
				}
			} else if a.Status != tt.status {
				t.Fatalf("status %d, want %d: %.300s", a.Status, tt.status, a.Raw)
			}
			msg, _ := a.Body["error"].(string)
			if msg == "" {
				t.Fatalf("no error message: %.300s", a.Raw)
			}
			if !strings.Contains(strings.ToLower(a.Raw), strings.ToLower(tt.msg)) {
				t.Fatalf("answer %.300s does not mention %q", a.Raw, tt.msg)
			}
			if len(a.Raw) > 256<<10 {
				t.Fatalf("answer of %d bytes echoes the input", len(a.Raw))
			}
		})
	}
	if n := e.msgs(t); n != 0 {
		t.Fatalf("%d messages published by hostile requests", n)
	}
	t.Logf("%d hostile requests answered with their 4xx; nothing published", len(tests))
}

// Slow clients cannot hold connections: a client that stops in the middle
// of its headers or its body is cut off by the server's timeouts.
func TestSlowClientsAreCutOff(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) {
		o.ReadHeaderTimeout = 300 * time.Millisecond
		o.ReadTimeout = 600 * time.Millisecond
	})
	base := startRun(t, e)
	addr := strings.TrimPrefix(base, "http://")
	cases := map[string]string{
		"headers": "POST /webhook/ubiqo HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
		"body":    "POST /webhook/ubiqo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"device_id\":\"d\",",
	}
	for name, partial := range cases {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte(partial)); err != nil {
				t.Fatal(err)
			}
			// Then nothing. The server must close the connection (with or
			// without an answer) well before this deadline.
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode < 400 || resp.StatusCode >= 500 {
					t.Fatalf("slow %s answered %d", name, resp.StatusCode)
				}
				return
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("connection held open by a slow %s", name)
			}
		})
	}
	if n := e.msgs(t); n != 0 {
		t.Fatalf("%d messages published", n)
	}
}

func TestHeaderTooLarge(t *testing.T) {
	e := newEnv(t, nil)
	base := startRun(t, e)
	req, _ := http.NewRequest("POST", base+"/webhook/ubiqo", bytes.NewReader([]byte(`{}`)))
	req.Header.Set("X-Huge", strings.Repeat("a", 200<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("status %d, want 431", resp.StatusCode)
	}
}

// startRun runs the env's server on a real listener (for tests of the
// connection-level timeouts that httptest does not apply).
func startRun(t *testing.T, e *env) string {
	t.Helper()
	base, stop := runServer(t, e.srv)
	t.Cleanup(stop)
	return base
}

func gzipped(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

// A gzip body within the limits is accepted like a plain one.
func TestGzipBody(t *testing.T) {
	e := newEnv(t, nil)
	a := e.do(t, "POST", "/webhook/ubiqo", "application/json", strings.NewReader(gzipped(`[{"device_id":"z1","lat":1,"lon":2},{"device_id":"z2","lat":3,"lon":4}]`)), map[string]string{"Content-Encoding": "gzip"})
	if a.Status != 200 || a.Body["accepted"] != float64(2) {
		t.Fatalf("%d %s", a.Status, a.Raw)
	}
}

// Made-up HTTP methods, sent without credentials, must not each become a
// series of their own in /metrics (unbounded memory and scrape size).
func TestMadeUpMethodsShareOneMetricSeries(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 50; i++ {
		req, _ := http.NewRequest(fmt.Sprintf("X%03d", i), e.http.URL+"/webhook/ubiqo", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := http.Get(e.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var series []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "ubiqo_bridge_http_requests_total{") {
			series = append(series, l)
		}
	}
	if len(series) != 1 || !strings.Contains(series[0], `method="other"`) {
		t.Fatalf("50 made-up methods gave these series:\n%s", strings.Join(series, "\n"))
	}
}

// A request still in flight when http.shutdown_timeout runs out is cut off
// unanswered (its sender retries) and the stop is still a clean one: Run
// returns nil, with a warning naming the key.
func TestShutdownGraceRunsOut(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) {
		o.ShutdownTimeout = 200 * time.Millisecond
		o.ReadTimeout = time.Minute
	})
	base, stop := runServer(t, e.srv) // stop fails the test if Run returns an error
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A slow upload: headers and half a body, then nothing.
	if _, err := conn.Write([]byte("POST /webhook/ubiqo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"device_id\":\"d\",")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the handler is reading the body
	stop()
	if !strings.Contains(e.logs.String(), "http.shutdown_timeout ran out") {
		t.Errorf("no warning naming http.shutdown_timeout:\n%s", e.logs.String())
	}
	if n := e.msgs(t); n != 0 {
		t.Fatalf("%d messages published", n)
	}
}

// While NATS is down a load balancer's readiness probes answer 503 every
// few seconds: that is expected, so their access log lines are debug, not
// warnings that would flood the log.
func TestNotReadyProbesAreNotWarnings(t *testing.T) {
	e := newEnv(t, nil)
	e.nats.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := e.do(t, http.MethodGet, "/readyz", "", nil, nil)
		if a.Status == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still %d with NATS down", a.Status)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, `"route":"/readyz"`) && strings.Contains(line, `"status":503`) && !strings.Contains(line, `"level":"debug"`) {
			t.Fatalf("a not-ready probe logged above debug: %s", line)
		}
	}
	if !strings.Contains(e.logs.String(), `"route":"/readyz"`) {
		t.Fatal("no access log line for the probe at all")
	}
}
