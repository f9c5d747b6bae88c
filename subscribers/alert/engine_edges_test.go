package alert

import (
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// R2. Offline uses fix time against the wall clock. A device reporting every
// minute whose fix times lag the receive time by 20 min (device clock slow,
// wrong timezone / DST setting, a phone with a manual clock) is declared
// offline at every scan and back online at its next fix: an
// offline/online pair every minute, for a device that never went silent.
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

// R3. One fix stamped in the future (the bridge accepts up to 10 min ahead)
// moves Seen ahead, and every correctly stamped fix of the next minutes is
// "at or before seen" and dropped as stale: a drive into and out of the
// depot during that window raises nothing.

// R3. One fix stamped in the future (the bridge accepts up to 10 min ahead)
// moves Seen ahead, and every correctly stamped fix of the next minutes is
// "at or before seen" and dropped as stale: a drive into and out of the
// depot during that window raises nothing.
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

// R4. docs/alerter.md: "Not alerted again within cooldown of fix time. A
// panic in a late (stored-and-forwarded) fix is still alerted, once." A
// stored-and-forwarded panic from 09:00 arriving after a live panic at 10:00
// was alerted is an hour outside the cooldown, yet it is dropped: the engine
// skips any panic not after the last alerted one.

// R6. min_duration is meant to filter short bursts, but a pending episode
// is not abandoned until the speed drops below limit - clear_margin: one
// noisy fix at 86 km/h while cruising at 78 km/h (under the 80 limit)
// is alerted 30 s later as "over 80 km/h for 30s (now 78 km/h)".
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

// R7 (minor). docs/alerter.md: "a fix exactly on an edge or a vertex ... is
// inside (tolerance 1e-9°)". On the extreme edges of a polygon (its
// bounding box) the tolerance is not applied: the box test rejects the fix
// first.

// R5. A "hole" that is not inside its outer ring is accepted and, by the
// even-odd rule, the part of it outside the outer ring becomes part of the
// zone: a unit there is "inside" (enter alert) though it is outside the
// outer boundary. An invalid polygon should be an error at start.
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
		t.Logf("rejected: %v", err) // what an operator should get
		return
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

// R6. min_duration is meant to filter short bursts, but a pending episode
// is not abandoned until the speed drops below limit - clear_margin: one
// noisy fix at 86 km/h while cruising at 78 km/h (under the 80 limit)
// is alerted 30 s later as "over 80 km/h for 30s (now 78 km/h)".

// R5b. Two overlapping holes cancel out under the even-odd rule: where they
// overlap the zone is "inside" again, and nothing warns about it.
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
		t.Logf("rejected: %v", err)
		return
	}
	if rs.zones["depot"].shape.Contains(20.59, -100.389) { // inside both holes
		t.Errorf("overlapping holes accepted, and a point inside both holes is inside the zone")
	}
}

// R8. Battery levels: the decoder reads "1.0" and "0.5" as fractions (100 %,
// 50 %). A device that reports its percent with a decimal (…, 9.5, 5.0,
// 1.0) gets battery_ok "battery back at 100%" exactly when it is about to
// die, and no further battery_low.

// R9. docs/alerter.md: "Unknown keys ... are errors at start". Unknown keys
// inside circle: are silently ignored.
func TestUnknownKeyInsideCircleIsAnError(t *testing.T) {
	_, err := ParseRules([]byte("rules:\n  - {name: a, type: geofence, circle: {lat: 20.59, lon: -100.39, radius_m: 300, hysteresis_m: 5}}\n"), t.TempDir())
	if err == nil {
		t.Errorf("circle: {..., hysteresis_m: 5} accepted; the key is ignored")
	}
}

// R10. An explicitly empty device list (the last unit removed from a rule)
// turns the rule into a fleet-wide rule.

// R10. An explicitly empty device list (the last unit removed from a rule)
// turns the rule into a fleet-wide rule.
func TestEmptyDeviceListIsAnError(t *testing.T) {
	rs, err := ParseRules([]byte("rules:\n  - {name: vip, type: geofence, devices: [], circle: {lat: 20.59, lon: -100.39, radius_m: 300}}\n"), t.TempDir())
	if err != nil {
		t.Logf("rejected: %v", err)
		return
	}
	if rs.zones["vip"].match.has("ANY-UNIT") {
		t.Errorf("devices: [] accepted and matches every device")
	}
}

// R11. Per-device state of a rule that disappears from the file is kept:
// a device offline when the rule was removed, back online meanwhile, gets
// a spurious "online" long after, once the rule is back (same for
// battery_low → a spurious battery_ok). Zones are cleaned, these are not.

// R11. Per-device state of a rule that disappears from the file is kept:
// a device offline when the rule was removed, back online meanwhile, gets
// a spurious "online" long after, once the rule is back (same for
// battery_low → a spurious battery_ok). Zones are cleaned, these are not.
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

// R4. docs/alerter.md: "Not alerted again within cooldown of fix time. A
// panic in a late (stored-and-forwarded) fix is still alerted, once." A
// stored-and-forwarded panic from 09:00 arriving after a live panic at 10:00
// was alerted is an hour outside the cooldown, yet it is dropped: the engine
// skips any panic not after the last alerted one.
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

// R5. A "hole" that is not inside its outer ring is accepted and, by the
// even-odd rule, the part of it outside the outer ring becomes part of the
// zone: a unit there is "inside" (enter alert) though it is outside the
// outer boundary. An invalid polygon should be an error at start.

// R7 (minor). docs/alerter.md: "a fix exactly on an edge or a vertex ... is
// inside (tolerance 1e-9°)". On the extreme edges of a polygon (its
// bounding box) the tolerance is not applied: the box test rejects the fix
// first.
func TestEdgeToleranceOnTheBoundingBox(t *testing.T) {
	p := mustPolygon(t, [][][][2]float64{{{{-100.40, 20.58}, {-100.38, 20.58}, {-100.38, 20.60}, {-100.40, 20.60}}}})
	if !p.Contains(20.60+5e-10, -100.39) {
		t.Errorf("5e-10° north of the north edge (within the 1e-9° tolerance) is outside")
	}
	if !p.Contains(20.59, -100.38+5e-10) {
		t.Errorf("5e-10° east of the east edge (within the 1e-9° tolerance) is outside")
	}
}

// R5b. Two overlapping holes cancel out under the even-odd rule: where they
// overlap the zone is "inside" again, and nothing warns about it.
