package config

import (
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// SimulatorConfig configures the simulator (section simulator; the name
// Simulator is the binary's): the webhook it calls, the fleet it
// simulates and the load it sends. Its keys are appended to Keys in init and
// its checks to extraValidators, so this file is the whole section.
//
// The fractional keys (rate, panic_rate, silent_fraction, radius_km) have
// string defaults so that they get a flag (the loader makes flags for
// strings, integers, booleans, durations and lists); viper converts the
// text to the float64 fields, and a value that is not a number fails Load
// naming the key.
type SimulatorConfig struct {
	URL            string        `mapstructure:"url"`
	Token          string        `mapstructure:"token"`
	Devices        int           `mapstructure:"devices"`
	Rate           float64       `mapstructure:"rate"`
	Connections    int           `mapstructure:"connections"`
	Batch          int           `mapstructure:"batch"`
	Method         string        `mapstructure:"method"`
	Duration       time.Duration `mapstructure:"duration"`
	Count          int64         `mapstructure:"count"`
	Timeout        time.Duration `mapstructure:"timeout"`
	PanicRate      float64       `mapstructure:"panic_rate"`
	SilentFraction float64       `mapstructure:"silent_fraction"`
	SilentFor      time.Duration `mapstructure:"silent_for"`
	Seed           int64         `mapstructure:"seed"`
	Center         string        `mapstructure:"center"`
	RadiusKm       float64       `mapstructure:"radius_km"`
	Timezone       string        `mapstructure:"timezone"`
	Output         string        `mapstructure:"output"`
}

// CenterLatLon returns simulator.center parsed; Validate has checked it.
func (s SimulatorConfig) CenterLatLon() (lat, lon float64) {
	lat, lon, _ = parseLatLon(s.Center)
	return lat, lon
}

// Location returns the zone of simulator.timezone; Validate has checked it
// loads.
func (s SimulatorConfig) Location() *time.Location {
	loc, err := time.LoadLocation(s.Timezone)
	if err != nil {
		return time.UTC
	}
	return loc
}

func init() {
	only := bins(Simulator)
	Keys = append(Keys, []Key{
		{Name: "simulator.url", Default: "http://127.0.0.1:8080/webhook/ubiqo", Usage: "webhook to call (the bridge's http.addr + http.path)", Only: only},
		{Name: "simulator.token", Default: "", Usage: "sent as Authorization: Bearer; one of the bridge's auth.tokens", Secret: true, Only: only},
		{Name: "simulator.devices", Default: 200, Usage: "number of simulated GPS devices", Only: only},
		{Name: "simulator.rate", Default: "50", Usage: "requests per second in total, sent on schedule (latency counts from the scheduled time); 0 = as fast as the connections allow", Only: only},
		{Name: "simulator.connections", Default: 16, Usage: "keep-alive connections: the most requests in flight", Only: only},
		{Name: "simulator.batch", Default: 1, Usage: "coordinates per POST: 1 sends a JSON object, more a JSON array", Only: only},
		{Name: "simulator.method", Default: "POST", Usage: "POST (JSON body) or GET (one coordinate as query parameters)", Only: only},
		{Name: "simulator.duration", Default: time.Duration(0), Usage: "how long to send; 0 = until interrupted (Ctrl-C) or simulator.count", Only: only},
		{Name: "simulator.count", Default: int64(0), Usage: "stop after this many requests; 0 = no limit", Only: only},
		{Name: "simulator.timeout", Default: 10 * time.Second, Usage: "longest wait for one answer", Only: only},
		{Name: "simulator.panic_rate", Default: "0.001", Usage: "probability that a coordinate carries event \"panic\"", Only: only},
		{Name: "simulator.silent_fraction", Default: "0.05", Usage: "share of devices that go silent now and then", Only: only},
		{Name: "simulator.silent_for", Default: time.Minute, Usage: "mean length of a silence", Only: only},
		{Name: "simulator.seed", Default: int64(1), Usage: "seed of the fleet: the same seed gives the same device ids and routes", Only: only},
		{Name: "simulator.center", Default: "20.5888,-100.3899", Usage: "lat,lon the devices drive around (default Querétaro)", Only: only},
		{Name: "simulator.radius_km", Default: "8", Usage: "radius of the area the devices drive in", Only: only},
		{Name: "simulator.timezone", Default: "UTC", Usage: "zone of timestamps sent without one; set it to the bridge's ingest.default_timezone", Only: only},
		{Name: "simulator.output", Default: "text", Usage: "summary on stdout: text or json", Only: only},
	}...)
	extraValidators = append(extraValidators, validateSimulator)
}

// validateSimulator checks the simulator section, upper-casing the method in
// place.
func validateSimulator(c *Config, b Binary) []error {
	if b != Simulator {
		return nil
	}
	var v validator
	s := &c.Simulator
	if u, err := url.Parse(s.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.bad("simulator.url", RedactURL(s.URL), "must be an absolute http:// or https:// URL")
	} else if u.User != nil {
		v.bad("simulator.url", RedactURL(s.URL), "must not carry credentials; use simulator.token")
	}
	if strings.ContainsFunc(s.Token, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		v.bad("simulator.token", masked, "must not contain control characters")
	}
	if s.Devices < 1 || s.Devices > 10_000_000 {
		v.bad("simulator.devices", s.Devices, "must be 1 to 10000000")
	}
	if !(s.Rate >= 0) || math.IsInf(s.Rate, 0) {
		v.bad("simulator.rate", s.Rate, "must be 0 (as fast as possible) or a positive number of requests per second")
	}
	if s.Connections < 1 || s.Connections > 100_000 {
		v.bad("simulator.connections", s.Connections, "must be 1 to 100000")
	}
	s.Method = strings.ToUpper(strings.TrimSpace(s.Method))
	switch s.Method {
	case "POST", "GET":
	default:
		v.bad("simulator.method", s.Method, "must be POST or GET")
	}
	if s.Batch < 1 || s.Batch > 100_000 {
		v.bad("simulator.batch", s.Batch, "must be 1 to 100000")
	} else if s.Method == "GET" && s.Batch != 1 {
		v.bad("simulator.batch", s.Batch, "must be 1 with simulator.method GET (a query string holds one coordinate)")
	}
	if s.Duration < 0 {
		v.bad("simulator.duration", s.Duration, "must not be negative (0 = until interrupted)")
	}
	if s.Count < 0 {
		v.bad("simulator.count", s.Count, "must not be negative (0 = no limit)")
	}
	v.duration("simulator.timeout", s.Timeout)
	if !(s.PanicRate >= 0 && s.PanicRate <= 1) {
		v.bad("simulator.panic_rate", s.PanicRate, "must be a probability in [0, 1]")
	}
	if !(s.SilentFraction >= 0 && s.SilentFraction < 1) {
		v.bad("simulator.silent_fraction", s.SilentFraction, "must be in [0, 1)")
	}
	v.duration("simulator.silent_for", s.SilentFor)
	if _, _, err := parseLatLon(s.Center); err != nil {
		v.bad("simulator.center", s.Center, err.Error())
	}
	if !(s.RadiusKm > 0 && s.RadiusKm <= 1000) {
		v.bad("simulator.radius_km", s.RadiusKm, "must be more than 0 and at most 1000")
	}
	if _, err := time.LoadLocation(s.Timezone); err != nil || s.Timezone == "" {
		v.bad("simulator.timezone", s.Timezone, "unknown time zone (use an IANA name such as America/Mexico_City)")
	}
	switch s.Output {
	case "text", "json":
	default:
		v.bad("simulator.output", s.Output, "must be text or json")
	}
	return v.errs
}

// parseLatLon reads "lat,lon".
func parseLatLon(s string) (lat, lon float64, err error) {
	a, b, ok := strings.Cut(s, ",")
	if ok {
		lat, err = strconv.ParseFloat(strings.TrimSpace(a), 64)
		if err == nil {
			lon, err = strconv.ParseFloat(strings.TrimSpace(b), 64)
		}
	}
	if !ok || err != nil || !(lat >= -85 && lat <= 85) || !(lon >= -180 && lon <= 180) {
		return 0, 0, fmt.Errorf("must be \"lat,lon\" with lat in [-85, 85] and lon in [-180, 180]")
	}
	return lat, lon, nil
}
