package forward_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// A pull response lost on the wire (the connection to NATS breaks while the
// server is delivering) is redelivered by the server after AckWait. By then
// the same device's next coordinate was delivered and acked by this run. The
// redelivery must be sent (late, counted out of order), not taken for a
// stale copy of something settled and acked unsent.
func TestForwarderSendsADeliveryLostOnTheWay(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	target := newSink(t, nil)
	px := streamtest.NewProxy(t, e.srv.Addr().String())
	nc, err := stream.Connect(stream.ConnConfig{URL: px.URL(), Name: "forwarder"}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	fjs, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	r := start(t, fjs, 2*time.Second, fastTarget("backup", target.srv.URL))
	eventually(t, 10*time.Second, "consumer created", func() bool {
		_, err := e.js.Consumer(ctx, "COORDS", "forward-backup")
		return err == nil
	})
	time.Sleep(700 * time.Millisecond) // idle: a pull request is waiting

	// Coordinate 0 is delivered into a connection that loses it.
	px.Blackhole.Store(true)
	e.publish(t, []string{"truck-01"}, 0, 1)
	time.Sleep(300 * time.Millisecond)
	px.Cut()
	px.Blackhole.Store(false)
	eventually(t, 10*time.Second, "reconnected", func() bool { return nc.IsConnected() })

	// The device's next coordinate flows and is delivered.
	e.publish(t, []string{"truck-01"}, 1, 2)
	eventually(t, 10*time.Second, "coordinate 1 delivered", func() bool { return target.total() >= 1 })
	// Coordinate 0 comes back after AckWait (2s) and is sent, late.
	eventually(t, 15*time.Second, "coordinate 0 delivered after its redelivery", func() bool { return target.total() >= 2 })
	target.mu.Lock()
	got := offsets(target.got["truck-01"])
	target.mu.Unlock()
	if len(got) != 2 || got[0] != 1 || got[1] != 0 {
		t.Fatalf("target received %v, want [1 0] (0 lost on the way, sent late)", got)
	}
	if n := metric(t, r.svc.Gatherer(), "ubiqo_forward_out_of_order_total", map[string]string{"target": "backup"}); n != 1 {
		t.Errorf("ubiqo_forward_out_of_order_total = %v, want 1", n)
	}
	if n := metric(t, r.svc.Gatherer(), "ubiqo_forward_stale_redeliveries_total", map[string]string{"target": "backup"}); n != 0 {
		t.Errorf("ubiqo_forward_stale_redeliveries_total = %v, want 0", n)
	}
}
