// Package load generates UBIQO-like GPS webhook traffic and measures how a
// receiver answers it. It owns two things: a fleet model (Fleet: devices
// driving plausible routes, encoded in the payload shapes of the ingest
// contract) and a load runner (Run: open loop at a fixed rate with latency
// measured from the intended send time, or closed loop as fast as C
// connections allow). cmd/simulator and `make bench` drive it.
package load

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Querétaro, MX: the default centre of the fleet.
const (
	DefaultCenterLat = 20.5888
	DefaultCenterLon = -100.3899
)

// Fleet defaults, used where a FleetConfig field is zero.
const (
	DefaultDevices   = 200
	DefaultRadiusKm  = 8.0
	DefaultSilentFor = time.Minute
	DefaultMaxLead   = 2 * time.Minute
)

// FleetConfig describes a fleet. The zero value is usable: 200 devices around
// Querétaro, no panic events, none going silent.
type FleetConfig struct {
	// Devices is the fleet size; 0 means DefaultDevices.
	Devices int
	// CenterLat and CenterLon are where the routes are; both zero means
	// Querétaro.
	CenterLat, CenterLon float64
	// RadiusKm bounds the routes: a device leaving the circle turns back
	// towards the centre. 0 means DefaultRadiusKm.
	RadiusKm float64
	// PanicRate is the probability that a fix carries event "panic".
	PanicRate float64
	// SilentFraction is the share of devices that go silent now and then
	// (send nothing for about SilentFor, then resume), in [0, 1).
	SilentFraction float64
	// SilentFor is the mean length of a silence; 0 means DefaultSilentFor.
	// A silent device is active about twice as long between silences.
	SilentFor time.Duration
	// Seed makes the fleet reproducible: the same seed gives the same device
	// ids, payload shapes and routes (for the same sequence of fix times).
	Seed int64
	// Location is the zone written into timestamps that carry none
	// ("YYYY-MM-DD HH:MM:SS"); it must match the receiver's
	// ingest.default_timezone. nil means UTC.
	Location *time.Location
	// MaxLead bounds how far ahead of the wall clock a fix time may run. A
	// device whose timestamps have one-second resolution can report at most
	// once a second of fix time; asked for more, it runs ahead of the clock
	// and is skipped once it is MaxLead ahead (the receiver rejects fixes
	// more than 10 minutes in the future). 0 means DefaultMaxLead.
	MaxLead time.Duration
}

// Fleet is a set of simulated GPS devices. Next hands out fixes round-robin
// over the devices that are not silent; it is safe for concurrent use, and
// the fix times of each device strictly increase in the order Next returns
// them.
type Fleet struct {
	devices []*device
	cursor  atomic.Uint64
	loc     *time.Location
	maxLead time.Duration
	panic   float64
	silent  time.Duration
	// now is the wall clock; tests replace it.
	now func() time.Time
}

// maxTries bounds how many devices Next looks at to find one that may
// report; past it the last one tried reports anyway.
const maxTries = 64

// NewFleet returns the fleet described by c, or an error naming the bad field.
func NewFleet(c FleetConfig) (*Fleet, error) {
	if c.Devices == 0 {
		c.Devices = DefaultDevices
	}
	if c.CenterLat == 0 && c.CenterLon == 0 {
		c.CenterLat, c.CenterLon = DefaultCenterLat, DefaultCenterLon
	}
	if c.RadiusKm == 0 {
		c.RadiusKm = DefaultRadiusKm
	}
	if c.SilentFor == 0 {
		c.SilentFor = DefaultSilentFor
	}
	if c.MaxLead == 0 {
		c.MaxLead = DefaultMaxLead
	}
	if c.Location == nil {
		c.Location = time.UTC
	}
	var errs []error
	if c.Devices < 0 || c.Devices > 10_000_000 {
		errs = append(errs, fmt.Errorf("devices %d: want 1 to 10000000", c.Devices))
	}
	if !(c.CenterLat >= -85 && c.CenterLat <= 85) || !(c.CenterLon >= -180 && c.CenterLon <= 180) {
		errs = append(errs, fmt.Errorf("centre %v,%v: want a latitude in [-85, 85] and a longitude in [-180, 180]", c.CenterLat, c.CenterLon))
	}
	if !(c.RadiusKm > 0 && c.RadiusKm <= 1000) {
		errs = append(errs, fmt.Errorf("radius %v km: want (0, 1000]", c.RadiusKm))
	}
	if !(c.PanicRate >= 0 && c.PanicRate <= 1) {
		errs = append(errs, fmt.Errorf("panic rate %v: want [0, 1]", c.PanicRate))
	}
	if !(c.SilentFraction >= 0 && c.SilentFraction < 1) {
		errs = append(errs, fmt.Errorf("silent fraction %v: want [0, 1)", c.SilentFraction))
	}
	if c.SilentFor < 0 || c.MaxLead < 0 {
		errs = append(errs, errors.New("silent for and max lead must not be negative"))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("fleet: %w", errors.Join(errs...))
	}

	f := &Fleet{
		devices: make([]*device, c.Devices),
		loc:     c.Location,
		maxLead: c.MaxLead,
		panic:   c.PanicRate,
		silent:  c.SilentFor,
		now:     time.Now,
	}
	seed := uint64(c.Seed)
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	ids := deviceIDs(rng, c.Devices)
	// The streets of the simulated city run in a grid turned by gridAngle.
	gridAngle := rng.Float64() * 90
	flaky := int(math.Round(c.SilentFraction * float64(c.Devices)))
	perm := rng.Perm(c.Devices)
	for i := range f.devices {
		d := newDevice(rand.New(rand.NewPCG(seed, uint64(i)+1)), c, gridAngle)
		d.id = ids[i]
		d.qid = url.QueryEscape(ids[i])
		d.jid = strconv.Quote(ids[i]) // ids are printable: Quote is valid JSON
		f.devices[i] = d
	}
	for _, i := range perm[:flaky] {
		f.devices[i].flaky = true
	}
	// One device in ten starts with its battery nearly flat and drains fast.
	low := int(math.Round(0.1 * float64(c.Devices)))
	if low == 0 && c.Devices >= 5 {
		low = 1
	}
	for _, i := range rng.Perm(c.Devices)[:low] {
		d := f.devices[i]
		d.battery = 6 + d.rng.Float64()*12
		d.drain = 4 + d.rng.Float64()*8
	}
	return f, nil
}

// Len returns the number of devices.
func (f *Fleet) Len() int { return len(f.devices) }

// DeviceIDs returns the ids of the devices, in fleet order.
func (f *Fleet) DeviceIDs() []string {
	ids := make([]string, len(f.devices))
	for i, d := range f.devices {
		ids[i] = d.id
	}
	return ids
}

// Next advances the next device (round-robin, skipping silent devices and
// those too far ahead of the clock) to a new fix and returns it. It does not
// allocate.
func (f *Fleet) Next() Fix {
	now := f.now()
	n := uint64(len(f.devices))
	var d *device
	for try := 0; ; try++ {
		d = f.devices[(f.cursor.Add(1)-1)%n]
		d.mu.Lock()
		if try+1 >= maxTries || try+1 >= len(f.devices) || d.mayReport(now, f) {
			break
		}
		d.mu.Unlock()
	}
	fx := d.fix(now, f)
	d.mu.Unlock()
	return fx
}

// Fix is one reported position of a device. Encode it with AppendJSON or
// AppendQuery, in the payload shape of its device.
type Fix struct {
	Device     string
	Time       time.Time
	Lat, Lon   float64
	SpeedKmh   float64
	HeadingDeg float64
	AltM       float64
	AccuracyM  float64
	BatteryPct float64
	// Event is "panic" or empty.
	Event string

	shape *shape
	jid   string // Device as a JSON string
	qid   string // Device query-escaped
	loc   *time.Location
}

// Shape names the payload shape of the fix's device (see shapes).
func (fx *Fix) Shape() string { return fx.shape.name }

// Motion limits of the model.
const (
	accel      = 2.5  // m/s², speeding up
	decel      = 3.5  // m/s², braking
	turnSpeed  = 6.0  // m/s (~22 km/h) through a turn
	maxSpeed   = 30.5 // m/s (~110 km/h)
	mPerDegLat = 111_320.0
	maxSubStep = 1.0 // s, integration step
	maxSteps   = 600 // integration steps per fix; longer gaps take longer steps
)

// device is one simulated vehicle. mu guards everything below it.
type device struct {
	mu    sync.Mutex
	id    string
	jid   string
	qid   string
	shape *shape
	rng   *rand.Rand

	last       time.Time // previous fix time; zero before the first
	lat, lon   float64
	heading    float64 // degrees clockwise from north
	speed      float64 // m/s
	cruise     float64 // m/s, target speed on this segment
	segLeft    float64 // m to the next intersection
	turnNext   int     // -1 left, 0 straight, 1 right, 2 U-turn at the next intersection
	stopLeft   float64 // s left standing (traffic light, delivery)
	battery    float64 // percent
	drain      float64 // percent per hour
	alt        float64
	gridAngle  float64
	centerLat  float64
	centerLon  float64
	radiusM    float64
	flaky      bool
	silentFrom time.Time // flaky devices: the next silence, [silentFrom, silentUntil)
	silentTill time.Time
}

func newDevice(rng *rand.Rand, c FleetConfig, gridAngle float64) *device {
	d := &device{
		rng:       rng,
		shape:     pickShape(rng),
		gridAngle: gridAngle,
		centerLat: c.CenterLat,
		centerLon: c.CenterLon,
		radiusM:   c.RadiusKm * 1000,
		alt:       1780 + rng.Float64()*120,
		drain:     1 + rng.Float64()*5,
	}
	// Start anywhere in the circle (uniform over its area).
	r := d.radiusM * math.Sqrt(rng.Float64())
	a := rng.Float64() * 2 * math.Pi
	d.lat = c.CenterLat + r*math.Cos(a)/mPerDegLat
	d.lon = c.CenterLon + r*math.Sin(a)/(mPerDegLat*math.Cos(c.CenterLat*math.Pi/180))
	d.heading = math.Mod(gridAngle+float64(rng.IntN(4))*90, 360)
	d.battery = 30 + rng.Float64()*70
	if rng.Float64() < 0.3 { // parked at the start
		d.stopLeft = 5 + rng.Float64()*60
	}
	d.newSegment()
	return d
}

// mayReport reports whether d may send a fix now: not silent, and its next
// fix time within maxLead of now.
func (d *device) mayReport(now time.Time, f *Fleet) bool {
	if d.flaky && d.silentAt(now, f) {
		return false
	}
	return d.last.IsZero() || !d.last.Add(d.shape.res).After(now.Add(f.maxLead))
}

// silentAt reports whether a flaky device is silent at now, planning its
// next silence once the current one is over.
func (d *device) silentAt(now time.Time, f *Fleet) bool {
	if d.silentFrom.IsZero() { // first call: the first silence starts within two silences' time
		d.silentFrom = now.Add(time.Duration(d.rng.Float64() * float64(2*f.silent)))
		d.silentTill = d.silentFrom.Add(jitter(d.rng, f.silent))
	}
	for !now.Before(d.silentTill) {
		d.silentFrom = d.silentTill.Add(jitter(d.rng, 2*f.silent))
		d.silentTill = d.silentFrom.Add(jitter(d.rng, f.silent))
	}
	return !now.Before(d.silentFrom)
}

// jitter returns a duration uniform in [mean/2, 3mean/2).
func jitter(rng *rand.Rand, mean time.Duration) time.Duration {
	return time.Duration((0.5 + rng.Float64()) * float64(mean))
}

// fix moves d to its next fix time and returns the fix. The time is now (cut
// to the shape's resolution) unless that would not be after the previous
// fix; then it is one resolution step after it.
func (d *device) fix(now time.Time, f *Fleet) Fix {
	t := now.Truncate(d.shape.res)
	if !d.last.IsZero() {
		if next := d.last.Add(d.shape.res); t.Before(next) {
			t = next
		}
		d.advance(t.Sub(d.last).Seconds())
	}
	d.last = t
	fx := Fix{
		Device:     d.id,
		Time:       t,
		Lat:        d.lat,
		Lon:        d.lon,
		SpeedKmh:   d.speed * 3.6,
		HeadingDeg: math.Mod(d.heading+(d.rng.Float64()-0.5)*2+360, 360), // ±1° of compass noise
		AltM:       d.alt + (d.rng.Float64()-0.5)*4,
		AccuracyM:  3 + d.rng.Float64()*9,
		BatteryPct: d.battery,
		shape:      d.shape,
		jid:        d.jid,
		qid:        d.qid,
		loc:        f.loc,
	}
	if f.panic > 0 && d.rng.Float64() < f.panic {
		fx.Event = "panic"
	}
	return fx
}

// advance moves the device dt seconds along its route.
func (d *device) advance(dt float64) {
	h := maxSubStep
	if dt > maxSubStep*maxSteps {
		h = dt / maxSteps
	}
	for dt > 0 {
		s := min(h, dt)
		d.step(s)
		dt -= s
	}
}

// step integrates the motion over s seconds: speed towards the segment's
// cruise speed within the acceleration limits, braking for a stop or a turn,
// and a new segment at each intersection.
func (d *device) step(s float64) {
	target := d.cruise
	if d.stopLeft > 0 {
		target = 0
		if d.speed == 0 {
			d.stopLeft -= s
		}
	} else if d.turnNext != 0 && d.speed > turnSpeed && d.speed*d.speed/(2*decel) >= d.segLeft {
		target = turnSpeed
	}
	switch {
	case d.speed < target:
		d.speed = min(target, d.speed+accel*s)
	case d.speed > target:
		d.speed = max(target, d.speed-decel*s)
	}
	dist := d.speed * s
	rad := d.heading * math.Pi / 180
	d.lat += dist * math.Cos(rad) / mPerDegLat
	d.lon += dist * math.Sin(rad) / (mPerDegLat * math.Cos(d.lat*math.Pi/180))
	d.battery = max(1, d.battery-d.drain*s/3600)
	d.segLeft -= dist
	if d.segLeft <= 0 {
		d.intersection()
	}
}

// intersection applies the planned turn and starts a new segment.
func (d *device) intersection() {
	d.heading = math.Mod(d.heading+turnDelta(d.turnNext)+360, 360)
	if d.rng.Float64() < 0.2 { // red light or a delivery stop
		d.stopLeft = 5 + d.rng.Float64()*40
	}
	d.newSegment()
}

// newSegment picks the length and cruise speed of the street ahead and the
// turn at its end; outside the radius the turn heads back to the centre.
func (d *device) newSegment() {
	d.segLeft = 120 + d.rng.Float64()*380
	switch x := d.rng.Float64(); {
	case x < 0.6: // street
		d.cruise = (30 + d.rng.Float64()*30) / 3.6
	case x < 0.9: // avenue
		d.cruise = (50 + d.rng.Float64()*30) / 3.6
	default: // highway
		d.cruise = (80 + d.rng.Float64()*30) / 3.6
	}
	d.cruise = min(d.cruise, maxSpeed)
	north := (d.lat - d.centerLat) * mPerDegLat
	east := (d.lon - d.centerLon) * mPerDegLat * math.Cos(d.centerLat*math.Pi/180)
	if math.Hypot(north, east) > d.radiusM {
		// Pick the turn whose new heading points most towards the centre.
		home := math.Atan2(-east, -north) * 180 / math.Pi
		best, bestOff := 0, 360.0
		for _, t := range [...]int{0, -1, 1, 2} {
			h := d.heading + turnDelta(t)
			off := math.Abs(math.Remainder(h-home, 360))
			if off < bestOff {
				best, bestOff = t, off
			}
		}
		d.turnNext = best
		return
	}
	switch x := d.rng.Float64(); {
	case x < 0.55:
		d.turnNext = 0
	case x < 0.77:
		d.turnNext = -1
	case x < 0.98:
		d.turnNext = 1
	default:
		d.turnNext = 2
	}
}

// turnDelta is the change of heading of a turn: -1 left, 1 right, 2 U-turn.
func turnDelta(turn int) float64 {
	switch turn {
	case -1:
		return -90
	case 1:
		return 90
	case 2:
		return 180
	}
	return 0
}
