package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

const (
	secretHeader  = "Bearer s3cr3t-t0ken-value"
	signingSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
)

type syncBuffer = streamtest.Logs

// sink is an HTTP target: it records the coordinates it accepts; fail
// decides a status per coordinate (0 = 200).
type sink struct {
	srv  *httptest.Server
	mu   sync.Mutex
	got  []coord.Coord
	hdrs []http.Header
	fail atomic.Value // func(coord.Coord) int
}

func newTarget(t *testing.T) *sink {
	tg := &sink{}
	tg.fail.Store(func(coord.Coord) int { return 0 })
	tg.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var c coord.Coord
		if err := json.Unmarshal(body, &c); err != nil {
			http.Error(w, "not canonical", 400)
			return
		}
		if st := tg.fail.Load().(func(coord.Coord) int)(c); st != 0 {
			http.Error(w, "refused", st)
			return
		}
		tg.mu.Lock()
		tg.got = append(tg.got, c)
		tg.hdrs = append(tg.hdrs, r.Header.Clone())
		tg.mu.Unlock()
	}))
	t.Cleanup(tg.srv.Close)
	return tg
}

func (tg *sink) count() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return len(tg.got)
}

func freeAddr(t *testing.T) string { return streamtest.FreeAddr(t) }

// setup starts JetStream with the COORDS stream (the bridge's job) and
// writes a forwarder config with two targets, "plain" and "signed".
func setup(t *testing.T, plain, signed *sink, httpAddr string) (js jetstream.JetStream, file string) {
	t.Helper()
	srv := streamtest.Run(t)
	_, js = streamtest.Connect(t, srv)
	coords := streamtest.Coords()
	if _, err := stream.Ensure(context.Background(), js, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`
nats:
  url: %s
http:
  addr: %q
log:
  level: debug
consumer:
  ack_wait: 5s
forward:
  targets:
    - name: plain
      url: %s/in
      headers:
        Authorization: %q
      timeout: 2s
      backoff_min: 5ms
      backoff_max: 20ms
    - name: signed
      url: %s/hook
      signing_secret: %s
      format: canonical
      devices: [truck-1, "camión 2"]
      concurrency: 4
      backoff_min: 5ms
      backoff_max: 20ms
`, srv.ClientURL(), httpAddr, plain.srv.URL, secretHeader, signed.srv.URL, signingSecret)
	file = filepath.Join(t.TempDir(), "forwarder.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return js, file
}

func publish(t *testing.T, js jetstream.JetStream, device string, n int) {
	t.Helper()
	for i := range n {
		c := coord.Coord{V: coord.Version, DeviceID: device,
			TS:         time.Date(2025, 3, 1, 12, 0, i, 0, time.UTC),
			ReceivedAt: time.Date(2025, 3, 1, 12, 0, i, 0, time.UTC), Lat: 19.4, Lon: -99.1}
		subj, err := coord.Subject("ubiqo.coords", device)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(subj)
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
}

type running struct {
	stdout, stderr *syncBuffer
	cancel         context.CancelFunc
	done           chan error
}

func startRun(t *testing.T, args ...string) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{stdout: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx, args, r.stdout, r.stderr) }()
	t.Cleanup(func() { _ = r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if !ok {
			return nil
		}
		close(r.done)
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(url string) (int, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// The whole program: config file with two targets, /readyz, delivery to
// both (the signed one only its devices), /metrics per target, secrets
// never in the logs, clean stop.
func TestRunForwardsToEveryTarget(t *testing.T) {
	plain, signed := newTarget(t), newTarget(t)
	addr := freeAddr(t)
	js, file := setup(t, plain, signed, addr)
	r := startRun(t, "--config", file, "--http.pprof")
	waitFor(t, "/readyz 200", func() bool { st, _ := get("http://" + addr + "/readyz"); return st == 200 })
	if st, body := get("http://" + addr + "/debug/pprof/goroutine?debug=1"); st != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("--http.pprof: goroutine profile = %d %.200s", st, body)
	}

	publish(t, js, "truck-1", 5)
	publish(t, js, "camión 2", 5)
	publish(t, js, "truck-3", 5) // not a device of "signed"
	waitFor(t, "plain has 15, signed 10", func() bool { return plain.count() == 15 && signed.count() == 10 })

	for _, h := range plain.hdrs {
		if h.Get("Authorization") != secretHeader {
			t.Fatalf("plain target lacks its configured header: %v", h)
		}
	}
	for _, h := range signed.hdrs {
		if h.Get("Webhook-Signature") == "" || h.Get("Webhook-Id") == "" {
			t.Fatalf("signed target got an unsigned request: %v", h)
		}
	}
	_, metrics := get("http://" + addr + "/metrics")
	for _, want := range []string{
		`ubiqo_forward_delivered_total{target="plain"} 15`,
		`ubiqo_forward_delivered_total{target="signed"} 10`,
		`ubiqo_forward_breaker_state{target="plain"} 0`,
		`ubiqo_subscriber_pending_messages{consumer="forward-signed",target="signed"}`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	logs := r.stderr.String()
	for _, secret := range []string{"s3cr3t-t0ken-value", strings.TrimPrefix(signingSecret, "whsec_")} {
		if strings.Contains(logs, secret) {
			t.Errorf("a secret is in the logs")
		}
	}
	if !strings.Contains(logs, `"target":"signed"`) {
		t.Errorf("logs do not name the targets:\n%s", logs)
	}
}

func TestPrintConfigMasksSecrets(t *testing.T) {
	plain, signed := newTarget(t), newTarget(t)
	_, file := setup(t, plain, signed, "")
	var out bytes.Buffer
	err := run(context.Background(), []string{"--config", file, "--print-config"}, &out, io.Discard)
	if !errors.Is(err, config.ErrShown) {
		t.Fatalf("run: %v", err)
	}
	for _, secret := range []string{"s3cr3t-t0ken-value", strings.TrimPrefix(signingSecret, "whsec_")} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("--print-config shows a secret:\n%s", out.String())
		}
	}
	if !strings.Contains(out.String(), "forward:") {
		t.Errorf("--print-config lacks the forward section:\n%s", out.String())
	}
	// Only the secrets are masked: each target's name, URL, header names
	// and settings stay visible.
	for _, want := range []string{"name: plain", "name: signed", plain.srv.URL + "/in", signed.srv.URL + "/hook",
		"authorization: '***'", "signing_secret: '***'", "concurrency: 4", "camión 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--print-config lacks %q:\n%s", want, out.String())
		}
	}
}

// Targets can come as JSON in UBIQO_FORWARD_TARGETS_JSON.
func TestTargetsFromEnvironment(t *testing.T) {
	tg := newTarget(t)
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	coords := streamtest.Coords()
	if _, err := stream.Ensure(context.Background(), js, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	t.Setenv("UBIQO_NATS_URL", srv.ClientURL())
	t.Setenv("UBIQO_FORWARD_TARGETS_JSON", fmt.Sprintf(`[{"name":"env","url":%q,"timeout":"3s","headers":{"X-Api-Key":"k"}}]`, tg.srv.URL))
	startRun(t)
	publish(t, js, "truck-9", 3)
	waitFor(t, "3 delivered", func() bool { return tg.count() == 3 })
	if tg.hdrs[0].Get("X-Api-Key") != "k" {
		t.Errorf("header from the JSON target missing: %v", tg.hdrs[0])
	}
}

func TestBadTargetConfigNamesTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, json string
		want       []string
	}{
		{"none", ``, []string{"forward.targets", "no target"}},
		{"url", `[{"name":"a","url":"ftp://x"}]`, []string{"forward.targets[a].url"}},
		{"format", `[{"name":"a","url":"http://x","format":"xml"}]`, []string{"forward.targets[a].format"}},
		{"name", `[{"name":"a b","url":"http://x"}]`, []string{"forward.targets[a b].name"}},
		{"twice", `[{"name":"a","url":"http://x"},{"name":"a","url":"http://y"}]`, []string{"used by two targets"}},
		{"secret", `[{"name":"a","url":"http://x","signing_secret":"whsec_c2hvcnQ="}]`, []string{"forward.targets[a].signing_secret", "24 to 64 bytes"}},
		{"unknown field", `[{"name":"a","url":"http://x","retries":3}]`, []string{"forward.targets_json", "retries"}},
		{"not json", `{oops`, []string{"forward.targets_json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.json != "" {
				t.Setenv("UBIQO_FORWARD_TARGETS_JSON", tc.json)
			}
			err := run(context.Background(), nil, io.Discard, io.Discard)
			if err == nil {
				t.Fatal("want a configuration error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "c2hvcnQ=") {
				t.Errorf("the error repeats the secret: %v", err)
			}
		})
	}
}

// forwarder redrive: dead-lettered coordinates go to the fixed target, the
// DLQ empties; --dry-run sends nothing.
func TestRedriveCommand(t *testing.T) {
	plain, signed := newTarget(t), newTarget(t)
	plain.fail.Store(func(c coord.Coord) int {
		if c.DeviceID == "truck-1" {
			return 422
		}
		return 0
	})
	js, file := setup(t, plain, signed, "")
	r := startRun(t, "--config", file)
	publish(t, js, "truck-1", 3)
	publish(t, js, "truck-2", 3)
	dlqCount := func() uint64 {
		s, err := js.Stream(context.Background(), stream.DLQStream)
		if err != nil {
			return 0
		}
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter("ubiqo.dlq.forward-plain.>"))
		if err != nil {
			return 0
		}
		n := uint64(0)
		for _, c := range info.State.Subjects {
			n += c
		}
		return n
	}
	waitFor(t, "3 dead-lettered for plain", func() bool { return dlqCount() == 3 && plain.count() == 3 })
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := run(context.Background(), []string{"redrive", "--target", "plain", "--dry-run", "--config", file}, &out, io.Discard); err != nil {
		t.Fatalf("dry run: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "found 3, delivered 0") || plain.count() != 3 {
		t.Fatalf("dry run sent something or found wrong:\n%s", out.String())
	}

	plain.fail.Store(func(coord.Coord) int { return 0 }) // the target is fixed
	out.Reset()
	if err := run(context.Background(), []string{"redrive", "--config", file, "--target=plain", "--device", "truck-1"}, &out, io.Discard); err != nil {
		t.Fatalf("redrive: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "found 3, delivered 3, failed 0") {
		t.Errorf("redrive output:\n%s", out.String())
	}
	if plain.count() != 6 || dlqCount() != 0 {
		t.Errorf("after redrive: target has %d (want 6), DLQ %d (want 0)", plain.count(), dlqCount())
	}
	// truck-1's coordinates arrived in their order.
	var ts []int
	for _, c := range plain.got {
		if c.DeviceID == "truck-1" {
			ts = append(ts, c.TS.Second())
		}
	}
	if fmt.Sprint(ts) != "[0 1 2]" {
		t.Errorf("truck-1 re-driven in order %v, want [0 1 2]", ts)
	}

	if err := run(context.Background(), []string{"redrive", "--config", file}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "--target") {
		t.Errorf("redrive without --target: %v", err)
	}
	if err := run(context.Background(), []string{"redrive", "--config", file, "--target", "nope"}, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "plain, signed") {
		t.Errorf("redrive of an unknown target: %v", err)
	}
}

func TestHelpListsRedrive(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, io.Discard); !errors.Is(err, config.ErrShown) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "forwarder redrive --target") {
		t.Errorf("--help does not mention redrive:\n%s", out.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"redrive", "--help"}, &out, io.Discard); !errors.Is(err, config.ErrShown) {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "--dry-run") {
		t.Errorf("redrive --help:\n%s", out.String())
	}
}
