package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// Fault tests run the whole bridge (through run) against nats-server
// processes that they kill with SIGKILL. They check the guarantee: every
// coordinate answered 2xx is in the stream exactly once.

// bridgeProc is the bridge under test, started through run.
type bridgeProc struct {
	base   string
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

func startBridge(t *testing.T, natsURL, spoolDir string, extra ...string) *bridgeProc {
	t.Helper()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	b := &bridgeProc{base: "http://" + addr, cancel: cancel, done: make(chan error, 1), logs: &syncBuffer{}}
	args := append([]string{
		"--http.addr", addr,
		"--nats.url", natsURL,
		"--spool.dir", spoolDir,
		"--log.access", "errors",
		"--nats.publish_timeout", "2s",
	}, extra...)
	go func() { b.done <- run(ctx, args, io.Discard, b.logs) }()
	waitReady(t, b.base, b.done)
	return b
}

func (b *bridgeProc) stop(t *testing.T) {
	t.Helper()
	b.cancel()
	select {
	case err := <-b.done:
		if err != nil {
			t.Fatalf("bridge run: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("bridge did not stop")
	}
}

// fix is one coordinate a load client sends; its message id is known in
// advance, so the test can look for it in the stream.
type fix struct {
	device string
	ts     int64
	lat    float64
	lon    float64
}

func (f fix) body() string {
	return fmt.Sprintf(`{"device_id":%q,"lat":%.5f,"lon":%.5f,"ts":%d}`, f.device, f.lat, f.lon, f.ts)
}

func (f fix) msgID() string {
	c := coord.Coord{DeviceID: f.device, TS: time.Unix(f.ts, 0).UTC(), Lat: f.lat, Lon: f.lon}
	return c.MsgID()
}

func fixes(n int) []fix {
	out := make([]fix, n)
	for i := range out {
		out[i] = fix{device: fmt.Sprintf("unit-%03d", i%100), ts: 1772359200 + int64(i), lat: 20 + float64(i%1000)/10000, lon: -100 - float64(i%777)/10000}
	}
	return out
}

// loadResult records what the bridge answered for each fix.
type loadResult struct {
	mu    sync.Mutex
	ok    map[string]int // msg id -> status (200 or 202)
	codes map[int]int
	errs  int
}

// sendSteady posts fixes one per request from `workers` clients at about
// rate requests per second in total, calling during(i) before request i.
func sendSteady(t *testing.T, base string, fx []fix, workers, rate int, during func(i int)) *loadResult {
	t.Helper()
	res := &loadResult{ok: map[string]int{}, codes: map[int]int{}}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var next atomic.Int64
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(fx) {
					return
				}
				if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
					time.Sleep(d)
				}
				if during != nil {
					during(i)
				}
				resp, err := client.Post(base+"/webhook/ubiqo", "application/json", strings.NewReader(fx[i].body()))
				if err != nil {
					res.mu.Lock()
					res.errs++
					res.mu.Unlock()
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				res.mu.Lock()
				res.codes[resp.StatusCode]++
				if resp.StatusCode == 200 || resp.StatusCode == 202 {
					res.ok[fx[i].msgID()] = resp.StatusCode
				}
				res.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// streamIDs reads every message of COORDS and counts each message id.
func streamIDs(t *testing.T, url string, want int) map[string]int {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	// After a node loss the stream's leader may move: API calls can time out
	// for a while, so retry them.
	var st jetstream.Stream
	var info *jetstream.StreamInfo
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for {
		var err error
		if st == nil {
			st, err = js.Stream(ctx, "COORDS")
		}
		if st != nil {
			info, err = st.Info(ctx)
		}
		if err == nil && int(info.State.Msgs) >= want {
			break
		}
		if time.Now().After(deadline) {
			if info == nil {
				t.Fatalf("stream not readable after 60s: %v", err)
			}
			t.Logf("stream holds %d messages after 60s, want %d", info.State.Msgs, want)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("stream reached %d messages %v after the load ended", want, time.Since(start).Round(time.Millisecond))
	total := int(info.State.Msgs)
	ids := make(map[string]int, total)
	// Read everything with an ordered consumer; after a node loss the
	// consumer may need a moment (and a reset) before it delivers again.
	deadline = time.Now().Add(60 * time.Second)
	var cons jetstream.Consumer
	for {
		var err error
		if cons, err = st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cannot read the stream: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	got := 0
	for got < total && time.Now().Before(deadline) {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for m := range batch.Messages() {
			ids[m.Headers().Get("Nats-Msg-Id")]++
			got++
		}
	}
	if got != total {
		t.Fatalf("read %d of the stream's %d messages", got, total)
	}
	return ids
}

func checkExactlyOnce(t *testing.T, res *loadResult, ids map[string]int) {
	t.Helper()
	checkOnce(t, "stream", res, ids)
}

// checkOnce checks that every coordinate answered 2xx appears exactly once
// in where (the stream, or the database).
func checkOnce(t *testing.T, where string, res *loadResult, ids map[string]int) {
	t.Helper()
	missing, dups := 0, 0
	for id := range res.ok {
		if ids[id] == 0 {
			missing++
		}
	}
	for _, n := range ids {
		if n > 1 {
			dups++
		}
	}
	t.Logf("answered %v (transport errors %d); %d coordinates got 2xx; %s holds %d distinct ids; missing %d, duplicated %d",
		res.codes, res.errs, len(res.ok), where, len(ids), missing, dups)
	if missing > 0 || dups > 0 {
		t.Fatalf("guarantee broken in the %s: %d acknowledged coordinates missing, %d stored twice", where, missing, dups)
	}
}

// 20,000 coordinates at a steady rate while the NATS server is killed with
// SIGKILL and restarted twice.
func TestFaultNATSKilledTwiceUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	proc := streamtest.StartProc(t)
	b := startBridge(t, proc.URL(), t.TempDir())
	pers := startPersister(t, proc.URL())
	fx := fixes(20000)
	const rate = 2000 // 10 s of load
	var once [4]sync.Once
	res := sendSteady(t, b.base, fx, 16, rate, func(i int) {
		switch {
		case i == 3000:
			once[0].Do(func() { go proc.Kill() })
		case i == 6000:
			once[1].Do(func() { go proc.Start() })
		case i == 11000:
			once[2].Do(func() { go proc.Kill() })
		case i == 14000:
			once[3].Do(func() { go proc.Start() })
		}
	})
	for !proc.Running() {
		time.Sleep(50 * time.Millisecond)
	}
	ids := streamIDs(t, proc.URL(), len(res.ok))
	b.stop(t)
	if res.codes[202] == 0 {
		t.Errorf("no request was spooled: the kills did not happen under load? %v", res.codes)
	}
	checkExactlyOnce(t, res, ids)
	checkOnce(t, "database", res, pers.rows(t, len(ids)))
}

// SIGTERM (context cancel, as cli.Main does on the signal) under load:
// in-flight requests finish or get 503; nothing answered 2xx is lost, even
// what was still in the spool (replayed by the next start).
func TestFaultSIGTERMUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	proc := streamtest.StartProc(t)
	spoolDir := t.TempDir()
	b := startBridge(t, proc.URL(), spoolDir)
	fx := fixes(4000)
	var stopped sync.Once
	res := sendSteady(t, b.base, fx, 16, 2000, func(i int) {
		if i == 2000 {
			stopped.Do(func() { go b.cancel() })
		}
	})
	if err := <-b.done; err != nil {
		t.Fatalf("bridge run after SIGTERM: %v", err)
	}
	// Start again on the same spool: whatever was spooled is replayed.
	b2 := startBridge(t, proc.URL(), spoolDir)
	ids := streamIDs(t, proc.URL(), len(res.ok))
	b2.stop(t)
	if len(res.ok) >= len(fx) {
		t.Errorf("every request succeeded: the shutdown did not happen under load")
	}
	checkExactlyOnce(t, res, ids)
}

// A 3-node JetStream cluster with the stream on 3 replicas: one node killed
// under load and brought back; the bridge keeps working through it and
// nothing acknowledged is lost.
func TestFaultClusterNodeKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test")
	}
	procs := streamtest.StartCluster(t, 3)
	url := streamtest.ClusterURL(procs)
	streamtest.WaitClusterReady(t, url)
	b := startBridge(t, url, t.TempDir(), "--stream.replicas", "3")
	pers := startPersister(t, url)
	fx := fixes(8000)
	var once [2]sync.Once
	victim := procs[0]
	res := sendSteady(t, b.base, fx, 16, 1000, func(i int) {
		switch {
		case i == 2000:
			once[0].Do(func() { go victim.Kill() })
		case i == 5000:
			once[1].Do(func() { go victim.Start() })
		}
	})
	for !victim.Running() {
		time.Sleep(50 * time.Millisecond)
	}
	ids := streamIDs(t, procs[1].URL(), len(res.ok))
	b.stop(t)
	if ok := res.codes[200] + res.codes[202]; ok < len(fx)*9/10 {
		t.Errorf("the bridge did not keep working through the node loss: %v", res.codes)
	}
	checkExactlyOnce(t, res, ids)
	checkOnce(t, "database", res, pers.rows(t, len(ids)))
}
