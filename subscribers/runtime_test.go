package subscribers_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// deliveries records, per device, when each delivery reached the handler.
type deliveries struct {
	mu sync.Mutex
	at map[string][]time.Time
}

func (d *deliveries) add(device string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.at == nil {
		d.at = map[string][]time.Time{}
	}
	d.at[device] = append(d.at[device], time.Now())
	return len(d.at[device])
}

func (d *deliveries) get(device string) []time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Time(nil), d.at[device]...)
}

func TestOutcomesAckRetryPermanent(t *testing.T) {
	e := newEnv(t)
	backoff := []time.Duration{300 * time.Millisecond, 700 * time.Millisecond}
	rt, err := subscribers.New(e.js, subscribers.Config{
		Durable: "policy", AckWait: 2 * time.Second, Backoff: backoff,
		BatchSize: 10, BatchWait: 20 * time.Millisecond,
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var d deliveries
	h := subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
		out := make([]error, len(msgs))
		for i, m := range msgs {
			n := d.add(m.Coord.DeviceID)
			if uint64(n) != m.NumDelivered {
				t.Errorf("%s: handler saw delivery %d but NumDelivered = %d", m.Coord.DeviceID, n, m.NumDelivered)
			}
			switch m.Coord.DeviceID {
			case "flaky":
				if n < 3 {
					out[i] = errors.New("downstream busy")
				}
			case "poison":
				out[i] = subscribers.Permanent(errors.New("cannot store this"))
			case "later":
				if n == 1 {
					out[i] = subscribers.RetryAfter(errors.New("rate limited"), 1200*time.Millisecond)
				}
			}
		}
		return out
	})
	for _, dev := range []string{"fine", "flaky", "poison", "later"} {
		e.publish(t, testCoord(dev, 1))
	}
	poisonSeq := uint64(3)
	stop := start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })

	eventually(t, 10*time.Second, "flaky to succeed on its third delivery", func() bool { return len(d.get("flaky")) == 3 })
	eventually(t, 10*time.Second, "later to be redelivered", func() bool { return len(d.get("later")) == 2 })
	// Longer than AckWait: an acked, retried-then-acked or terminated
	// message must not come back.
	time.Sleep(2500 * time.Millisecond)

	if n := len(d.get("fine")); n != 1 {
		t.Errorf("acked message delivered %d times, want 1", n)
	}
	flaky := d.get("flaky")
	if len(flaky) != 3 {
		t.Fatalf("flaky delivered %d times, want 3", len(flaky))
	}
	for i, want := range backoff {
		gap := flaky[i+1].Sub(flaky[i])
		t.Logf("flaky retry %d after %s (back-off step %s)", i+1, gap.Round(time.Millisecond), want)
		if gap < want-50*time.Millisecond || gap > want+1500*time.Millisecond {
			t.Errorf("retry %d came after %s, want about %s", i+1, gap, want)
		}
	}
	later := d.get("later")
	if gap := later[1].Sub(later[0]); gap < 1100*time.Millisecond {
		t.Errorf("RetryAfter(1.2s) redelivered after %s", gap)
	}
	if n := len(d.get("poison")); n != 1 {
		t.Errorf("permanent failure delivered %d times, want 1", n)
	}

	dlq := e.dlqMessages(t)
	if len(dlq) != 1 {
		t.Fatalf("DLQ holds %d messages, want 1", len(dlq))
	}
	m := dlq[0]
	wantHdr := map[string]string{
		"Ubiqo-Error":            "permanent: cannot store this",
		"Ubiqo-Attempts":         "1",
		"Ubiqo-Consumer":         "policy",
		"Ubiqo-Original-Subject": "ubiqo.coords.poison",
		"Ubiqo-Original-Seq":     "3",
		"Ubiqo-Device":           "x", // an original header, kept
		"Content-Type":           "application/json",
		"Nats-Msg-Id":            "policy:COORDS:3",
	}
	if m.Subject() != "ubiqo.dlq.policy.poison" {
		t.Errorf("DLQ subject = %s", m.Subject())
	}
	for k, v := range wantHdr {
		if got := m.Headers().Get(k); got != v {
			t.Errorf("DLQ header %s = %q, want %q", k, got, v)
		}
	}
	orig := testCoord("poison", 1)
	if string(m.Data()) != string(orig.AppendJSON(nil)) {
		t.Errorf("DLQ body differs from the original")
	}
	if got := m.Headers().Get(subscribers.HeaderOriginalMsgID); got != orig.MsgID() {
		t.Errorf("original msg id header = %q, want %q", got, orig.MsgID())
	}
	_ = poisonSeq

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	info := e.consumerInfoWhen(t, "policy", func(i *jetstream.ConsumerInfo) bool {
		return i.NumAckPending == 0 && i.NumPending == 0 && i.AckFloor.Stream == 4
	})
	if info.NumAckPending != 0 || info.NumPending != 0 || info.AckFloor.Stream != 4 {
		t.Errorf("consumer after the run: ack pending %d, pending %d, ack floor %d; want 0, 0, 4",
			info.NumAckPending, info.NumPending, info.AckFloor.Stream)
	}
	t.Logf("deliveries: fine 1, flaky %d, later %d, poison %d; DLQ %d", len(flaky), len(later), len(d.get("poison")), len(dlq))
}

func TestMaxDeliverExhaustedIsDeadLettered(t *testing.T) {
	e := newEnv(t)
	rt, err := subscribers.New(e.js, subscribers.Config{
		Durable: "tired", MaxDeliver: 3, Backoff: []time.Duration{50 * time.Millisecond},
		AckWait: time.Second, BatchSize: 5, BatchWait: 10 * time.Millisecond,
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	h := subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
		calls.Add(int32(len(msgs)))
		return subscribers.All(msgs, errors.New("target unreachable"))
	})
	e.publish(t, testCoord("dev-1", 1))
	start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })

	eventually(t, 10*time.Second, "the DLQ copy", func() bool { return len(e.dlqMessages(t)) == 1 })
	time.Sleep(1500 * time.Millisecond) // past AckWait: no further delivery
	if n := calls.Load(); n != 3 {
		t.Errorf("handler called %d times, want 3 (max deliver)", n)
	}
	m := e.dlqMessages(t)[0]
	if got := m.Headers().Get(subscribers.HeaderAttempts); got != "3" {
		t.Errorf("attempts header = %q, want 3", got)
	}
	if got := m.Headers().Get(subscribers.HeaderError); !strings.Contains(got, "gave up after 3 deliveries: target unreachable") {
		t.Errorf("error header = %q", got)
	}
	t.Logf("handler calls %d, DLQ messages 1, error %q", calls.Load(), m.Headers().Get(subscribers.HeaderError))
}

func TestInvalidBodiesAreDeadLetteredWithoutReachingTheHandler(t *testing.T) {
	e := newEnv(t)
	rt, err := subscribers.New(e.js, subscribers.Config{Durable: "strict", BatchWait: 10 * time.Millisecond,
		HTTPAddr: "127.0.0.1:0", LagInterval: 100 * time.Millisecond}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Int32
	h := subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
		seen.Add(int32(len(msgs)))
		return nil
	})
	e.publishRaw(t, "ubiqo.coords.junk", []byte("not json"), "")
	e.publishRaw(t, "ubiqo.coords.nodev", []byte(`{"v":1,"lat":1,"lon":2,"ts":"2025-03-01T00:00:00Z","received_at":"2025-03-01T00:00:00Z"}`), "")
	e.publishRaw(t, "ubiqo.coords.v9", []byte(`{"v":9,"device_id":"a","lat":1,"lon":2,"ts":"2025-03-01T00:00:00Z","received_at":"2025-03-01T00:00:00Z"}`), "")
	e.publish(t, testCoord("good", 1))
	start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })

	eventually(t, 10*time.Second, "three DLQ copies", func() bool { return len(e.dlqMessages(t)) == 3 })
	eventually(t, 5*time.Second, "the good message", func() bool { return seen.Load() == 1 })
	// Operators see the DLQ's size without asking the server.
	eventually(t, 5*time.Second, "DLQ size 3 in /metrics", func() bool {
		_, body := get(t, "http://"+rt.HTTPAddr().String()+"/metrics")
		return strings.Contains(body, `ubiqo_subscriber_dlq_messages{consumer="strict"} 3`)
	})
	for _, m := range e.dlqMessages(t) {
		errHdr := m.Headers().Get(subscribers.HeaderError)
		if !strings.Contains(errHdr, "not a canonical coordinate") {
			t.Errorf("%s: error header %q", m.Subject(), errHdr)
		}
		t.Logf("%s: %s", m.Subject(), errHdr)
	}
}

func TestGracefulStopFinishesTheBatchInFlight(t *testing.T) {
	e := newEnv(t)
	const n = 50
	for i := range n {
		e.publish(t, testCoord("dev-1", i))
	}
	rt, err := subscribers.New(e.js, subscribers.Config{
		Durable: "drainer", BatchSize: 20, BatchWait: 50 * time.Millisecond, DrainTimeout: 10 * time.Second,
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{}, 10)
	release := make(chan struct{})
	var handled atomic.Int32
	var ctxErr atomic.Value
	h := subscribers.BatchHandlerFunc(func(ctx context.Context, msgs []*subscribers.Msg) []error {
		entered <- struct{}{}
		<-release // a slow commit, under way when the stop comes
		if ctx.Err() != nil {
			ctxErr.Store(ctx.Err())
		}
		handled.Add(int32(len(msgs)))
		return nil
	})
	stop := start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })
	<-entered
	stopped := make(chan error, 1)
	go func() { stopped <- stop() }()
	time.Sleep(200 * time.Millisecond) // the stop is pending on the batch
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) before the batch in flight finished", err)
	default:
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if v := ctxErr.Load(); v != nil {
		t.Errorf("handler context cancelled during a graceful stop: %v", v)
	}
	got := int(handled.Load())
	// The acks were sent before Run returned.
	info := e.consumerInfoWhen(t, "drainer", func(i *jetstream.ConsumerInfo) bool {
		return i.NumAckPending == 0 && int(i.AckFloor.Stream) == got
	})
	t.Logf("handled %d of %d before stopping; ack floor %d, ack pending %d", got, n, info.AckFloor.Stream, info.NumAckPending)
	if got < 20 {
		t.Errorf("handled %d, want at least the batch in flight (20)", got)
	}
	if info.NumAckPending != 0 || int(info.AckFloor.Stream) != got {
		t.Errorf("after the stop: ack pending %d, ack floor %d; want every handled message acked (%d) and none pending",
			info.NumAckPending, info.AckFloor.Stream, got)
	}
}

func TestDrainDeadlineLeavesMessagesForRedelivery(t *testing.T) {
	e := newEnv(t)
	e.publish(t, testCoord("dev-1", 1))
	cfg := subscribers.Config{Durable: "stuck", AckWait: time.Second, BatchWait: 10 * time.Millisecond, DrainTimeout: 300 * time.Millisecond}
	rt, err := subscribers.New(e.js, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{}, 1)
	h := subscribers.BatchHandlerFunc(func(ctx context.Context, msgs []*subscribers.Msg) []error {
		entered <- struct{}{}
		<-ctx.Done() // never finishes on its own
		return subscribers.All(msgs, ctx.Err())
	})
	stop := start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })
	<-entered
	began := time.Now()
	err = stop()
	if !errors.Is(err, subscribers.ErrDrainTimeout) {
		t.Fatalf("Run = %v, want ErrDrainTimeout", err)
	}
	if took := time.Since(began); took > 3*time.Second {
		t.Errorf("stop took %s with a 300ms drain timeout", took)
	}

	// A new instance gets the message again.
	rt2, err := subscribers.New(e.js, cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan uint64, 1)
	start(t, rt2, func(ctx context.Context) error {
		return rt2.RunBatch(ctx, subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
			got <- msgs[0].NumDelivered
			return nil
		}))
	})
	select {
	case n := <-got:
		t.Logf("redelivered to the next instance as delivery %d", n)
		if n < 2 {
			t.Errorf("delivery count %d, want >= 2", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message not redelivered after the drain deadline")
	}
}

func TestHealthAndMetricsServed(t *testing.T) {
	e := newEnv(t)
	rt, err := subscribers.New(e.js, subscribers.Config{
		Durable: "observed", HTTPAddr: "127.0.0.1:0", BatchWait: 10 * time.Millisecond,
		LagInterval: 100 * time.Millisecond, BatchSize: 1, MaxAckPending: 1, // one at a time, so held means pending
		DrainTimeout: 2 * time.Second,
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	var dbDown atomic.Bool
	rt.AddReadyCheck("database", func(context.Context) error {
		if dbDown.Load() {
			return errors.New("connection refused")
		}
		return nil
	})
	custom := prometheus.NewCounter(prometheus.CounterOpts{Name: "ubiqo_test_rows_total", Help: "rows"})
	rt.Registerer().MustRegister(custom)
	custom.Add(7)

	base := "http://" + rt.HTTPAddr().String()
	release := make(chan struct{})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	h := subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
		if msgs[0].Coord.DeviceID == "hold" {
			<-release
		}
		return nil
	})
	for i := range 5 {
		e.publish(t, testCoord("dev-1", i))
	}
	stop := start(t, rt, func(ctx context.Context) error { return rt.RunBatch(ctx, h) })

	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	eventually(t, 5*time.Second, "/readyz 200", func() bool { code, _ := get(t, base+"/readyz"); return code == 200 })
	eventually(t, 5*time.Second, "5 acked in /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, `ubiqo_subscriber_messages_total{consumer="observed",outcome="acked"} 5`)
	})

	dbDown.Store(true)
	code, body := get(t, base+"/readyz")
	if code != 503 || !strings.Contains(body, "connection refused") || !strings.Contains(body, `"database"`) {
		t.Errorf("/readyz with the database down = %d %s", code, body)
	}
	dbDown.Store(false)

	// Lag: a held batch leaves messages pending on the server.
	e.publish(t, testCoord("hold", 1))
	eventually(t, 5*time.Second, "ack pending 1 in /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, `ubiqo_subscriber_ack_pending_messages{consumer="observed"} 1`)
	})
	for i := range 3 {
		e.publish(t, testCoord("behind", i))
	}
	eventually(t, 5*time.Second, "3 pending in /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, `ubiqo_subscriber_pending_messages{consumer="observed"} 3`)
	})
	releaseOnce.Do(func() { close(release) })
	eventually(t, 5*time.Second, "9 acked in /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, `ubiqo_subscriber_messages_total{consumer="observed",outcome="acked"} 9`)
	})
	_, body = get(t, base+"/metrics")
	for _, want := range []string{
		"ubiqo_subscriber_batch_duration_seconds_bucket", "ubiqo_subscriber_redelivered_total",
		`ubiqo_subscriber_handler_errors_total{consumer="observed",kind="retryable"} 0`,
		`ubiqo_subscriber_dlq_messages{consumer="observed"} 0`,
		"ubiqo_test_rows_total 7", "process_resident_memory_bytes",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("listener still serving after Run returned")
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAsyncHandlerHoldsOneDeviceWithoutBlockingOthers(t *testing.T) {
	e := newEnv(t)
	const maxPending = 20
	rt, err := subscribers.New(e.js, subscribers.Config{
		Durable: "async", AckWait: time.Second, MaxAckPending: maxPending, BatchSize: 10,
		Backoff: []time.Duration{50 * time.Millisecond},
	}, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	// "slow" is held for 2.5s, longer than AckWait: the runtime must keep it
	// alive. Every other device settles from its own goroutine, its first
	// message failing once (retried), the rest succeeding.
	const others = 200
	for i := range others {
		e.publish(t, testCoord("dev-"+string(rune('a'+i%20)), i))
		if i == 3 {
			e.publish(t, testCoord("slow", 0))
		}
	}
	var (
		mu          sync.Mutex
		deliveries  = map[uint64]int{}
		unsettled   int
		maxUnsettle int
		settledOK   int
		slowDone    time.Time
		othersDone  time.Time
	)
	releaseSlow := make(chan struct{})
	h := subscribers.AsyncHandlerFunc(func(ctx context.Context, m *subscribers.Msg, settle subscribers.Settle) {
		mu.Lock()
		deliveries[m.StreamSeq]++
		n := deliveries[m.StreamSeq]
		unsettled++
		maxUnsettle = max(maxUnsettle, unsettled)
		mu.Unlock()
		done := func(err error) {
			mu.Lock()
			unsettled--
			if err == nil {
				settledOK++
				if m.Coord.DeviceID == "slow" {
					slowDone = time.Now()
				} else if settledOK == others {
					othersDone = time.Now()
				}
			}
			mu.Unlock()
			settle(err)
		}
		go func() {
			if m.Coord.DeviceID == "slow" {
				<-releaseSlow
				done(nil)
				return
			}
			time.Sleep(time.Millisecond)
			if n == 1 && m.StreamSeq%10 == 0 {
				done(errors.New("try again"))
				return
			}
			done(nil)
		}()
	})
	start(t, rt, func(ctx context.Context) error { return rt.RunAsync(ctx, h) })
	time.AfterFunc(2500*time.Millisecond, func() { close(releaseSlow) })

	eventually(t, 15*time.Second, "every message settled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return settledOK == others+1
	})
	mu.Lock()
	defer mu.Unlock()
	t.Logf("others done after slow? %v; max unsettled %d (limit %d); slow delivered %d times",
		othersDone.After(slowDone), maxUnsettle, maxPending, deliveries[5])
	if !othersDone.Before(slowDone) {
		t.Errorf("other devices finished at %v, after the held device (%v): they were blocked", othersDone, slowDone)
	}
	if maxUnsettle > maxPending {
		t.Errorf("%d messages unsettled at once, limit %d", maxUnsettle, maxPending)
	}
	if n := deliveries[5]; n != 1 {
		t.Errorf("held message delivered %d times, want 1 (kept alive past AckWait)", n)
	}
	info := e.consumerInfoWhen(t, "async", func(i *jetstream.ConsumerInfo) bool {
		return i.NumAckPending == 0 && i.AckFloor.Stream == others+1
	})
	if info.NumAckPending != 0 || info.AckFloor.Stream != others+1 {
		t.Errorf("ack pending %d, ack floor %d; want 0 and %d", info.NumAckPending, info.AckFloor.Stream, others+1)
	}
}

func TestConsumerSetup(t *testing.T) {
	t.Run("refused update names the fix", func(t *testing.T) {
		e := newEnv(t)
		ctx := context.Background()
		if _, err := e.js.CreateOrUpdateConsumer(ctx, "COORDS", jetstream.ConsumerConfig{Durable: "replay", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
			t.Fatal(err)
		}
		rt, err := subscribers.New(e.js, subscribers.Config{Durable: "replay", DeliverPolicy: jetstream.DeliverNewPolicy}, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err = rt.RunBatch(ctx, subscribers.BatchHandlerFunc(func(context.Context, []*subscribers.Msg) []error { return nil }))
		if err == nil || !strings.Contains(err.Error(), "consumer.durable") || ctx.Err() != nil {
			t.Fatalf("Run = %v, want an immediate error naming consumer.durable", err)
		}
		t.Log(err)
	})
	t.Run("waits for the stream", func(t *testing.T) {
		srv := newEnv(t).srv
		_, js := connectFresh(t, srv)
		ctx := context.Background()
		if err := js.DeleteStream(ctx, "COORDS"); err != nil {
			t.Fatal(err)
		}
		rt, err := subscribers.New(js, subscribers.Config{Durable: "early", BatchWait: 10 * time.Millisecond}, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		start(t, rt, func(ctx context.Context) error {
			return rt.RunBatch(ctx, subscribers.BatchHandlerFunc(func(_ context.Context, msgs []*subscribers.Msg) []error {
				got <- msgs[0].Coord.DeviceID
				return nil
			}))
		})
		time.Sleep(700 * time.Millisecond)
		if err := rt.Ready(ctx); err == nil {
			t.Error("ready without a consumer")
		}
		e := newEnvOn(t, srv) // the bridge comes up and creates the stream
		e.publish(t, testCoord("late", 1))
		select {
		case d := <-got:
			t.Logf("consumed %q once the stream appeared", d)
		case <-time.After(15 * time.Second):
			t.Fatal("runtime did not start consuming once the stream existed")
		}
	})
}
