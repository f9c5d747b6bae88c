// Package coord owns the coordinate model of ubiqo-bridge: the canonical JSON v1
// message, the tolerant decoder for the many shapes of GPS webhooks, validation,
// the reversible subject token codec and the deterministic message id.
//
// The package does no I/O; it depends on the standard library only.
package coord

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
)

// Version is the version of the canonical message format written in field "v".
const Version = 1

// Coord is one satellite coordinate in canonical form (message format v1).
//
// Optional measurements are pointers: nil means the source did not send them
// (or sent a value the decoder could not use, which is then in Attrs). The
// JSON encoding of a Coord (MarshalJSON / AppendJSON) is the body of every
// message on the COORDS stream; json.Unmarshal into a Coord reads it back.
type Coord struct {
	V          int             `json:"v"`                     // message format, Version
	DeviceID   string          `json:"device_id"`             // as sent, trimmed; 1 to MaxIDLen bytes of UTF-8
	TS         time.Time       `json:"ts"`                    // fix time, UTC; the receive time when TSMissing
	ReceivedAt time.Time       `json:"received_at"`           // when the bridge received the request, UTC
	Lat        float64         `json:"lat"`                   // degrees, [-90, 90]
	Lon        float64         `json:"lon"`                   // degrees, [-180, 180]
	AltM       *float64        `json:"alt_m,omitempty"`       // metres above sea level
	SpeedKmh   *float64        `json:"speed_kmh,omitempty"`   // km/h, >= 0
	HeadingDeg *float64        `json:"heading_deg,omitempty"` // degrees, [0, 360]
	AccuracyM  *float64        `json:"accuracy_m,omitempty"`  // metres, >= 0
	BatteryPct *float64        `json:"battery_pct,omitempty"` // percent, [0, 100]
	Event      string          `json:"event,omitempty"`       // event name or code as sent
	TSMissing  bool            `json:"ts_missing,omitempty"`  // the source sent no time
	Attrs      map[string]any  `json:"attrs,omitempty"`       // unmapped source fields: nil, bool, string, json.Number, []any, map[string]any
	Raw        json.RawMessage `json:"raw,omitempty"`         // the item as received, compacted (form/query: an object of strings)
}

// AppendJSON appends the canonical JSON v1 encoding of c to dst and returns
// the extended buffer. Fields come in the order v, device_id, ts,
// received_at, lat, lon, alt_m, speed_kmh, heading_deg, accuracy_m,
// battery_pct, event, ts_missing, attrs, raw; the optional ones are left out
// when nil, empty or false. Times are written in UTC as RFC 3339 with the
// fraction trimmed (time.RFC3339Nano); floats in their shortest form that
// parses back to the same value; attrs with sorted keys; raw compacted.
//
// The output is always valid JSON: a non-finite float is written as null, a
// Raw that is not valid JSON as a JSON string, and invalid UTF-8 as U+FFFD.
// For a Coord as a Decoder returns it (UTC times, compact Raw, attrs of the
// types listed on Coord), json.Unmarshal of the output gives back an equal
// Coord; otherwise times come back in UTC, Raw compacted and attrs numbers as
// json.Number.
func (c *Coord) AppendJSON(dst []byte) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, int64(c.V), 10)
	dst = append(dst, `,"device_id":`...)
	dst = appendString(dst, c.DeviceID)
	dst = append(dst, `,"ts":`...)
	dst = appendTime(dst, c.TS)
	dst = append(dst, `,"received_at":`...)
	dst = appendTime(dst, c.ReceivedAt)
	dst = append(dst, `,"lat":`...)
	dst = appendFloat(dst, c.Lat)
	dst = append(dst, `,"lon":`...)
	dst = appendFloat(dst, c.Lon)
	if c.AltM != nil {
		dst = append(dst, `,"alt_m":`...)
		dst = appendFloat(dst, *c.AltM)
	}
	if c.SpeedKmh != nil {
		dst = append(dst, `,"speed_kmh":`...)
		dst = appendFloat(dst, *c.SpeedKmh)
	}
	if c.HeadingDeg != nil {
		dst = append(dst, `,"heading_deg":`...)
		dst = appendFloat(dst, *c.HeadingDeg)
	}
	if c.AccuracyM != nil {
		dst = append(dst, `,"accuracy_m":`...)
		dst = appendFloat(dst, *c.AccuracyM)
	}
	if c.BatteryPct != nil {
		dst = append(dst, `,"battery_pct":`...)
		dst = appendFloat(dst, *c.BatteryPct)
	}
	if c.Event != "" {
		dst = append(dst, `,"event":`...)
		dst = appendString(dst, c.Event)
	}
	if c.TSMissing {
		dst = append(dst, `,"ts_missing":true`...)
	}
	if len(c.Attrs) > 0 {
		dst = append(dst, `,"attrs":`...)
		dst = appendObject(dst, c.Attrs)
	}
	if len(c.Raw) > 0 {
		dst = append(dst, `,"raw":`...)
		dst = appendRaw(dst, c.Raw)
	}
	return append(dst, '}')
}

// MarshalJSON returns the AppendJSON encoding. It never fails. Its receiver
// is a value so that json.Marshal uses it for a Coord held by value too.
func (c Coord) MarshalJSON() ([]byte, error) {
	return c.AppendJSON(make([]byte, 0, 256+len(c.Raw)*2)), nil
}

// UnmarshalJSON reads the canonical JSON v1 encoding. It decodes like
// encoding/json with one difference: numbers inside attrs become json.Number,
// not float64, so a message read back equals the Coord that the bridge
// decoded and re-encodes to the same bytes. Attrs is replaced (nil when the
// message has none); V is read as written and not checked.
func (c *Coord) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	type plain Coord // no methods, so no recursion
	aux := struct {
		*plain
		Attrs attrsJSON `json:"attrs,omitempty"` // shadows plain.Attrs
	}{plain: (*plain)(c)}
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	c.Attrs = aux.Attrs
	return nil
}

// attrsJSON decodes attrs with json.Number for numbers.
type attrsJSON map[string]any

func (a *attrsJSON) UnmarshalJSON(b []byte) error {
	s := string(b) // valid: json.Unmarshal checked the whole message
	switch kindOf(s[0]) {
	case kindNull:
		*a = nil
		return nil
	case kindObject:
		*a = toAny(s).(map[string]any)
		return nil
	}
	return fmt.Errorf("attrs: want an object, got %s", kindOf(s[0]).noun())
}

// MsgID returns the message id of c for the Nats-Msg-Id header: 32 lower-case
// hex digits, the first 16 bytes of a SHA-256 over the device id (length
// prefixed), the fix time as UTC Unix seconds and nanoseconds, and the bit
// patterns of lat and lon (with -0 taken as 0). A coordinate sent again gets
// the same id whatever the spelling of its numbers ("19.5" or "19.50") or the
// zone its time was written in; received_at, attrs, raw and the optional
// measurements do not take part.
func (c *Coord) MsgID() string {
	var buf [msgIDPrefixLen + 8 + MaxIDLen + 8 + 4 + 8 + 8]byte
	b := append(buf[:0], msgIDPrefix...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(c.DeviceID)))
	b = append(b, c.DeviceID...)
	b = binary.BigEndian.AppendUint64(b, uint64(c.TS.Unix()))
	b = binary.BigEndian.AppendUint32(b, uint32(c.TS.Nanosecond()))
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(c.Lat+0)) // +0 turns -0 into 0
	b = binary.BigEndian.AppendUint64(b, math.Float64bits(c.Lon+0))
	sum := sha256.Sum256(b)
	var out [32]byte
	hex.Encode(out[:], sum[:16])
	return string(out[:])
}

// msgIDPrefix separates this hash from any other the project may compute over
// similar bytes; changing it changes every id (and so breaks deduplication
// across a deploy), so it carries a version.
const (
	msgIDPrefix    = "ubiqo-bridge coord msgid v1\x00"
	msgIDPrefixLen = len(msgIDPrefix)
)

// Validate reports whether c satisfies the invariants of a decoded coordinate:
// a device id accepted by Token (the error wraps ErrBadID otherwise), lat in
// [-90, 90], lon in [-180, 180], a non-zero ts and received_at with years 0
// to 9999 (so they encode as RFC 3339), and optional measurements that are
// finite and in range: speed_kmh >= 0, heading_deg in [0, 360],
// accuracy_m >= 0, battery_pct in [0, 100]. Every Coord returned by a Decoder
// passes; a subscriber may call it on what it reads from the stream.
func (c *Coord) Validate() error {
	if err := checkID(c.DeviceID); err != nil {
		return err
	}
	if !(c.Lat >= -90 && c.Lat <= 90) {
		return fmt.Errorf("lat %v out of range [-90, 90]", c.Lat)
	}
	if !(c.Lon >= -180 && c.Lon <= 180) {
		return fmt.Errorf("lon %v out of range [-180, 180]", c.Lon)
	}
	for _, t := range []struct {
		name string
		t    time.Time
	}{{"ts", c.TS}, {"received_at", c.ReceivedAt}} {
		if t.t.IsZero() {
			return fmt.Errorf("%s missing", t.name)
		}
		if y := t.t.UTC().Year(); y < 0 || y > 9999 {
			return fmt.Errorf("%s year %d out of range [0, 9999]", t.name, y)
		}
	}
	for _, o := range []struct {
		name     string
		v        *float64
		min, max float64
	}{
		{"alt_m", c.AltM, math.Inf(-1), math.Inf(1)},
		{"speed_kmh", c.SpeedKmh, 0, math.Inf(1)},
		{"heading_deg", c.HeadingDeg, 0, 360},
		{"accuracy_m", c.AccuracyM, 0, math.Inf(1)},
		{"battery_pct", c.BatteryPct, 0, 100},
	} {
		if o.v == nil {
			continue
		}
		if v := *o.v; math.IsInf(v, 0) || !(v >= o.min && v <= o.max) {
			return fmt.Errorf("%s %v out of range", o.name, v)
		}
	}
	return nil
}
