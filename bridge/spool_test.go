package bridge_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

func postTo(t *testing.T, base, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	return resp.StatusCode, m
}

func runServer(t *testing.T, srv *bridge.Server) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return waitListening(t, srv), stop
}

func waitStreamMsgs(t *testing.T, st jetstream.Stream, want uint64) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := st.Info(context.Background())
		if err == nil && info.State.Msgs == want {
			return
		}
		if time.Now().After(deadline) {
			var got uint64
			if info != nil {
				got = info.State.Msgs
			}
			t.Fatalf("stream holds %d messages, want %d", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// While NATS is down the bridge answers 202 and keeps the coordinates on
// disk; when NATS returns they reach the stream, in order, with the message
// ids they would have had, and re-sending them is recognised as duplicates.
func TestSpoolWhileNATSDownThenReplay(t *testing.T) {
	e := newEnv(t, nil)
	sp, err := spool.Open(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	srv := e.newServer(t, sp, nil)
	base, stop := runServer(t, srv)
	defer stop()
	waitReady(t, base, true)

	e.nats.Stop()
	waitReady(t, base, false)
	const n = 40
	bodies := make([]string, n)
	for i := range bodies {
		bodies[i] = fmt.Sprintf(`{"device_id":"dev-%d","lat":%d.5,"lon":-99,"ts":%d}`, i%4, i%80, 1772359200+i)
		code, ans := postTo(t, base, bodies[i])
		if code != http.StatusAccepted || ans["spooled"] != float64(1) || ans["accepted"] != float64(0) {
			t.Fatalf("post %d while NATS down: %d %v", i, code, ans)
		}
	}
	if recs, _ := sp.Stats(); recs != n {
		t.Fatalf("spool holds %d, want %d", recs, n)
	}

	e.nats = e.nats.Restart(t)
	waitReady(t, base, true)
	waitStreamMsgs(t, e.stream, n)
	deadline := time.Now().Add(10 * time.Second)
	for !sp.Empty() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if !sp.Empty() {
		t.Fatal("spool not drained")
	}
	// In arrival order per device, with the ids a direct publish would give.
	cons, err := e.stream.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for m := range batch.Messages() {
		var c coord.Coord
		if err := json.Unmarshal(m.Data(), &c); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("dev-%d", i%4); c.DeviceID != want || c.TS.Unix() != int64(1772359200+i) {
			t.Fatalf("message %d: %s at %v, want %s at %d", i, c.DeviceID, c.TS, want, 1772359200+i)
		}
		if m.Headers().Get("Nats-Msg-Id") != c.MsgID() {
			t.Fatalf("message %d lost its id", i)
		}
		i++
	}
	if i != n {
		t.Fatalf("read %d messages", i)
	}
	t.Logf("spooled %d coordinates while NATS was down; all %d replayed in order", n, i)
	code, ans := postTo(t, base, bodies[7])
	if code != 200 || ans["duplicates"] != float64(1) {
		t.Fatalf("re-sent spooled coordinate: %d %v", code, ans)
	}
}

// spoolWhileDown runs a bridge on a new spool in a temporary dir, stops
// NATS, posts n coordinates of device (each must be answered 202, spooled)
// and stops the bridge. NATS stays down; the spool stays open.
func spoolWhileDown(t *testing.T, e *env, device string, n int) (sp *spool.Spool, dir string) {
	t.Helper()
	dir = t.TempDir()
	sp, err := spool.Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	srv := e.newServer(t, sp, nil)
	base, stop := runServer(t, srv)
	waitReady(t, base, true)
	e.nats.Stop()
	waitReady(t, base, false)
	for i := 0; i < n; i++ {
		if code, _ := postTo(t, base, fmt.Sprintf(`{"device_id":%q,"lat":1,"lon":%d,"ts":%d}`, device, i, 1772359200+i)); code != 202 {
			t.Fatalf("coordinate %d answered %d, want 202 (spooled)", i, code)
		}
	}
	stop()
	return sp, dir
}

// A spool written by one bridge process is replayed by the next.
func TestSpoolReplayedAfterRestart(t *testing.T) {
	e := newEnv(t, nil)
	sp, dir := spoolWhileDown(t, e, "r", 10)
	sp.Close()

	e.nats = e.nats.Restart(t)
	sp2, err := spool.Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer sp2.Close()
	if n, _ := sp2.Stats(); n != 10 {
		t.Fatalf("reopened spool holds %d", n)
	}
	srv2 := e.newServer(t, sp2, nil)
	_, stop2 := runServer(t, srv2)
	defer stop2()
	waitStreamMsgs(t, e.stream, 10)
}

func TestSpoolFullAnswers503(t *testing.T) {
	e := newEnv(t, nil)
	sp, err := spool.Open(t.TempDir(), 600)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	srv := e.newServer(t, sp, nil)
	base, stop := runServer(t, srv)
	defer stop()
	waitReady(t, base, true)
	e.nats.Stop()
	waitReady(t, base, false)
	var codes []int
	for i := 0; i < 6; i++ {
		code, _ := postTo(t, base, fmt.Sprintf(`{"device_id":"f","lat":1,"lon":%d}`, i))
		codes = append(codes, code)
	}
	if codes[0] != 202 || codes[len(codes)-1] != 503 {
		t.Fatalf("codes %v: want 202 first and 503 once the spool is full", codes)
	}
}

// A request whose coordinate is lost with a broken NATS connection is
// answered 202 at once (its ack can no longer come), not after
// nats.publish_timeout; the coordinate is stored from the spool, and the
// device's next coordinate, sent after the reconnect, is stored after it.
func TestSpoolTakesWhatABrokenConnectionLost(t *testing.T) {
	ns := streamtest.Run(t)
	px := streamtest.NewProxy(t, ns.Addr().String())
	nc, err := stream.Connect(stream.ConnConfig{URL: px.URL(), Name: "bridge", WaitConnected: true, NoReconnectBuffer: true}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv, js, _ := spoolingBridge(t, nc, bridge.Options{
		Addr: "127.0.0.1:0", MaxBodyBytes: 1 << 20, MaxBatch: 100,
		PublishTimeout: 10 * time.Minute, // longer than the test may take
		Stream:         streamtest.Coords(), ManageStream: true,
	})
	if err := srv.EnsureStream(context.Background()); err != nil {
		t.Fatal(err)
	}
	base, stop := runServer(t, srv)
	defer stop()
	waitReady(t, base, true)
	body := func(i int) string {
		return fmt.Sprintf(`{"device_id":"truck-7","lat":19.%d,"lon":-99.1,"ts":%d}`, i, 1772359200+i)
	}
	if code, ans := postTo(t, base, body(0)); code != http.StatusOK {
		t.Fatalf("before the break: %d %v", code, ans)
	}

	// Coordinate 1 never reaches the server; then the connection breaks.
	px.Swallow.Store(true)
	type reply struct {
		code int
		ans  map[string]any
	}
	got := make(chan reply, 1)
	go func() {
		var r reply
		if resp, err := http.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(body(1))); err == nil {
			_ = json.NewDecoder(resp.Body).Decode(&r.ans)
			resp.Body.Close()
			r.code = resp.StatusCode
		}
		got <- r
	}()
	// Published into the void: it awaits its ack.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(scrape(t, base), "\nubiqo_bridge_publish_pending 1\n") {
		if time.Now().After(deadline) {
			t.Fatal("the request's publish never showed as pending")
		}
		time.Sleep(10 * time.Millisecond)
	}
	px.Cut()
	px.Swallow.Store(false)
	var r reply
	select {
	case r = <-got:
	case <-time.After(time.Minute):
		t.Fatal("no answer a minute after the connection broke: the request waits out nats.publish_timeout")
	}
	if r.code != http.StatusAccepted || r.ans["spooled"] != float64(1) {
		t.Fatalf("request cut off: %d %v; want 202 with the coordinate spooled", r.code, r.ans)
	}
	if m := scrape(t, base); !strings.Contains(m, "\nubiqo_bridge_publish_cut_off_total 1\n") {
		t.Errorf("metrics do not count the cut-off publish:\n%s", m)
	}
	waitReady(t, base, true)
	if code, ans := postTo(t, base, body(2)); code != http.StatusOK && code != http.StatusAccepted {
		t.Fatalf("after the reconnect: %d %v", code, ans)
	}

	st, err := js.Stream(context.Background(), "COORDS")
	if err != nil {
		t.Fatal(err)
	}
	waitStreamMsgs(t, st, 3)
	var order []int64
	for _, c := range streamCoords(t, st, 3) {
		order = append(order, c.TS.Unix()-1772359200)
	}
	if fmt.Sprint(order) != "[0 1 2]" {
		t.Fatalf("stored in the order %v, want [0 1 2]", order)
	}
}

// streamCoords reads the first n coordinates of st, in stream order.
func streamCoords(t *testing.T, st jetstream.Stream, n int) []coord.Coord {
	t.Helper()
	cons, err := st.OrderedConsumer(context.Background(), jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var cs []coord.Coord
	for m := range batch.Messages() {
		var c coord.Coord
		if err := json.Unmarshal(m.Data(), &c); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	return cs
}

func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// spoolingBridge is a bridge on nc with a spool of its own (1 GiB at most).
func spoolingBridge(t *testing.T, nc *nats.Conn, opts bridge.Options) (*bridge.Server, jetstream.JetStream, *spool.Spool) {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	srv, err := bridge.New(opts, bridge.Deps{Log: zerolog.Nop(), Conn: nc, JS: js, Spool: sp})
	if err != nil {
		t.Fatal(err)
	}
	return srv, js, sp
}
