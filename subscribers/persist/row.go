package persist

import (
	"encoding/json"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// row is one coordinate as stored.
type row struct {
	msgID      string
	deviceID   string
	ts         time.Time
	receivedAt time.Time
	lat, lon   float64
	altM       *float64
	speedKmh   *float64
	headingDeg *float64
	accuracyM  *float64
	batteryPct *float64
	event      string // "" = NULL
	tsMissing  bool
	attrs      []byte // JSON object or nil
	raw        []byte // JSON or nil
	streamSeq  int64
}

// columns are the written columns, in the order of row's fields.
var columns = []string{
	"msg_id", "device_id", "ts", "received_at", "lat", "lon", "alt_m", "speed_kmh",
	"heading_deg", "accuracy_m", "battery_pct", "event", "ts_missing", "attrs", "raw", "stream_seq",
}

// rowOf maps a delivered message to its row. The message id is the
// Nats-Msg-Id the bridge set (Msg.MsgID falls back to the coordinate's own).
func rowOf(m *subscribers.Msg) row {
	c := &m.Coord
	r := row{
		msgID:      m.MsgID,
		deviceID:   c.DeviceID,
		ts:         c.TS.UTC(),
		receivedAt: c.ReceivedAt.UTC(),
		lat:        c.Lat,
		lon:        c.Lon,
		altM:       c.AltM,
		speedKmh:   c.SpeedKmh,
		headingDeg: c.HeadingDeg,
		accuracyM:  c.AccuracyM,
		batteryPct: c.BatteryPct,
		event:      c.Event,
		tsMissing:  c.TSMissing,
		raw:        c.Raw,
		streamSeq:  int64(m.StreamSeq),
	}
	if len(c.Attrs) > 0 {
		r.attrs = attrsJSON(c)
	}
	if len(r.raw) == 0 || string(r.raw) == "null" {
		r.raw = nil
	}
	return r
}

// attrsJSON encodes the attrs object as the canonical encoding writes it
// (sorted keys, numbers as sent).
func attrsJSON(c *coord.Coord) []byte {
	b, err := json.Marshal(c.Attrs)
	if err != nil {
		return nil
	}
	return b
}

// sqliteTimeLayout is how times are stored in SQLite: UTC, fixed width, so
// text order is time order.
const sqliteTimeLayout = "2006-01-02T15:04:05.000000000Z"
