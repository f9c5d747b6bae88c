package forward_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// A coordinate the target refuses (400) ends in the DLQ. When the DLQ copy
// fails for a while (the DLQ stream unavailable), the runtime naks the
// message so it is retried, not lost; its redelivery is new work for the
// scheduler, not a stale copy to ack.
func TestForwarderDeadLettersOnceTheDLQIsBack(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := e.js.DeleteStream(ctx, stream.DLQStream); err != nil {
		t.Fatal(err)
	}
	target := newSink(t, func(_ *http.Request, _ []byte, _ []coord.Coord) (int, http.Header, string) {
		return 400, nil, `{"error":"unknown unit"}`
	})
	e.publish(t, []string{"truck-01"}, 0, 1)
	_ = start(t, e.js, 5*time.Second, fastTarget("backup", target.srv.URL))

	eventually(t, 10*time.Second, "the target refused the coordinate", func() bool { return target.hits.Load() >= 1 })
	time.Sleep(1500 * time.Millisecond) // a failed DLQ copy or two
	// The DLQ comes back (a leader election, an operator re-creating it).
	if _, err := stream.Ensure(ctx, e.js, stream.DLQConfig(1)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the coordinate dead-lettered", func() bool { return len(e.dlq(t, "ubiqo.dlq.>")) == 1 })
	cons, err := e.js.Consumer(ctx, "COORDS", "forward-backup")
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the consumer settled", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})
}
