// Package coord owns the coordinate model of ubiqo-bridge: the canonical JSON v1
// message, the tolerant decoder for the many shapes of GPS webhooks, validation,
// the reversible subject token codec and the deterministic message id.
//
// The package does no I/O; it depends on the standard library only.
package coord

import (
	"encoding/json"
	"time"
)

// Version is the version of the canonical message format written in field "v".
const Version = 1

// Coord is one satellite coordinate in canonical form (message format v1).
//
// Optional measurements are pointers: nil means the source did not send them.
// The JSON encoding of a Coord (MarshalJSON / AppendJSON) is the body of every
// message on the COORDS stream; json.Unmarshal into a Coord reads it back.
type Coord struct {
	V          int             `json:"v"`
	DeviceID   string          `json:"device_id"`
	TS         time.Time       `json:"ts"`
	ReceivedAt time.Time       `json:"received_at"`
	Lat        float64         `json:"lat"`
	Lon        float64         `json:"lon"`
	AltM       *float64        `json:"alt_m,omitempty"`
	SpeedKmh   *float64        `json:"speed_kmh,omitempty"`
	HeadingDeg *float64        `json:"heading_deg,omitempty"`
	AccuracyM  *float64        `json:"accuracy_m,omitempty"`
	BatteryPct *float64        `json:"battery_pct,omitempty"`
	Event      string          `json:"event,omitempty"`
	TSMissing  bool            `json:"ts_missing,omitempty"`
	Attrs      map[string]any  `json:"attrs,omitempty"`
	Raw        json.RawMessage `json:"raw,omitempty"`
}
