package alert

import (
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// A device reporting every minute whose fix times lag its receive times by
// 20 min (a slow clock, a wrong zone) is not silent: offline counts silence
// from the bridge's receive time, so no offline/online pair every minute.
func TestOfflineCountsSilenceInReceiveTimes(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:\n  - {name: silent, type: offline, after: 15m}\n"))
	st := NewState("U1")
	var alerts []Alert
	for i := 0; i < 10; i++ {
		now := t0.Add(time.Duration(i) * time.Minute)
		c := &coord.Coord{V: 1, DeviceID: "U1", TS: now.Add(-20 * time.Minute), ReceivedAt: now, Lat: 20.59, Lon: -100.39}
		alerts, _ = e.Apply(alerts, st, c)
		alerts = e.Scan(alerts, st, now.Add(30*time.Second)) // the 30 s scan
	}
	if len(alerts) != 0 {
		t.Errorf("device received every minute: %d alerts (%s), want none", len(alerts), kinds(alerts))
	}
}

// One fix stamped 9 min ahead (a device clock set wrong) counts, for
// ordering, at its receive time: the correctly stamped fixes after it still
// raise the depot enter/exit and the overspeed.
func TestFutureStampedFixDoesNotSwallowTheNextFixes(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:"+depotRule+"  - {name: speed, type: overspeed, limit_kmh: 80}\n"))
	st := NewState("U1")
	run(e, st, fix("U1", 0, 20.57, -100.39)) // south of the depot
	glitch := fix("U1", 10, 20.571, -100.39)
	glitch.TS = glitch.ReceivedAt.Add(9 * time.Minute) // device clock glitch, +9 min
	run(e, st, glitch)
	// Real fixes, correct clock: in the depot, speeding, then out north.
	alerts := run(e, st,
		fix("U1", 60, 20.59, -100.39),
		fix("U1", 120, 20.595, -100.39, speed(120)),
		fix("U1", 180, 20.62, -100.39),
	)
	if got := kinds(alerts); got != "geofence_enter,overspeed,geofence_exit" {
		t.Errorf("after a +9 min fix: alerts %q, want geofence_enter,overspeed,geofence_exit", got)
	}
}

// One fix over the limit, then cruising just under it: min_duration filters
// the burst; overspeed is raised only on a fix that is itself over.
func TestOverspeedSpikeThenCruisingUnderTheLimitIsNoAlert(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:\n  - {name: city, type: overspeed, limit_kmh: 80, min_duration: 30s}\n"))
	var fixes []*coord.Coord
	for i, v := range []float64{78, 86, 78, 78, 78, 78} { // one fix every 10 s
		fixes = append(fixes, fix("U1", i*10, 20, -100, speed(v)))
	}
	alerts := run(e, NewState("U1"), fixes...)
	if len(alerts) > 0 {
		t.Errorf("one fix over the limit, then under it: %q (%s)", kinds(alerts), alerts[0].Message)
	}
}

// A hole drawn across the outer ring adds no area: a point is in the zone
// when inside the outer ring and in no hole.
func TestHoleCrossingTheOuterRingAddsNoArea(t *testing.T) {
	const y = `
rules:
  - name: depot
    type: geofence
    polygon:
      - [[-100.40, 20.58], [-100.38, 20.58], [-100.38, 20.60], [-100.40, 20.60]]
      - [[-100.385, 20.585], [-100.37, 20.585], [-100.37, 20.595], [-100.385, 20.595]]
`
	rs, err := ParseRules([]byte(y), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := rs.zones["depot"].shape
	// East of the outer ring (lon -100.375 > -100.38), inside the "hole".
	if p.Contains(20.59, -100.375) {
		t.Errorf("hole crossing the outer ring accepted, and a point outside the outer boundary is inside the zone")
	}
	e := NewEngine(rs)
	if got := kinds(run(e, NewState("U1"), fix("U1", 0, 20.59, -100.36), fix("U1", 10, 20.59, -100.375))); got != "" {
		t.Errorf("unit 500 m east of the depot's outer boundary: %q", got)
	}
}

// Two overlapping holes do not cancel: a point in both is out of the zone.
func TestOverlappingHolesDoNotCancel(t *testing.T) {
	const y = `
rules:
  - name: depot
    type: geofence
    polygon:
      - [[-100.40, 20.58], [-100.38, 20.58], [-100.38, 20.60], [-100.40, 20.60]]
      - [[-100.395, 20.585], [-100.385, 20.585], [-100.385, 20.595], [-100.395, 20.595]]
      - [[-100.392, 20.588], [-100.383, 20.588], [-100.383, 20.592], [-100.392, 20.592]]
`
	rs, err := ParseRules([]byte(y), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if rs.zones["depot"].shape.Contains(20.59, -100.389) { // inside both holes
		t.Errorf("overlapping holes accepted, and a point inside both holes is inside the zone")
	}
}

// Unknown keys are errors at start, inside circle: too.
func TestUnknownKeyInsideCircleIsAnError(t *testing.T) {
	_, err := ParseRules([]byte("rules:\n  - {name: a, type: geofence, circle: {lat: 20.59, lon: -100.39, radius_m: 300, hysteresis_m: 5}}\n"), t.TempDir())
	if err == nil {
		t.Errorf("circle: {..., hysteresis_m: 5} accepted; the key is ignored")
	}
}

// devices: [] (the last unit removed from a rule) is an error, not a rule
// for every device.
func TestEmptyDeviceListIsAnError(t *testing.T) {
	_, err := ParseRules([]byte("rules:\n  - {name: vip, type: geofence, devices: [], circle: {lat: 20.59, lon: -100.39, radius_m: 300}}\n"), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "devices: []") {
		t.Errorf("devices: [] gave %v, want an error naming it", err)
	}
}

// Open episodes of a rule removed from the file are forgotten, so its
// return raises no false online or battery_ok.
func TestRemovedRuleLeavesNoOpenState(t *testing.T) {
	with := NewEngine(mustRules(t, "rules:\n  - {name: silent, type: offline, after: 15m}\n  - {name: batt, type: battery, below_pct: 15}\n"))
	without := NewEngine(mustRules(t, "rules:\n  - {name: other, type: panic, events: [SOS]}\n"))
	st := NewState("U1")
	run(with, st, fix("U1", 0, 20.59, -100.39, battery(10))) // battery_low open
	with.Scan(nil, st, t0.Add(time.Hour))                    // offline open
	// Restart without those rules: the unit comes back, charges, drives for days.
	run(without, st, fix("U1", 4000, 20.59, -100.39, battery(90)), fix("U1", 90000, 20.59, -100.39, battery(95)))
	// Restart with the rules again: a normal fix 1 min later.
	if got := kinds(run(with, st, fix("U1", 90060, 20.59, -100.39, battery(95)))); got != "" {
		t.Errorf("first fix after the rules are back: %q, want nothing (the unit was neither offline nor low)", got)
	}
}

// A stored-and-forwarded panic an hour before the last alerted one is an
// incident of its own: alerted.
func TestLatePanicBeforeTheLastAlertedOneIsAlerted(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:\n  - {name: sos, type: panic, events: [SOS], cooldown: 1m}\n"))
	st := NewState("U1")
	if got := kinds(run(e, st, fix("U1", 3600, 20.59, -100.39, event("SOS")))); got != "panic" {
		t.Fatalf("live panic: %q", got)
	}
	// The buffer of the time without coverage arrives: a panic one hour earlier.
	if got := kinds(run(e, st, fix("U1", 0, 20.50, -100.30, event("SOS")))); got != "panic" {
		t.Errorf("stored-and-forwarded panic 1 h before the last one: %q, want panic", got)
	}
}

// The 1e-9° edge tolerance holds on a polygon's outermost edges too.
func TestEdgeToleranceOnTheBoundingBox(t *testing.T) {
	p := mustPolygon(t, [][][][2]float64{{{{-100.40, 20.58}, {-100.38, 20.58}, {-100.38, 20.60}, {-100.40, 20.60}}}})
	if !p.Contains(20.60+5e-10, -100.39) {
		t.Errorf("5e-10° north of the north edge (within the 1e-9° tolerance) is outside")
	}
	if !p.Contains(20.59, -100.38+5e-10) {
		t.Errorf("5e-10° east of the east edge (within the 1e-9° tolerance) is outside")
	}
}
