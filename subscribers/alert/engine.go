package alert

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// Engine applies Rules to device states. It is pure (no I/O, no clock) and
// safe for concurrent use on different states; a State must not be shared
// between goroutines while it is applied.
//
// Semantics, per fix (Apply):
//   - A fix at or before State.Seen (out of order, or a redelivery) changes
//     no state; only a panic rule may still alert on it (a stored-and-
//     forwarded SOS must reach someone), and only once (see panic below).
//   - The first fix of a device sets its zones without enter alerts: the
//     alerter does not know where the device came from, and a replay that
//     starts in the middle of a visit must not invent an enter.
//   - offline/online: an open offline alert is closed by the next newer fix
//     (online). A fix arriving more than `after` after the previous one also
//     raises the offline alert the scan would have raised (same id: it is
//     keyed on the last fix before the gap), then online; this covers an
//     alerter that was down and replays.
//   - impossible jump: a fix further than min_distance_m from the last
//     accepted fix, at an implied speed above max_speed_kmh, is reported
//     (kind jump) and its position is not used: it neither flips geofence
//     state nor becomes State.Last. When the next fix is consistent with
//     the suspect one (implied speed between them within the bound) the
//     device really moved and that fix is accepted.
//   - geofences: see the hysteresis note on applyZones.
//   - overspeed: above limit_kmh starts a pending episode; it is alerted
//     once it lasted min_duration (fix times) and cleared
//     (overspeed_end) when speed drops below limit_kmh − clear_margin_kmh,
//     which also ends a pending episode. Fixes without speed are skipped.
//   - battery: battery_low below below_pct, battery_ok above
//     below_pct + clear_margin_pct. Fixes without battery are skipped.
//   - panic: an event or attribute match alerts unless a panic of the same
//     rule was alerted at the same fix time or less than cooldown from it,
//     before or after (the newest maxPanicMarks per rule are kept).
type Engine struct {
	rules *Rules
}

// NewEngine returns an engine for rules.
func NewEngine(rules *Rules) *Engine { return &Engine{rules: rules} }

// Rules returns the engine's rules.
func (e *Engine) Rules() *Rules { return e.rules }

// Apply evaluates fix c against st, updates st and appends the alerts it
// raises to dst. changed reports whether st was modified (so it must be
// stored). c.DeviceID must be st.DeviceID.
func (e *Engine) Apply(dst []Alert, st *State, c *coord.Coord) (out []Alert, changed bool) {
	n := len(dst)
	if Stale(st, c) {
		dst = e.applyPanic(dst, st, c)
		return dst, len(dst) > n
	}
	prevSeen, prevRecv := st.Seen, received(st)
	first := st.Last == nil
	st.Seen = orderTime(c)
	if r := receivedAt(c); r.After(st.Received) {
		st.Received = r
	}
	st.V = StateVersion
	e.prune(st)

	dst = e.applyOffline(dst, st, c, prevSeen, prevRecv)
	jump := false
	if !first {
		dst, jump = e.applyJump(dst, st, c)
	}
	if !jump {
		st.Suspect = nil
		dst = e.applyZones(dst, st, c, first)
		if st.Last == nil {
			st.Last = new(Fix)
		}
		*st.Last = Fix{TS: c.TS, Lat: c.Lat, Lon: c.Lon}
	}
	dst = e.applyOverspeed(dst, st, c)
	dst = e.applyBattery(dst, st, c)
	dst = e.applyPanic(dst, st, c)
	for i := n; i < len(dst); i++ {
		if dst[i].Kind != KindPanic { // applyPanic keeps its own marks
			st.markEmitted(dst[i].Rule, dst[i].Kind, dst[i].TS)
		}
	}
	return dst, true
}

// prune forgets the open offline, battery and overspeed episodes of rules
// that are gone or no longer apply to the device (the rules file changed),
// as zones are forgotten: otherwise the rule's return would raise a false
// online or battery_ok.
func (e *Engine) prune(st *State) {
	stale := func(name, typ string) bool {
		r := e.rules.byName[name]
		return r == nil || r.Type != typ || !r.match.has(st.DeviceID)
	}
	st.Offline = slices.DeleteFunc(st.Offline, func(n string) bool { return stale(n, TypeOffline) })
	st.BatteryLow = slices.DeleteFunc(st.BatteryLow, func(n string) bool { return stale(n, TypeBattery) })
	st.Speeding = slices.DeleteFunc(st.Speeding, func(sp Speeding) bool { return stale(sp.Rule, TypeOverspeed) })
}

// orderTime is the time that orders c among its device's fixes: its fix
// time, but never later than when the bridge received it. A fix stamped in
// the future (a device clock set wrong, then corrected) would otherwise
// make every correctly stamped fix after it look out of order.
func orderTime(c *coord.Coord) time.Time {
	if !c.ReceivedAt.IsZero() && c.TS.After(c.ReceivedAt) {
		return c.ReceivedAt
	}
	return c.TS
}

// Stale reports whether c is at or before the newest fix of st (out of
// order, or a redelivery): it then changes no state but a panic's.
func Stale(st *State, c *coord.Coord) bool {
	return !st.Seen.IsZero() && !orderTime(c).After(st.Seen)
}

// receivedAt is when the bridge received c (its fix time for a message
// without received_at).
func receivedAt(c *coord.Coord) time.Time {
	if c.ReceivedAt.IsZero() {
		return c.TS
	}
	return c.ReceivedAt
}

// received is when the newest fix of st was received (Seen for a state
// stored before Received existed).
func received(st *State) time.Time {
	if st.Received.IsZero() {
		return st.Seen
	}
	return st.Received
}

// Scan raises the offline alerts due at now for a device whose newest fix
// is st.Seen (offline when now − Seen > after) and updates st. It appends to
// dst.
func (e *Engine) Scan(dst []Alert, st *State, now time.Time) []Alert {
	if st.Seen.IsZero() || st.Last == nil {
		return dst
	}
	silent := now.Sub(received(st))
	for _, r := range e.rules.offline {
		if silent <= r.after || hasString(st.Offline, r.Name) || !r.match.has(st.DeviceID) {
			continue
		}
		st.Offline = addString(st.Offline, r.Name)
		a := e.offlineAlert(r, st, "scan", now, silent)
		st.markEmitted(a.Rule, a.Kind, a.TS)
		dst = append(dst, a)
	}
	return dst
}

// NextOffline returns when Scan would next raise an offline alert for st,
// or the zero time when none is due (no offline rule applies, or every one
// is already open).
func (e *Engine) NextOffline(st *State) time.Time {
	var next time.Time
	if st.Seen.IsZero() || st.Last == nil {
		return next
	}
	for _, r := range e.rules.offline {
		if hasString(st.Offline, r.Name) || !r.match.has(st.DeviceID) {
			continue
		}
		if t := received(st).Add(r.after); next.IsZero() || t.Before(next) {
			next = t
		}
	}
	return next
}

func newAlert(r *rule, kind, deviceID string, ts time.Time, lat, lon float64, msg string, details map[string]any) Alert {
	return Alert{
		ID: AlertID(r.Name, kind, deviceID, ts), Kind: kind, Rule: r.Name, DeviceID: deviceID,
		TS: ts.UTC(), Lat: lat, Lon: lon, Message: msg, Details: details,
	}
}

// offlineAlert is the offline alert of st, found at (scan clock, or the
// time of the fix after the gap) by how ("scan" or "gap"). Its id depends
// on the last fix only, so every instance and a replay raise the same one.
func (e *Engine) offlineAlert(r *offlineRule, st *State, how string, at time.Time, silent time.Duration) Alert {
	return newAlert(&r.rule, KindOffline, st.DeviceID, st.Seen, st.Last.Lat, st.Last.Lon,
		fmt.Sprintf("%s offline: no fix for %s (rule %s)", st.DeviceID, roundDur(silent), r.display()),
		map[string]any{"after_s": r.after.Seconds(), "last_fix": st.Seen.UTC(), "silent_s": silent.Seconds(),
			"detected_by": how, "detected_at": at.UTC()})
}

func (e *Engine) applyOffline(dst []Alert, st *State, c *coord.Coord, prevSeen, prevRecv time.Time) []Alert {
	for _, r := range e.rules.offline {
		if !r.match.has(c.DeviceID) {
			continue
		}
		open := hasString(st.Offline, r.Name)
		// Silence is counted in receive times, as the scan counts it.
		gap := receivedAt(c).Sub(prevRecv)
		if !open && !prevSeen.IsZero() && st.Last != nil && gap > r.after {
			// The scan did not see it (alerter down, or a replay): raise
			// the offline alert it would have raised, keyed on the same fix.
			saved := st.Seen
			st.Seen = prevSeen
			dst = append(dst, e.offlineAlert(r, st, "gap", c.TS, gap))
			st.Seen = saved
			open = true
		}
		if open {
			st.Offline = removeString(st.Offline, r.Name)
			dst = append(dst, newAlert(&r.rule, KindOnline, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s back online after %s without fixes (rule %s)", c.DeviceID, roundDur(gap), r.display()),
				map[string]any{"last_fix": prevSeen.UTC(), "gap_s": math.Round(gap.Seconds())}))
		}
	}
	return dst
}

func (e *Engine) applyJump(dst []Alert, st *State, c *coord.Coord) ([]Alert, bool) {
	for _, r := range e.rules.jumps {
		if !r.match.has(c.DeviceID) {
			continue
		}
		d := DistanceM(st.Last.Lat, st.Last.Lon, c.Lat, c.Lon)
		dt := c.TS.Sub(st.Last.TS)
		if d <= r.minDistanceM || impliedKmh(d, dt) <= r.maxSpeedKmh {
			continue
		}
		if s := st.Suspect; s != nil && c.TS.After(s.TS) {
			ds := DistanceM(s.Lat, s.Lon, c.Lat, c.Lon)
			if ds <= r.minDistanceM || impliedKmh(ds, c.TS.Sub(s.TS)) <= r.maxSpeedKmh {
				continue // confirmed: the device really is over there
			}
		}
		v := impliedKmh(d, dt)
		st.Suspect = &Fix{TS: c.TS, Lat: c.Lat, Lon: c.Lon}
		return append(dst, newAlert(&r.rule, KindJump, c.DeviceID, c.TS, c.Lat, c.Lon,
			fmt.Sprintf("%s jumped %.1f km in %s (%.0f km/h implied, bound %.0f km/h): position ignored for geofences",
				c.DeviceID, d/1000, roundDur(dt), v, r.maxSpeedKmh),
			map[string]any{
				"distance_m": math.Round(d), "seconds": dt.Seconds(), "implied_speed_kmh": math.Round(v),
				"max_speed_kmh": r.maxSpeedKmh, "from": map[string]any{"ts": st.Last.TS.UTC(), "lat": st.Last.Lat, "lon": st.Last.Lon},
			})), true
	}
	return dst, false
}

func impliedKmh(distM float64, dt time.Duration) float64 {
	if dt <= 0 {
		return math.Inf(1)
	}
	return distM / 1000 / dt.Hours()
}

// applyZones updates the zones the device is in.
//
// Hysteresis (hysteresis_m, the margin): a device enters a zone as soon as
// a fix is inside it (the boundary counts as inside), and leaves it only
// when a fix is outside by more than the margin. A device hovering around
// the fence, inside or up to margin metres outside, therefore stays
// "inside": one enter, no exit, no flapping. Only a device that was never
// inside and stays outside within the margin raises nothing.
func (e *Engine) applyZones(dst []Alert, st *State, c *coord.Coord, first bool) []Alert {
	rs := e.rules
	if len(rs.geofences) == 0 && len(st.Zones) == 0 {
		return dst
	}
	// Zones the device is in: exit only beyond the margin.
	kept := st.Zones[:0]
	for _, name := range st.Zones {
		g := rs.zones[name]
		if g == nil || !g.match.has(c.DeviceID) {
			continue // rule removed or narrowed: forget silently
		}
		out := g.shape.DistanceOutsideM(c.Lat, c.Lon)
		if out <= g.hysteresisM {
			kept = append(kept, name)
			continue
		}
		if g.onExit {
			dst = append(dst, newAlert(&g.rule, KindExit, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s left %s", c.DeviceID, g.display()),
				map[string]any{"zone": g.display(), "outside_m": math.Round(out*10) / 10, "hysteresis_m": g.hysteresisM}))
		}
	}
	st.Zones = kept
	var buf [16]int32
	for _, i := range rs.grid.query(buf[:0], c.Lat, c.Lon) {
		g := rs.geofences[i]
		if hasString(st.Zones, g.Name) || !g.match.has(c.DeviceID) || !g.shape.Contains(c.Lat, c.Lon) {
			continue
		}
		st.Zones = addString(st.Zones, g.Name)
		if g.onEnter && !first {
			dst = append(dst, newAlert(&g.rule, KindEnter, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s entered %s", c.DeviceID, g.display()),
				map[string]any{"zone": g.display()}))
		}
	}
	return dst
}

func (e *Engine) applyOverspeed(dst []Alert, st *State, c *coord.Coord) []Alert {
	if c.SpeedKmh == nil {
		return dst
	}
	v := *c.SpeedKmh
	for _, r := range e.rules.overspeed {
		if !r.match.has(c.DeviceID) {
			continue
		}
		sp := st.speeding(r.Name)
		clear := v < r.limit-r.margin
		switch {
		case sp == nil:
			if v <= r.limit {
				continue
			}
			st.Speeding = append(st.Speeding, Speeding{Rule: r.Name, Since: c.TS, MaxKm: v})
			sp = &st.Speeding[len(st.Speeding)-1]
		case clear:
			if sp.Open {
				dur := c.TS.Sub(sp.Since)
				dst = append(dst, newAlert(&r.rule, KindOverspeedEnd, c.DeviceID, c.TS, c.Lat, c.Lon,
					fmt.Sprintf("%s back under %.0f km/h after %s over %.0f km/h (max %.0f km/h)", c.DeviceID, r.limit-r.margin, roundDur(dur), r.limit, sp.MaxKm),
					map[string]any{"speed_kmh": v, "limit_kmh": r.limit, "since": sp.Since.UTC(), "duration_s": dur.Seconds(), "max_speed_kmh": sp.MaxKm}))
			}
			st.dropSpeeding(r.Name)
			continue
		default:
			sp.MaxKm = math.Max(sp.MaxKm, v)
		}
		// Alerted on a fix that is itself over the limit: dips within the
		// margin keep an episode going, but never make one.
		if !sp.Open && v > r.limit && c.TS.Sub(sp.Since) >= r.minDuration {
			sp.Open = true
			dur := c.TS.Sub(sp.Since)
			dst = append(dst, newAlert(&r.rule, KindOverspeed, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s over %.0f km/h for %s (now %.0f km/h, max %.0f km/h)", c.DeviceID, r.limit, roundDur(dur), v, sp.MaxKm),
				map[string]any{"speed_kmh": v, "limit_kmh": r.limit, "since": sp.Since.UTC(), "duration_s": dur.Seconds(), "max_speed_kmh": sp.MaxKm}))
		}
	}
	return dst
}

func (e *Engine) applyBattery(dst []Alert, st *State, c *coord.Coord) []Alert {
	if c.BatteryPct == nil {
		return dst
	}
	b := *c.BatteryPct
	for _, r := range e.rules.battery {
		if !r.match.has(c.DeviceID) {
			continue
		}
		low := hasString(st.BatteryLow, r.Name)
		switch {
		case !low && b < r.below:
			st.BatteryLow = addString(st.BatteryLow, r.Name)
			dst = append(dst, newAlert(&r.rule, KindBatteryLow, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s battery at %.0f%% (below %.0f%%)", c.DeviceID, b, r.below),
				map[string]any{"battery_pct": b, "below_pct": r.below, "clear_above_pct": r.below + r.margin}))
		case low && b > r.below+r.margin:
			st.BatteryLow = removeString(st.BatteryLow, r.Name)
			dst = append(dst, newAlert(&r.rule, KindBatteryOK, c.DeviceID, c.TS, c.Lat, c.Lon,
				fmt.Sprintf("%s battery back at %.0f%%", c.DeviceID, b),
				map[string]any{"battery_pct": b, "below_pct": r.below, "clear_above_pct": r.below + r.margin}))
		}
	}
	return dst
}

func (e *Engine) applyPanic(dst []Alert, st *State, c *coord.Coord) []Alert {
	for _, r := range e.rules.panics {
		if !r.match.has(c.DeviceID) {
			continue
		}
		what, ok := r.matches(c)
		if !ok {
			continue
		}
		if nearPanic(st.Panics, r.Name, c.TS, r.cooldown) {
			continue
		}
		a := newAlert(&r.rule, KindPanic, c.DeviceID, c.TS, c.Lat, c.Lon,
			fmt.Sprintf("PANIC: %s (%s, rule %s)", c.DeviceID, what, r.display()),
			map[string]any{"match": what})
		st.Panics = addPanicMark(st.Panics, r.Name, c.TS)
		st.markEmitted(r.Name, KindPanic, c.TS)
		dst = append(dst, a)
	}
	return dst
}

// maxPanicMarks is how many alerted panic times are kept per rule.
const maxPanicMarks = 16

// nearPanic reports whether a panic of rule was alerted at ts or less than
// cooldown from it, before or after: a late (stored-and-forwarded) panic
// far from every alerted one is an incident of its own.
func nearPanic(marks []Mark, rule string, ts time.Time, cooldown time.Duration) bool {
	for _, m := range marks {
		if m.Rule != rule {
			continue
		}
		d := ts.Sub(m.TS)
		if d < 0 {
			d = -d
		}
		if d == 0 || d < cooldown {
			return true
		}
	}
	return false
}

// addPanicMark records a panic of rule alerted at ts, keeping the newest
// maxPanicMarks of the rule.
func addPanicMark(marks []Mark, rule string, ts time.Time) []Mark {
	marks = append(marks, Mark{Rule: rule, TS: ts})
	n, oldest := 0, -1
	for i, m := range marks {
		if m.Rule == rule {
			n++
			if oldest < 0 || m.TS.Before(marks[oldest].TS) {
				oldest = i
			}
		}
	}
	if n > maxPanicMarks {
		marks = slices.Delete(marks, oldest, oldest+1)
	}
	return marks
}

// matches reports whether c carries one of the rule's events or attribute
// values, and says which.
func (r *panicRule) matches(c *coord.Coord) (string, bool) {
	if ev := strings.TrimSpace(c.Event); ev != "" {
		for _, e := range r.events {
			if strings.EqualFold(ev, e) {
				return "event " + ev, true
			}
		}
	}
	for k, want := range r.attrs {
		v, ok := c.Attrs[k]
		if !ok {
			for ak, av := range c.Attrs {
				if strings.EqualFold(ak, k) {
					v, ok = av, true
					break
				}
			}
		}
		if !ok || v == nil {
			continue
		}
		got := strings.TrimSpace(fmt.Sprint(v))
		if want == "*" {
			if got != "" && got != "0" && !strings.EqualFold(got, "false") {
				return "attribute " + k + "=" + got, true
			}
			continue
		}
		if strings.EqualFold(got, want) {
			return "attribute " + k + "=" + got, true
		}
	}
	return "", false
}

// roundDur rounds d for messages: seconds under an hour, minutes above.
func roundDur(d time.Duration) time.Duration {
	if d >= time.Hour {
		return d.Round(time.Minute)
	}
	return d.Round(time.Second)
}
