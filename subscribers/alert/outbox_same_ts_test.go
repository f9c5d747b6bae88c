package alert

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

const cityRule = `
  - name: city
    type: geofence
    polygon: [[[-100.50, 20.50], [-100.30, 20.50], [-100.30, 20.70], [-100.50, 20.70], [-100.50, 20.50]]]
`

// nestedZonesOutbox sets up what an earlier process left: U1 inside the
// nested zones depot and city, the two geofence_enter alerts of one fix
// (one subject, one time) in its stored outbox, and published of them the
// first n. ALERTS dedupes within dupWindow. It returns the two alerts.
func nestedZonesOutbox(t *testing.T, h *harness, n int, dupWindow time.Duration) (enterDepot, enterCity Alert) {
	t.Helper()
	ctx := context.Background()
	ac := stream.AlertsConfig(1)
	if dupWindow > 0 {
		ac.Duplicates = dupWindow
	}
	for _, sc := range []jetstream.StreamConfig{ac, stream.DLQConfig(1)} {
		if _, err := h.js.CreateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	kv, err := h.js.CreateOrUpdateKeyValue(ctx, DevicesConfig(1))
	if err != nil {
		t.Fatal(err)
	}
	ts := t0.Add(10 * time.Second)
	enterDepot = newAlert(&h.rules.zones["depot"].rule, KindEnter, "U1", ts, 20.59, -100.39, "U1 entered Depot", nil)
	enterCity = newAlert(&h.rules.zones["city"].rule, KindEnter, "U1", ts, 20.59, -100.39, "U1 entered city", nil)
	st := NewState("U1")
	st.Seen = ts
	st.Last = &Fix{TS: ts, Lat: 20.59, Lon: -100.39}
	st.Zones = []string{"city", "depot"}
	st.Pending = []Alert{enterDepot, enterCity}
	data, _ := json.Marshal(st)
	if _, err := kv.Put(ctx, "U1", data); err != nil {
		t.Fatal(err)
	}
	for _, a := range st.Pending[:n] {
		body, _ := json.Marshal(a)
		m := nats.NewMsg(a.Subject(stream.AlertsSubjectPrefix))
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, a.ID)
		if _, err := h.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	return enterDepot, enterCity
}

// countAlert starts the alerter on h, feeds it fix and returns how many
// times ALERTS holds the alert with id.
func countAlert(t *testing.T, h *harness, sec int, id string) int {
	t.Helper()
	cfg := h.config()
	cfg.ManageStreams = false
	h.start(cfg)
	h.publish(fix("U1", sec, 20.59, -100.39))
	h.consumed("alerter")
	time.Sleep(300 * time.Millisecond)
	n := 0
	var kinds []string
	for _, a := range h.alerts() {
		kinds = append(kinds, a.Rule+"/"+a.Kind)
		if a.ID == id {
			n++
		}
	}
	t.Logf("ALERTS: %v", kinds)
	return n
}

// A process stored both alerts in the outbox, published the first and
// crashed. The next one asks ALERTS which are there: the newest alert on the
// subject at the same time is not proof that the second went (it used to be
// taken as such, and the alert was lost).
func TestOutboxPublishesTheSecondAlertOfAKindAtOneFix(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule+cityRule)
	_, enterCity := nestedZonesOutbox(t, h, 1, 0)
	if n := countAlert(t, h, 10, enterCity.ID); n != 1 { // the unacked fix comes again
		t.Fatalf("the second outbox alert (enter city) stored %d times, want once", n)
	}
}

// Both were published; the device's next fix comes after ALERTS' duplicate
// window (24 h in production, 300 ms here). The newest alert on the subject,
// the second, comes after the first in the outbox: proof that the first
// went, which is not published (and notified) again.
func TestOutboxDoesNotRepublishAnAlertStoredBeforeALaterOne(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule+cityRule)
	enterDepot, _ := nestedZonesOutbox(t, h, 2, 300*time.Millisecond)
	time.Sleep(500 * time.Millisecond)
	if n := countAlert(t, h, 20, enterDepot.ID); n != 1 { // still inside both: no new alert
		t.Fatalf("enter depot stored %d times, want once", n)
	}
}
