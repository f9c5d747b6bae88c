package bridge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

type syncBuffer = streamtest.Logs

type env struct {
	opts   bridge.Options
	srv    *bridge.Server
	http   *httptest.Server
	nats   *streamtest.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	logs   *syncBuffer
	stream jetstream.Stream
}

func newEnv(t *testing.T, mod func(*bridge.Options)) *env {
	t.Helper()
	return newEnvOn(t, streamtest.Run(t), mod)
}

// newEnvOn is newEnv on a given JetStream server.
func newEnvOn(t *testing.T, ns *streamtest.Server, mod func(*bridge.Options)) *env {
	t.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	opts := bridge.Options{
		Addr:           "127.0.0.1:0",
		MaxBodyBytes:   1 << 20,
		MaxBatch:       1000,
		PublishTimeout: 2 * time.Second,
		Stream:         streamtest.Coords(),
		ManageStream:   true,
		AccessLog:      "all",
	}
	if mod != nil {
		mod(&opts)
	}
	srv, err := bridge.New(opts, bridge.Deps{Log: zerolog.New(logs), Conn: nc, JS: js})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnsureStream(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), "COORDS")
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &env{opts: opts, srv: srv, http: hs, nats: ns, nc: nc, js: js, logs: logs, stream: st}
}

// newServer builds another server on the same connection (for spool and
// restart tests).
func (e *env) newServer(t *testing.T, sp *spool.Spool, mod func(*bridge.Options)) *bridge.Server {
	t.Helper()
	opts := e.opts
	if mod != nil {
		mod(&opts)
	}
	srv, err := bridge.New(opts, bridge.Deps{Log: zerolog.New(e.logs), Conn: e.nc, JS: e.js, Spool: sp})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

type answer struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func (e *env) do(t *testing.T, method, path, contentType string, body io.Reader, hdr map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &a.Body); err != nil {
			t.Fatalf("answer is not JSON: %q", raw)
		}
	}
	return a
}

func (e *env) post(t *testing.T, body string) answer {
	t.Helper()
	return e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json", strings.NewReader(body), nil)
}

func (e *env) msgs(t *testing.T) uint64 {
	t.Helper()
	info, err := e.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPostStoresCanonicalMessage(t *testing.T) {
	e := newEnv(t, nil)
	a := e.post(t, `{"imei":"356938035643809","lat":"20.5888","lng":-100.3899,"speed":"42.5","fechaHora":"2026-03-01 11:59:00","bateria":87,"extra":"kept"}`)
	if a.Status != http.StatusOK {
		t.Fatalf("status %d: %s", a.Status, a.Raw)
	}
	if a.Body["accepted"] != float64(1) || a.Body["duplicates"] != float64(0) {
		t.Fatalf("answer %s", a.Raw)
	}
	if rej, ok := a.Body["rejected"].([]any); !ok || len(rej) != 0 {
		t.Fatalf("rejected must be an empty list: %s", a.Raw)
	}
	m, err := e.stream.GetLastMsgForSubject(context.Background(), "ubiqo.coords.356938035643809")
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("Ubiqo-Device") != "356938035643809" || m.Header.Get("Content-Type") != "application/json" || len(m.Header.Get("Nats-Msg-Id")) < 16 {
		t.Fatalf("headers %v", m.Header)
	}
	var c coord.Coord
	if err := json.Unmarshal(m.Data, &c); err != nil {
		t.Fatal(err)
	}
	if c.V != 1 || c.DeviceID != "356938035643809" || c.Lat != 20.5888 || c.Lon != -100.3899 || c.SpeedKmh == nil || *c.SpeedKmh != 42.5 || c.BatteryPct == nil || *c.BatteryPct != 87 {
		t.Fatalf("canonical body %s", m.Data)
	}
	if c.Attrs["extra"] != "kept" || len(c.Raw) == 0 {
		t.Fatalf("attrs/raw lost: %s", m.Data)
	}
	if m.Header.Get("Nats-Msg-Id") != c.MsgID() {
		t.Fatalf("Nats-Msg-Id %q != MsgID %q", m.Header.Get("Nats-Msg-Id"), c.MsgID())
	}
}

func TestSameCoordinateTwiceStoredOnce(t *testing.T) {
	e := newEnv(t, nil)
	body := `{"device_id":"truck-1","lat":19.4326,"lon":-99.1332,"timestamp":"2026-03-01T10:00:00Z"}`
	if a := e.post(t, body); a.Status != 200 || a.Body["accepted"] != float64(1) {
		t.Fatalf("first: %d %s", a.Status, a.Raw)
	}
	// The same fix re-sent (UBIQO's HTTP backup), with other extra fields and
	// numbers written differently: still the same coordinate.
	a := e.post(t, `{"deviceId":"truck-1","latitude":"19.43260","longitude":-99.1332,"ts":"2026-03-01T04:00:00-06:00","note":"resend"}`)
	if a.Status != 200 || a.Body["accepted"] != float64(0) || a.Body["duplicates"] != float64(1) {
		t.Fatalf("second: %d %s", a.Status, a.Raw)
	}
	if n := e.msgs(t); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
}

func TestBatchOfFiveHundred(t *testing.T) {
	e := newEnv(t, nil)
	var b strings.Builder
	b.WriteString(`{"coordinates":[`)
	for i := 0; i < 500; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":"dev-%d","lat":%f,"lon":%f,"ts":%d}`, i%50, 19+float64(i)/1000, -99-float64(i)/1000, 1772359200+i)
	}
	b.WriteString(`,{"id":"bad","lat":91,"lon":0}]}`)
	a := e.post(t, b.String())
	if a.Status != 200 || a.Body["accepted"] != float64(500) {
		t.Fatalf("%d %s", a.Status, a.Raw[:min(len(a.Raw), 300)])
	}
	rej := a.Body["rejected"].([]any)
	if len(rej) != 1 || rej[0].(map[string]any)["index"] != float64(500) || !strings.Contains(rej[0].(map[string]any)["error"].(string), "lat") {
		t.Fatalf("rejected = %v", rej)
	}
	if n := e.msgs(t); n != 500 {
		t.Fatalf("stream holds %d, want 500", n)
	}
}

// Device ids full of subject syntax each land on a subject of their own,
// and no id's subject is matched by another's.
func TestHostileDeviceIDsOwnSubjects(t *testing.T) {
	e := newEnv(t, nil)
	ids := []string{"a.b", "a b", "a*", "a>", "camión 7", "a", "a.>", "*", ">", "a=2Eb", "ünïcødé.*.>"}
	for i, id := range ids {
		body, _ := json.Marshal(map[string]any{"device_id": id, "lat": 10 + i, "lon": 20, "ts": 1772359200 + i})
		if a := e.post(t, string(body)); a.Status != 200 || a.Body["accepted"] != float64(1) {
			t.Fatalf("id %q: %d %s", id, a.Status, a.Raw)
		}
	}
	ctx := context.Background()
	seen := map[string]string{}
	for _, id := range ids {
		subj, err := coord.Subject("ubiqo.coords", id)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(subj, ".") != 2 || strings.ContainsAny(subj, "*> ") {
			t.Fatalf("id %q -> subject %q has extra tokens or wildcards", id, subj)
		}
		if other, dup := seen[subj]; dup {
			t.Fatalf("ids %q and %q share subject %q", id, other, subj)
		}
		seen[subj] = id
		// Exactly one message on that subject, and it is this device's.
		info, err := e.stream.Info(ctx, jetstream.WithSubjectFilter(subj))
		if err != nil {
			t.Fatal(err)
		}
		if n := info.State.Subjects[subj]; n != 1 || len(info.State.Subjects) != 1 {
			t.Fatalf("subject %q (id %q) matches %v", subj, id, info.State.Subjects)
		}
		m, err := e.stream.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get("Ubiqo-Device") != id {
			t.Fatalf("subject %q carries device %q, want %q", subj, m.Header.Get("Ubiqo-Device"), id)
		}
	}
}

func TestErrorStatuses(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) {
		o.MaxBodyBytes = 4096
		o.MaxBatch = 3
		o.Tokens = []string{"s3cret-token"}
	})
	auth := map[string]string{"Authorization": "Bearer s3cret-token"}
	valid := `{"device_id":"d1","lat":1,"lon":2}`
	tests := []struct {
		name        string
		method      string
		path        string
		contentType string
		body        string
		hdr         map[string]string
		status      int
		errContains string
	}{
		{"no credentials", "POST", "/webhook/ubiqo", "application/json", valid, nil, 401, "credentials"},
		{"wrong token", "POST", "/webhook/ubiqo", "application/json", valid, map[string]string{"X-Ubiqo-Token": "guess"}, 401, "credentials"},
		{"malformed json", "POST", "/webhook/ubiqo", "application/json", `{"device_id":`, auth, 400, "malformed"},
		{"method", "PUT", "/webhook/ubiqo", "application/json", valid, auth, 405, "method not allowed"},
		{"body too large", "POST", "/webhook/ubiqo", "application/json", `{"device_id":"d1","lat":1,"lon":2,"pad":"` + strings.Repeat("x", 5000) + `"}`, auth, 413, "http.max_body_bytes"},
		{"batch too large", "POST", "/webhook/ubiqo", "application/json", "[" + strings.Repeat(valid+",", 3) + valid + "]", auth, 413, "http.max_batch"},
		{"media type", "POST", "/webhook/ubiqo", "application/xml", `<c/>`, auth, 415, "application/json"},
		{"no valid coordinate", "POST", "/webhook/ubiqo", "application/json", `[{"device_id":"d1","lat":91,"lon":2}]`, auth, 422, "no valid coordinate"},
		{"empty array", "POST", "/webhook/ubiqo", "application/json", `[]`, auth, 422, ""},
		{"unknown path", "GET", "/nope", "", "", nil, 404, "not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			a := e.do(t, tt.method, tt.path, tt.contentType, body, tt.hdr)
			if a.Status != tt.status {
				t.Fatalf("status %d, want %d: %s", a.Status, tt.status, a.Raw)
			}
			msg, ok := a.Body["error"].(string)
			if !ok || msg == "" || !strings.Contains(msg, tt.errContains) {
				t.Fatalf("error %q does not contain %q (%s)", msg, tt.errContains, a.Raw)
			}
			if strings.Contains(a.Raw, "s3cret-token") {
				t.Fatal("answer echoes the token")
			}
		})
	}
	if n := e.msgs(t); n != 0 {
		t.Fatalf("%d messages published by bad requests", n)
	}
	// 422 lists what was wrong with each item.
	a := e.do(t, "POST", "/webhook/ubiqo", "application/json", strings.NewReader(`[{"device_id":"d1","lat":91,"lon":2}]`), auth)
	rej, _ := a.Body["rejected"].([]any)
	if len(rej) != 1 {
		t.Fatalf("422 without rejected list: %s", a.Raw)
	}
	// 401 names the schemes.
	a = e.do(t, "POST", "/webhook/ubiqo", "application/json", strings.NewReader(valid), nil)
	if !strings.Contains(a.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("401 without WWW-Authenticate: %v", a.Header)
	}
}

func TestAuthWaysAndTokenNeverLogged(t *testing.T) {
	const token = "tok-Zx9-very-secret"
	e := newEnv(t, func(o *bridge.Options) {
		o.Tokens = []string{"other", token}
		o.BasicUser, o.BasicPassword = "ubiqo", "basic-Pw-secret"
	})
	valid := func(i int) string { return fmt.Sprintf(`{"device_id":"d%d","lat":1,"lon":2}`, i) }
	ok := []struct {
		name  string
		path  string
		hdr   map[string]string
		basic bool
	}{
		{"bearer", "/webhook/ubiqo", map[string]string{"Authorization": "Bearer " + token}, false},
		{"header", "/webhook/ubiqo", map[string]string{"X-Ubiqo-Token": token}, false},
		{"query", "/webhook/ubiqo?token=" + url.QueryEscape(token), nil, false},
		{"basic", "/webhook/ubiqo", nil, true},
	}
	for i, tt := range ok {
		req, _ := http.NewRequest("POST", e.http.URL+tt.path, strings.NewReader(valid(i)))
		req.Header.Set("Content-Type", "application/json")
		for k, v := range tt.hdr {
			req.Header.Set(k, v)
		}
		if tt.basic {
			req.SetBasicAuth("ubiqo", "basic-Pw-secret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d", tt.name, resp.StatusCode)
		}
	}
	// A GET whose query carries the coordinate and the token.
	a := e.do(t, "GET", "/webhook/ubiqo?device_id=g1&lat=3&lon=4&token="+url.QueryEscape(token), "", nil, nil)
	if a.Status != 200 {
		t.Fatalf("GET: %d %s", a.Status, a.Raw)
	}
	m, err := e.stream.GetLastMsgForSubject(context.Background(), "ubiqo.coords.g1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(m.Data), token) {
		t.Fatalf("the token was stored in the message: %s", m.Data)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"request_id"`) || !strings.Contains(logs, "token=REDACTED") {
		t.Fatalf("access log lacks request ids or the redacted query:\n%s", logs)
	}
	for _, secret := range []string{token, "basic-Pw-secret", url.QueryEscape(token)} {
		if strings.Contains(logs, secret) {
			t.Fatalf("a secret reached the logs:\n%s", logs)
		}
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	base := waitListening(t, e.srv)
	waitReady(t, base, true)

	if resp, err := http.Get(base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v", err)
	}
	e.nats.Stop()
	waitReady(t, base, false)
	// While NATS is away, a coordinate cannot be stored: 503 with Retry-After.
	resp, err := http.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(`{"device_id":"d","lat":1,"lon":2}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("while NATS is down: %d Retry-After=%q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	e.nats = e.nats.Restart(t)
	waitReady(t, base, true)
	resp, err = http.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(`{"device_id":"d","lat":1,"lon":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("after NATS returned: %d", resp.StatusCode)
	}

	if resp, err := http.Get(base + "/debug/pprof/heap"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("pprof served without http.pprof and an admin listener: %v", err)
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`ubiqo_bridge_http_requests_total{code="200",method="POST",route="/webhook/ubiqo"} 1`,
		`ubiqo_bridge_http_requests_total{code="503",method="POST",route="/webhook/ubiqo"} 1`,
		`ubiqo_bridge_coordinates_total{result="accepted"} 1`,
		`ubiqo_bridge_publish_duration_seconds_count`,
		`ubiqo_bridge_http_requests_in_flight`,
		`ubiqo_bridge_nats_connected 1`,
		`ubiqo_bridge_publish_pending 0`,
		`ubiqo_bridge_publish_late_acks_total 0`,
		`ubiqo_bridge_publish_cut_off_total 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// With an admin listener, /metrics and the profiles are there and not on
// the webhook's port; the webhook is not on the admin port.
func TestAdminListener(t *testing.T) {
	e := newEnv(t, nil)
	if _, err := bridge.New(bridge.Options{Pprof: true, Stream: streamtest.Coords()}, bridge.Deps{Conn: e.nc, JS: e.js}); err == nil || !strings.Contains(err.Error(), "AdminAddr") {
		t.Errorf("New with Pprof and no AdminAddr: %v, want a refusal", err)
	}
	srv := e.newServer(t, nil, func(o *bridge.Options) { o.AdminAddr, o.Pprof = "127.0.0.1:0", true })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	base := waitListening(t, srv)
	deadline := time.Now().Add(5 * time.Second)
	for srv.AdminAddr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("admin listener not up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	admin := "http://" + srv.AdminAddr().String()
	waitReady(t, admin, true)

	get := func(url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	resp, err := http.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(`{"device_id":"adm-1","lat":1,"lon":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("webhook on the main port: %d", resp.StatusCode)
	}
	for _, path := range []string{"/metrics", "/debug/pprof/", "/debug/pprof/heap"} {
		if code, _ := get(base + path); code != http.StatusNotFound {
			t.Errorf("main port %s = %d, want 404", path, code)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(base + path); code != 200 {
			t.Errorf("main port %s = %d, want 200 (load balancers probe it)", path, code)
		}
	}
	if code, body := get(admin + "/metrics"); code != 200 || !strings.Contains(body, `ubiqo_bridge_coordinates_total{result="accepted"} 1`) {
		t.Errorf("admin /metrics = %d, lacks the accepted coordinate:\n%.500s", code, body)
	}
	if code, body := get(admin + "/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Errorf("admin heap profile = %d %.200s", code, body)
	}
	if code, body := get(admin + "/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("admin pprof index = %d %.200s", code, body)
	}
	if code, body := get(admin + "/debug/pprof/profile?seconds=1"); code != 200 || !strings.HasPrefix(body, "\x1f\x8b") {
		t.Errorf("admin CPU profile = %d, %d bytes, want a gzipped profile", code, len(body))
	}
	if code, body := get(admin + "/debug/pprof/cmdline"); code != http.StatusNotFound || strings.Contains(body, os.Args[0]) {
		t.Errorf("admin cmdline = %d %q: the command line must not be served", code, body)
	}
	resp, err = http.Post(admin+"/webhook/ubiqo", "application/json", strings.NewReader(`{"device_id":"adm-2","lat":1,"lon":2}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == 200 {
		t.Error("the admin port took a coordinate")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(admin + "/healthz"); err == nil {
		t.Error("admin listener still serving after Run returned")
	}
}

func waitListening(t *testing.T, s *bridge.Server) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Addr() == nil {
		if time.Now().After(deadline) {
			t.Fatal("server not listening")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return "http://" + s.Addr().String()
}

func waitReady(t *testing.T, base string, want bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if (resp.StatusCode == 200) == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never became ready=%v", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The allow-list admits callers by their TCP peer address, never by a
// header they can write.
func TestIPAllowList(t *testing.T) {
	body := `{"device_id":"ip","lat":1,"lon":2}`
	allowed := newEnv(t, func(o *bridge.Options) { o.AllowIPs = []string{"10.0.0.0/8", "127.0.0.1"} })
	if a := allowed.post(t, body); a.Status != 200 {
		t.Fatalf("127.0.0.1 allowed: %d %s", a.Status, a.Raw)
	}
	denied := newEnv(t, func(o *bridge.Options) { o.AllowIPs = []string{"10.0.0.0/8"} })
	a := denied.do(t, "POST", "/webhook/ubiqo", "application/json", strings.NewReader(body), map[string]string{"X-Forwarded-For": "10.1.2.3", "X-Real-Ip": "10.1.2.3"})
	if a.Status != http.StatusForbidden || !strings.Contains(a.Raw, "http.allow_ips") {
		t.Fatalf("127.0.0.1 not in 10.0.0.0/8 (whatever X-Forwarded-For says): %d %s", a.Status, a.Raw)
	}
	if n := denied.msgs(t); n != 0 {
		t.Fatalf("%d messages published by a refused caller", n)
	}
	if _, err := bridge.New(bridge.Options{AllowIPs: []string{"not-an-ip"}}, bridge.Deps{Conn: allowed.nc, JS: allowed.js}); err == nil || !strings.Contains(err.Error(), "http.allow_ips") {
		t.Fatalf("bad allow-list entry: %v", err)
	}
}

// Past http.max_in_flight concurrent requests the bridge answers 429 with
// Retry-After instead of queueing without bound.
func TestMaxInFlight429(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.MaxInFlight = 1 })
	// Hold the only slot with a request whose body never finishes.
	pr, pw := io.Pipe()
	defer pw.Close()
	held := make(chan struct{})
	go func() {
		defer close(held)
		req, _ := http.NewRequest("POST", e.http.URL+"/webhook/ubiqo", pr)
		req.Header.Set("Content-Type", "application/json")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	pw.Write([]byte(`{"device_id":"slow",`))
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := e.post(t, `{"device_id":"x","lat":1,"lon":2}`)
		if a.Status == http.StatusTooManyRequests {
			if a.Header.Get("Retry-After") == "" || !strings.Contains(a.Raw, "http.max_in_flight") {
				t.Fatalf("429 without Retry-After or reason: %v %s", a.Header, a.Raw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never 429 with the slot held; last %d", a.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	pw.Write([]byte(`"lat":1,"lon":2}`))
	pw.Close()
	<-held
	if a := e.post(t, `{"device_id":"x","lat":1,"lon":2}`); a.Status != 200 {
		t.Fatalf("slot not released: %d", a.Status)
	}
}

// A client over http.rate_limit gets 429 with Retry-After; nothing of the
// refused requests is published.
func TestRateLimitPerClient(t *testing.T) {
	e := newEnv(t, func(o *bridge.Options) { o.RateLimit = 1; o.RateBurst = 3 })
	codes := map[int]int{}
	for i := 0; i < 6; i++ {
		a := e.post(t, fmt.Sprintf(`{"device_id":"rl","lat":1,"lon":%d,"ts":%d}`, i, 1772359200+i))
		codes[a.Status]++
		if a.Status == http.StatusTooManyRequests && (a.Header.Get("Retry-After") == "" || !strings.Contains(a.Raw, "http.rate_limit")) {
			t.Fatalf("429 without Retry-After or reason: %v %s", a.Header, a.Raw)
		}
	}
	if codes[200] < 3 || codes[429] < 2 {
		t.Fatalf("answers %v: want the burst of 3 accepted and the rest refused", codes)
	}
	if n := e.msgs(t); int(n) != codes[200] {
		t.Fatalf("%d messages for %d accepted requests", n, codes[200])
	}
}
