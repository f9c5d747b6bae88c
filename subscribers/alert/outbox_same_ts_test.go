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

// A fix inside two nested zones raises two geofence_enter alerts with the
// same subject and time. A process stored both in the outbox, published the
// first and crashed. The next one reads the outbox and asks ALERTS which are
// there: the newest alert on the subject at the same time is not proof that
// the second went (it used to be taken as such, and the alert was lost).
func TestOutboxPublishesTheSecondAlertOfAKindAtOneFix(t *testing.T) {
	const cityRule = `
  - name: city
    type: geofence
    polygon: [[[-100.50, 20.50], [-100.30, 20.50], [-100.30, 20.70], [-100.50, 20.70], [-100.50, 20.50]]]
`
	h := newHarness(t, "rules:"+depotRule+cityRule)
	ctx := context.Background()
	for _, sc := range []jetstream.StreamConfig{stream.AlertsConfig(1), stream.DLQConfig(1)} {
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
	// The crashed process got the first one stored.
	body, _ := json.Marshal(enterDepot)
	m := nats.NewMsg(enterDepot.Subject(stream.AlertsSubjectPrefix))
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, enterDepot.ID)
	if _, err := h.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}

	cfg := h.config()
	cfg.ManageStreams = false
	h.start(cfg)
	h.publish(fix("U1", 10, 20.59, -100.39)) // the unacked fix comes again
	h.consumed("alerter")
	time.Sleep(300 * time.Millisecond)
	var ids []string
	found := false
	for _, a := range h.alerts() {
		ids = append(ids, a.Rule+"/"+a.Kind)
		if a.ID == enterCity.ID {
			found = true
		}
	}
	t.Logf("ALERTS: %v", ids)
	if !found {
		t.Fatalf("the second outbox alert (enter city) was never published")
	}
}
