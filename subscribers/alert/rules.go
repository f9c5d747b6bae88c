package alert

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// Rule types of the rule file.
const (
	TypeGeofence  = "geofence"
	TypeOverspeed = "overspeed"
	TypeOffline   = "offline"
	TypeBattery   = "battery"
	TypePanic     = "panic"
	TypeJump      = "jump"
)

// Defaults of the rule file.
const (
	DefaultHysteresisM    = 20.0
	DefaultClearMarginKmh = 5.0
	DefaultClearMarginPct = 5.0
	DefaultPanicCooldown  = time.Minute
	DefaultJumpMinDistM   = 1000.0
)

// ErrRules is wrapped by every error of LoadRules and ParseRules.
var ErrRules = errors.New("alert rules")

// ruleFile is the YAML document of alert.rules_file.
type ruleFile struct {
	Version     int                 `yaml:"version"`
	HysteresisM *float64            `yaml:"hysteresis_m"`
	Groups      map[string][]string `yaml:"groups"`
	Rules       []yaml.Node         `yaml:"rules"`
}

type circleSpec struct {
	Lat     *float64 `yaml:"lat"`
	Lon     *float64 `yaml:"lon"`
	RadiusM float64  `yaml:"radius_m"`
}

// ruleSpec is one entry of rules:. Which keys a type takes is listed in
// ruleKeys.
type ruleSpec struct {
	Name    string   `yaml:"name"`
	Type    string   `yaml:"type"`
	Title   string   `yaml:"title"`
	Devices []string `yaml:"devices"`
	Groups  []string `yaml:"groups"`

	On          []string         `yaml:"on"`
	Circle      *circleSpec      `yaml:"circle"`
	Polygon     [][][2]float64   `yaml:"polygon"`
	GeoJSON     string           `yaml:"geojson"`
	Feature     string           `yaml:"feature"`
	HysteresisM *float64         `yaml:"hysteresis_m"`
	Multi       [][][][2]float64 `yaml:"multipolygon"`

	LimitKmh       float64       `yaml:"limit_kmh"`
	MinDuration    time.Duration `yaml:"min_duration"`
	ClearMarginKmh *float64      `yaml:"clear_margin_kmh"`

	After time.Duration `yaml:"after"`

	BelowPct       float64  `yaml:"below_pct"`
	ClearMarginPct *float64 `yaml:"clear_margin_pct"`

	Events   []string       `yaml:"events"`
	Attrs    map[string]any `yaml:"attrs"`
	Cooldown *time.Duration `yaml:"cooldown"`

	MaxSpeedKmh  float64  `yaml:"max_speed_kmh"`
	MinDistanceM *float64 `yaml:"min_distance_m"`
}

var commonKeys = []string{"name", "type", "title", "devices", "groups"}

var ruleKeys = map[string][]string{
	TypeGeofence:  {"on", "circle", "polygon", "multipolygon", "geojson", "feature", "hysteresis_m"},
	TypeOverspeed: {"limit_kmh", "min_duration", "clear_margin_kmh"},
	TypeOffline:   {"after"},
	TypeBattery:   {"below_pct", "clear_margin_pct"},
	TypePanic:     {"events", "attrs", "cooldown"},
	TypeJump:      {"max_speed_kmh", "min_distance_m"},
}

// Rules is a compiled rule file. It is immutable and safe for concurrent
// use.
type Rules struct {
	geofences []*geofence
	grid      *gridIndex
	overspeed []*overspeedRule
	offline   []*offlineRule
	battery   []*batteryRule
	panics    []*panicRule
	jumps     []*jumpRule
	byName    map[string]*rule
	zones     map[string]*geofence
}

// rule is what every rule type shares.
type rule struct {
	Name  string
	Type  string
	Title string
	match *deviceSet
}

// display is the rule's title, or its name.
func (r *rule) display() string {
	if r.Title != "" {
		return r.Title
	}
	return r.Name
}

type geofence struct {
	rule
	shape       Shape
	onEnter     bool
	onExit      bool
	hysteresisM float64
}

type overspeedRule struct {
	rule
	limit, margin float64
	minDuration   time.Duration
}

type offlineRule struct {
	rule
	after time.Duration
}

type batteryRule struct {
	rule
	below, margin float64
}

type panicRule struct {
	rule
	events   []string
	attrs    map[string]string
	cooldown time.Duration
}

type jumpRule struct {
	rule
	maxSpeedKmh, minDistanceM float64
}

// deviceSet decides which devices a rule applies to: every device when
// all is set, else the listed ids and the ids matching the glob patterns.
type deviceSet struct {
	all      bool
	ids      map[string]bool
	patterns []string
}

func (s *deviceSet) has(id string) bool {
	if s.all || s.ids[id] {
		return true
	}
	for _, p := range s.patterns {
		if ok, _ := path.Match(p, id); ok {
			return true
		}
	}
	return false
}

// Len returns the number of rules.
func (r *Rules) Len() int { return len(r.byName) }

// Counts returns the number of rules of each type.
func (r *Rules) Counts() map[string]int {
	return map[string]int{
		TypeGeofence: len(r.geofences), TypeOverspeed: len(r.overspeed), TypeOffline: len(r.offline),
		TypeBattery: len(r.battery), TypePanic: len(r.panics), TypeJump: len(r.jumps),
	}
}

// LoadRules reads and compiles the rule file at file. GeoJSON files named
// in it are read relative to its directory.
func LoadRules(file string) (*Rules, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	r, err := ParseRules(data, filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return r, nil
}

// ParseRules compiles a rule file; dir is where relative GeoJSON paths are
// read from. Unknown keys, keys that do not belong to a rule's type,
// duplicate names, unknown groups and out-of-range values are errors that
// name the rule.
func ParseRules(data []byte, dir string) (*Rules, error) {
	var f ruleFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRules, err)
	}
	if f.Version != 0 && f.Version != 1 {
		return nil, fmt.Errorf("%w: version %d: this alerter reads version 1", ErrRules, f.Version)
	}
	hyst := DefaultHysteresisM
	if f.HysteresisM != nil {
		hyst = *f.HysteresisM
		if !(hyst >= 0) {
			return nil, fmt.Errorf("%w: hysteresis_m %v must be 0 or more", ErrRules, hyst)
		}
	}
	for g, members := range f.Groups {
		if len(members) == 0 {
			return nil, fmt.Errorf("%w: group %q has no members", ErrRules, g)
		}
		for _, m := range members {
			if _, err := path.Match(m, ""); err != nil {
				return nil, fmt.Errorf("%w: group %q: bad pattern %q", ErrRules, g, m)
			}
		}
	}
	rs := &Rules{byName: make(map[string]*rule), zones: make(map[string]*geofence)}
	for i := range f.Rules {
		node := &f.Rules[i]
		var s ruleSpec
		if err := node.Decode(&s); err != nil {
			return nil, fmt.Errorf("%w: rule %d: %w", ErrRules, i+1, err)
		}
		label := fmt.Sprintf("rule %d", i+1)
		if s.Name != "" {
			label = fmt.Sprintf("rule %q", s.Name)
		}
		if err := rs.add(node, &s, f.Groups, hyst, dir); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrRules, label, err)
		}
	}
	boxes := make([]BBox, len(rs.geofences))
	for i, g := range rs.geofences {
		boxes[i] = g.shape.Bounds()
	}
	rs.grid = newGridIndex(boxes)
	return rs, nil
}

func (rs *Rules) add(node *yaml.Node, s *ruleSpec, groups map[string][]string, hyst float64, dir string) error {
	if err := checkName(s.Name); err != nil {
		return err
	}
	if rs.byName[s.Name] != nil {
		return errors.New("name used twice")
	}
	allowed, ok := ruleKeys[s.Type]
	if !ok {
		types := make([]string, 0, len(ruleKeys))
		for t := range ruleKeys {
			types = append(types, t)
		}
		sort.Strings(types)
		return fmt.Errorf("type %q: want one of %s", s.Type, strings.Join(types, ", "))
	}
	if node.Kind == yaml.MappingNode {
		for k := 0; k+1 < len(node.Content); k += 2 {
			key, val := node.Content[k].Value, node.Content[k+1]
			if !contains(commonKeys, key) && !contains(allowed, key) {
				return fmt.Errorf("key %q is not used by type %s (its keys: %s)", key, s.Type, strings.Join(allowed, ", "))
			}
			switch {
			case key == "circle" && val.Kind == yaml.MappingNode:
				for c := 0; c+1 < len(val.Content); c += 2 {
					if ck := val.Content[c].Value; ck != "lat" && ck != "lon" && ck != "radius_m" {
						return fmt.Errorf("circle: key %q is not known (its keys: lat, lon, radius_m)", ck)
					}
				}
			case (key == "devices" || key == "groups") && val.Kind == yaml.SequenceNode && len(val.Content) == 0:
				// An empty list would match every device: the opposite of
				// what removing the last unit from it means.
				return fmt.Errorf("%s: [] matches no device; remove the key to match every device", key)
			}
		}
	}
	match, err := newDeviceSet(s.Devices, s.Groups, groups)
	if err != nil {
		return err
	}
	base := rule{Name: s.Name, Type: s.Type, Title: s.Title, match: match}
	switch s.Type {
	case TypeGeofence:
		g, err := newGeofence(base, s, hyst, dir)
		if err != nil {
			return err
		}
		rs.geofences = append(rs.geofences, g)
		rs.zones[g.Name] = g
	case TypeOverspeed:
		if !(s.LimitKmh > 0) {
			return fmt.Errorf("limit_kmh %v must be positive", s.LimitKmh)
		}
		m := orDefault(s.ClearMarginKmh, DefaultClearMarginKmh)
		if !(m >= 0) || m >= s.LimitKmh {
			return fmt.Errorf("clear_margin_kmh %v must be 0 or more and below limit_kmh", m)
		}
		if s.MinDuration < 0 {
			return fmt.Errorf("min_duration %v must not be negative", s.MinDuration)
		}
		rs.overspeed = append(rs.overspeed, &overspeedRule{rule: base, limit: s.LimitKmh, margin: m, minDuration: s.MinDuration})
	case TypeOffline:
		if s.After <= 0 {
			return fmt.Errorf("after %v must be a positive duration such as 15m", s.After)
		}
		rs.offline = append(rs.offline, &offlineRule{rule: base, after: s.After})
	case TypeBattery:
		if !(s.BelowPct > 0 && s.BelowPct <= 100) {
			return fmt.Errorf("below_pct %v must be in (0, 100]", s.BelowPct)
		}
		m := orDefault(s.ClearMarginPct, DefaultClearMarginPct)
		if !(m >= 0) {
			return fmt.Errorf("clear_margin_pct %v must be 0 or more", m)
		}
		rs.battery = append(rs.battery, &batteryRule{rule: base, below: s.BelowPct, margin: m})
	case TypePanic:
		if len(s.Events) == 0 && len(s.Attrs) == 0 {
			return errors.New("needs events or attrs to match")
		}
		p := &panicRule{rule: base, cooldown: DefaultPanicCooldown, attrs: make(map[string]string)}
		if s.Cooldown != nil {
			if *s.Cooldown < 0 {
				return fmt.Errorf("cooldown %v must not be negative", *s.Cooldown)
			}
			p.cooldown = *s.Cooldown
		}
		for _, e := range s.Events {
			if e = strings.TrimSpace(e); e == "" {
				return errors.New("events: empty value")
			}
			p.events = append(p.events, e)
		}
		for k, v := range s.Attrs {
			if v == nil {
				v = "*"
			}
			p.attrs[k] = fmt.Sprint(v)
		}
		rs.panics = append(rs.panics, p)
	case TypeJump:
		if !(s.MaxSpeedKmh > 0) {
			return fmt.Errorf("max_speed_kmh %v must be positive", s.MaxSpeedKmh)
		}
		d := orDefault(s.MinDistanceM, DefaultJumpMinDistM)
		if !(d >= 0) {
			return fmt.Errorf("min_distance_m %v must be 0 or more", d)
		}
		rs.jumps = append(rs.jumps, &jumpRule{rule: base, maxSpeedKmh: s.MaxSpeedKmh, minDistanceM: d})
	}
	rs.byName[s.Name] = &base
	return nil
}

func newGeofence(base rule, s *ruleSpec, hyst float64, dir string) (*geofence, error) {
	g := &geofence{rule: base, hysteresisM: hyst}
	if s.HysteresisM != nil {
		if !(*s.HysteresisM >= 0) {
			return nil, fmt.Errorf("hysteresis_m %v must be 0 or more", *s.HysteresisM)
		}
		g.hysteresisM = *s.HysteresisM
	}
	if len(s.On) == 0 {
		g.onEnter, g.onExit = true, true
	}
	for _, on := range s.On {
		switch on {
		case "enter":
			g.onEnter = true
		case "exit":
			g.onExit = true
		default:
			return nil, fmt.Errorf("on: %q: want enter or exit", on)
		}
	}
	n := 0
	for _, set := range []bool{s.Circle != nil, s.Polygon != nil, s.Multi != nil, s.GeoJSON != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("needs exactly one of circle, polygon, multipolygon or geojson")
	}
	if s.Feature != "" && s.GeoJSON == "" {
		return nil, errors.New("feature is only used with geojson")
	}
	var err error
	switch {
	case s.Circle != nil:
		if s.Circle.Lat == nil || s.Circle.Lon == nil {
			return nil, errors.New("circle needs lat, lon and radius_m")
		}
		g.shape, err = NewCircle(*s.Circle.Lat, *s.Circle.Lon, s.Circle.RadiusM)
	case s.Polygon != nil:
		g.shape, err = NewPolygon([][][][2]float64{s.Polygon})
	case s.Multi != nil:
		g.shape, err = NewPolygon(s.Multi)
	default:
		file := s.GeoJSON
		if !filepath.IsAbs(file) {
			file = filepath.Join(dir, file)
		}
		data, rerr := os.ReadFile(file)
		if rerr != nil {
			return nil, fmt.Errorf("geojson: %w", rerr)
		}
		polys, perr := ParseGeoJSON(data, s.Feature)
		if perr != nil {
			return nil, fmt.Errorf("%s: %w", file, perr)
		}
		g.shape, err = NewPolygon(polys)
	}
	if err != nil {
		return nil, err
	}
	return g, nil
}

func newDeviceSet(devices, groupNames []string, groups map[string][]string) (*deviceSet, error) {
	s := &deviceSet{ids: make(map[string]bool)}
	if len(devices) == 0 && len(groupNames) == 0 {
		s.all = true
		return s, nil
	}
	addMember := func(m string) error {
		if strings.ContainsAny(m, "*?[") {
			if _, err := path.Match(m, ""); err != nil {
				return fmt.Errorf("bad device pattern %q", m)
			}
			s.patterns = append(s.patterns, m)
			return nil
		}
		s.ids[m] = true
		return nil
	}
	for _, d := range devices {
		if err := addMember(d); err != nil {
			return nil, err
		}
	}
	for _, g := range groupNames {
		members, ok := groups[g]
		if !ok {
			return nil, fmt.Errorf("group %q is not defined under groups:", g)
		}
		for _, m := range members {
			if err := addMember(m); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

func checkName(name string) error {
	if name == "" {
		return errors.New("name is required")
	}
	if len(name) > 128 {
		return errors.New("name is longer than 128 bytes")
	}
	for _, c := range name {
		if unicode.IsSpace(c) || unicode.IsControl(c) {
			return fmt.Errorf("name %q: no spaces or control characters (use title: for a display name)", name)
		}
	}
	return nil
}

func orDefault(p *float64, def float64) float64 {
	if p == nil {
		return def
	}
	return *p
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
