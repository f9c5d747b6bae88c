package subscribers_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// A 3-node cluster loses two nodes: the replicated consumer has no leader,
// so every pull request is answered "no responders" while the subscriber's
// own connection stays up. /readyz must turn false and say why (a subscriber
// that consumes nothing must not look healthy), the pull errors must be
// counted, and once the nodes are back the subscriber consumes again by
// itself.
func TestFaultConsumerWithoutLeaderIsNotReady(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	procs := streamtest.StartCluster(t, 3)
	streamtest.WaitClusterReady(t, streamtest.ClusterURL(procs))

	// The subscriber talks to the node that survives.
	nc, err := nats.Connect(procs[0].URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	coords := streamtest.Coords()
	coords.Replicas = 3
	if _, err := stream.Ensure(ctx, js, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Ensure(ctx, js, stream.DLQConfig(3)); err != nil {
		t.Fatal(err)
	}
	e := &env{nc: nc, js: js}
	for i := range 5 {
		e.publish(t, testCoord("dev-1", i))
	}

	rt, err := subscribers.New(js, subscribers.Config{
		Durable: "quorum", HTTPAddr: "127.0.0.1:0", BatchWait: 10 * time.Millisecond,
		LagInterval: 200 * time.Millisecond, DrainTimeout: 2 * time.Second,
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int64
	stop := start(t, rt, func(ctx context.Context) error {
		return rt.RunBatch(ctx, subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
			handled.Add(int64(len(msgs)))
			return nil
		}))
	})
	base := "http://" + rt.HTTPAddr().String()
	eventually(t, 30*time.Second, "the first 5 handled", func() bool { return handled.Load() >= 5 })
	eventually(t, 10*time.Second, "/readyz 200", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })

	t0 := time.Now()
	procs[1].Kill()
	procs[2].Kill()
	// The consumer's leader, wherever it was, is gone or steps down for
	// lost quorum (about 10s); then pulls fail for pullFailingAfter.
	var body string
	eventually(t, 60*time.Second, "/readyz 503 naming the failing pulls", func() bool {
		var code int
		code, body = get(t, base+"/readyz")
		return code == 503 && strings.Contains(body, "pull requests failing")
	})
	t.Logf("/readyz false %s after two of three nodes were killed: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(body))
	if !strings.Contains(body, `"nats":"ok"`) {
		t.Errorf("/readyz should show the connection itself fine: %s", body)
	}
	_, metrics := get(t, base+"/metrics")
	if strings.Contains(metrics, `ubiqo_subscriber_pull_errors_total{consumer="quorum"} 0`) ||
		!strings.Contains(metrics, `ubiqo_subscriber_pull_errors_total{consumer="quorum"}`) {
		t.Errorf("pull errors not counted:\n%s", grepLines(metrics, "pull_errors"))
	}

	t0 = time.Now()
	procs[1].Start()
	procs[2].Start()
	t.Logf("nodes restarted in %s", time.Since(t0).Round(time.Millisecond))
	eventually(t, 60*time.Second, "/readyz 200 again", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	t.Logf("/readyz true %s after the restart began", time.Since(t0).Round(time.Millisecond))
	for i := 5; i < 10; i++ {
		c := testCoord("dev-1", i)
		eventually(t, 30*time.Second, "a publish after the recovery", func() bool {
			m := nats.NewMsg(subject(t, c.DeviceID))
			m.Data = c.AppendJSON(nil)
			m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
			_, err := js.PublishMsg(ctx, m)
			return err == nil
		})
	}
	eventually(t, 30*time.Second, "the next 5 handled", func() bool { return handled.Load() >= 10 })
	t.Logf("consuming again %s after the restart began", time.Since(t0).Round(time.Millisecond))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func grepLines(s, substr string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
