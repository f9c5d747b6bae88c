package load

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// bridgeLike answers like the bridge: 200 {"accepted":n,...} for a JSON
// body or a query, every tenth request 503 and every seventh 202 spooled. It
// counts what it saw.
type bridgeLike struct {
	mu       sync.Mutex
	requests int
	coords   int
	status   map[int]int64
	accepted int64
	spooled  int64
	tokens   map[string]int
	methods  map[string]int
}

func newBridgeLike() *bridgeLike {
	return &bridgeLike{status: map[int]int64{}, tokens: map[string]int{}, methods: map[string]int{}}
}

func (b *bridgeLike) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	items := 1
	if len(body) > 0 {
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			http.Error(w, `{"error":"malformed"}`, http.StatusBadRequest)
			return
		}
		if a, ok := v.([]any); ok {
			items = len(a)
		}
	} else if r.URL.Query().Get("lat") == "" && r.URL.Query().Get("latitud") == "" && r.URL.Query().Get("latitude") == "" {
		http.Error(w, `{"error":"no coordinate"}`, http.StatusUnprocessableEntity)
		return
	}
	b.mu.Lock()
	b.requests++
	b.coords += items
	b.tokens[r.Header.Get("Authorization")]++
	b.methods[r.Method]++
	k := b.requests
	var code int
	var answer string
	switch {
	case k%10 == 0:
		code, answer = 503, `{"error":"coordinates could not be stored now; retry later"}`
	case k%7 == 0:
		code, answer = 202, fmt.Sprintf(`{"accepted":0,"duplicates":0,"spooled":%d,"rejected":[]}`, items)
		b.spooled += int64(items)
	default:
		// One duplicate per batch, to see the counts come through.
		acc, dup := items, 0
		if items > 1 {
			acc, dup = items-1, 1
		}
		code, answer = 200, fmt.Sprintf(`{"accepted":%d,"duplicates":%d,"rejected":[]}`, acc, dup)
		b.accepted += int64(acc)
	}
	b.status[code]++
	b.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	io.WriteString(w, answer)
}

func TestFixedRatePacing(t *testing.T) {
	b := newBridgeLike()
	srv := httptest.NewServer(b)
	defer srv.Close()
	var ticks int
	s, err := Run(context.Background(), Config{
		URL: srv.URL, Rate: 200, Duration: time.Second, Connections: 8,
		ProgressEvery: 200 * time.Millisecond, Progress: func(Progress) { ticks++ },
	})
	if err != nil {
		t.Fatal(err)
	}
	if s.Sent < 150 || s.Sent > 250 {
		t.Errorf("sent %d requests at 200/s for 1s, want 150 to 250", s.Sent)
	}
	if int(s.Answered) != b.requests || s.Errors != 0 {
		t.Errorf("answered %d, errors %d; the server saw %d", s.Answered, s.Errors, b.requests)
	}
	if ticks < 1 {
		t.Errorf("progress called %d times in 1s at 200ms", ticks)
	}
}

// A server that stalls: every request arriving in a 200 ms window waits
// 200 ms. Only two connections exist, so the requests due during the stall
// leave late; measured from their intended time they show the stall, and so
// do the percentiles. A generator that measured from the actual send time
// would see two slow requests in 500 (p90 and p99 near zero).
func TestLatencyFromIntendedSendTime(t *testing.T) {
	var start time.Time
	var mu sync.Mutex
	var maxFlight, inFlight int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inFlight++
		maxFlight = max(maxFlight, inFlight)
		mu.Unlock()
		if since := time.Since(start); since >= 300*time.Millisecond && since < 500*time.Millisecond {
			time.Sleep(200 * time.Millisecond)
		}
		mu.Lock()
		inFlight--
		mu.Unlock()
		io.WriteString(w, `{"accepted":1,"duplicates":0,"rejected":[]}`)
	}))
	defer srv.Close()
	start = time.Now()
	s, err := Run(context.Background(), Config{URL: srv.URL, Rate: 500, Duration: time.Second, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", s)
	if maxFlight > 2 {
		t.Errorf("%d requests in flight at once with 2 connections", maxFlight)
	}
	if s.Latency.P99 < 150*time.Millisecond {
		t.Errorf("p99 %s: the 200 ms stall does not show", s.Latency.P99)
	}
	if s.Latency.P90 < 20*time.Millisecond {
		t.Errorf("p90 %s: the requests queued behind the stall do not count their wait", s.Latency.P90)
	}
	if s.Late < 50 {
		t.Errorf("%d requests sent late, want the ~100 due during the stall", s.Late)
	}
	if s.Answered != s.Sent || s.Sent < 400 {
		t.Errorf("sent %d answered %d", s.Sent, s.Answered)
	}
}

// The summary adds up what the server saw: requests, statuses, coordinates
// accepted and spooled, with the token sent on every request.
func TestSummaryMatchesServer(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		batch  int
	}{
		{"post single", "POST", 1},
		{"post batches", "POST", 5},
		{"get query", "GET", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBridgeLike()
			srv := httptest.NewServer(b)
			defer srv.Close()
			fleet, err := NewFleet(FleetConfig{Devices: 50, Seed: 5})
			if err != nil {
				t.Fatal(err)
			}
			s, err := Run(context.Background(), Config{
				URL: srv.URL + "/webhook/ubiqo", Token: "s3cret", Method: tc.method, Batch: tc.batch,
				Count: 300, Connections: 4, Fleet: fleet,
			})
			if err != nil {
				t.Fatal(err)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if s.Sent != 300 || s.Answered != 300 || b.requests != 300 {
				t.Fatalf("sent %d answered %d, server saw %d; want 300", s.Sent, s.Answered, b.requests)
			}
			for code, n := range b.status {
				if s.Status[code] != n {
					t.Errorf("status %d: summary %d, server %d", code, s.Status[code], n)
				}
			}
			if s.Coordinates != int64(b.coords) || s.Coordinates != int64(300*tc.batch) {
				t.Errorf("coordinates %d, server saw %d", s.Coordinates, b.coords)
			}
			if s.Accepted != b.accepted || s.Spooled != b.spooled {
				t.Errorf("accepted %d spooled %d, server answered %d and %d", s.Accepted, s.Spooled, b.accepted, b.spooled)
			}
			wantDup := int64(0)
			if tc.batch > 1 {
				wantDup = s.Status[200]
			}
			if s.Duplicates != wantDup || s.Rejected != 0 {
				t.Errorf("duplicates %d rejected %d, want %d and 0", s.Duplicates, s.Rejected, wantDup)
			}
			if want := s.Status[200]*int64(tc.batch) + s.Status[202]*int64(tc.batch); s.CoordinatesOK != want {
				t.Errorf("coordinates in 2xx answers %d, want %d", s.CoordinatesOK, want)
			}
			if b.tokens["Bearer s3cret"] != 300 || b.methods[tc.method] != 300 {
				t.Errorf("server saw tokens %v and methods %v", b.tokens, b.methods)
			}
			if s.Latency.P50 <= 0 || s.Latency.Max < s.Latency.P99 || s.Latency.P99 < s.Latency.P50 {
				t.Errorf("latency %+v", s.Latency)
			}
			if strings.Contains(s.String(), "s3cret") {
				t.Error("the summary shows the token")
			}
			raw, err := json.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var back Summary
			if err := json.Unmarshal(raw, &back); err != nil {
				t.Fatal(err)
			}
			if back.Sent != s.Sent || back.Status[200] != s.Status[200] || back.Latency.P99.Round(time.Microsecond) != s.Latency.P99 {
				t.Errorf("JSON round trip: %s", raw)
			}
		})
	}
}

// Closed loop with C connections keeps C requests in flight and no more.
func TestClosedLoop(t *testing.T) {
	b := newBridgeLike()
	var inFlight, maxFlight atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for m := maxFlight.Load(); n > m && !maxFlight.CompareAndSwap(m, n); m = maxFlight.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		inFlight.Add(-1)
		b.ServeHTTP(w, r)
	}))
	defer srv.Close()
	s, err := Run(context.Background(), Config{URL: srv.URL, Connections: 6, Duration: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := maxFlight.Load(); got > 6 || got < 3 {
		t.Errorf("at most %d requests in flight, want 6 (at least 3 on a busy machine)", got)
	}
	if s.Answered < 100 || int(s.Answered) != b.requests {
		t.Errorf("answered %d, server saw %d", s.Answered, b.requests)
	}
	if s.Late != 0 || s.Rate != 0 {
		t.Errorf("closed loop reports lateness %d", s.Late)
	}
}

// Answers the runner must read right: chunked bodies, Connection: close,
// HTTP/1.0 style bodies without length, and keep-alive connections that the
// server closes while idle.
func TestHTTPAnswers(t *testing.T) {
	var k atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		switch k.Add(1) % 4 {
		case 0: // chunked, larger than the kept part
			w.WriteHeader(200)
			io.WriteString(w, `{"accepted":1,"duplicates":0,"rejected":[`)
			w.(http.Flusher).Flush()
			io.WriteString(w, `{"index":0,"error":"`+strings.Repeat("x", 10000)+`"}]}`)
		case 1:
			w.Header().Set("Connection", "close")
			io.WriteString(w, `{"accepted":1,"duplicates":0}`)
		case 2:
			w.WriteHeader(204)
		default:
			io.WriteString(w, `{"accepted":1,"duplicates":0}`)
		}
	}))
	srv.Config.IdleTimeout = 30 * time.Millisecond
	srv.Start()
	defer srv.Close()
	s, err := Run(context.Background(), Config{URL: srv.URL, Rate: 40, Count: 40, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Errors != 0 || s.Answered != 40 {
		t.Fatalf("answered %d, errors %v", s.Answered, s.ErrorKinds)
	}
	if s.Accepted != 30 || s.Status[200] != 30 || s.Status[204] != 10 {
		t.Errorf("accepted %d, status %v", s.Accepted, s.Status)
	}

	// A server that answers without a length and closes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				c.Read(buf)
				io.WriteString(c, "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"accepted\":1,\"duplicates\":0}")
			}()
		}
	}()
	s, err = Run(context.Background(), Config{URL: "http://" + ln.Addr().String(), Count: 20, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Answered != 20 || s.Accepted != 20 {
		t.Errorf("HTTP/1.0 server: answered %d accepted %d errors %v", s.Answered, s.Accepted, s.ErrorKinds)
	}
}

func TestErrorsCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	s, err := Run(context.Background(), Config{URL: "http://" + addr + "/webhook/ubiqo", Rate: 100, Count: 20, Connections: 2})
	if err != nil {
		t.Fatal(err)
	}
	if s.Errors != 20 || s.Answered != 0 || s.ErrorKinds["connection refused"] != 20 {
		t.Errorf("errors %d %v, answered %d", s.Errors, s.ErrorKinds, s.Answered)
	}
	if !strings.Contains(s.String(), "connection refused: 20") {
		t.Errorf("summary does not list the errors:\n%s", s)
	}
}

// Cancelling stops the run: requests in flight finish within the grace
// period, and the summary says it was interrupted.
func TestCancel(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hang") != "" {
			<-release
		}
		io.WriteString(w, `{"accepted":1,"duplicates":0}`)
	}))
	defer srv.Close()
	defer close(release)

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	s, err := Run(ctx, Config{URL: srv.URL, Rate: 100, Connections: 4})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Interrupted || s.Sent < 10 || s.Errors != 0 || s.Answered != s.Sent {
		t.Errorf("interrupted %v, sent %d, answered %d, errors %v", s.Interrupted, s.Sent, s.Answered, s.ErrorKinds)
	}

	// A request that never ends is cut off after the grace period.
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	began := time.Now()
	s, err = Run(ctx, Config{URL: srv.URL + "/?hang=1", Method: "GET", Connections: 2, Grace: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("cancelled run took %s", took)
	}
	if s.Errors != 2 || s.ErrorKinds["aborted at interrupt"] != 2 {
		t.Errorf("errors %d %v, want the 2 requests in flight aborted", s.Errors, s.ErrorKinds)
	}
}

func TestConfigValidation(t *testing.T) {
	for _, c := range []Config{
		{URL: "ftp://x"},
		{URL: "http://x", Method: "PUT"},
		{URL: "http://x", Method: "GET", Batch: 5},
		{URL: "http://x", Rate: -1},
		{URL: "http://x", Connections: -1},
		{URL: "http://x", Token: "a\nb"},
	} {
		if _, err := Run(context.Background(), c); err == nil {
			t.Errorf("Run(%+v): want an error", c)
		}
	}
}

func TestRequestShape(t *testing.T) {
	r, err := newRunner(Config{URL: "http://example.test:8080/webhook/ubiqo?src=ubiqo", Token: "tok", Batch: 3})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorker(r)
	if n := w.build(); n != 3 {
		t.Fatalf("build: %d coordinates, want 3", n)
	}
	req, err := http.ReadRequest(bufioReader(w.req))
	if err != nil {
		t.Fatalf("%s: %v", w.req, err)
	}
	body, _ := io.ReadAll(req.Body)
	var items []map[string]any
	if err := json.Unmarshal(body, &items); err != nil || len(items) != 3 {
		t.Fatalf("body %s: %v", body, err)
	}
	if req.Method != "POST" || req.URL.String() != "/webhook/ubiqo?src=ubiqo" || req.Host != "example.test:8080" ||
		req.Header.Get("Authorization") != "Bearer tok" || req.Header.Get("Content-Type") != "application/json" {
		t.Errorf("request %s %s host %s headers %v", req.Method, req.URL, req.Host, req.Header)
	}

	r, err = newRunner(Config{URL: "http://example.test/hook", Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	w = newWorker(r)
	w.build()
	req, err = http.ReadRequest(bufioReader(w.req))
	if err != nil {
		t.Fatalf("%s: %v", w.req, err)
	}
	if req.Method != "GET" || req.URL.Path != "/hook" || len(req.URL.Query()) < 6 {
		t.Errorf("GET %s", req.URL)
	}
}

func TestParseCounts(t *testing.T) {
	for _, tc := range []struct {
		body string
		want counts
	}{
		{`{"accepted":3,"duplicates":2,"rejected":[]}`, counts{3, 2, 0, true}},
		{`{"accepted": 0, "duplicates": 0, "spooled": 7, "rejected": []}`, counts{0, 0, 7, true}},
		{`{"error":"has \"accepted\":9 inside a string"}`, counts{}},
		{``, counts{}},
	} {
		if got := parseCounts([]byte(tc.body)); got != tc.want {
			t.Errorf("parseCounts(%s) = %+v, want %+v", tc.body, got, tc.want)
		}
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

// A target slower than the rate: the requests due before the end that no
// connection was free to send are reported as missed, and the run ends on
// time instead of draining the backlog.
func TestMissedWhenTargetIsSlow(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(50 * time.Millisecond)
		io.WriteString(w, `{"accepted":1,"duplicates":0}`)
	}))
	defer srv.Close()
	s, err := Run(context.Background(), Config{URL: srv.URL, Rate: 100, Duration: 500 * time.Millisecond, Connections: 1})
	if err != nil {
		t.Fatal(err)
	}
	if s.Sent+s.Missed != 50 || s.Missed < 20 {
		t.Errorf("sent %d, missed %d; want 50 due, most of them missed", s.Sent, s.Missed)
	}
	if s.Elapsed > 2*time.Second {
		t.Errorf("run took %s", s.Elapsed)
	}
	if !strings.Contains(s.String(), "never sent") {
		t.Errorf("summary does not say requests were missed:\n%s", s)
	}
}

func TestTLS(t *testing.T) {
	b := newBridgeLike()
	srv := httptest.NewTLSServer(b)
	defer srv.Close()
	tlsConf := srv.Client().Transport.(*http.Transport).TLSClientConfig
	s, err := Run(context.Background(), Config{URL: srv.URL, Count: 50, Connections: 2, TLS: tlsConf})
	if err != nil {
		t.Fatal(err)
	}
	if s.Answered != 50 || b.requests != 50 {
		t.Errorf("answered %d, server saw %d, errors %v", s.Answered, b.requests, s.ErrorKinds)
	}
}

// A histogram quantile is the top of its bucket and can lie above the exact
// maximum (4.125734ms falls in a bucket reported as 4.127ms); the summary
// never shows a percentile above Max.
func TestPercentilesNotAboveMax(t *testing.T) {
	fleet, err := NewFleet(FleetConfig{Devices: 1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	c := newCollector(&runner{cfg: Config{Method: "POST", Batch: 1}, fleet: fleet})
	for range 99 {
		c.total.record(68 * time.Microsecond)
	}
	c.total.record(4125734 * time.Nanosecond)
	if raw := time.Duration(c.total.hist.ValueAtQuantile(100)) * time.Microsecond; raw <= c.total.maxLat {
		t.Fatalf("bucket top %s is not above the exact max %s; the case no longer tests the clamp", raw, c.total.maxLat)
	}
	l := c.summary(time.Second, false).Latency
	if l.Max != 4125734*time.Nanosecond {
		t.Errorf("max %s, want 4.125734ms", l.Max)
	}
	for name, v := range map[string]time.Duration{"p50": l.P50, "p90": l.P90, "p99": l.P99, "p99.9": l.P999} {
		if v > l.Max {
			t.Errorf("%s %s above max %s", name, v, l.Max)
		}
	}
	if l.P50 != 68*time.Microsecond {
		t.Errorf("p50 %s, want 68µs", l.P50)
	}
}
