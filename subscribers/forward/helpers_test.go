package forward_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/forward"
)

// env is a real in-process JetStream server with COORDS and DLQ, as the
// bridge and the forwarder create them.
type env struct {
	srv *streamtest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := streamtest.Run(t)
	nc, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	coords := streamtest.Coords()
	if _, err := stream.Ensure(ctx, js, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Ensure(ctx, js, stream.DLQConfig(1)); err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, nc: nc, js: js}
}

var baseTime = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// testCoord is coordinate i of device: its ts is baseTime + i seconds, so
// the order of a device's coordinates is the order of their ts.
func testCoord(device string, i int) coord.Coord {
	return coord.Coord{
		V: coord.Version, DeviceID: device,
		TS:         baseTime.Add(time.Duration(i) * time.Second),
		ReceivedAt: baseTime.Add(time.Duration(i)*time.Second + 500*time.Millisecond),
		Lat:        19.4326 + float64(i)*1e-5, Lon: -99.1332,
		Raw: json.RawMessage(fmt.Sprintf(`{"imei":%q,"lat":"%.5f","lng":"-99.1332","n":%d}`, device, 19.4326+float64(i)*1e-5, i)),
	}
}

// publish stores coordinates from..to-1 of every device, interleaved
// (device 0 coordinate 0, device 1 coordinate 0, ...) as a fleet sends
// them, with the message contract's headers.
func (e *env) publish(t *testing.T, devices []string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		for _, d := range devices {
			c := testCoord(d, i)
			subj, err := coord.Subject("ubiqo.coords", d)
			if err != nil {
				t.Fatal(err)
			}
			m := nats.NewMsg(subj)
			m.Data = c.AppendJSON(nil)
			m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
			m.Header.Set("Ubiqo-Device", d)
			m.Header.Set("Content-Type", "application/json")
			if _, err := e.js.PublishMsgAsync(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(10 * time.Second):
		t.Fatal("publish acks did not come")
	}
}

func deviceNames(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("truck-%02d", i)
	}
	return out
}

// sink is a real HTTP target. behave decides each answer; a 2xx records the
// coordinates of the body in the order they arrived.
type sink struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	got    map[string][]time.Time // per device, ts of every accepted coordinate
	reqs   []sinkReq
	behave func(r *http.Request, body []byte, cs []coord.Coord) (status int, h http.Header, answer string)
	hits   atomic.Int64
	opaque bool // bodies are not canonical messages (raw format)
}

type sinkReq struct {
	at     time.Time
	status int
	header http.Header
	body   []byte
}

func newSink(t *testing.T, behave func(r *http.Request, body []byte, cs []coord.Coord) (int, http.Header, string)) *sink {
	t.Helper()
	s := &sink{t: t, got: map[string][]time.Time{}, behave: behave}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// newOpaqueSink is a sink whose bodies are not canonical messages (raw
// format): it records nothing per device.
func newOpaqueSink(t *testing.T, behave func(r *http.Request, body []byte, cs []coord.Coord) (int, http.Header, string)) *sink {
	t.Helper()
	s := &sink{t: t, got: map[string][]time.Time{}, behave: behave, opaque: true}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.srv.Close)
	return s
}

// newSinkAt starts the sink on addr (a port that was refused until now: a
// target coming back).
func newSinkAt(t *testing.T, addr string, behave func(r *http.Request, body []byte, cs []coord.Coord) (int, http.Header, string)) *sink {
	t.Helper()
	s := &sink{t: t, got: map[string][]time.Time{}, behave: behave}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	s.srv.Listener.Close()
	s.srv.Listener = ln
	s.srv.Start()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *sink) serve(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	cs, derr := decodeBody(body)
	status, h, answer := http.StatusOK, http.Header(nil), ""
	if s.behave != nil {
		status, h, answer = s.behave(r, body, cs)
	}
	if derr != nil && status/100 == 2 && !s.opaque {
		s.t.Errorf("target got a body it cannot read: %v: %s", derr, body)
		status = 400
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, sinkReq{at: time.Now(), status: status, header: r.Header.Clone(), body: body})
	if status/100 == 2 {
		for _, c := range cs {
			s.got[c.DeviceID] = append(s.got[c.DeviceID], c.TS)
		}
	}
	s.mu.Unlock()
	for k, vs := range h {
		w.Header()[k] = vs
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, answer)
}

// decodeBody reads a canonical message or a batch (JSON array of them).
func decodeBody(b []byte) ([]coord.Coord, error) {
	if len(b) > 0 && b[0] == '[' {
		var cs []coord.Coord
		err := json.Unmarshal(b, &cs)
		return cs, err
	}
	var c coord.Coord
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return []coord.Coord{c}, nil
}

func (s *sink) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, ts := range s.got {
		n += len(ts)
	}
	return n
}

func (s *sink) requests() []sinkReq {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.reqs)
}

// checkOrder checks that every device received exactly coordinates
// 0..perDevice-1 (except those in skip), each once, in ts order.
func (s *sink) checkOrder(t *testing.T, devices []string, perDevice int, skip map[string][]int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range devices {
		var want []time.Time
		for i := range perDevice {
			if slices.Contains(skip[d], i) {
				continue
			}
			want = append(want, baseTime.Add(time.Duration(i)*time.Second))
		}
		got := s.got[d]
		if !slices.EqualFunc(got, want, time.Time.Equal) {
			t.Errorf("device %s: received %d coordinates %v, want %d in order %v", d, len(got), offsets(got), len(want), offsets(want))
		}
	}
}

// offsets shows ts as coordinate numbers.
func offsets(ts []time.Time) []int {
	out := make([]int, len(ts))
	for i, t := range ts {
		out[i] = int(t.Sub(baseTime) / time.Second)
	}
	return out
}

// fastTarget is a target with test-sized timings.
func fastTarget(name, url string) forward.Target {
	return forward.Target{
		Name: name, URL: url, Timeout: 2 * time.Second, Concurrency: 8,
		BackoffMin: 2 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
		BreakerFailures: 5, BreakerCooldown: 30 * time.Millisecond,
	}
}

// running is a forwarder Service started by start.
type running struct {
	svc  *forward.Service
	stop func() error
}

func testLogger(t *testing.T) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.ErrorLevel)
}

// start runs a forwarder for targets on js until stop (or the test's end).
func start(t *testing.T, js forward.JetStream, ackWait time.Duration, targets ...forward.Target) *running {
	t.Helper()
	svc, err := forward.New(js, forward.Options{
		Targets: targets,
		Runtime: subscribers.Config{AckWait: ackWait, DrainTimeout: 10 * time.Second, LagInterval: 100 * time.Millisecond, BatchSize: 200},
		Version: "test",
	}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("Run did not return within 20s of cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return &running{svc: svc, stop: stop}
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// metric returns the value of the series name{labels} (counter, gauge, or
// a histogram's count), 0 when absent.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	sum := 0.0
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.Metric {
			for k, v := range labels {
				found := false
				for _, lp := range m.Label {
					if lp.GetName() == k && lp.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// dlq returns the messages on the DLQ stream under subject filter.
func (e *env) dlq(t *testing.T, filter string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, stream.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); ; {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
		seq = m.Sequence + 1
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
