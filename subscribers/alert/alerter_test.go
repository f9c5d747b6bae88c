package alert

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// routeNorth is a device driving north along lon -100.39 from lat from to
// lat to in steps of 0.001° (about 111 m), one fix every 10 s from sec.
func routeNorth(dev string, sec int, from, to float64) []*coord.Coord {
	var out []*coord.Coord
	for i := 0; ; i++ {
		lat := from + float64(i)*0.001
		if lat > to+1e-9 {
			return out
		}
		out = append(out, fix(dev, sec+i*10, lat, -100.39))
	}
}

func TestAlerterRouteAcrossPolygon(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	h.start(h.config())
	h.publish(routeNorth("UNIT-7", 0, 20.570, 20.610)...)

	got := h.waitAlerts(2)
	if kindsOf(got) != "geofence_enter,geofence_exit" {
		t.Fatalf("ALERTS = %s, want exactly one enter and one exit", kindsOf(got))
	}
	enter := got[0]
	if enter.Subject != "ubiqo.alerts.geofence_enter.UNIT-7" || enter.MsgID != enter.ID || enter.ID != AlertID("depot", KindEnter, "UNIT-7", enter.TS) {
		t.Errorf("enter message: subject %s, Nats-Msg-Id %s, id %s", enter.Subject, enter.MsgID, enter.ID)
	}
	if enter.Rule != "depot" || enter.DeviceID != "UNIT-7" || enter.Lat < 20.58 || enter.Message == "" {
		t.Errorf("enter body = %+v", enter.Alert)
	}
	// The webhook got the same two bodies, once each, with the id.
	hooks := h.hook.waitDelivered(t, "/hook/", 2)
	if len(hooks) != 2 {
		t.Fatalf("webhook got %d alerts, want 2", len(hooks))
	}
	var body Alert
	if err := json.Unmarshal(hooks[0].Body, &body); err != nil || body.ID != enter.ID || hooks[0].Header.Get("Idempotency-Key") != enter.ID ||
		hooks[0].Header.Get("Content-Type") != "application/json" {
		t.Errorf("webhook request: %s %v (%v)", hooks[0].Body, hooks[0].Header, err)
	}
	// The device state in KV: last fix, no zone, the alerts recorded.
	h.consumed("alerter")
	st := h.state("UNIT-7")
	if st.Last == nil || st.Last.Lat < 20.6099 || len(st.Zones) != 0 || !st.Alerted("depot", KindExit, got[1].TS) {
		t.Errorf("stored state = %+v", st)
	}
	// The log notifier wrote both, and never the webhook's secret.
	if logs := h.logs.String(); !strings.Contains(logs, "UNIT-7 entered Depot Querétaro") || strings.Contains(logs, "s3cret-token") {
		t.Errorf("logs: %s", logs)
	}
}

func TestAlerterHoveringAtTheBoundaryDoesNotFlap(t *testing.T) {
	h := newHarness(t, "hysteresis_m: 30\nrules:"+depotRule)
	h.start(h.config())
	fixes := []*coord.Coord{fix("U1", 0, metresNorth(20.60, 300), -100.39)}
	for i := 1; i <= 40; i++ {
		off := []float64{-8, 12, -3, 25, 0, 18}[i%6] // inside, outside within 30 m, on the fence
		fixes = append(fixes, fix("U1", i*5, metresNorth(20.60, off), -100.39))
	}
	h.publish(fixes...)
	h.consumed("alerter")
	if got := h.waitAlerts(1); kindsOf(got) != "geofence_enter" {
		t.Fatalf("ALERTS = %s, want a single enter", kindsOf(got))
	}
	h.publish(fix("U1", 300, metresNorth(20.60, 40), -100.39)) // clearly out
	if got := h.waitAlerts(2); kindsOf(got) != "geofence_enter,geofence_exit" {
		t.Fatalf("ALERTS = %s, want enter then exit", kindsOf(got))
	}
}

func TestAlerterOutOfOrderFixesDoNotFlipState(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	h.start(h.config())
	h.publish(
		fix("U1", 0, 20.570, -100.39),
		fix("U1", 100, 20.590, -100.39), // enter
		fix("U1", 50, 20.570, -100.39),  // late, outside
		fix("U1", 90, 20.620, -100.39),  // late, outside by far
		fix("U1", 110, 20.591, -100.39), // in order, inside
	)
	h.consumed("alerter")
	if got := h.waitAlerts(1); kindsOf(got) != "geofence_enter" {
		t.Fatalf("ALERTS = %s, want only the enter", kindsOf(got))
	}
	if st := h.state("U1"); !st.Seen.Equal(t0.Add(110*time.Second)) || len(st.Zones) != 1 {
		t.Errorf("state = %+v", st)
	}
}

func TestAlerterRestartBetweenEnterAndExit(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	stop := h.start(h.config())
	h.publish(routeNorth("U1", 0, 20.575, 20.590)...)
	h.waitAlerts(1)
	h.hook.waitDelivered(t, "/hook/", 1)
	stop()

	// A new process: state comes from DEVICES, the durable resumes.
	h.start(h.config())
	h.publish(routeNorth("U1", 1000, 20.591, 20.610)...)
	got := h.waitAlerts(2)
	if kindsOf(got) != "geofence_enter,geofence_exit" {
		t.Fatalf("ALERTS = %s, want one enter and one exit", kindsOf(got))
	}
	if hooks := h.hook.waitDelivered(t, "/hook/", 2); len(hooks) != 2 {
		t.Errorf("webhook got %d notifications, want 2", len(hooks))
	}
}

func TestAlerterTwoInstancesAgree(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	cfg := h.config()
	cfg.Consumer.BatchSize = 7 // small batches, so the instances interleave
	h.start(cfg)
	h.start(cfg)
	const devices = 20
	for round := 0; round < 41; round++ {
		var fixes []*coord.Coord
		for d := 0; d < devices; d++ {
			fixes = append(fixes, fix(fmt.Sprintf("V%02d", d), round*10, 20.570+float64(round)*0.001, -100.39))
		}
		h.publish(fixes...)
	}
	h.consumed("alerter")
	got := h.waitAlerts(2 * devices)
	per := map[string]string{}
	for _, a := range got {
		per[a.DeviceID] += a.Kind + ","
	}
	for d := 0; d < devices; d++ {
		if k := per[fmt.Sprintf("V%02d", d)]; k != "geofence_enter,geofence_exit," {
			t.Errorf("V%02d: %s, want one enter and one exit", d, k)
		}
	}
	if len(got) != 2*devices {
		t.Errorf("ALERTS holds %d alerts, want %d", len(got), 2*devices)
	}
	if hooks := h.hook.waitDelivered(t, "/hook/", 2*devices); len(hooks) != 2*devices {
		t.Errorf("webhook got %d, want %d (once per alert across both instances)", len(hooks), 2*devices)
	}
}

func TestAlerterOfflineWithinAfterPlusOneScan(t *testing.T) {
	const after, scan = time.Second, 200 * time.Millisecond
	// slack covers timer scheduling on a loaded 2-core machine; the
	// logic's bound is after + scan.
	const slack = 150 * time.Millisecond
	h := newHarness(t, fmt.Sprintf("rules:\n  - {name: silent, type: offline, after: %s}\n", after))
	cfg := h.config()
	cfg.ScanInterval = scan
	h.start(cfg)
	h.start(cfg) // a second instance scans too: still one alert
	last := time.Now().UTC()
	h.publish(&coord.Coord{V: 1, DeviceID: "U1", TS: last, ReceivedAt: last, Lat: 20.59, Lon: -100.39})

	got := h.waitAlerts(1)
	if kindsOf(got) != "offline" {
		t.Fatalf("ALERTS = %s, want one offline", kindsOf(got))
	}
	if !got[0].TS.Equal(last) || got[0].ID != AlertID("silent", KindOffline, "U1", last) {
		t.Errorf("offline alert keyed on %v (%s), want the last fix %v", got[0].TS, got[0].ID, last)
	}
	// The scan that found it ran after `after` and at most one scan
	// interval later (its own clock, in the alert); the alert reached the
	// stream soon after (store time; generous for a loaded machine).
	detected, err := time.Parse(time.RFC3339Nano, fmt.Sprint(got[0].Details["detected_at"]))
	if err != nil || got[0].Details["detected_by"] != "scan" {
		t.Fatalf("details = %v (%v)", got[0].Details, err)
	}
	if d := detected.Sub(last); d <= after || d > after+scan+slack {
		t.Errorf("offline detected %v after the last fix, want within (%v, %v] (+%v for scheduling)", d, after, after+scan, slack)
	}
	s, _ := h.js.Stream(context.Background(), stream.AlertsStream)
	raw, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if d := raw.Time.Sub(last); d > after+scan+2*time.Second {
		t.Errorf("offline stored %v after the last fix", d)
	}
	t.Logf("offline detected %v and stored %v after the last fix (after %v, scan interval %v)", detected.Sub(last), raw.Time.Sub(last), after, scan)

	now := time.Now().UTC()
	h.publish(&coord.Coord{V: 1, DeviceID: "U1", TS: now, ReceivedAt: now, Lat: 20.59, Lon: -100.39})
	if got := h.waitAlerts(2); kindsOf(got) != "offline,online" {
		t.Fatalf("ALERTS = %s, want offline then online", kindsOf(got))
	}
}

func TestAlerterReplayDoesNotNotifyTwice(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	h.start(h.config())
	h.publish(routeNorth("U1", 0, 20.570, 20.610)...)
	h.publish(routeNorth("U2", 0, 20.570, 20.595)...) // still inside at the end
	h.waitAlerts(3)
	h.hook.waitDelivered(t, "/hook/", 3)
	h.consumed("alerter")

	since := time.Now().Add(-time.Hour)
	for run := 1; run <= 2; run++ {
		rep, err := Replay(context.Background(), h.js, h.config(), since, zerolog.New(h.logs))
		if err != nil {
			t.Fatalf("replay %d: %v", run, err)
		}
		if rep.Fixes != 67 || rep.Computed != 3 || rep.Suppressed != 3 || rep.Published != 0 || rep.Duplicates != 0 {
			t.Errorf("replay %d report = %+v, want 67 fixes, 3 alerts computed, all suppressed", run, rep)
		}
		if _, err := h.js.Consumer(context.Background(), "COORDS", rep.Durable); err == nil {
			t.Errorf("replay durable %s left behind", rep.Durable)
		}
	}
	if got := h.waitAlerts(3); len(got) != 3 {
		t.Errorf("ALERTS holds %d after the replays, want 3", len(got))
	}
	if hooks := h.hook.waitDelivered(t, "/hook/", 3); len(hooks) != 3 {
		t.Errorf("webhook got %d, want still 3", len(hooks))
	}
}

// A replay of a range older than ALERTS' duplicate window: the stream no
// longer drops a republished id, the live states' Emitted marks must. A rule
// added since is alerted by the replay, once, and notified once.
func TestAlerterReplayOlderThanDuplicateWindow(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	// ALERTS with a 100 ms window stands in for "older than 24 h".
	ac := stream.AlertsConfig(1)
	ac.Duplicates = 100 * time.Millisecond
	ctx := context.Background()
	if _, err := h.js.CreateStream(ctx, ac); err != nil {
		t.Fatal(err)
	}
	if _, err := h.js.CreateStream(ctx, stream.DLQConfig(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.js.CreateOrUpdateKeyValue(ctx, DevicesConfig(1)); err != nil {
		t.Fatal(err)
	}
	cfg := h.config()
	cfg.ManageStreams = false
	h.start(cfg)
	h.publish(routeNorth("U1", 0, 20.570, 20.610)...)
	h.waitAlerts(2)
	h.hook.waitDelivered(t, "/hook/", 2)
	h.consumed("alerter")

	// The operator adds a zone and replays the range.
	withYard := mustRules(t, "rules:"+depotRule+`
  - name: yard
    type: geofence
    on: [enter]
    circle: {lat: 20.605, lon: -100.39, radius_m: 150}
`)
	rcfg := cfg
	rcfg.Rules = withYard
	since := time.Now().Add(-time.Hour)
	time.Sleep(200 * time.Millisecond) // past the duplicate window
	rep, err := Replay(ctx, h.js, rcfg, since, zerolog.New(h.logs))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Computed != 3 || rep.Suppressed != 2 || rep.Published != 1 {
		t.Errorf("first replay = %+v, want depot enter/exit suppressed and the yard enter published", rep)
	}
	got := h.waitAlerts(3)
	if kindsOf(got) != "geofence_enter,geofence_exit,geofence_enter" || got[2].Rule != "yard" || got[2].Replay != rep.Durable {
		t.Fatalf("ALERTS = %s (%+v)", kindsOf(got), got[len(got)-1])
	}
	time.Sleep(200 * time.Millisecond)
	rep, err = Replay(ctx, h.js, rcfg, since, zerolog.New(h.logs))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Published != 0 || rep.Suppressed != 3 {
		t.Errorf("second replay = %+v, want everything suppressed", rep)
	}
	if got := h.waitAlerts(3); len(got) != 3 {
		t.Errorf("ALERTS holds %d after the second replay, want 3", len(got))
	}
	if hooks := h.hook.waitDelivered(t, "/hook/", 3); len(hooks) != 3 {
		t.Errorf("webhook got %d, want 3: the yard once, nothing twice", len(hooks))
	}
}

// A crash between the state write and the publish leaves the alerts in the
// stored state's outbox; the next handling of the device publishes them,
// once: a later process finding the same outbox looks the alert up in
// ALERTS and does not publish it again, even past the duplicate window.
func TestAlerterOutboxAfterAnInterruptedRun(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	ctx := context.Background()
	ac := stream.AlertsConfig(1)
	ac.Duplicates = 100 * time.Millisecond // stands in for "older than 24 h"
	for _, sc := range []jetstream.StreamConfig{ac, stream.DLQConfig(1)} {
		if _, err := h.js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := h.js.CreateOrUpdateKeyValue(ctx, DevicesConfig(1))
	if err != nil {
		t.Fatal(err)
	}
	lost := newAlert(&h.rules.zones["depot"].rule, KindEnter, "U1", t0.Add(10*time.Second), 20.59, -100.39, "U1 entered Depot Querétaro", nil)
	st := NewState("U1")
	st.Seen = t0.Add(10 * time.Second)
	st.Last = &Fix{TS: st.Seen, Lat: 20.59, Lon: -100.39}
	st.Zones = []string{"depot"}
	st.Pending = []Alert{lost}
	data, _ := json.Marshal(st)
	if _, err := kv.Put(ctx, "U1", data); err != nil {
		t.Fatal(err)
	}
	cfg := h.config()
	cfg.ManageStreams = false

	// The fix that raised it comes again (it was never acked): stale, but
	// the device is handled, so its outbox is published.
	stop := h.start(cfg)
	h.publish(fix("U1", 10, 20.59, -100.39))
	got := h.waitAlerts(1)
	if len(got) != 1 || got[0].ID != lost.ID {
		t.Fatalf("ALERTS = %+v, want the lost enter", got)
	}
	h.consumed("alerter")
	stop()

	// Another process, past the duplicate window, finds the same outbox
	// (nothing was written since): it must not publish it again.
	time.Sleep(200 * time.Millisecond)
	h.start(cfg)
	h.publish(fix("U1", 5, 20.59, -100.39)) // late fix: handles the device, changes nothing
	h.consumed("alerter")
	if got := h.waitAlerts(1); len(got) != 1 {
		t.Fatalf("ALERTS holds %d alerts, want still 1: %s", len(got), kindsOf(got))
	}
	// The next write empties the outbox.
	h.publish(fix("U1", 20, 20.591, -100.39))
	h.consumed("alerter")
	if st := h.state("U1"); len(st.Pending) != 0 {
		t.Errorf("outbox after the next write: %+v", st.Pending)
	}
	if hooks := h.hook.waitDelivered(t, "/hook/", 1); len(hooks) != 1 {
		t.Errorf("webhook got %d, want 1", len(hooks))
	}
}

func TestAlerterNotifiersRetryAndSlack(t *testing.T) {
	h := newHarness(t, `
rules:
  - {name: sos, type: panic, events: [SOS]}
  - {name: batt, type: battery, below_pct: 15}
`)
	cfg := h.config()
	cfg.Notify.SlackURL = h.hook.URL() + "/slack/T000/B000/xoxb-secret"
	cfg.Notify.Kinds = []string{KindPanic}
	h.hook.failNext(503, 500) // whichever notifier comes first fails twice
	h.start(cfg)
	h.publish(fix("UNIT-7", 0, 20.59, -100.39, event("SOS"), battery(10)))

	got := h.waitAlerts(2)
	if kindsOf(got) != "battery_low,panic" {
		t.Fatalf("ALERTS = %s", kindsOf(got))
	}
	hooks := h.hook.waitDelivered(t, "/hook/", 1)
	slack := h.hook.waitDelivered(t, "/slack/", 1)
	if len(hooks) != 1 || len(slack) != 1 {
		t.Fatalf("webhook %d, slack %d; want one panic each (battery is not in notify_kinds)", len(hooks), len(slack))
	}
	var text struct{ Text string }
	if err := json.Unmarshal(slack[0].Body, &text); err != nil || !strings.Contains(text.Text, "*panic*") || !strings.Contains(text.Text, "UNIT-7") {
		t.Errorf("slack body %s (%v)", slack[0].Body, err)
	}
	if n := len(h.hook.all()); n != 4 {
		t.Errorf("%d requests, want 4 (two failures retried, then one each)", n)
	}
	if logs := h.logs.String(); strings.Contains(logs, "xoxb-secret") || strings.Contains(logs, "s3cret-token") || !strings.Contains(logs, "will retry") {
		t.Errorf("logs leak a notifier URL or lack the retry:\n%s", logs)
	}
}

func TestAlerterNotifierDropsOnClientError(t *testing.T) {
	h := newHarness(t, "rules:\n  - {name: sos, type: panic, events: [SOS]}\n")
	h.hook.failNext(400)
	h.start(h.config())
	h.publish(fix("U1", 0, 20, -100, event("SOS")), fix("U2", 0, 20, -100, event("SOS")))
	h.waitAlerts(2)
	hooks := h.hook.waitDelivered(t, "/hook/", 1)
	if len(hooks) != 1 || len(h.hook.all()) != 2 {
		t.Errorf("delivered %d of %d requests: a 400 must be dropped, not retried", len(hooks), len(h.hook.all()))
	}
	if !strings.Contains(h.logs.String(), "refused by the target") {
		t.Error("the dropped alert is not logged")
	}
}

// Many devices at once through the consume loop: every alert once.
func TestAlerterConcurrentDevices(t *testing.T) {
	h := newHarness(t, `
rules:`+depotRule+`
  - {name: speed, type: overspeed, limit_kmh: 80, min_duration: 20s}
`)
	h.start(h.config())
	var wg sync.WaitGroup
	for d := 0; d < 8; d++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dev := fmt.Sprintf("D%d", d)
			var fixes []*coord.Coord
			for i, c := range routeNorth(dev, 0, 20.570, 20.610) {
				c.SpeedKmh = new(float64)
				*c.SpeedKmh = 60
				if i >= 10 && i < 20 {
					*c.SpeedKmh = 95
				}
				fixes = append(fixes, c)
			}
			h.publish(fixes...)
		}()
	}
	wg.Wait()
	h.consumed("alerter")
	got := h.waitAlerts(8 * 4)
	count := map[string]int{}
	for _, a := range got {
		count[a.Kind]++
	}
	for _, k := range []string{KindEnter, KindExit, KindOverspeed, KindOverspeedEnd} {
		if count[k] != 8 {
			t.Errorf("%s: %d alerts, want 8 (one per device)", k, count[k])
		}
	}
	if _, err := h.js.Consumer(context.Background(), stream.AlertsStream, "alerter-notify-webhook"); err != nil {
		t.Errorf("notifier consumer: %v", err)
	}
	_ = jetstream.DeliverNewPolicy
}

func TestAlerterImpossibleJumpIsReportedNotUsed(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule+"  - {name: glitch, type: jump, max_speed_kmh: 250}\n")
	h.start(h.config())
	h.publish(
		fix("U1", 0, 20.575, -100.39),
		fix("U1", 60, 20.585, -100.39), // enter (1.1 km in a minute)
		fix("U1", 70, 19.43, -99.13),   // "Mexico City" 10 s later: a glitch
		fix("U1", 80, 20.586, -100.39), // back in the depot
	)
	h.consumed("alerter")
	got := h.waitAlerts(2)
	if kindsOf(got) != "geofence_enter,jump" {
		t.Fatalf("ALERTS = %s, want the enter and the jump, no exit and no second enter", kindsOf(got))
	}
	if got[1].Subject != "ubiqo.alerts.jump.U1" || got[1].Lat != 19.43 {
		t.Errorf("jump alert = %+v", got[1])
	}
	if st := h.state("U1"); st.Last.Lat != 20.586 || len(st.Zones) != 1 {
		t.Errorf("state = %+v", st)
	}
}
