package alert

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

var t0 = time.Date(2025, 3, 3, 8, 0, 0, 0, time.UTC)

// The depot polygon of the tests, in Querétaro: lon -100.40..-100.38,
// lat 20.58..20.60 (about 2.1 km × 2.2 km).
const depotRule = `
  - name: depot
    title: Depot Querétaro
    type: geofence
    polygon: [[[-100.40, 20.58], [-100.38, 20.58], [-100.38, 20.60], [-100.40, 20.60], [-100.40, 20.58]]]
`

func mustRules(t testing.TB, yaml string) *Rules {
	t.Helper()
	rs, err := ParseRules([]byte(yaml), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

type fixOpt func(*coord.Coord)

func speed(v float64) fixOpt   { return func(c *coord.Coord) { c.SpeedKmh = &v } }
func battery(v float64) fixOpt { return func(c *coord.Coord) { c.BatteryPct = &v } }
func event(e string) fixOpt    { return func(c *coord.Coord) { c.Event = e } }
func attr(k string, v any) fixOpt {
	return func(c *coord.Coord) {
		if c.Attrs == nil {
			c.Attrs = map[string]any{}
		}
		c.Attrs[k] = v
	}
}

func fix(dev string, sec int, lat, lon float64, opts ...fixOpt) *coord.Coord {
	ts := t0.Add(time.Duration(sec) * time.Second)
	c := &coord.Coord{V: 1, DeviceID: dev, TS: ts, ReceivedAt: ts, Lat: lat, Lon: lon}
	for _, o := range opts {
		o(c)
	}
	return c
}

// run applies fixes in order and returns the kinds of the alerts raised.
func run(e *Engine, st *State, fixes ...*coord.Coord) []Alert {
	var out []Alert
	for _, f := range fixes {
		out, _ = e.Apply(out, st, f)
	}
	return out
}

func kinds(alerts []Alert) string {
	var k []string
	for _, a := range alerts {
		k = append(k, a.Kind)
	}
	return strings.Join(k, ",")
}

// metresNorth returns the latitude m metres north of lat.
func metresNorth(lat, m float64) float64 { return lat + m/EarthRadiusM/degToRad }

func TestRouteThroughPolygonEntersAndExitsOnce(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:"+depotRule))
	st := NewState("U1")
	// South of the depot, north through it, out the top, on northwards.
	var fixes []*coord.Coord
	for i := 0; i <= 40; i++ {
		fixes = append(fixes, fix("U1", i*10, 20.570+float64(i)*0.001, -100.39))
	}
	alerts := run(e, st, fixes...)
	if got := kinds(alerts); got != "geofence_enter,geofence_exit" {
		t.Fatalf("alerts = %s, want one enter and one exit", got)
	}
	enter, exit := alerts[0], alerts[1]
	if enter.Rule != "depot" || enter.DeviceID != "U1" || enter.Lat < 20.58 || !strings.Contains(enter.Message, "Depot Querétaro") {
		t.Errorf("enter = %+v", enter)
	}
	if exit.Lat <= 20.60 {
		t.Errorf("exit at lat %v, want north of the fence", exit.Lat)
	}
	if enter.ID != AlertID("depot", KindEnter, "U1", enter.TS) || len(enter.ID) != 32 {
		t.Errorf("enter id %q is not the deterministic id", enter.ID)
	}
	if len(st.Zones) != 0 {
		t.Errorf("zones after leaving = %v", st.Zones)
	}
}

func TestHoveringAtTheBoundaryDoesNotFlap(t *testing.T) {
	e := NewEngine(mustRules(t, "hysteresis_m: 25\nrules:"+depotRule))
	st := NewState("U1")
	// The north fence is lat 20.60. Approach from the north, then wander
	// 10 m inside / 10 m outside for ten minutes.
	fixes := []*coord.Coord{fix("U1", 0, metresNorth(20.60, 500), -100.39)}
	for i := 1; i <= 60; i++ {
		off := 10.0
		if i%2 == 1 {
			off = -10
		}
		fixes = append(fixes, fix("U1", i*10, metresNorth(20.60, off), -100.39))
	}
	if got := kinds(run(e, st, fixes...)); got != "geofence_enter" {
		t.Fatalf("hovering within the margin: alerts = %q, want just one enter", got)
	}
	// 24 m out is still within the margin; 30 m out is an exit.
	if got := kinds(run(e, st, fix("U1", 700, metresNorth(20.60, 24), -100.39))); got != "" {
		t.Errorf("24 m outside with a 25 m margin: %q", got)
	}
	if got := kinds(run(e, st, fix("U1", 710, metresNorth(20.60, 30), -100.39))); got != "geofence_exit" {
		t.Errorf("30 m outside: %q, want an exit", got)
	}
	// Hovering outside, never inside, raises nothing.
	st2 := NewState("U2")
	if got := kinds(run(e, st2, fix("U2", 0, metresNorth(20.60, 500), -100.39), fix("U2", 10, metresNorth(20.60, 5), -100.39),
		fix("U2", 20, metresNorth(20.60, 15), -100.39), fix("U2", 30, metresNorth(20.60, 1), -100.39))); got != "" {
		t.Errorf("outside within the margin: %q", got)
	}
}

func TestFirstFixSetsZonesSilently(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:"+depotRule))
	st := NewState("U1")
	if got := kinds(run(e, st, fix("U1", 0, 20.59, -100.39))); got != "" {
		t.Errorf("first fix inside: %q, want no alert", got)
	}
	if got := kinds(run(e, st, fix("U1", 10, 20.62, -100.39))); got != "geofence_exit" {
		t.Errorf("then outside: %q, want exit", got)
	}
}

func TestOutOfOrderFixesDoNotFlipState(t *testing.T) {
	e := NewEngine(mustRules(t, `
rules:`+depotRule+`
  - {name: speed, type: overspeed, limit_kmh: 80}
  - {name: batt, type: battery, below_pct: 20}
`))
	st := NewState("U1")
	run(e, st, fix("U1", 0, 20.57, -100.39), fix("U1", 100, 20.59, -100.39)) // entered at t=100
	// Late fixes from before the enter, outside, speeding, low battery; and
	// a redelivery of the newest one.
	late := []*coord.Coord{
		fix("U1", 50, 20.70, -100.39, speed(150), battery(5)),
		fix("U1", 100, 20.70, -100.39, speed(150), battery(5)),
		fix("U1", 99, 20.70, -100.39),
	}
	for _, f := range late {
		alerts, changed := e.Apply(nil, st, f)
		if len(alerts) != 0 || changed {
			t.Errorf("late fix at %s: alerts %q, changed %v", f.TS.Format(time.TimeOnly), kinds(alerts), changed)
		}
	}
	if len(st.Zones) != 1 || !st.Seen.Equal(t0.Add(100*time.Second)) || st.Last.Lat != 20.59 {
		t.Errorf("state moved: zones %v seen %v last %+v", st.Zones, st.Seen, st.Last)
	}
	// The next in-order fix outside still exits.
	if got := kinds(run(e, st, fix("U1", 110, 20.70, -100.39))); got != "geofence_exit" {
		t.Errorf("next fix: %q", got)
	}
}

func TestOverspeedDurationAndMargin(t *testing.T) {
	e := NewEngine(mustRules(t, `
rules:
  - {name: city, type: overspeed, limit_kmh: 80, min_duration: 30s, clear_margin_kmh: 10}
`))
	tests := []struct {
		name   string
		speeds []float64 // one fix every 10 s
		want   string
	}{
		{"short burst is not alerted", []float64{50, 90, 95, 90, 60}, ""},
		{"30 s above the limit", []float64{50, 90, 95, 90, 85, 60}, "overspeed,overspeed_end"},
		{"dips within the margin keep the episode", []float64{50, 90, 75, 78, 85, 80, 72, 60}, "overspeed,overspeed_end"},
		{"a dip below limit-margin restarts the clock", []float64{50, 90, 95, 65, 90, 95, 50}, ""},
		{"exactly at the limit is not over", []float64{80, 80, 80, 80, 80}, ""},
		{"stays open until below limit-margin", []float64{90, 90, 90, 90, 75, 71, 70.5}, "overspeed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := NewState("U1")
			var fixes []*coord.Coord
			for i, v := range tt.speeds {
				fixes = append(fixes, fix("U1", i*10, 20, -100, speed(v)))
			}
			alerts := run(e, st, fixes...)
			if got := kinds(alerts); got != tt.want {
				t.Fatalf("alerts = %q, want %q", got, tt.want)
			}
			if len(alerts) > 0 {
				d := alerts[0].Details
				if d["duration_s"].(float64) < 30 || d["limit_kmh"] != 80.0 {
					t.Errorf("overspeed details = %v", d)
				}
			}
		})
	}
	// Without speed, nothing changes.
	st := NewState("U2")
	if got := kinds(run(e, st, fix("U2", 0, 20, -100, speed(120)), fix("U2", 40, 20, -100), fix("U2", 50, 20, -100, speed(120)))); got != "overspeed" {
		t.Errorf("fix without speed in the middle: %q", got)
	}
	// min_duration 0: the first fix over the limit alerts.
	e0 := NewEngine(mustRules(t, "rules:\n  - {name: hwy, type: overspeed, limit_kmh: 110, clear_margin_kmh: 0}\n"))
	if got := kinds(run(e0, NewState("U3"), fix("U3", 0, 20, -100, speed(111)), fix("U3", 10, 20, -100, speed(109.9)))); got != "overspeed,overspeed_end" {
		t.Errorf("min_duration 0: %q", got)
	}
}

func TestBatteryMargin(t *testing.T) {
	e := NewEngine(mustRules(t, "rules:\n  - {name: batt, type: battery, below_pct: 15, clear_margin_pct: 5}\n"))
	st := NewState("U1")
	levels := []float64{40, 16, 15, 14.9, 12, 16, 19, 20, 14, 20.1, 25, 14}
	var fixes []*coord.Coord
	for i, b := range levels {
		fixes = append(fixes, fix("U1", i*60, 20, -100, battery(b)))
	}
	alerts := run(e, st, fixes...)
	if got := kinds(alerts); got != "battery_low,battery_ok,battery_low" {
		t.Fatalf("alerts = %q, want low at 14.9, ok at 20.1, low at 14", got)
	}
	if alerts[0].Details["battery_pct"] != 14.9 || alerts[1].Details["battery_pct"] != 20.1 {
		t.Errorf("levels reported: %v, %v", alerts[0].Details, alerts[1].Details)
	}
}

func TestPanic(t *testing.T) {
	e := NewEngine(mustRules(t, `
rules:
  - name: sos
    type: panic
    events: [SOS, panic]
    attrs: {alarm: sos, panic_button: true, "input.4": "*"}
    cooldown: 2m
`))
	tests := []struct {
		name string
		f    *coord.Coord
		want bool
	}{
		{"event, any case", fix("U1", 0, 20, -100, event("sos")), true},
		{"other event", fix("U2", 0, 20, -100, event("ignition_on")), false},
		{"attribute value", fix("U3", 0, 20, -100, attr("Alarm", "SOS")), true},
		{"attribute bool", fix("U4", 0, 20, -100, attr("panic_button", true)), true},
		{"attribute false", fix("U5", 0, 20, -100, attr("panic_button", false)), false},
		{"attribute present", fix("U6", 0, 20, -100, attr("input.4", "1")), true},
		{"attribute present but 0", fix("U7", 0, 20, -100, attr("input.4", "0")), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alerts := run(e, NewState(tt.f.DeviceID), tt.f)
			if (kinds(alerts) == "panic") != tt.want {
				t.Errorf("alerts = %q, want panic: %v", kinds(alerts), tt.want)
			}
		})
	}
	// Cooldown on fix time, and a late (stored and forwarded) panic is
	// alerted once.
	st := NewState("U1")
	got := kinds(run(e, st,
		fix("U1", 0, 20, -100, event("SOS")),
		fix("U1", 30, 20, -100, event("SOS")),  // within 2m: no
		fix("U1", 200, 20, -100, event("SOS")), // after: yes
	))
	if got != "panic,panic" {
		t.Errorf("cooldown: %q", got)
	}
	st = NewState("U9")
	run(e, st, fix("U9", 1000, 20, -100))
	if got := kinds(run(e, st, fix("U9", 500, 20, -100, event("SOS")))); got != "panic" {
		t.Errorf("late panic: %q, want it alerted", got)
	}
	if got := kinds(run(e, st, fix("U9", 500, 20, -100, event("SOS")))); got != "" {
		t.Errorf("the same late panic again: %q, want nothing", got)
	}
}

func TestImpossibleJump(t *testing.T) {
	e := NewEngine(mustRules(t, `
rules:`+depotRule+`
  - {name: glitch, type: jump, max_speed_kmh: 250}
`))
	st := NewState("U1")
	run(e, st, fix("U1", 0, 20.59, -100.39), fix("U1", 10, 20.591, -100.39)) // in the depot
	// A glitch 300 km away, 10 s later: reported, depot state unchanged.
	alerts := run(e, st, fix("U1", 20, 23.0, -100.39))
	if kinds(alerts) != "jump" {
		t.Fatalf("glitch: %q, want jump only (no exit)", kinds(alerts))
	}
	if d := alerts[0].Details; d["implied_speed_kmh"].(float64) < 10000 {
		t.Errorf("jump details = %v", d)
	}
	if len(st.Zones) != 1 || st.Last.Lat != 20.591 {
		t.Errorf("the glitch moved the device: zones %v last %+v", st.Zones, st.Last)
	}
	// Back to normal: no alert at all (the device never left).
	if got := kinds(run(e, st, fix("U1", 30, 20.592, -100.39))); got != "" {
		t.Errorf("after the glitch: %q", got)
	}
	// A real relocation (e.g. towed on a truck with the tracker off): the
	// first far fix is a jump, the next consistent one is accepted.
	got := kinds(run(e, st, fix("U1", 60, 21.5, -100.39), fix("U1", 70, 21.5005, -100.39)))
	if got != "jump,geofence_exit" {
		t.Errorf("relocation: %q, want jump then exit once confirmed", got)
	}
	// Small noise under min_distance_m is never a jump.
	st2 := NewState("U2")
	if got := kinds(run(e, st2, fix("U2", 0, 20.0, -100), fix("U2", 1, 20.005, -100))); got != "" {
		t.Errorf("550 m in 1 s is under min_distance_m 1000: %q", got)
	}
}

func TestOfflineScanAndGap(t *testing.T) {
	e := NewEngine(mustRules(t, `
groups:
  reparto: [U1, "T-*"]
rules:
  - {name: silent, type: offline, after: 10m, groups: [reparto]}
`))
	st := NewState("U1")
	run(e, st, fix("U1", 0, 20, -100))
	if a := e.Scan(nil, st, t0.Add(10*time.Minute)); len(a) != 0 {
		t.Errorf("at exactly after: %q", kinds(a))
	}
	if next := e.NextOffline(st); !next.Equal(t0.Add(10 * time.Minute)) {
		t.Errorf("NextOffline = %v", next)
	}
	a := e.Scan(nil, st, t0.Add(10*time.Minute+time.Second))
	if kinds(a) != "offline" || !a[0].TS.Equal(t0) || a[0].ID != AlertID("silent", KindOffline, "U1", t0) {
		t.Fatalf("scan: %+v", a)
	}
	if a := e.Scan(nil, st, t0.Add(time.Hour)); len(a) != 0 {
		t.Errorf("second scan: %q, want nothing (already offline)", kinds(a))
	}
	if got := kinds(run(e, st, fix("U1", 3600, 20, -100))); got != "online" {
		t.Errorf("back: %q", got)
	}
	// Gap without a scan (alerter down or replay): offline with the same id
	// the scan would have given, then online.
	st2 := NewState("T-7")
	alerts := run(e, st2, fix("T-7", 0, 20, -100), fix("T-7", 3600, 20, -100))
	if kinds(alerts) != "offline,online" || alerts[0].ID != AlertID("silent", KindOffline, "T-7", t0) {
		t.Errorf("gap: %+v", alerts)
	}
	// Devices outside the group are not watched.
	st3 := NewState("X1")
	run(e, st3, fix("X1", 0, 20, -100))
	if a := e.Scan(nil, st3, t0.Add(time.Hour)); len(a) != 0 {
		t.Errorf("device outside the group: %q", kinds(a))
	}
}

func TestDeviceAndGroupFilters(t *testing.T) {
	e := NewEngine(mustRules(t, `
groups:
  pesados: ["TRK-*"]
rules:
  - name: depot
    type: geofence
    devices: [VAN-1]
    groups: [pesados]
    circle: {lat: 20.59, lon: -100.39, radius_m: 200}
`))
	for dev, want := range map[string]string{"VAN-1": "geofence_enter", "TRK-9": "geofence_enter", "VAN-2": ""} {
		if got := kinds(run(e, NewState(dev), fix(dev, 0, 20.6, -100.39), fix(dev, 10, 20.59, -100.39))); got != want {
			t.Errorf("%s: %q, want %q", dev, got, want)
		}
	}
}

func TestParseRulesErrors(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown top key", "rulez: []", "rulez"},
		{"unknown rule key", "rules:\n  - {name: a, type: offline, after: 1m, aftr: 2m}", `"aftr"`},
		{"key of another type", "rules:\n  - {name: a, type: offline, after: 1m, limit_kmh: 3}", `"limit_kmh" is not used by type offline`},
		{"duplicate name", "rules:\n  - {name: a, type: offline, after: 1m}\n  - {name: a, type: offline, after: 2m}", `rule "a": name used twice`},
		{"no name", "rules:\n  - {type: offline, after: 1m}", "rule 1: name is required"},
		{"unknown type", "rules:\n  - {name: a, type: teleport}", `type "teleport"`},
		{"unknown group", "rules:\n  - {name: a, type: offline, after: 1m, groups: [x]}", `group "x" is not defined`},
		{"two shapes", "rules:\n  - {name: a, type: geofence, circle: {lat: 1, lon: 1, radius_m: 5}, polygon: [[[0,0],[1,0],[1,1]]]}", "exactly one of"},
		{"no radius", "rules:\n  - {name: a, type: geofence, circle: {lat: 1, lon: 1}}", "radius_m"},
		{"lat/lon swapped", "rules:\n  - {name: a, type: geofence, polygon: [[[20.5, -100.4],[20.6,-100.4],[20.6,-100.3]]]}", "GeoJSON order is [lon, lat]"},
		{"margin above limit", "rules:\n  - {name: a, type: overspeed, limit_kmh: 10, clear_margin_kmh: 10}", "clear_margin_kmh"},
		{"bad duration", "rules:\n  - {name: a, type: offline, after: soon}", "rule 1"},
		{"zero after", "rules:\n  - {name: a, type: offline}", "after"},
		{"missing geojson", "rules:\n  - {name: a, type: geofence, geojson: nope.geojson}", "nope.geojson"},
		{"bad on", "rules:\n  - {name: a, type: geofence, on: [arrive], circle: {lat: 1, lon: 1, radius_m: 5}}", `"arrive"`},
		{"panic with nothing", "rules:\n  - {name: a, type: panic}", "events or attrs"},
		{"version", "version: 2\nrules: []", "version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRules([]byte(tt.yaml), t.TempDir())
			if err == nil || !errors.Is(err, ErrRules) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want ErrRules mentioning %q", err, tt.want)
			}
		})
	}
}

func TestAlertSubjectAndID(t *testing.T) {
	a := Alert{Kind: KindEnter, DeviceID: "camión 7"}
	if got := a.Subject("ubiqo.alerts"); got != "ubiqo.alerts.geofence_enter.cami=C3=B3n=207" {
		t.Errorf("Subject = %q", got)
	}
	id := AlertID("r", "k", "d", t0)
	for _, other := range []string{
		AlertID("r", "k", "d", t0.Add(time.Nanosecond)), AlertID("rk", "", "d", t0), AlertID("r", "k", "e", t0),
	} {
		if other == id {
			t.Errorf("ids collide: %s", id)
		}
	}
	if AlertID("r", "k", "d", t0.In(time.FixedZone("CST", -6*3600))) != id {
		t.Error("the id depends on the zone the time is written in")
	}
}

func ExampleAlertID() {
	fmt.Println(AlertID("depot", KindEnter, "UNIT-7", time.Date(2025, 3, 3, 8, 0, 0, 0, time.UTC)))
	// Output: a0dcba07925f3f2d6758ad19ea81c4a9
}

func TestEmittedMarksAreBounded(t *testing.T) {
	st := NewState("U1")
	for i := 0; i < maxMarks+10; i++ {
		st.markEmitted(fmt.Sprintf("zone-%03d", i), KindEnter, t0.Add(time.Duration(i)*time.Minute))
	}
	if len(st.Emitted) != maxMarks {
		t.Fatalf("%d marks kept, want %d", len(st.Emitted), maxMarks)
	}
	if want := t0.Add(9 * time.Minute); !st.EmittedFloor.Equal(want) {
		t.Errorf("floor = %v, want the newest dropped mark %v", st.EmittedFloor, want)
	}
	tests := []struct {
		name string
		rule string
		ts   time.Time
		want bool
	}{
		{"kept mark, same time", "zone-050", t0.Add(50 * time.Minute), true},
		{"kept mark, later alert", "zone-050", t0.Add(51 * time.Minute), false},
		{"dropped mark, under the floor", "zone-003", t0.Add(3 * time.Minute), true},
		{"new rule after the floor", "yard", t0.Add(20 * time.Minute), false},
		{"new rule under the floor", "yard", t0.Add(5 * time.Minute), true},
	}
	for _, tt := range tests {
		if got := st.Alerted(tt.rule, KindEnter, tt.ts); got != tt.want {
			t.Errorf("%s: Alerted = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// The example rule file of docs/alerter.md.
func TestExampleRuleFile(t *testing.T) {
	rs, err := LoadRules("testdata/depot-queretaro.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Counts(); got[TypeGeofence] != 3 || got[TypeOverspeed] != 1 || got[TypePanic] != 1 || got[TypeJump] != 1 {
		t.Errorf("rule counts = %v", got)
	}
	e := NewEngine(rs)
	st := NewState("QRO-017")
	alerts := run(e, st,
		fix("QRO-017", 0, 20.6160, -100.4101),  // south of the yard, in the municipality
		fix("QRO-017", 10, 20.6180, -100.4101), // in the yard
		fix("QRO-017", 20, 20.6186, -100.4116), // in the office (a hole), 11 m from its wall: within the margin
		fix("QRO-017", 30, 20.6230, -100.4101), // out of the yard, north
	)
	if got := kinds(alerts); got != "geofence_enter,geofence_exit" || !alerts[1].TS.Equal(t0.Add(30*time.Second)) {
		t.Errorf("depot visit: %q, want enter in the yard and exit north of it (%+v)", got, alerts)
	}
	// Deep in the office (33 m from its walls, margin 25 m) is out of the zone.
	st2 := NewState("QRO-018")
	run(e, st2, fix("QRO-018", 0, 20.6160, -100.4101), fix("QRO-018", 10, 20.6180, -100.4101))
	if got := kinds(run(e, st2, fix("QRO-018", 20, 20.61885, -100.4116))); got != "geofence_exit" {
		t.Errorf("into the middle of the office: %q, want exit (a hole is outside the zone)", got)
	}
	if rs.zones["municipio-qro"].shape.Contains(20.5888, -100.3899) != true || rs.zones["municipio-qro"].shape.Contains(21.0, -100.39) {
		t.Error("the municipality from GeoJSON is wrong")
	}
	// A unit outside the group is not watched by the depot rule.
	if got := kinds(run(e, NewState("VAN-1"), fix("VAN-1", 0, 20.6160, -100.4101), fix("VAN-1", 10, 20.6180, -100.4101))); got != "" {
		t.Errorf("unit outside the reparto group: %q", got)
	}
}
