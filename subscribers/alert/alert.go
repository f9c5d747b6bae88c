// Package alert owns the alerter: the rule file (geofences, overspeed,
// offline, low battery, panic and impossible jumps), the geometry behind
// geofences, the per-device state kept in the KV bucket DEVICES, publishing
// alerts to the ALERTS stream with deterministic ids, the notifiers (JSON
// webhook, Slack-style webhook, log) and replaying a time range of COORDS.
//
// The rules engine (Engine, Rules, the geometry) is pure: no I/O, no clock.
// Alerter wires it to JetStream.
package alert

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// Alert kinds; each is the <kind> token of the subject
// ubiqo.alerts.<kind>.<device token>.
const (
	KindEnter        = "geofence_enter"
	KindExit         = "geofence_exit"
	KindOverspeed    = "overspeed"
	KindOverspeedEnd = "overspeed_end"
	KindOffline      = "offline"
	KindOnline       = "online"
	KindBatteryLow   = "battery_low"
	KindBatteryOK    = "battery_ok"
	KindPanic        = "panic"
	KindJump         = "jump"
)

// Kinds lists every alert kind.
var Kinds = []string{KindEnter, KindExit, KindOverspeed, KindOverspeedEnd, KindOffline, KindOnline,
	KindBatteryLow, KindBatteryOK, KindPanic, KindJump}

// Alert is the body of a message on the ALERTS stream (DESIGN.md).
type Alert struct {
	// ID is deterministic (see AlertID) and is also the Nats-Msg-Id.
	ID       string `json:"id"`
	Kind     string `json:"kind"`
	Rule     string `json:"rule"`
	DeviceID string `json:"device_id"`
	// TS is the time of the fix that triggered the alert; for offline, the
	// time of the device's last fix.
	TS      time.Time      `json:"ts"`
	Lat     float64        `json:"lat"`
	Lon     float64        `json:"lon"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

// alertIDPrefix versions the id hash; changing it changes every id and so
// breaks deduplication across a deploy.
const alertIDPrefix = "ubiqo-bridge alert id v1\x00"

// AlertID returns the id of the alert of kind raised by rule for device at
// fix time ts: 32 lower-case hex digits of a SHA-256 over the four
// (length-prefixed strings, ts as UTC Unix nanoseconds). The same fix
// evaluated again, by another instance or in a replay, gives the same id, so
// JetStream's duplicate window drops the second copy.
func AlertID(rule, kind, deviceID string, ts time.Time) string {
	b := make([]byte, 0, len(alertIDPrefix)+24+len(rule)+len(kind)+len(deviceID)+12)
	b = append(b, alertIDPrefix...)
	for _, s := range []string{rule, kind, deviceID} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(ts.Unix()))
	b = binary.BigEndian.AppendUint32(b, uint32(ts.Nanosecond()))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Subject returns the ALERTS subject of a: prefix.<kind>.<device token>.
func (a *Alert) Subject(prefix string) string {
	b := make([]byte, 0, len(prefix)+len(a.Kind)+len(a.DeviceID)+8)
	b = append(b, prefix...)
	b = append(b, '.')
	b = append(b, a.Kind...)
	b = append(b, '.')
	b = coord.AppendToken(b, a.DeviceID)
	return string(b)
}
