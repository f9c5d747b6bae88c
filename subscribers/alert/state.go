package alert

import (
	"sort"
	"time"
)

// StateVersion is the version of the State JSON stored in the DEVICES
// bucket, written in field "v".
const StateVersion = 1

// State is what the alerter knows about one device. It is stored as JSON in
// the KV bucket DEVICES under the device token (DESIGN.md "Other streams and
// state"), written with compare-and-set so that alerter instances sharing a
// durable agree. `nats kv get DEVICES <token>` shows it.
type State struct {
	V        int    `json:"v"`
	DeviceID string `json:"device_id"`
	// Last is the newest fix whose position was accepted (not a jump).
	Last *Fix `json:"last,omitempty"`
	// Seen is the time of the newest fix of any kind: a fix at or before
	// Seen is out of order and never changes a state.
	Seen time.Time `json:"seen"`
	// Received is when the bridge received the newest fix (its
	// received_at): offline detection counts silence from it, so a device
	// whose clock runs behind is not taken for a silent one.
	Received time.Time `json:"received,omitempty"`
	// Suspect is the newest fix reported as an impossible jump and not
	// confirmed since.
	Suspect *Fix `json:"suspect,omitempty"`
	// Zones are the geofence rules the device is inside, sorted.
	Zones []string `json:"zones,omitempty"`
	// Speeding holds the overspeed rules whose limit the device is above,
	// pending (not yet for min_duration) or open (alerted).
	Speeding []Speeding `json:"speeding,omitempty"`
	// BatteryLow and Offline are the rules whose alert is open.
	BatteryLow []string `json:"battery_low,omitempty"`
	Offline    []string `json:"offline,omitempty"`
	// Panics holds, per panic rule, the fix time of the last panic alerted
	// (for cooldown and to never alert an older panic twice).
	Panics []Mark `json:"panics,omitempty"`
	// Emitted holds, per rule and kind, the fix time of the last alert
	// raised for the device: a replay does not publish an alert whose rule
	// and kind were alerted at or after its time (see Alerted). At most
	// maxMarks are kept; the time of the newest one dropped is kept in
	// EmittedFloor, and a replay publishes nothing at or before it.
	Emitted      []Mark    `json:"emitted,omitempty"`
	EmittedFloor time.Time `json:"emitted_floor,omitempty"`
	// Pending (JSON "outbox") holds the alerts raised by the write that
	// stored this state. They are published right after the write; if the
	// alerter stopped in between, whoever handles the device next
	// publishes them (after looking them up in ALERTS), so no alert is
	// lost. The device's next write empties it.
	Pending []Alert `json:"outbox,omitempty"`
}

// Fix is a position at a time.
type Fix struct {
	TS  time.Time `json:"ts"`
	Lat float64   `json:"lat"`
	Lon float64   `json:"lon"`
}

// Speeding is the state of one overspeed rule.
type Speeding struct {
	Rule  string    `json:"rule"`
	Since time.Time `json:"since"`
	Open  bool      `json:"open,omitempty"`
	MaxKm float64   `json:"max_kmh"`
}

// Mark records an alert's fix time per rule and kind.
type Mark struct {
	Rule string    `json:"rule"`
	Kind string    `json:"kind,omitempty"`
	TS   time.Time `json:"ts"`
}

// maxMarks bounds State.Emitted, so a device that visited hundreds of zones
// keeps a small state.
const maxMarks = 64

// NewState returns the empty state of a device.
func NewState(deviceID string) *State { return &State{V: StateVersion, DeviceID: deviceID} }

func hasString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// addString adds s to a sorted set.
func addString(list []string, s string) []string {
	i := sort.SearchStrings(list, s)
	if i < len(list) && list[i] == s {
		return list
	}
	list = append(list, "")
	copy(list[i+1:], list[i:])
	list[i] = s
	return list
}

func removeString(list []string, s string) []string {
	for i, x := range list {
		if x == s {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

func (s *State) speeding(rule string) *Speeding {
	for i := range s.Speeding {
		if s.Speeding[i].Rule == rule {
			return &s.Speeding[i]
		}
	}
	return nil
}

func (s *State) dropSpeeding(rule string) {
	for i := range s.Speeding {
		if s.Speeding[i].Rule == rule {
			s.Speeding = append(s.Speeding[:i], s.Speeding[i+1:]...)
			return
		}
	}
}

func findMark(marks []Mark, rule, kind string) *Mark {
	for i := range marks {
		if marks[i].Rule == rule && marks[i].Kind == kind {
			return &marks[i]
		}
	}
	return nil
}

// setMark records ts for rule and kind unless a later one is recorded; it
// reports whether it changed marks.
func setMark(marks []Mark, rule, kind string, ts time.Time) ([]Mark, bool) {
	if m := findMark(marks, rule, kind); m != nil {
		if !ts.After(m.TS) {
			return marks, false
		}
		m.TS = ts
		return marks, true
	}
	return append(marks, Mark{Rule: rule, Kind: kind, TS: ts}), true
}

// markEmitted records an alert in Emitted, dropping the oldest mark into
// EmittedFloor beyond maxMarks; it reports whether the state changed.
func (s *State) markEmitted(rule, kind string, ts time.Time) bool {
	var changed bool
	s.Emitted, changed = setMark(s.Emitted, rule, kind, ts)
	for len(s.Emitted) > maxMarks {
		oldest := 0
		for i := range s.Emitted {
			if s.Emitted[i].TS.Before(s.Emitted[oldest].TS) {
				oldest = i
			}
		}
		if s.Emitted[oldest].TS.After(s.EmittedFloor) {
			s.EmittedFloor = s.Emitted[oldest].TS
		}
		s.Emitted = append(s.Emitted[:oldest], s.Emitted[oldest+1:]...)
	}
	return changed
}

// Alerted reports whether the state records an alert of rule and kind at
// or after ts (or ts is at or before EmittedFloor): a replay must not
// publish such an alert again.
// ongoing reports whether a opens an episode (battery_low, overspeed) that
// the live state shows open since an earlier alert of its rule, with no
// closing alert after that one: a replay starting inside the episode sees
// it open at its first fix, and must not announce it a second time.
func (s *State) ongoing(a *Alert) bool {
	var open bool
	var closing string
	switch a.Kind {
	case KindBatteryLow:
		open, closing = hasString(s.BatteryLow, a.Rule), KindBatteryOK
	case KindOverspeed:
		sp := s.speeding(a.Rule)
		open, closing = sp != nil && sp.Open, KindOverspeedEnd
	default:
		return false
	}
	if !open {
		return false
	}
	m := findMark(s.Emitted, a.Rule, a.Kind)
	if m == nil || m.TS.After(a.TS) {
		return false
	}
	end := findMark(s.Emitted, a.Rule, closing)
	return end == nil || end.TS.Before(m.TS)
}

func (s *State) Alerted(rule, kind string, ts time.Time) bool {
	if !s.EmittedFloor.IsZero() && !ts.After(s.EmittedFloor) {
		return true
	}
	m := findMark(s.Emitted, rule, kind)
	return m != nil && !ts.After(m.TS)
}
