package subscribers_test

import (
	"context"
	"fmt"
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

// env is a real JetStream server with the COORDS and DLQ streams.
type env struct {
	srv *streamtest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, streamtest.Run(t))
}

func connectFresh(t *testing.T, srv *streamtest.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	return streamtest.Connect(t, srv)
}

// newEnvOn creates the streams on srv, as the bridge does at start.
func newEnvOn(t *testing.T, srv *streamtest.Server) *env {
	t.Helper()
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

func testCoord(device string, i int) coord.Coord {
	speed := float64(i % 120)
	return coord.Coord{
		V: coord.Version, DeviceID: device,
		TS:         time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Second),
		ReceivedAt: time.Date(2025, 3, 1, 12, 0, 1, 0, time.UTC).Add(time.Duration(i) * time.Second),
		Lat:        19.4326 + float64(i)*1e-5, Lon: -99.1332, SpeedKmh: &speed,
		Attrs: map[string]any{"seq": i},
	}
}

// publish stores c on its device subject with the contract's headers and
// returns the stream sequence.
func (e *env) publish(t *testing.T, c coord.Coord) uint64 {
	t.Helper()
	return e.publishRaw(t, subject(t, c.DeviceID), c.AppendJSON(nil), c.MsgID())
}

func (e *env) publishRaw(t *testing.T, subj string, body []byte, msgID string) uint64 {
	t.Helper()
	m := nats.NewMsg(subj)
	m.Data = body
	m.Header.Set("Content-Type", "application/json")
	m.Header.Set("Ubiqo-Device", "x")
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	ack, err := e.js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatalf("publish %s: %v", subj, err)
	}
	return ack.Sequence
}

func subject(t *testing.T, device string) string {
	t.Helper()
	tok, err := coord.Token(device)
	if err != nil {
		t.Fatal(err)
	}
	return "ubiqo.coords." + tok
}

func quietLog() zerolog.Logger { return zerolog.Nop() }

// start runs the runtime in the background; the returned stop cancels it and
// returns Run's error.
func start(t *testing.T, rt *subscribers.Runtime, run func(context.Context) error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				err = fmt.Errorf("Run did not return 30s after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dlqMessages reads every message of the DLQ stream.
func (e *env) dlqMessages(t *testing.T) []jetstream.Msg {
	t.Helper()
	ctx := context.Background()
	s, err := e.js.Stream(ctx, stream.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := c.FetchNoWait(int(info.State.Msgs))
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for m := range batch.Messages() {
		out = append(out, m)
	}
	return out
}

func (e *env) consumerInfo(t *testing.T, durable string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := e.js.Consumer(context.Background(), "COORDS", durable)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// consumerInfoWhen reads the consumer until ok holds or 5 s pass and
// returns the last read: the server applies acks on a goroutine of its own,
// a moment after they arrive.
func (e *env) consumerInfoWhen(t *testing.T, durable string, ok func(*jetstream.ConsumerInfo) bool) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		info := e.consumerInfo(t, durable)
		if ok(info) || time.Now().After(deadline) {
			return info
		}
		time.Sleep(20 * time.Millisecond)
	}
}
