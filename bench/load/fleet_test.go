package load

import (
	"encoding/json"
	"math"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// fakeClock is a wall clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newTestFleet(t *testing.T, c FleetConfig) (*Fleet, *fakeClock) {
	t.Helper()
	f, err := NewFleet(c)
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2025, 3, 14, 15, 9, 26, 535_000_000, time.UTC)}
	f.now = clock.now
	return f, clock
}

// Drive a fleet on a fake clock for 200 s, one fix every 50 ms of wall time,
// and check the model: per-device times strictly increase, speed, heading,
// battery and position stay plausible, panics come at about their rate, and
// the flaky devices, only they, go silent.
func TestFleetModel(t *testing.T) {
	const n = 20
	f, clock := newTestFleet(t, FleetConfig{Devices: n, PanicRate: 0.05, SilentFraction: 0.5, SilentFor: 10 * time.Second, Seed: 7})
	last := map[string]Fix{}
	maxGap := map[string]time.Duration{}
	var panics, fixes, moving, aligned int
	lowBattery := map[string]bool{}
	for i := 0; i < 4000; i++ {
		clock.t = clock.t.Add(50 * time.Millisecond)
		fx := f.Next()
		fixes++
		if prev, ok := last[fx.Device]; ok {
			if !fx.Time.After(prev.Time) {
				t.Fatalf("device %s: fix time %s not after %s", fx.Device, fx.Time, prev.Time)
			}
			maxGap[fx.Device] = max(maxGap[fx.Device], fx.Time.Sub(prev.Time))
			if prev.SpeedKmh > 15 && fx.SpeedKmh > 15 {
				moving++
				if angleDiff(bearing(prev, fx), fx.HeadingDeg) < 15 {
					aligned++
				}
			}
		}
		last[fx.Device] = fx
		if fx.Time.Sub(clock.t) > DefaultMaxLead {
			t.Fatalf("device %s: fix time %s runs %s ahead of the clock", fx.Device, fx.Time, fx.Time.Sub(clock.t))
		}
		if fx.SpeedKmh < 0 || fx.SpeedKmh > 110.01 {
			t.Fatalf("speed %v km/h out of [0, 110]", fx.SpeedKmh)
		}
		if fx.HeadingDeg < 0 || fx.HeadingDeg >= 360 {
			t.Fatalf("heading %v out of [0, 360)", fx.HeadingDeg)
		}
		if fx.BatteryPct < 1 || fx.BatteryPct > 100 {
			t.Fatalf("battery %v out of [1, 100]", fx.BatteryPct)
		}
		if fx.BatteryPct < 20 {
			lowBattery[fx.Device] = true
		}
		if d := distanceM(DefaultCenterLat, DefaultCenterLon, fx.Lat, fx.Lon); d > 11_000 {
			t.Fatalf("device %s is %.0f m from the centre", fx.Device, d)
		}
		if fx.Event == "panic" {
			panics++
		}
	}
	if len(last) != n {
		t.Errorf("%d devices reported, want %d", len(last), n)
	}
	if panics < fixes/40 || panics > fixes/10 {
		t.Errorf("%d panics in %d fixes, want about 5%%", panics, fixes)
	}
	if moving < 100 || float64(aligned) < 0.8*float64(moving) {
		t.Errorf("heading matches the direction of motion in %d of %d moving pairs", aligned, moving)
	}
	if len(lowBattery) == 0 {
		t.Error("no device reported a battery under 20%")
	}
	for _, d := range f.devices {
		gap := maxGap[d.id]
		switch {
		case d.flaky && gap < 4*time.Second:
			t.Errorf("flaky device %s never went silent (longest gap %s)", d.id, gap)
		case !d.flaky && gap > 2*time.Second:
			t.Errorf("device %s went silent for %s but is not flaky", d.id, gap)
		}
	}
}

// A device asked for fixes faster than its time resolution allows runs
// ahead of the clock, up to MaxLead; then the fleet serves other devices.
func TestFleetMaxLead(t *testing.T) {
	f, clock := newTestFleet(t, FleetConfig{Devices: 50, Seed: 3, MaxLead: 5 * time.Second})
	seen := map[string]time.Time{}
	for i := 0; i < 5000; i++ { // the clock stands still
		fx := f.Next()
		if prev, ok := seen[fx.Device]; ok && !fx.Time.After(prev) {
			t.Fatalf("device %s: %s not after %s", fx.Device, fx.Time, prev)
		}
		seen[fx.Device] = fx.Time
		if ahead := fx.Time.Sub(clock.t); ahead > 5*time.Second+time.Second {
			t.Fatalf("fix %s ahead of the clock (shape %s)", fx.Time.Sub(clock.t), fx.Shape())
		}
	}
}

func TestFleetDeterministicIDs(t *testing.T) {
	a, _ := newTestFleet(t, FleetConfig{Devices: 300, Seed: 42})
	b, _ := newTestFleet(t, FleetConfig{Devices: 300, Seed: 42})
	ids := a.DeviceIDs()
	if strings.Join(ids, "|") != strings.Join(b.DeviceIDs(), "|") {
		t.Fatal("same seed, different device ids")
	}
	named := 0
	for _, id := range ids {
		if len(id) == 15 && allDigits(id) {
			if luhnDigit([]byte(id[:14])) != id[14] {
				t.Errorf("IMEI %s fails the Luhn check", id)
			}
			continue
		}
		named++
		if !strings.ContainsAny(id, " áéíóúñÑ") {
			t.Errorf("named id %q has neither a space nor an accent", id)
		}
	}
	if named != 6 {
		t.Errorf("%d named ids in 300, want 6", named)
	}
}

// contractNames are the field names of DESIGN.md "Ingest contract",
// normalised (lower case, no _ or -), with the nested container names.
var contractNames = map[string]bool{}

func init() {
	for _, n := range strings.Fields(`device_id deviceId deviceid id imei uniqueId dispositivo
		lat latitude latitud lon lng long longitude longitud
		timestamp ts time date fecha fechaHora datetime fix_time
		speed velocidad heading bearing course rumbo alt altitude accuracy batt battery bateria event
		coords location position`) {
		contractNames[strings.ToLower(strings.ReplaceAll(n, "_", ""))] = true
	}
}

// Every shape, as an object, in a batch and as a query, uses only field
// names of the ingest contract and decodes, with the bridge's decoder, to
// the values of the fix.
func TestPayloadsDecode(t *testing.T) {
	zone := time.FixedZone("CST", -6*3600)
	f, clock := newTestFleet(t, FleetConfig{Devices: 400, Seed: 11, PanicRate: 0.2, Location: zone})
	dec, err := coord.NewDecoder(coord.Options{Location: zone})
	if err != nil {
		t.Fatal(err)
	}
	shapesSeen := map[string]int{}
	var batch []byte
	var fixes []Fix
	batch = append(batch, '[')
	for i := 0; i < 1200; i++ {
		clock.t = clock.t.Add(7 * time.Millisecond)
		fx := f.Next()
		shapesSeen[fx.Shape()]++
		obj := fx.AppendJSON(nil)

		var m map[string]any
		if err := json.Unmarshal(obj, &m); err != nil {
			t.Fatalf("shape %s: not JSON: %v\n%s", fx.Shape(), err, obj)
		}
		checkNames(t, fx.Shape(), m)

		b, err := dec.Decode("application/json", obj, nil, clock.t)
		if err != nil || len(b.Coords) != 1 {
			t.Fatalf("shape %s: %s: decode: %v %+v", fx.Shape(), obj, err, b)
		}
		checkCoord(t, fx, &b.Coords[0], string(obj))

		q := fx.AppendQuery(nil)
		v, err := url.ParseQuery(string(q))
		if err != nil {
			t.Fatalf("shape %s: query %s: %v", fx.Shape(), q, err)
		}
		b, err = dec.Decode("", nil, v, clock.t)
		if err != nil || len(b.Coords) != 1 {
			t.Fatalf("shape %s: query %s: decode: %v %+v", fx.Shape(), q, err, b)
		}
		checkCoord(t, fx, &b.Coords[0], string(q))

		if i < 100 {
			if i > 0 {
				batch = append(batch, ',')
			}
			batch = fx.AppendJSON(batch)
			fixes = append(fixes, fx)
		}
	}
	batch = append(batch, ']')
	b, err := dec.Decode("application/json", batch, nil, clock.t)
	if err != nil || len(b.Coords) != len(fixes) || len(b.Rejected) != 0 {
		t.Fatalf("batch: %v, %d coordinates, rejected %+v", err, len(b.Coords), b.Rejected)
	}
	for i := range fixes {
		checkCoord(t, fixes[i], &b.Coords[i], "batch")
	}
	for _, s := range shapes {
		if shapesSeen[s.name] == 0 {
			t.Errorf("shape %s never used", s.name)
		}
	}
}

func checkNames(t *testing.T, shape string, m map[string]any) {
	t.Helper()
	for k, v := range m {
		if !contractNames[strings.ToLower(strings.ReplaceAll(k, "_", ""))] {
			t.Errorf("shape %s: field %q is not a name of the ingest contract", shape, k)
		}
		if sub, ok := v.(map[string]any); ok {
			checkNames(t, shape, sub)
		}
	}
}

func checkCoord(t *testing.T, fx Fix, c *coord.Coord, src string) {
	t.Helper()
	near := func(p *float64, want, tol float64) bool { return p != nil && math.Abs(*p-want) <= tol }
	switch {
	case c.DeviceID != fx.Device:
		t.Errorf("%s: device %q, want %q", src, c.DeviceID, fx.Device)
	case !c.TS.Equal(fx.Time) || c.TSMissing:
		t.Errorf("%s: ts %s, want %s", src, c.TS, fx.Time)
	case math.Abs(c.Lat-fx.Lat) > 1e-6 || math.Abs(c.Lon-fx.Lon) > 1e-6:
		t.Errorf("%s: %v,%v want %v,%v", src, c.Lat, c.Lon, fx.Lat, fx.Lon)
	case !near(c.SpeedKmh, fx.SpeedKmh, 0.06):
		t.Errorf("%s: speed %v, want %v", src, c.SpeedKmh, fx.SpeedKmh)
	case !near(c.HeadingDeg, fx.HeadingDeg, 0.06):
		t.Errorf("%s: heading %v, want %v", src, c.HeadingDeg, fx.HeadingDeg)
	case !near(c.BatteryPct, fx.BatteryPct, 0.51):
		t.Errorf("%s: battery %v, want %v", src, c.BatteryPct, fx.BatteryPct)
	case c.Event != fx.Event:
		t.Errorf("%s: event %q, want %q", src, c.Event, fx.Event)
	case len(c.Attrs) != 0:
		t.Errorf("%s: fields the decoder did not map: %v", src, c.Attrs)
	}
}

func TestFleetNextDoesNotAllocate(t *testing.T) {
	f, _ := newTestFleet(t, FleetConfig{Devices: 100, PanicRate: 0.01, SilentFraction: 0.1})
	f.now = time.Now
	buf := make([]byte, 0, 4096)
	allocs := testing.AllocsPerRun(1000, func() {
		fx := f.Next()
		buf = fx.AppendJSON(buf[:0])
		buf = fx.AppendQuery(buf[:0])
	})
	if allocs > 0 {
		t.Errorf("Next + AppendJSON + AppendQuery: %v allocations, want 0", allocs)
	}
}

func TestNewFleetValidates(t *testing.T) {
	for _, c := range []FleetConfig{
		{Devices: -1},
		{PanicRate: 2},
		{SilentFraction: 1},
		{RadiusKm: -3},
		{CenterLat: 95, CenterLon: 1},
	} {
		if _, err := NewFleet(c); err == nil {
			t.Errorf("NewFleet(%+v): want an error", c)
		}
	}
}

func bearing(a, b Fix) float64 {
	north := (b.Lat - a.Lat) * mPerDegLat
	east := (b.Lon - a.Lon) * mPerDegLat * math.Cos(a.Lat*math.Pi/180)
	return math.Mod(math.Atan2(east, north)*180/math.Pi+360, 360)
}

func angleDiff(a, b float64) float64 { return math.Abs(math.Remainder(a-b, 360)) }

func distanceM(lat1, lon1, lat2, lon2 float64) float64 {
	north := (lat2 - lat1) * mPerDegLat
	east := (lon2 - lon1) * mPerDegLat * math.Cos(lat1*math.Pi/180)
	return math.Hypot(north, east)
}
