package bridge

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// pubEnv is a JetStream server with a stream on "t.coords.>" (dedupe
// window 1m) and a Publisher on its own connection.
func pubEnv(t *testing.T, maxPending int, timeout time.Duration, mod func(*jetstream.StreamConfig)) (*Publisher, *nats.Conn, jetstream.Stream) {
	t.Helper()
	ns := streamtest.Run(t)
	nc, js := streamtest.Connect(t, ns)
	cfg := jetstream.StreamConfig{Name: "T", Subjects: []string{"t.coords.>"}, Storage: jetstream.FileStorage, Duplicates: time.Minute}
	if mod != nil {
		mod(&cfg)
	}
	st, err := js.CreateStream(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPublisher(nc, "t.coords", maxPending, timeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p, nc, st
}

func testRecs(prefix string, n int) []spool.Record {
	recs := make([]spool.Record, n)
	for i := range recs {
		dev := fmt.Sprintf("dev%d", i%7)
		recs[i] = spool.Record{
			Subject: "t.coords." + dev,
			MsgID:   fmt.Sprintf("%s-%d", prefix, i),
			Device:  dev,
			Data:    []byte(fmt.Sprintf(`{"i":%d}`, i)),
		}
	}
	return recs
}

// onSubjects moves recs to subjects under root (one no stream takes).
func onSubjects(recs []spool.Record, root string) []spool.Record {
	for i := range recs {
		recs[i].Subject = root + "." + recs[i].Device
	}
	return recs
}

// unacked subscribes a plain subscriber to slow.>, which no stream takes:
// it never acks, and hands each message's reply subject to the test.
func unacked(t *testing.T, nc *nats.Conn) <-chan string {
	t.Helper()
	replies := make(chan string, 64)
	sub, err := nc.Subscribe("slow.>", func(m *nats.Msg) { replies <- m.Reply })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return replies
}

func streamMsgs(t *testing.T, st jetstream.Stream) uint64 {
	t.Helper()
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestPublisherStoresAndCountsDuplicates(t *testing.T) {
	p, _, st := pubEnv(t, 64, 5*time.Second, nil)
	ctx := context.Background()
	recs := testRecs("a", 10)
	res, err := p.Publish(ctx, recs)
	if err != nil || res.Stored != 10 || res.Duplicates != 0 || len(res.Failed) != 0 {
		t.Fatalf("first publish: %+v, %v", res, err)
	}
	// The same ids again, plus two new ones.
	res, err = p.Publish(ctx, append(testRecs("a", 10), testRecs("b", 2)...))
	if err != nil || res.Stored != 2 || res.Duplicates != 10 {
		t.Fatalf("second publish: %+v, %v", res, err)
	}
	if n := streamMsgs(t, st); n != 12 {
		t.Fatalf("stream holds %d messages, want 12", n)
	}
	// What a consumer sees: the subject, the headers and the body as given.
	m, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "t.coords.dev0" || m.Header.Get("Nats-Msg-Id") != "a-0" || m.Header.Get("Ubiqo-Device") != "dev0" ||
		m.Header.Get("Content-Type") != "application/json" || string(m.Data) != `{"i":0}` {
		t.Fatalf("stored message: %s %v %s", m.Subject, m.Header, m.Data)
	}
}

// More messages than ring slots, from many goroutines at once: every one is
// stored exactly once and every Publish returns.
func TestPublisherRingSmallerThanLoad(t *testing.T) {
	p, _, st := pubEnv(t, 8, 10*time.Second, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// 25 messages: more than the ring (8), so Publish splits it.
			res, err := p.Publish(context.Background(), testRecs(fmt.Sprintf("g%d", g), 25))
			if err != nil || res.Stored != 25 {
				errs <- fmt.Errorf("goroutine %d: %+v, %v", g, res, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := streamMsgs(t, st); n != 500 {
		t.Fatalf("stream holds %d messages, want 500", n)
	}
	if n := p.Pending(); n != 0 {
		t.Fatalf("%d publishes still counted as awaiting their ack", n)
	}
}

// The smallest ring (nats.max_pending 1) still publishes a batch, one
// message at a time.
func TestPublisherRingOfOne(t *testing.T) {
	p, _, st := pubEnv(t, 1, 5*time.Second, nil)
	res, err := p.Publish(context.Background(), testRecs("one", 5))
	if err != nil || res.Stored != 5 {
		t.Fatalf("got %+v, %v", res, err)
	}
	if n := streamMsgs(t, st); n != 5 {
		t.Fatalf("stream holds %d messages, want 5", n)
	}
}

// A batch published in parts (larger than half the ring) stops at the first
// part with a failure: a later part stored now would overtake what failed,
// which goes to the spool, and break its devices' order.
func TestPublisherStopsAfterAFailedPart(t *testing.T) {
	p, _, st := pubEnv(t, 4, 5*time.Second, nil) // parts of 2
	recs := testRecs("parts", 6)
	onSubjects(recs[1:2], "elsewhere") // the first part fails (no responders)
	res, err := p.Publish(context.Background(), recs)
	if !errors.Is(err, ErrNotStored) {
		t.Fatalf("err = %v", err)
	}
	if res.Stored != 1 || !slices.Equal(res.Failed, []int{1, 2, 3, 4, 5}) {
		t.Fatalf("got %+v, want recs[0] stored and the rest failed", res)
	}
	if n := streamMsgs(t, st); n != 1 {
		t.Fatalf("stream holds %d messages, want 1: later parts were sent", n)
	}
}

// A subject no stream takes: the server answers "no responders" at once.
func TestPublisherNoStream(t *testing.T) {
	p, _, _ := pubEnv(t, 16, 5*time.Second, nil)
	recs := onSubjects(testRecs("x", 3), "elsewhere")
	start := time.Now()
	res, err := p.Publish(context.Background(), recs)
	if !errors.Is(err, ErrNotStored) || !errors.Is(err, nats.ErrNoResponders) || len(res.Failed) != 3 || res.Stored != 0 {
		t.Fatalf("got %+v, %v", res, err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatalf("no responders took %v: waited for the timeout instead", time.Since(start))
	}
}

// JetStream refuses a message too big for the stream: that one is marked
// too large (never worth a retry) with the server's reason, the others are
// stored.
func TestPublisherJetStreamError(t *testing.T) {
	p, _, st := pubEnv(t, 16, 5*time.Second, func(c *jetstream.StreamConfig) { c.MaxMsgSize = 512 })
	recs := testRecs("e", 3)
	recs[1].Data = []byte(`{"big":"` + strings.Repeat("x", 1000) + `"}`)
	res, err := p.Publish(context.Background(), recs)
	if !errors.Is(err, ErrNotStored) || !errors.Is(err, ErrTooLarge) || len(res.Failed) != 0 ||
		len(res.TooLarge) != 1 || res.TooLarge[0] != 1 || res.Stored != 2 {
		t.Fatalf("got %+v, %v", res, err)
	}
	if !strings.Contains(err.Error(), "maximum") {
		t.Fatalf("error does not carry the server's reason: %v", err)
	}
	if n := streamMsgs(t, st); n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}
}

// A message over the server's max_payload is refused by the client library
// before it is sent: it is marked too large and the messages after it in
// the batch are still published and stored.
func TestPublisherMaxPayload(t *testing.T) {
	p, nc, st := pubEnv(t, 16, 5*time.Second, nil)
	recs := testRecs("m", 3)
	recs[0].Data = []byte(`{"big":"` + strings.Repeat("x", int(nc.MaxPayload())) + `"}`)
	if int64(MessageSize(&recs[0])) <= nc.MaxPayload() || int64(MessageSize(&recs[1])) > nc.MaxPayload() {
		t.Fatal("MessageSize does not tell the big record from the others")
	}
	res, err := p.Publish(context.Background(), recs)
	if !errors.Is(err, ErrTooLarge) || !errors.Is(err, nats.ErrMaxPayload) || len(res.TooLarge) != 1 || res.TooLarge[0] != 0 ||
		res.Stored != 2 || len(res.Failed) != 0 {
		t.Fatalf("got %+v, %v", res, err)
	}
	if n := streamMsgs(t, st); n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}
}

// MessageSize counts what NATS counts against max_payload: a record of
// exactly max_payload bytes by MessageSize is published and stored, one byte
// more is refused.
func TestMessageSizeIsWhatNATSCounts(t *testing.T) {
	p, nc, st := pubEnv(t, 16, 5*time.Second, nil)
	limit := int(nc.MaxPayload())
	sized := func(size int) spool.Record {
		r := testRecs("sz", 1)[0]
		r.MsgID += strconv.Itoa(size) // its own id, not a duplicate
		r.Data = []byte(`{"p":""}`)
		pad := size - MessageSize(&r)
		r.Data = []byte(`{"p":"` + strings.Repeat("x", pad) + `"}`)
		if MessageSize(&r) != size {
			t.Fatalf("record of %d bytes by MessageSize, want %d", MessageSize(&r), size)
		}
		return r
	}
	res, err := p.Publish(context.Background(), []spool.Record{sized(limit)})
	if err != nil || res.Stored != 1 {
		t.Fatalf("a record of exactly max_payload (%d): %+v %v", limit, res, err)
	}
	res, err = p.Publish(context.Background(), []spool.Record{sized(limit + 1)})
	if !errors.Is(err, nats.ErrMaxPayload) || len(res.TooLarge) != 1 {
		t.Fatalf("a record one byte over max_payload: %+v %v", res, err)
	}
	if n := streamMsgs(t, st); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
}

// Nobody acks: Publish gives up at its timeout, frees its slots for later
// publishes, and ignores the ack when it finally comes.
func TestPublisherTimeoutAndLateAck(t *testing.T) {
	p, nc, _ := pubEnv(t, 8, 300*time.Millisecond, nil) // one part: see TestPublisherStopsAfterAFailedPart
	// Nobody acks at first; the test answers only after the publisher
	// gave up.
	late := unacked(t, nc)
	recs := onSubjects(testRecs("s", 3), "slow")
	start := time.Now()
	res, err := p.Publish(context.Background(), recs)
	if !errors.Is(err, ErrNotStored) || len(res.Failed) != 3 || !strings.Contains(err.Error(), "publish_timeout") {
		t.Fatalf("got %+v, %v", res, err)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("gave up after %v, before the timeout", d)
	}
	if n := p.Pending(); n != 0 {
		t.Fatalf("%d publishes still counted as awaiting their ack after the timeout", n)
	}
	for range 3 {
		reply := <-late
		if err := nc.Publish(reply, []byte(`{"stream":"T","seq":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	_ = nc.Flush()
	deadline := time.Now().Add(5 * time.Second)
	for p.LateAcks() < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if p.LateAcks() != 3 {
		t.Fatalf("late acks counted: %d, want 3", p.LateAcks())
	}
	// The ring (8 slots) is free again: a later publish of 4 goes through
	// at once, as one part.
	res, err = p.Publish(context.Background(), testRecs("after", 4))
	if err != nil || res.Stored != 4 {
		t.Fatalf("publish after the timeout: %+v, %v", res, err)
	}
}

// The caller going away ends the wait at once.
func TestPublisherContextCanceled(t *testing.T) {
	p, nc, _ := pubEnv(t, 16, 10*time.Second, nil)
	unacked(t, nc)
	recs := onSubjects(testRecs("c", 2), "slow")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := p.Publish(ctx, recs)
	if !errors.Is(err, context.DeadlineExceeded) || len(res.Failed) != 2 {
		t.Fatalf("got %+v, %v", res, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestParseAck(t *testing.T) {
	status := func(code, descr string) *nats.Msg {
		return &nats.Msg{Header: nats.Header{"Status": []string{code}, "Description": []string{descr}}}
	}
	for _, tc := range []struct {
		name string
		m    *nats.Msg
		want uint8
		err  string
	}{
		{"stored", &nats.Msg{Data: []byte(`{"stream":"COORDS", "seq":12}`)}, ackStored, ""},
		{"stored with domain", &nats.Msg{Data: []byte(`{"stream":"COORDS", "domain":"hub", "seq":12}`)}, ackStored, ""},
		{"duplicate", &nats.Msg{Data: []byte(`{"stream":"COORDS", "seq":12,"duplicate": true}`)}, ackDuplicate, ""},
		{"duplicate compact", &nats.Msg{Data: []byte(`{"stream":"COORDS","seq":12,"duplicate":true}`)}, ackDuplicate, ""},
		{"not duplicate", &nats.Msg{Data: []byte(`{"stream":"COORDS","seq":12,"duplicate":false}`)}, ackStored, ""},
		{"stream named error", &nats.Msg{Data: []byte(`{"stream":"error","seq":3}`)}, ackStored, ""},
		{"error", &nats.Msg{Data: []byte(`{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"COORDS","seq":0}`)}, ackFailed, "maximum messages exceeded"},
		{"no responders", status("503", ""), ackFailed, "no responders"},
		{"other status", status("408", "Request Timeout"), ackFailed, "408 Request Timeout"},
		{"empty", &nats.Msg{}, ackFailed, "empty ack"},
		{"garbage", &nats.Msg{Data: []byte(`hello`)}, ackFailed, "unreadable ack"},
		{"no sequence", &nats.Msg{Data: []byte(`{"other":1}`)}, ackFailed, "without stream or sequence"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseAck(tc.m)
			if got != tc.want {
				t.Fatalf("outcome %d, want %d (err %v)", got, tc.want, err)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// A publish whose connection breaks before its ack fails at once: the ack
// can never come. Waiting out the publish timeout would only delay its
// spooling and let the device's newer coordinates, published after the
// reconnect, be stored ahead of it. While the connection is down, a publish
// fails at once too, instead of being buffered for after the reconnect.
func TestPublishFailsAtOnceWhenTheConnectionBreaks(t *testing.T) {
	ctx := context.Background()
	ns := streamtest.Run(t)
	_, js := streamtest.Connect(t, ns)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.coords.>"}, Storage: jetstream.FileStorage, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	px := streamtest.NewProxy(t, ns.Addr().String())
	nc, err := stream.Connect(stream.ConnConfig{URL: px.URL(), Name: "bridge", WaitConnected: true, NoReconnectBuffer: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	p, err := NewPublisher(nc, "t.coords", 64, time.Hour) // longer than any test
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if res, err := p.Publish(ctx, testRecs("before", 2)); err != nil || res.Stored != 2 {
		t.Fatalf("before the break: %+v, %v; want 2 stored", res, err)
	}

	// The acks of three messages are lost on the way, then the server is
	// out of reach.
	type outcome struct {
		res PublishResult
		err error
	}
	publish := func(recs []spool.Record) <-chan outcome {
		done := make(chan outcome, 1)
		go func() {
			res, err := p.Publish(ctx, recs)
			done <- outcome{res, err}
		}()
		return done
	}
	wait := func(done <-chan outcome, what string) outcome {
		select {
		case got := <-done:
			return got
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: still waiting for the acks after 30 s", what)
			return outcome{}
		}
	}
	px.Blackhole.Store(true)
	done := publish(testRecs("lost", 3))
	deadline := time.Now().Add(10 * time.Second)
	for p.Pending() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	px.Close()
	got := wait(done, "publish cut off")
	if !errors.Is(got.err, ErrNotStored) || !strings.Contains(got.err.Error(), "connection was lost") || len(got.res.Failed) != 3 {
		t.Errorf("publish cut off: %+v, %v; want all 3 failed, the connection named as the cause", got.res, got.err)
	}
	if n := p.Pending(); n != 0 {
		t.Errorf("%d publishes still await an ack", n)
	}
	if n := p.CutOff(); n != 3 {
		t.Errorf("%d publishes counted as cut off, want 3", n)
	}

	// Down: nothing is buffered for later.
	got = wait(publish(testRecs("down", 2)), "publish while down")
	if !errors.Is(got.err, nats.ErrReconnectBufExceeded) || len(got.res.Failed) != 2 {
		t.Errorf("publish while down: %+v, %v; want both failed at once (%v)", got.res, got.err, nats.ErrReconnectBufExceeded)
	}
}
