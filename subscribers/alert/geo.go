package alert

import (
	"errors"
	"fmt"
	"math"
)

// The geometry of geofences. Everything here is pure and allocation-free on
// the query path.
//
// Conventions:
//   - Positions are degrees, latitude in [-90, 90], longitude in [-180, 180].
//   - Distances are metres on a sphere of EarthRadiusM (haversine).
//   - Polygon edges are straight lines in longitude/latitude (plate carrée),
//     not great circles; for zones of city or state size the difference is
//     far below GPS error.
//   - A point exactly on an edge or a vertex of any ring (the outer ring or a
//     hole) counts as inside the zone: the fence line belongs to the zone.
//     "Exactly" means within edgeEpsilon degrees (about 0.1 mm).
//   - A polygon may cross the antimeridian: its longitudes are unwrapped at
//     load time relative to its first vertex (each vertex is moved by ±360 so
//     that no edge spans more than 180°), and a query longitude is moved into
//     the same window before testing.

// EarthRadiusM is the mean Earth radius used for every distance.
const EarthRadiusM = 6371008.8

// edgeEpsilon is the tolerance, in degrees, of the on-edge test.
const edgeEpsilon = 1e-9

const degToRad = math.Pi / 180

// DistanceM returns the great-circle distance in metres between two
// positions (haversine).
func DistanceM(lat1, lon1, lat2, lon2 float64) float64 {
	φ1, φ2 := lat1*degToRad, lat2*degToRad
	dφ := φ2 - φ1
	dλ := (lon2 - lon1) * degToRad
	s1 := math.Sin(dφ / 2)
	s2 := math.Sin(dλ / 2)
	h := s1*s1 + math.Cos(φ1)*math.Cos(φ2)*s2*s2
	if h > 1 {
		h = 1
	}
	return 2 * EarthRadiusM * math.Asin(math.Sqrt(h))
}

// wrapLon moves lon into [ref-180, ref+180).
func wrapLon(lon, ref float64) float64 {
	d := lon - ref
	if d >= -180 && d < 180 {
		return lon
	}
	d = math.Mod(d+180, 360)
	if d < 0 {
		d += 360
	}
	return ref + d - 180
}

// lonRange is a closed longitude interval within [-180, 180].
type lonRange struct{ min, max float64 }

// BBox is a bounding box. A box that crosses the antimeridian is held as
// two longitude ranges (a multipolygon's box may hold more).
type BBox struct {
	MinLat, MaxLat float64
	Lons           []lonRange
}

// newBBox builds a box from latitude bounds and longitude bounds that may
// lie outside [-180, 180] (unwrapped); the longitudes are split at ±180.
func newBBox(minLat, maxLat, minLon, maxLon float64) BBox {
	b := BBox{MinLat: math.Max(minLat, -90), MaxLat: math.Min(maxLat, 90)}
	if maxLon-minLon >= 360 {
		b.Lons = []lonRange{{-180, 180}}
		return b
	}
	// Shift so that minLon is in [-180, 180).
	shift := wrapLon(minLon, 0) - minLon
	minLon, maxLon = minLon+shift, maxLon+shift
	if maxLon <= 180 {
		b.Lons = []lonRange{{minLon, maxLon}}
		return b
	}
	b.Lons = []lonRange{{minLon, 180}, {-180, maxLon - 360}}
	return b
}

// union returns a box covering b and o.
func (b BBox) union(o BBox) BBox {
	if len(b.Lons) == 0 {
		return o
	}
	u := BBox{MinLat: math.Min(b.MinLat, o.MinLat), MaxLat: math.Max(b.MaxLat, o.MaxLat)}
	u.Lons = append(append([]lonRange(nil), b.Lons...), o.Lons...)
	return u
}

// Contains reports whether the point lies in the box (edges included).
func (b BBox) Contains(lat, lon float64) bool {
	if lat < b.MinLat || lat > b.MaxLat {
		return false
	}
	for _, r := range b.Lons {
		if lon >= r.min && lon <= r.max {
			return true
		}
	}
	return false
}

// Shape is a geofence zone.
type Shape interface {
	// Contains reports whether the position is inside the zone; the
	// boundary counts as inside.
	Contains(lat, lon float64) bool
	// DistanceOutsideM returns how far the position is from the zone, in
	// metres: 0 when it is inside (or on the boundary), otherwise the
	// distance to the nearest point of the boundary.
	DistanceOutsideM(lat, lon float64) float64
	// Bounds is the bounding box of the zone.
	Bounds() BBox
}

// Circle is a zone of RadiusM metres around a centre.
type Circle struct {
	Lat, Lon, RadiusM float64
	box               BBox
}

// NewCircle returns a circle; the radius must be positive.
func NewCircle(lat, lon, radiusM float64) (*Circle, error) {
	if !(lat >= -90 && lat <= 90) || !(lon >= -180 && lon <= 180) {
		return nil, fmt.Errorf("circle centre %v,%v out of range", lat, lon)
	}
	if !(radiusM > 0) || math.IsInf(radiusM, 0) {
		return nil, fmt.Errorf("circle radius_m %v must be positive", radiusM)
	}
	c := &Circle{Lat: lat, Lon: lon, RadiusM: radiusM}
	dLat := radiusM / EarthRadiusM / degToRad
	minLat, maxLat := lat-dLat, lat+dLat
	if minLat <= -90 || maxLat >= 90 {
		c.box = newBBox(minLat, maxLat, -180, 180)
	} else {
		// The widest longitude span is at the latitude nearest a pole.
		cos := math.Min(math.Cos(minLat*degToRad), math.Cos(maxLat*degToRad))
		dLon := dLat / cos
		if dLon >= 180 {
			c.box = newBBox(minLat, maxLat, -180, 180)
		} else {
			c.box = newBBox(minLat, maxLat, lon-dLon, lon+dLon)
		}
	}
	return c, nil
}

// Contains implements Shape.
func (c *Circle) Contains(lat, lon float64) bool {
	return DistanceM(c.Lat, c.Lon, lat, lon) <= c.RadiusM
}

// DistanceOutsideM implements Shape.
func (c *Circle) DistanceOutsideM(lat, lon float64) float64 {
	return math.Max(0, DistanceM(c.Lat, c.Lon, lat, lon)-c.RadiusM)
}

// Bounds implements Shape.
func (c *Circle) Bounds() BBox { return c.box }

// ring is a closed ring of unwrapped [lon, lat] vertices, without the
// repeated closing vertex.
type ring struct{ lon, lat []float64 }

// polygon is one outer ring with its holes, its longitudes unwrapped around
// ref (the longitude of its first vertex).
type polygon struct {
	ref                            float64
	rings                          []ring // rings[0] is the outer ring
	minLat, maxLat, minLon, maxLon float64
}

// Polygon is a zone made of one or more polygons with holes (a GeoJSON
// Polygon or MultiPolygon). Build it with NewPolygon.
type Polygon struct {
	polys []polygon
	box   BBox
}

// ErrBadPolygon is wrapped by NewPolygon for an unusable ring.
var ErrBadPolygon = errors.New("bad polygon")

// NewPolygon builds a zone from polygons in GeoJSON order: each polygon is a
// list of rings, the first the outer boundary and the others holes; each ring
// a list of [lon, lat] positions, closed or not. Ring orientation does not
// matter (even-odd rule). A ring needs at least 3 vertices; a polygon must
// span less than 180° of longitude and must not encircle a pole.
func NewPolygon(polys [][][][2]float64) (*Polygon, error) {
	if len(polys) == 0 {
		return nil, fmt.Errorf("%w: no polygon", ErrBadPolygon)
	}
	p := &Polygon{}
	for pi, rings := range polys {
		pg, err := newPolygonPart(rings)
		if err != nil {
			return nil, fmt.Errorf("%w: polygon %d %s", ErrBadPolygon, pi, err)
		}
		p.polys = append(p.polys, pg)
		// The box is widened by the edge tolerance, as the edges are.
		p.box = p.box.union(newBBox(pg.minLat-edgeEpsilon, pg.maxLat+edgeEpsilon, pg.minLon-edgeEpsilon, pg.maxLon+edgeEpsilon))
	}
	return p, nil
}

func newPolygonPart(rings [][][2]float64) (polygon, error) {
	pg := polygon{minLat: math.Inf(1), maxLat: math.Inf(-1), minLon: math.Inf(1), maxLon: math.Inf(-1)}
	if len(rings) == 0 {
		return pg, errors.New("has no ring")
	}
	for ri, rg := range rings {
		if len(rg) > 1 && rg[0] == rg[len(rg)-1] {
			rg = rg[:len(rg)-1]
		}
		if len(rg) < 3 {
			return pg, fmt.Errorf("ring %d has %d vertices, need at least 3", ri, len(rg))
		}
		r := ring{lon: make([]float64, len(rg)), lat: make([]float64, len(rg))}
		prev := 0.0
		for vi, v := range rg {
			lon, lat := v[0], v[1]
			if !(lat >= -90 && lat <= 90) || !(lon >= -180 && lon <= 180) {
				return pg, fmt.Errorf("ring %d vertex %d [%v, %v] out of range (GeoJSON order is [lon, lat])", ri, vi, lon, lat)
			}
			switch {
			case ri == 0 && vi == 0:
				pg.ref = lon
			case vi == 0:
				lon = wrapLon(lon, pg.ref) // a hole lies in its outer ring's window
			default:
				lon = wrapLon(lon, prev) // no edge spans 180° or more
			}
			prev = lon
			r.lon[vi], r.lat[vi] = lon, lat
			pg.minLat, pg.maxLat = math.Min(pg.minLat, lat), math.Max(pg.maxLat, lat)
			pg.minLon, pg.maxLon = math.Min(pg.minLon, lon), math.Max(pg.maxLon, lon)
		}
		// Unwrapping a ring that winds around a pole drifts by 360°, so its
		// closing edge looks as if it spans 180° or more.
		if math.Abs(r.lon[0]-prev) >= 180 {
			return pg, fmt.Errorf("ring %d encircles a pole or spans 180° of longitude", ri)
		}
		pg.rings = append(pg.rings, r)
	}
	if pg.maxLon-pg.minLon >= 180 {
		return pg, fmt.Errorf("spans %.1f° of longitude; split it (at most 180°)", pg.maxLon-pg.minLon)
	}
	return pg, nil
}

// Bounds implements Shape.
func (p *Polygon) Bounds() BBox { return p.box }

// Contains implements Shape: inside the outer ring and in none of the
// holes (each ring by the even-odd ray-casting rule), after an exact
// on-edge test so that the boundary counts as inside. A hole that crosses
// its outer ring, or two that overlap, add no area to the zone.
func (p *Polygon) Contains(lat, lon float64) bool {
	if !p.box.Contains(lat, lon) {
		return false
	}
	for i := range p.polys {
		pg := &p.polys[i]
		x := wrapLon(lon, pg.ref)
		if lat < pg.minLat-edgeEpsilon || lat > pg.maxLat+edgeEpsilon || x < pg.minLon-edgeEpsilon || x > pg.maxLon+edgeEpsilon {
			continue
		}
		if pg.contains(x, lat) {
			return true
		}
	}
	return false
}

func (pg *polygon) contains(x, y float64) bool {
	for ri := range pg.rings {
		if pg.rings[ri].onEdge(x, y) {
			return true
		}
	}
	if !pg.rings[0].inside(x, y) {
		return false
	}
	for ri := 1; ri < len(pg.rings); ri++ {
		if pg.rings[ri].inside(x, y) {
			return false
		}
	}
	return true
}

func (r *ring) onEdge(x, y float64) bool {
	n := len(r.lon)
	for i, j := 0, n-1; i < n; j, i = i, i+1 {
		if onSegment(x, y, r.lon[j], r.lat[j], r.lon[i], r.lat[i]) {
			return true
		}
	}
	return false
}

// inside is the even-odd ray-casting rule over one ring.
func (r *ring) inside(x, y float64) bool {
	in := false
	n := len(r.lon)
	for i, j := 0, n-1; i < n; j, i = i, i+1 {
		xi, yi, xj, yj := r.lon[i], r.lat[i], r.lon[j], r.lat[j]
		if (yi > y) != (yj > y) && x < (xj-xi)*(y-yi)/(yj-yi)+xi {
			in = !in
		}
	}
	return in
}

// onSegment reports whether (px, py) lies on the segment a-b within
// edgeEpsilon.
func onSegment(px, py, ax, ay, bx, by float64) bool {
	if px < math.Min(ax, bx)-edgeEpsilon || px > math.Max(ax, bx)+edgeEpsilon ||
		py < math.Min(ay, by)-edgeEpsilon || py > math.Max(ay, by)+edgeEpsilon {
		return false
	}
	dx, dy := bx-ax, by-ay
	cross := dx*(py-ay) - dy*(px-ax)
	return math.Abs(cross) <= edgeEpsilon*math.Max(math.Hypot(dx, dy), 1e-300)
}

// DistanceOutsideM implements Shape: 0 inside, else the distance to the
// nearest edge of any ring, measured in a local equirectangular projection
// centred on the point (accurate to well under a metre for edges within a
// few tens of kilometres, which is what hysteresis margins compare against).
func (p *Polygon) DistanceOutsideM(lat, lon float64) float64 {
	if p.Contains(lat, lon) {
		return 0
	}
	kx := math.Cos(lat*degToRad) * degToRad * EarthRadiusM
	ky := degToRad * EarthRadiusM
	best := math.Inf(1)
	for pi := range p.polys {
		pg := &p.polys[pi]
		x := wrapLon(lon, pg.ref)
		for ri := range pg.rings {
			r := &pg.rings[ri]
			n := len(r.lon)
			for i, j := 0, n-1; i < n; j, i = i, i+1 {
				ax, ay := (r.lon[j]-x)*kx, (r.lat[j]-lat)*ky
				bx, by := (r.lon[i]-x)*kx, (r.lat[i]-lat)*ky
				if d := segDist0(ax, ay, bx, by); d < best {
					best = d
				}
			}
		}
	}
	return best
}

// segDist0 is the distance from the origin to segment a-b in the plane.
func segDist0(ax, ay, bx, by float64) float64 {
	dx, dy := bx-ax, by-ay
	l2 := dx*dx + dy*dy
	t := 0.0
	if l2 > 0 {
		t = -(ax*dx + ay*dy) / l2
		t = math.Max(0, math.Min(1, t))
	}
	return math.Hypot(ax+t*dx, ay+t*dy)
}
