package alert

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// benchRules is 1,000 circles and 100 octagons (every third with a hole)
// over the Querétaro metro area, plus one rule of every other type.
func benchRules(b *testing.B) *Rules {
	rng := rand.New(rand.NewPCG(1, 2))
	var y strings.Builder
	y.WriteString("rules:\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&y, "  - {name: c%d, type: geofence, circle: {lat: %.6f, lon: %.6f, radius_m: %.0f}}\n",
			i, 20.45+rng.Float64()*0.3, -100.55+rng.Float64()*0.3, 80+rng.Float64()*520)
	}
	ring := func(lat, lon, r float64, n int) string {
		var pts []string
		for k := 0; k < n; k++ {
			a := 2 * math.Pi * float64(k) / float64(n)
			pts = append(pts, fmt.Sprintf("[%.6f, %.6f]", lon+r*math.Cos(a)/104000, lat+r*math.Sin(a)/111195))
		}
		return strings.Join(pts, ", ")
	}
	for i := 0; i < 100; i++ {
		lat, lon, r := 20.45+rng.Float64()*0.3, -100.55+rng.Float64()*0.3, 300+rng.Float64()*1700
		fmt.Fprintf(&y, "  - name: p%d\n    type: geofence\n    polygon:\n      - [%s]\n", i, ring(lat, lon, r, 8))
		if i%3 == 0 {
			fmt.Fprintf(&y, "      - [%s]\n", ring(lat, lon, r/4, 6))
		}
	}
	y.WriteString(`  - {name: speed, type: overspeed, limit_kmh: 90, min_duration: 30s}
  - {name: silent, type: offline, after: 15m}
  - {name: battery, type: battery, below_pct: 15}
  - {name: sos, type: panic, events: [SOS]}
  - {name: glitch, type: jump, max_speed_kmh: 250}
`)
	return mustRules(b, y.String())
}

// BenchmarkEngineApply: one fix through every rule (the engine alone, state
// in memory), 10,000 devices driving around.
func BenchmarkEngineApply(b *testing.B) {
	e := NewEngine(benchRules(b))
	const devices = 10000
	rng := rand.New(rand.NewPCG(3, 4))
	type dev struct{ lat, lon, hdg float64 }
	devs := make([]dev, devices)
	states := make([]*State, devices)
	for i := range devs {
		devs[i] = dev{20.45 + rng.Float64()*0.3, -100.55 + rng.Float64()*0.3, rng.Float64() * 2 * math.Pi}
		states[i] = NewState(fmt.Sprintf("UNIT-%05d", i))
	}
	start := time.Date(2025, 3, 3, 8, 0, 0, 0, time.UTC)
	speed := 60.0
	var out []Alert
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		i := n % devices
		d := &devs[i]
		d.hdg += (rng.Float64() - 0.5) * 0.4
		d.lat += 170 * math.Sin(d.hdg) / 111195
		d.lon += 170 * math.Cos(d.hdg) / 104000
		c := coord.Coord{DeviceID: states[i].DeviceID, TS: start.Add(time.Duration(n/devices+1) * 10 * time.Second), Lat: d.lat, Lon: d.lon, SpeedKmh: &speed}
		out, _ = e.Apply(out[:0], states[i], &c)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fixes/s")
}

func BenchmarkPolygonContains(b *testing.B) {
	p, err := NewPolygon([][][][2]float64{{
		{{-100.40, 20.58}, {-100.38, 20.58}, {-100.38, 20.60}, {-100.40, 20.60}},
		{{-100.395, 20.585}, {-100.395, 20.595}, {-100.385, 20.595}, {-100.385, 20.585}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	for n := 0; n < b.N; n++ {
		p.Contains(20.582, -100.39)
	}
}
