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

// A fix inside two nested zones raised two geofence_enter alerts on one
// subject at one time; both were published (no crash). The stored state
// keeps them in Pending until the device's next write. The alerter restarts;
// the device's next fix comes after ALERTS' duplicate window (24h in
// production, shortened here). inAlerts now takes "the newest alert on the
// subject has the same time and another id" as "not published", so the
// first alert is published again and stored twice (and notified twice).
func TestOutboxDoesNotRepublishAnAlertStoredBeforeALaterOne(t *testing.T) {
	const cityRule = `
  - name: city
    type: geofence
    polygon: [[[-100.50, 20.50], [-100.30, 20.50], [-100.30, 20.70], [-100.50, 20.70], [-100.50, 20.50]]]
`
	h := newHarness(t, "rules:"+depotRule+cityRule)
	ctx := context.Background()
	ac := stream.AlertsConfig(1)
	ac.Duplicates = 300 * time.Millisecond // stands for the 24h window having passed
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
	enterDepot := newAlert(&h.rules.zones["depot"].rule, KindEnter, "U1", ts, 20.59, -100.39, "U1 entered Depot", nil)
	enterCity := newAlert(&h.rules.zones["city"].rule, KindEnter, "U1", ts, 20.59, -100.39, "U1 entered city", nil)
	st := NewState("U1")
	st.Seen = ts
	st.Last = &Fix{TS: ts, Lat: 20.59, Lon: -100.39}
	st.Zones = []string{"city", "depot"}
	st.Pending = []Alert{enterDepot, enterCity}
	data, _ := json.Marshal(st)
	if _, err := kv.Put(ctx, "U1", data); err != nil {
		t.Fatal(err)
	}
	// The previous process published both, in Pending order.
	for _, a := range st.Pending {
		body, _ := json.Marshal(a)
		m := nats.NewMsg(a.Subject(stream.AlertsSubjectPrefix))
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, a.ID)
		if _, err := h.js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)

	cfg := h.config()
	cfg.ManageStreams = false
	h.start(cfg)
	h.publish(fix("U1", 20, 20.59, -100.39)) // still inside both: no new alert
	h.consumed("alerter")
	time.Sleep(300 * time.Millisecond)
	n := 0
	var ids []string
	for _, a := range h.alerts() {
		ids = append(ids, a.Rule+"/"+a.Kind)
		if a.ID == enterDepot.ID {
			n++
		}
	}
	t.Logf("ALERTS: %v", ids)
	if n != 1 {
		t.Fatalf("enter depot stored %d times, want once", n)
	}
}
