package alert

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func mustPolygon(t *testing.T, polys [][][][2]float64) *Polygon {
	t.Helper()
	p, err := NewPolygon(polys)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDistanceM(t *testing.T) {
	tests := []struct {
		name                   string
		lat1, lon1, lat2, lon2 float64
		want, tol              float64
	}{
		{"one degree of longitude on the equator", 0, 0, 0, 1, 111195, 1},
		{"across the antimeridian", 0, 179.9, 0, -179.9, 22239, 1},
		{"Querétaro to Mexico City", 20.5888, -100.3899, 19.4326, -99.1332, 180_000, 5_000},
		{"same point", 20.5, -100.4, 20.5, -100.4, 0, 1e-9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := DistanceM(tt.lat1, tt.lon1, tt.lat2, tt.lon2); math.Abs(got-tt.want) > tt.tol {
				t.Errorf("DistanceM = %.1f m, want %.1f ± %.1f", got, tt.want, tt.tol)
			}
		})
	}
}

// A square with a square hole, near Querétaro: outer lon -100.40..-100.38,
// lat 20.58..20.60; hole lon -100.395..-100.385, lat 20.585..20.595.
func depotWithCourtyard(t *testing.T) *Polygon {
	return mustPolygon(t, [][][][2]float64{{
		{{-100.40, 20.58}, {-100.38, 20.58}, {-100.38, 20.60}, {-100.40, 20.60}, {-100.40, 20.58}},
		{{-100.395, 20.585}, {-100.395, 20.595}, {-100.385, 20.595}, {-100.385, 20.585}},
	}})
}

func TestPolygonEdgesVerticesAndHoles(t *testing.T) {
	p := depotWithCourtyard(t)
	tri := mustPolygon(t, [][][][2]float64{{{{0, 0}, {2, 0}, {0, 2}}}})
	tests := []struct {
		name     string
		shape    Shape
		lat, lon float64
		want     bool
	}{
		{"inside, between outer ring and hole", p, 20.582, -100.39, true},
		{"in the hole", p, 20.59, -100.39, false},
		{"outside", p, 20.61, -100.39, false},
		{"on an outer vertex", p, 20.58, -100.40, true},
		{"on the last (closing) vertex", p, 20.60, -100.40, true},
		{"on a horizontal outer edge", p, 20.60, -100.39, true},
		{"on a vertical outer edge", p, 20.59, -100.38, true},
		{"on a hole edge (the fence belongs to the zone)", p, 20.585, -100.39, true},
		{"on a hole vertex", p, 20.595, -100.385, true},
		{"just outside the outer edge", p, 20.60 + 1e-7, -100.39, false},
		{"just inside the hole", p, 20.585 + 1e-7, -100.39, false},
		{"on a diagonal edge", tri, 1, 1, true},
		{"just beyond the diagonal edge", tri, 1.000001, 1.000001, false},
		{"just inside the diagonal edge", tri, 0.999999, 0.999999, true},
		{"level with a vertex, outside (ray through vertex)", tri, 0, -1, false},
		{"level with a vertex, inside", tri, 0.5, 0.5, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.shape.Contains(tt.lat, tt.lon); got != tt.want {
				t.Errorf("Contains(%v, %v) = %v, want %v", tt.lat, tt.lon, got, tt.want)
			}
			if d := tt.shape.DistanceOutsideM(tt.lat, tt.lon); (d == 0) != tt.want {
				t.Errorf("DistanceOutsideM(%v, %v) = %v, want 0 exactly when inside", tt.lat, tt.lon, d)
			}
		})
	}
}

func TestPolygonAcrossTheAntimeridian(t *testing.T) {
	// A box from 179°E to 179°W (2° wide), written with the raw
	// longitudes a GeoJSON file would carry, starting on either side.
	east := mustPolygon(t, [][][][2]float64{{{{179, -1}, {-179, -1}, {-179, 1}, {179, 1}}}})
	west := mustPolygon(t, [][][][2]float64{{{{-179, 1}, {179, 1}, {179, -1}, {-179, -1}}}})
	// A hole straddling the line too.
	holed := mustPolygon(t, [][][][2]float64{{
		{{179, -1}, {-179, -1}, {-179, 1}, {179, 1}},
		{{179.5, -0.5}, {-179.5, -0.5}, {-179.5, 0.5}, {179.5, 0.5}},
	}})
	// A multipolygon: one part in Mexico, one across the line.
	multi := mustPolygon(t, [][][][2]float64{
		{{{-100.40, 20.58}, {-100.38, 20.58}, {-100.38, 20.60}, {-100.40, 20.60}}},
		{{{179, -1}, {-179, -1}, {-179, 1}, {179, 1}}},
	})
	points := []struct {
		name     string
		lat, lon float64
		want     bool
		wantHole bool
	}{
		{"east of the line", 0, 179.9, true, false},
		{"west of the line", 0, -179.9, true, false},
		{"on the line as +180", 0.7, 180, true, true},
		{"on the line as -180", 0.7, -180, true, true},
		{"on the western edge", 0, -179, true, true},
		{"beyond the western edge", 0, -178.9, false, false},
		{"beyond the eastern edge", 0, 178.9, false, false},
		{"far away", 0, 0, false, false},
		{"in the hole across the line", 0, 180, true, false},
	}
	for _, pt := range points {
		t.Run(pt.name, func(t *testing.T) {
			for name, s := range map[string]Shape{"east-first": east, "west-first": west, "multi": multi} {
				if got := s.Contains(pt.lat, pt.lon); got != pt.want {
					t.Errorf("%s: Contains(%v, %v) = %v, want %v", name, pt.lat, pt.lon, got, pt.want)
				}
			}
			if got := holed.Contains(pt.lat, pt.lon); got != pt.wantHole {
				t.Errorf("holed: Contains(%v, %v) = %v, want %v", pt.lat, pt.lon, got, pt.wantHole)
			}
		})
	}
	if !multi.Contains(20.59, -100.39) {
		t.Error("multi: the Mexican part is lost")
	}
	// The box is split at the line, so a grid finds it from both sides.
	b := east.Bounds()
	if !b.Contains(0, 179.5) || !b.Contains(0, -179.5) || b.Contains(0, 0) {
		t.Errorf("bounds across the line = %+v", b)
	}
	// Distance from just beyond the western edge: 0.1° on the equator.
	if d := east.DistanceOutsideM(0, -178.9); math.Abs(d-11119.5) > 5 {
		t.Errorf("DistanceOutsideM across the line = %.1f m, want about 11119.5", d)
	}
}

func TestCircle(t *testing.T) {
	c, err := NewCircle(20.5888, -100.3899, 300)
	if err != nil {
		t.Fatal(err)
	}
	lat300 := 300 / EarthRadiusM / degToRad // 300 m north
	if !c.Contains(20.5888, -100.3899) || !c.Contains(20.5888+lat300*0.999, -100.3899) {
		t.Error("points inside the circle are outside")
	}
	if c.Contains(20.5888+lat300*1.001, -100.3899) {
		t.Error("a point 300.3 m away is inside a 300 m circle")
	}
	if d := c.DistanceOutsideM(20.5888+lat300*1.1, -100.3899); math.Abs(d-30) > 0.1 {
		t.Errorf("DistanceOutsideM 330 m from the centre = %.2f, want 30", d)
	}
	// Across the antimeridian.
	a, _ := NewCircle(0, 179.999, 1000)
	if !a.Contains(0, -179.997) || !a.Bounds().Contains(0, -179.997) {
		t.Error("circle across the antimeridian misses a point 333 m away on the other side")
	}
	for _, bad := range []struct{ lat, lon, r float64 }{{0, 0, 0}, {0, 0, -1}, {91, 0, 10}, {0, 181, 10}, {0, 0, math.NaN()}} {
		if _, err := NewCircle(bad.lat, bad.lon, bad.r); err == nil {
			t.Errorf("NewCircle(%v) accepted", bad)
		}
	}
}

func TestPolygonRejects(t *testing.T) {
	tests := []struct {
		name  string
		polys [][][][2]float64
	}{
		{"two vertices", [][][][2]float64{{{{0, 0}, {1, 1}, {0, 0}}}}},
		{"lat out of range (lat, lon order)", [][][][2]float64{{{{20, -100}, {21, -100}, {21, -99}}}}},
		{"wider than 180°", [][][][2]float64{{{{-100, 0}, {0, 0}, {100, 0}, {100, 1}, {0, 1}, {-100, 1}}}}},
		{"around the pole", [][][][2]float64{{{{0, 80}, {90, 80}, {180, 80}, {-90, 80}}}}},
		{"nothing", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewPolygon(tt.polys); !errors.Is(err, ErrBadPolygon) {
				t.Errorf("want ErrBadPolygon, got %v", err)
			}
		})
	}
}

func TestParseGeoJSON(t *testing.T) {
	fc := `{"type":"FeatureCollection","features":[
	 {"type":"Feature","properties":{"name":"Depot"},"geometry":{"type":"Polygon","coordinates":[
	   [[-100.40,20.58,1850],[-100.38,20.58,1850],[-100.38,20.60,1850],[-100.40,20.60,1850],[-100.40,20.58,1850]],
	   [[-100.395,20.585],[-100.395,20.595],[-100.385,20.595],[-100.385,20.585],[-100.395,20.585]]]}},
	 {"type":"Feature","id":"yard-2","properties":{},"geometry":{"type":"MultiPolygon","coordinates":[
	   [[[-100.30,20.50],[-100.29,20.50],[-100.29,20.51],[-100.30,20.50]]],
	   [[[-100.20,20.50],[-100.19,20.50],[-100.19,20.51],[-100.20,20.50]]]]}},
	 {"type":"Feature","properties":{"name":"gate"},"geometry":{"type":"Point","coordinates":[-100.39,20.58]}}]}`
	all, err := ParseGeoJSON([]byte(fc), "")
	if err != nil || len(all) != 3 {
		t.Fatalf("all features: %d polygons, %v; want 3", len(all), err)
	}
	depot, err := ParseGeoJSON([]byte(fc), "depot")
	if err != nil || len(depot) != 1 || len(depot[0]) != 2 {
		t.Fatalf("feature depot: %v %v", depot, err)
	}
	p := mustPolygon(t, depot)
	if !p.Contains(20.582, -100.39) || p.Contains(20.59, -100.39) {
		t.Error("depot from GeoJSON: hole not respected")
	}
	yard, err := ParseGeoJSON([]byte(fc), "yard-2")
	if err != nil || len(yard) != 2 {
		t.Fatalf("feature by id: %v %v", yard, err)
	}
	if _, err := ParseGeoJSON([]byte(fc), "nope"); !errors.Is(err, ErrNoPolygon) {
		t.Errorf("missing feature: %v", err)
	}
	if _, err := ParseGeoJSON([]byte(`{"type":"Point","coordinates":[1,2]}`), ""); !errors.Is(err, ErrNoPolygon) {
		t.Errorf("point only: %v", err)
	}
	if _, err := ParseGeoJSON([]byte(`{"type":"Polygon","coordinates":[[[1],[2,3],[4,5]]]}`), ""); err == nil {
		t.Error("a one-number position was accepted")
	}
	// Bare geometries.
	if g, err := ParseGeoJSON([]byte(`{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,0]]]}`), ""); err != nil || len(g) != 1 {
		t.Errorf("bare Polygon: %v %v", g, err)
	}
}

// The grid must find exactly the zones a scan of every bounding box finds.
func TestGridIndexMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var boxes []BBox
	for i := 0; i < 1000; i++ {
		c, err := NewCircle(20+rng.Float64(), -101+rng.Float64(), 50+rng.Float64()*2000)
		if err != nil {
			t.Fatal(err)
		}
		boxes = append(boxes, c.Bounds())
	}
	// A few odd ones: huge, and across the antimeridian.
	big := mustPolygon(t, [][][][2]float64{{{{-118, 14}, {-86, 14}, {-86, 33}, {-118, 33}}}})
	am := mustPolygon(t, [][][][2]float64{{{{179, -1}, {-179, -1}, {-179, 1}, {179, 1}}}})
	boxes = append(boxes, big.Bounds(), am.Bounds())
	g := newGridIndex(boxes)
	if len(g.wide) == 0 {
		t.Error("the country-sized zone should be in the wide list")
	}
	check := func(lat, lon float64) {
		got := g.query(nil, lat, lon)
		slices.Sort(got)
		var want []int32
		for i, b := range boxes {
			if b.Contains(lat, lon) {
				want = append(want, int32(i))
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("query(%v, %v) = %v, want %v", lat, lon, got, want)
		}
	}
	for i := 0; i < 20000; i++ {
		check(19.9+rng.Float64()*1.2, -101.1+rng.Float64()*1.2)
	}
	check(0, 179.5)
	check(0, -179.5)
	check(0, 180)
}

func TestLoadRulesGeoJSONRelativePath(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "zones.geojson"), []byte(`{"type":"Feature","properties":{"name":"Depot"},
	  "geometry":{"type":"Polygon","coordinates":[[[-100.40,20.58],[-100.38,20.58],[-100.38,20.60],[-100.40,20.60],[-100.40,20.58]]]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	rules := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rules, []byte("rules:\n  - {name: depot, type: geofence, geojson: zones.geojson, feature: Depot}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rs, err := LoadRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	if !rs.zones["depot"].shape.Contains(20.59, -100.39) {
		t.Error("zone from a GeoJSON file next to the rule file does not contain its centre")
	}
}
