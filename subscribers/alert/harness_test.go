package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// harness is a real in-process JetStream server with COORDS, a rule file
// and a recording webhook: the alerter is started and stopped against it
// like the binary would be.
type harness struct {
	t     *testing.T
	srv   *streamtest.Server
	js    jetstream.JetStream
	rules *Rules
	hook  *recorder
	logs  *syncBuffer
}

func newHarness(t *testing.T, rulesYAML string) *harness {
	t.Helper()
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	cc := streamtest.Coords()
	if _, err := stream.Ensure(context.Background(), js, cc.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(file, []byte(rulesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	rules, err := LoadRules(file)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, srv: srv, js: js, rules: rules, hook: newRecorder(t), logs: &syncBuffer{}}
}

// config is the alerter configuration of the tests: short timers, the
// webhook on.
func (h *harness) config() Config {
	return Config{
		Rules:         h.rules,
		Consumer:      subscribers.Config{Durable: "alerter", BatchWait: 10 * time.Millisecond, DrainTimeout: 5 * time.Second, LagInterval: time.Second},
		ManageStreams: true,
		ScanInterval:  time.Hour,
		Notify:        NotifyConfig{WebhookURL: h.hook.URL() + "/hook/s3cret-token", Backoff: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		LogAlerts:     true,
	}
}

// start runs an alerter until the returned stop is called (or the test
// ends); stop waits for Run to return and fails the test on its error.
func (h *harness) start(cfg Config) (stop func()) {
	h.t.Helper()
	log := zerolog.New(h.logs)
	a, err := New(h.js, cfg, log)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	// Ready when the COORDS consumer exists.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := h.js.Consumer(context.Background(), "COORDS", cfg.Consumer.Durable); err == nil {
			break
		}
		select {
		case err := <-done:
			h.t.Fatalf("alerter stopped at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			h.t.Fatal("alerter consumer not created in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					h.t.Errorf("alerter Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				h.t.Error("alerter did not stop within 15s")
			}
		})
	}
	h.t.Cleanup(stop)
	return stop
}

// publish sends fixes to COORDS as the bridge does.
func (h *harness) publish(fixes ...*coord.Coord) {
	h.t.Helper()
	for _, c := range fixes {
		subj, err := coord.Subject("ubiqo.coords", c.DeviceID)
		if err != nil {
			h.t.Fatal(err)
		}
		m := nats.NewMsg(subj)
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		m.Header.Set("Ubiqo-Device", c.DeviceID)
		if _, err := h.js.PublishMsg(context.Background(), m); err != nil {
			h.t.Fatal(err)
		}
	}
}

// storedAlert is a message of the ALERTS stream.
type storedAlert struct {
	Alert
	Subject string
	MsgID   string
	Replay  string
}

// alerts returns every message of the ALERTS stream, in order.
func (h *harness) alerts() []storedAlert {
	h.t.Helper()
	ctx := context.Background()
	s, err := h.js.Stream(ctx, stream.AlertsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []storedAlert
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			h.t.Fatal(err)
		}
		var a storedAlert
		if err := json.Unmarshal(raw.Data, &a.Alert); err != nil {
			h.t.Fatalf("ALERTS seq %d: %v", seq, err)
		}
		a.Subject, a.MsgID, a.Replay = raw.Subject, raw.Header.Get(jetstream.MsgIDHeader), raw.Header.Get(HeaderReplay)
		out = append(out, a)
	}
	return out
}

// waitAlerts waits until ALERTS holds at least n messages, then a little
// longer to see that no more come, and returns them.
func (h *harness) waitAlerts(n int) []storedAlert {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(h.alerts()) < n {
		if time.Now().After(deadline) {
			h.t.Fatalf("ALERTS holds %d alerts after 10s, want %d: %s", len(h.alerts()), n, kindsOf(h.alerts()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return h.alerts()
}

// state reads the stored state of a device from DEVICES.
func (h *harness) state(deviceID string) *State {
	h.t.Helper()
	kv, err := h.js.KeyValue(context.Background(), stream.DevicesBucket)
	if err != nil {
		h.t.Fatal(err)
	}
	tok, _ := coord.Token(deviceID)
	e, err := kv.Get(context.Background(), tok)
	if err != nil {
		h.t.Fatalf("state of %s: %v", deviceID, err)
	}
	var st State
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		h.t.Fatal(err)
	}
	return &st
}

// consumed waits until the durable has acked everything published.
func (h *harness) consumed(durable string) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := h.js.Consumer(context.Background(), "COORDS", durable)
		if err == nil {
			ci, err := c.Info(context.Background())
			if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("consumer %s did not finish in 10s", durable)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func kindsOf(as []storedAlert) string {
	var b bytes.Buffer
	for i, a := range as {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(a.Kind)
	}
	return b.String()
}

// recorder is a webhook target that records what it receives; fail
// makes it answer the next requests with a status instead.
type recorder struct {
	srv  *httptest.Server
	mu   sync.Mutex
	reqs []recorded
	fail []int
}

type recorded struct {
	Path    string
	Header  http.Header
	Body    []byte
	Status  int
	Arrived time.Time
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		status := http.StatusOK
		if len(r.fail) > 0 {
			status, r.fail = r.fail[0], r.fail[1:]
		}
		r.reqs = append(r.reqs, recorded{Path: req.URL.Path, Header: req.Header.Clone(), Body: body, Status: status, Arrived: time.Now()})
		r.mu.Unlock()
		w.WriteHeader(status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) URL() string { return r.srv.URL }

func (r *recorder) failNext(statuses ...int) {
	r.mu.Lock()
	r.fail = append(r.fail, statuses...)
	r.mu.Unlock()
}

// delivered returns the requests answered 2xx on path prefix.
func (r *recorder) delivered(prefix string) []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []recorded
	for _, q := range r.reqs {
		if q.Status < 300 && len(q.Path) >= len(prefix) && q.Path[:len(prefix)] == prefix {
			out = append(out, q)
		}
	}
	return out
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.reqs...)
}

// waitDelivered waits for n deliveries on path prefix, then a little
// longer to see that no more come.
func (r *recorder) waitDelivered(t *testing.T, prefix string, n int) []recorded {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.delivered(prefix)) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d notifications on %s after 10s, want %d", len(r.delivered(prefix)), prefix, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	return r.delivered(prefix)
}

type syncBuffer = streamtest.Logs
