package forward_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/forward"
)

// A target that fails half of all requests at random still receives every
// coordinate exactly once, each device's in order, while coordinates keep
// arriving.
func TestFlakyTargetGetsEveryCoordinateInDeviceOrder(t *testing.T) {
	for _, format := range []string{forward.FormatCanonical, forward.FormatBatch} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			var mu sync.Mutex
			rng := rand.New(rand.NewPCG(1, 2))
			target := newSink(t, func(*http.Request, []byte, []coord.Coord) (int, http.Header, string) {
				mu.Lock()
				defer mu.Unlock()
				if rng.IntN(2) == 0 {
					return []int{500, 502, 503, 408}[rng.IntN(4)], nil, "try later"
				}
				return 200, nil, "ok"
			})
			devices := deviceNames(20)
			e.publish(t, devices, 0, 15)

			tg := fastTarget("flaky", target.srv.URL)
			tg.Format = format
			tg.BatchSize = 7
			tg.MaxDeliver = -1
			r := start(t, e.js, 5*time.Second, tg)
			e.publish(t, devices, 15, 30) // more arrive while it works

			eventually(t, 30*time.Second, "all 600 coordinates delivered", func() bool { return target.total() >= 600 })
			time.Sleep(50 * time.Millisecond) // a duplicate, if any, would land now
			target.checkOrder(t, devices, 30, nil)
			g := r.svc.Gatherer()
			if n := metric(t, g, "ubiqo_forward_retried_total", map[string]string{"target": "flaky"}); n == 0 {
				t.Error("no retry counted against a target failing half the time")
			}
			if n := metric(t, g, "ubiqo_forward_delivered_total", map[string]string{"target": "flaky"}); n != 600 {
				t.Errorf("delivered metric = %v, want 600", n)
			}
			if got := len(e.dlq(t, "ubiqo.dlq.>")); got != 0 {
				t.Errorf("%d coordinates dead-lettered, want none", got)
			}
			if err := r.stop(); err != nil {
				t.Errorf("stop: %v", err)
			}
		})
	}
}

// A target that is down (connection refused) holds everything back without
// dead-lettering anything, the breaker opens, and after a forwarder restart
// and the target's return every coordinate arrives, in order.
func TestTargetDownThenBackAcrossRestart(t *testing.T) {
	e := newEnv(t)
	// A port nobody listens on yet: the target is down.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	devices := deviceNames(10)
	e.publish(t, devices, 0, 10)
	tg := fastTarget("backup", "http://"+addr+"/ubiqo")
	first := start(t, e.js, 5*time.Second, tg)
	g := first.svc.Gatherer()
	eventually(t, 10*time.Second, "breaker open", func() bool {
		return metric(t, g, "ubiqo_forward_breaker_state", map[string]string{"target": "backup"}) == 2
	})
	time.Sleep(200 * time.Millisecond) // probes fail for a while
	if err := first.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := len(e.dlq(t, "ubiqo.dlq.>")); n != 0 {
		t.Fatalf("%d coordinates dead-lettered during an outage; the breaker must hold them", n)
	}

	e.publish(t, devices, 10, 20) // the fleet keeps sending while the forwarder is down
	second := start(t, e.js, 5*time.Second, tg)
	time.Sleep(100 * time.Millisecond)
	target := newSinkAt(t, addr, nil) // the target comes back

	eventually(t, 20*time.Second, "all 200 coordinates delivered", func() bool { return target.total() >= 200 })
	time.Sleep(50 * time.Millisecond)
	target.checkOrder(t, devices, 20, nil)
	if err := second.stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// A target that keeps failing opens the breaker: then only one probe per
// cooldown reaches it, nothing is dead-lettered, and the first successful
// probe releases everything, in order.
func TestBreakerProbesBeforeReleasingTheFlood(t *testing.T) {
	e := newEnv(t)
	var down atomic.Bool
	down.Store(true)
	target := newSink(t, func(*http.Request, []byte, []coord.Coord) (int, http.Header, string) {
		if down.Load() {
			return 500, nil, "down"
		}
		return 200, nil, ""
	})
	devices := deviceNames(10)
	e.publish(t, devices, 0, 5)
	tg := fastTarget("backup", target.srv.URL)
	tg.BackoffMin, tg.BackoffMax = time.Millisecond, 2*time.Millisecond // without a breaker: hundreds of requests
	tg.BreakerCooldown = 100 * time.Millisecond
	r := start(t, e.js, 5*time.Second, tg)
	g := r.svc.Gatherer()
	eventually(t, 10*time.Second, "breaker open", func() bool {
		return metric(t, g, "ubiqo_forward_breaker_state", map[string]string{"target": "backup"}) == 2
	})
	before := len(target.requests())
	time.Sleep(550 * time.Millisecond)
	probes := target.requests()[before:]
	if len(probes) < 3 || len(probes) > 7 {
		t.Errorf("%d requests in 550ms with the breaker open (cooldown 100ms), want about 5 single probes", len(probes))
	}
	for i := 1; i < len(probes); i++ {
		if gap := probes[i].at.Sub(probes[i-1].at); gap < 90*time.Millisecond {
			t.Errorf("probes %v apart, want at least the cooldown", gap)
		}
	}
	if n := len(e.dlq(t, "ubiqo.dlq.>")); n != 0 {
		t.Errorf("%d dead-lettered while the breaker was open", n)
	}

	down.Store(false)
	eventually(t, 10*time.Second, "all 50 delivered", func() bool { return target.total() >= 50 })
	target.checkOrder(t, devices, 5, nil)
	if st := metric(t, g, "ubiqo_forward_breaker_state", map[string]string{"target": "backup"}); st != 0 {
		t.Errorf("breaker state %v after recovery, want 0 (closed)", st)
	}
}

// A forwarder that dies without handing its messages back (its NATS
// connection gone) leaves them unacknowledged; the next run must not send
// newer coordinates of those devices before the server redelivers the old
// ones.
func TestCrashedRunDoesNotReorderDevices(t *testing.T) {
	e := newEnv(t)
	devices := deviceNames(5)
	e.publish(t, devices, 0, 5)

	var down atomic.Bool
	down.Store(true)
	target := newSink(t, func(*http.Request, []byte, []coord.Coord) (int, http.Header, string) {
		if down.Load() {
			return 503, nil, "down"
		}
		return 200, nil, ""
	})
	// The first run has its own connection, to cut it like a crash.
	nc1, err := nats.Connect(e.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js1, _ := jetstream.New(nc1)
	tg := fastTarget("backup", target.srv.URL)
	const ackWait = time.Second
	first := start(t, js1, ackWait, tg)
	eventually(t, 10*time.Second, "the first run holds every coordinate", func() bool {
		return metric(t, first.svc.Gatherer(), "ubiqo_forward_held_messages", map[string]string{"target": "backup"}) == 25
	})
	nc1.Close() // crash: no ack, no nak reaches the server
	_ = first.stop()

	e.publish(t, devices, 5, 10) // newer coordinates, delivered at once to the next run
	down.Store(false)
	second := start(t, e.js, ackWait, tg)
	eventually(t, 20*time.Second, "all 50 coordinates delivered", func() bool { return target.total() >= 50 })
	time.Sleep(50 * time.Millisecond)
	target.checkOrder(t, devices, 10, nil)
	_ = second.stop()
}

// A 400 is permanent: that coordinate goes to the DLQ at once, with the
// target's status and answer, and the device's next coordinates still flow.
func TestBadRequestDeadLettersAndNextFlows(t *testing.T) {
	e := newEnv(t)
	devices := deviceNames(3)
	bad := testCoord("truck-01", 2)
	target := newSink(t, func(_ *http.Request, _ []byte, cs []coord.Coord) (int, http.Header, string) {
		if cs[0].DeviceID == bad.DeviceID && cs[0].TS.Equal(bad.TS) {
			return 400, nil, `{"error":"lat out of our service area"}`
		}
		return 201, nil, ""
	})
	e.publish(t, devices, 0, 6)
	r := start(t, e.js, 5*time.Second, fastTarget("backup", target.srv.URL))

	eventually(t, 10*time.Second, "17 coordinates delivered", func() bool { return target.total() >= 17 })
	eventually(t, 5*time.Second, "one DLQ message", func() bool { return len(e.dlq(t, "ubiqo.dlq.>")) == 1 })
	target.checkOrder(t, devices, 6, map[string][]int{"truck-01": {2}})

	msgs := e.dlq(t, "ubiqo.dlq.>")
	m := msgs[0]
	if m.Subject != "ubiqo.dlq.forward-backup.truck-01" {
		t.Errorf("DLQ subject = %s, want ubiqo.dlq.forward-backup.truck-01", m.Subject)
	}
	if got := m.Header.Get(subscribers.HeaderOriginalSubject); got != "ubiqo.coords.truck-01" {
		t.Errorf("original subject header = %q", got)
	}
	errText := m.Header.Get(subscribers.HeaderError)
	if !contains(errText, "HTTP 400") || !contains(errText, "lat out of our service area") {
		t.Errorf("DLQ error header %q does not carry the target's status and answer", errText)
	}
	if m.Header.Get(forward.HeaderTargetStatus) != "400" || !contains(m.Header.Get(forward.HeaderTargetAnswer), "lat out of our service area") || m.Header.Get(forward.HeaderTarget) != "backup" {
		t.Errorf("DLQ copy lacks the target's headers: %v", m.Header)
	}
	var c coord.Coord
	if err := c.UnmarshalJSON(m.Data); err != nil || !c.TS.Equal(bad.TS) {
		t.Errorf("DLQ body is not the original coordinate: %v", err)
	}
	// A permanent answer is not retried.
	n := 0
	for _, rq := range target.requests() {
		if rq.status == 400 {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the 400 coordinate was sent %d times, want once", n)
	}
	if got := metric(t, r.svc.Gatherer(), "ubiqo_forward_dead_lettered_total", map[string]string{"target": "backup", "reason": "http_400"}); got != 1 {
		t.Errorf("dead-lettered metric = %v, want 1", got)
	}
	// The reasons known in advance are exported at 0 from the start, so
	// rate() and increase() see their first event.
	fams, err := r.svc.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"ubiqo_forward_retried_total/timeout": false, "ubiqo_forward_retried_total/network": false,
		"ubiqo_forward_dead_lettered_total/max_deliver": false, "ubiqo_forward_dead_lettered_total/max_age": false,
		"ubiqo_forward_dead_lettered_total/encode": false}
	for _, f := range fams {
		for _, m := range f.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == "reason" {
					if _, ok := want[f.GetName()+"/"+lp.GetValue()]; ok {
						want[f.GetName()+"/"+lp.GetValue()] = true
					}
				}
			}
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("%s not exported before its first event", k)
		}
	}
}

// 429 with Retry-After (seconds, or an HTTP date) pauses the target at
// least that long before the next request.
func TestRetryAfterIsHonoured(t *testing.T) {
	for _, tc := range []struct {
		name  string
		value func() string
		min   time.Duration
	}{
		{"seconds", func() string { return "1" }, time.Second},
		// An HTTP date has whole seconds: now+2s is at least 1s away.
		{"http-date", func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			var calls atomic.Int64
			target := newSink(t, func(*http.Request, []byte, []coord.Coord) (int, http.Header, string) {
				if calls.Add(1) == 1 {
					return 429, http.Header{"Retry-After": {tc.value()}}, "slow down"
				}
				return 200, nil, ""
			})
			e.publish(t, deviceNames(3), 0, 2)
			// One request at a time, so the next one is sent after the 429
			// came back: Retry-After pauses the whole target, every device.
			tg := fastTarget("backup", target.srv.URL)
			tg.Concurrency = 1
			start(t, e.js, 5*time.Second, tg)
			eventually(t, 10*time.Second, "6 coordinates delivered", func() bool { return target.total() >= 6 })

			reqs := target.requests()
			if reqs[0].status != 429 {
				t.Fatalf("first answer %d", reqs[0].status)
			}
			if gap := reqs[1].at.Sub(reqs[0].at); gap < tc.min {
				t.Errorf("next request %v after the 429, want at least %v (Retry-After %s)", gap, tc.min, tc.name)
			}
			target.checkOrder(t, deviceNames(3), 2, nil)
		})
	}
}

// Two targets, one dead: the live one receives everything promptly, the
// dead one's coordinates wait.
func TestDeadTargetDoesNotDelayAnother(t *testing.T) {
	e := newEnv(t)
	dead := newSink(t, func(*http.Request, []byte, []coord.Coord) (int, http.Header, string) {
		time.Sleep(50 * time.Millisecond) // slow and failing
		return 503, nil, "maintenance"
	})
	live := newSink(t, nil)
	devices := deviceNames(20)
	e.publish(t, devices, 0, 10)
	began := time.Now()
	r := start(t, e.js, 5*time.Second, fastTarget("dead", dead.srv.URL), fastTarget("live", live.srv.URL))
	e.publish(t, devices, 10, 20)

	eventually(t, 10*time.Second, "the live target has all 400", func() bool { return live.total() >= 400 })
	took := time.Since(began)
	live.checkOrder(t, devices, 20, nil)
	if dead.total() != 0 {
		t.Errorf("dead target accepted %d", dead.total())
	}
	if took > 5*time.Second {
		t.Errorf("the live target took %v next to a dead one", took)
	}
	g := r.svc.Gatherer()
	if got := metric(t, g, "ubiqo_forward_delivered_total", map[string]string{"target": "live"}); got != 400 {
		t.Errorf("live delivered = %v, want 400", got)
	}
	if got := metric(t, g, "ubiqo_forward_delivered_total", map[string]string{"target": "dead"}); got != 0 {
		t.Errorf("dead delivered = %v", got)
	}
	// Each target runs its own durable consumer, lag reported per target.
	for _, name := range []string{"dead", "live"} {
		if _, err := e.js.Consumer(context.Background(), "COORDS", "forward-"+name); err != nil {
			t.Errorf("consumer forward-%s: %v", name, err)
		}
	}
	eventually(t, 5*time.Second, "the dead target's coordinates are held, not acked", func() bool {
		return metric(t, g, "ubiqo_subscriber_ack_pending_messages", map[string]string{"target": "dead"}) == 400
	})
}

// verifyStandardWebhook is an independent implementation of the Standard
// Webhooks verification (https://www.standardwebhooks.com): the secret is
// whsec_ + base64, the signed content is id.timestamp.body, the signature
// header a space-separated list of v1,<base64 HMAC-SHA256>.
func verifyStandardWebhook(secret string, h http.Header, body []byte, now time.Time) (id string, ok bool) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return "", false
	}
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	if id == "" || ts == "" || sigs == "" {
		return "", false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return "", false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "." + string(body)))
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		v, sig, found := strings.Cut(s, ",")
		if !found || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && subtle.ConstantTimeCompare(got, want) == 1 {
			return id, true
		}
	}
	return id, false
}

// Signed requests verify with the receiver's own implementation, retries
// included (same webhook-id, fresh timestamp), and webhook-id is the
// coordinate's message id.
func TestSignaturesVerify(t *testing.T) {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	e := newEnv(t)
	var mu sync.Mutex
	seen := map[string]int{}
	var bad atomic.Int64
	target := newSink(t, func(r *http.Request, body []byte, cs []coord.Coord) (int, http.Header, string) {
		id, ok := verifyStandardWebhook(secret, r.Header, body, time.Now())
		if !ok {
			bad.Add(1)
			return 401, nil, "bad signature"
		}
		if want := cs[0].MsgID(); id != want {
			t.Errorf("webhook-id %q, want the message id %q", id, want)
		}
		mu.Lock()
		defer mu.Unlock()
		seen[id]++
		if seen[id] == 1 {
			return 500, nil, "" // every coordinate's first try fails: the retry must verify too
		}
		return 204, nil, ""
	})
	devices := deviceNames(4)
	e.publish(t, devices, 0, 5)
	tg := fastTarget("signed", target.srv.URL)
	tg.SigningSecret = secret
	tg.Headers = map[string]string{"Authorization": "Bearer t0ps3cret"}
	tg.BreakerFailures = -1
	start(t, e.js, 5*time.Second, tg)
	eventually(t, 10*time.Second, "20 coordinates delivered", func() bool { return target.total() >= 20 })
	if n := bad.Load(); n != 0 {
		t.Errorf("%d requests failed verification", n)
	}
	target.checkOrder(t, devices, 5, nil)
	for _, rq := range target.requests() {
		if rq.header.Get("Authorization") != "Bearer t0ps3cret" {
			t.Fatalf("configured header missing: %v", rq.header)
		}
	}
	// A tampered body does not verify with the same headers.
	rq := target.requests()[0]
	if _, ok := verifyStandardWebhook(secret, rq.header, append(rq.body, ' '), time.Now()); ok {
		t.Error("verification accepts a changed body")
	}
}

// The raw format sends the item as UBIQO sent it, as JSON or as a form.
func TestRawFormat(t *testing.T) {
	for _, tc := range []struct {
		name     string
		form     bool
		wantType string
		want     func(c coord.Coord) string
	}{
		{"json", false, "application/json", func(c coord.Coord) string { return string(c.Raw) }},
		{"form", true, "application/x-www-form-urlencoded", func(c coord.Coord) string {
			return "imei=truck-00&lat=" + strings.Split(strings.Split(string(c.Raw), `"lat":"`)[1], `"`)[0] + "&lng=-99.1332&n=0"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			got := make(chan sinkReq, 4)
			srv := newOpaqueSink(t, func(r *http.Request, body []byte, _ []coord.Coord) (int, http.Header, string) {
				got <- sinkReq{header: r.Header.Clone(), body: body}
				return 200, nil, ""
			})
			e.publish(t, deviceNames(1), 0, 1)
			tg := fastTarget("raw", srv.srv.URL)
			tg.Format = forward.FormatRaw
			tg.RawForm = tc.form
			start(t, e.js, 5*time.Second, tg)
			var rq sinkReq
			select {
			case rq = <-got:
			case <-time.After(10 * time.Second):
				t.Fatal("nothing delivered")
			}
			c := testCoord("truck-00", 0)
			if ct := rq.header.Get("Content-Type"); ct != tc.wantType {
				t.Errorf("Content-Type %q, want %q", ct, tc.wantType)
			}
			if string(rq.body) != tc.want(c) {
				t.Errorf("body %s, want %s", rq.body, tc.want(c))
			}
			if id := rq.header.Get(forward.HeaderMsgID); id != c.MsgID() {
				t.Errorf("%s = %q, want %q", forward.HeaderMsgID, id, c.MsgID())
			}
		})
	}
}

// Redrive sends the dead-lettered coordinates again once the target is
// fixed, deletes them from the DLQ, and leaves other targets' alone.
func TestRedriveAfterFix(t *testing.T) {
	e := newEnv(t)
	var broken atomic.Bool
	broken.Store(true)
	target := newSink(t, func(_ *http.Request, _ []byte, cs []coord.Coord) (int, http.Header, string) {
		if broken.Load() && cs[0].DeviceID == "truck-01" {
			return 422, nil, "unknown device"
		}
		return 200, nil, ""
	})
	devices := deviceNames(3)
	e.publish(t, devices, 0, 4)
	tg := fastTarget("backup", target.srv.URL)
	r := start(t, e.js, 5*time.Second, tg)
	eventually(t, 10*time.Second, "truck-01's 4 coordinates dead-lettered", func() bool {
		return len(e.dlq(t, "ubiqo.dlq.forward-backup.truck-01")) == 4
	})
	eventually(t, 10*time.Second, "the others delivered", func() bool { return target.total() == 8 })
	_ = r.stop()

	ctx := context.Background()
	var out strings.Builder
	rep, err := forward.Redrive(ctx, e.js, forward.RedriveOptions{Target: tg, DryRun: true}, &out)
	if err != nil || rep.Found != 4 || rep.Delivered != 0 || target.total() != 8 {
		t.Fatalf("dry run: %+v %v, sent %d; output:\n%s", rep, err, target.total()-8, out.String())
	}

	broken.Store(false)
	out.Reset()
	rep, err = forward.Redrive(ctx, e.js, forward.RedriveOptions{Target: tg, Device: "truck-01"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Found != 4 || rep.Delivered != 4 || rep.Failed != 0 {
		t.Errorf("report %+v; output:\n%s", rep, out.String())
	}
	target.checkOrder(t, devices, 4, nil)
	if n := len(e.dlq(t, "ubiqo.dlq.forward-backup.>")); n != 0 {
		t.Errorf("%d messages left in the DLQ after a successful redrive", n)
	}
}
