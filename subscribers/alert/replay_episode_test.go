package alert

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// A replay whose range starts inside a battery-low and an overspeed episode
// the live alerter announced and still holds open publishes (and notifies)
// neither again.
func TestReplayStartingMidEpisodeDoesNotAlertAgain(t *testing.T) {
	h := newHarness(t, `
rules:
  - {name: batt, type: battery, below_pct: 15}
  - {name: speed, type: overspeed, limit_kmh: 80}
`)
	h.start(h.config())
	// Live: battery goes low and the unit starts speeding; both alerted.
	h.publish(
		fix("U1", 0, 20.59, -100.39, battery(50), speed(50)),
		fix("U1", 60, 20.59, -100.39, battery(10), speed(100)),
	)
	h.waitAlerts(2)
	h.hook.waitDelivered(t, "/hook/", 2)
	h.consumed("alerter")

	time.Sleep(50 * time.Millisecond)
	since := time.Now() // the replay range starts here (stream store time)
	time.Sleep(50 * time.Millisecond)
	// Same episodes go on: still low, still speeding. Live: nothing new.
	h.publish(
		fix("U1", 120, 20.59, -100.39, battery(9), speed(100)),
		fix("U1", 180, 20.59, -100.39, battery(8), speed(100)),
	)
	h.consumed("alerter")
	if got := h.waitAlerts(2); kindsOf(got) != "overspeed,battery_low" {
		t.Fatalf("live ALERTS = %s", kindsOf(got))
	}

	rep, err := Replay(context.Background(), h.js, h.config(), since, zerolog.New(h.logs))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	got := h.alerts()
	t.Logf("replay report %+v; ALERTS now %s", rep, kindsOf(got))
	// Give the live notifier time to deliver whatever reached ALERTS.
	deadline := time.Now().Add(3 * time.Second)
	for len(h.hook.delivered("/hook/")) < len(got) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("webhook deliveries: %d", len(h.hook.delivered("/hook/")))
	if len(got) != 2 || rep.Published != 0 {
		t.Errorf("a replay of a range inside already-alerted episodes published %d new alerts (%s); want none: docs/alerter.md 'a replay of the same hour notifies nothing a second time'",
			rep.Published, kindsOf(got[2:]))
	}
}
