package subscribers

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// decodeCoord reads a canonical JSON v1 body into c. It is the hot path of
// every subscriber: encoding/json (behind Coord.UnmarshalJSON) costs several
// microseconds a message, most of the persister's CPU. decodeFast reads the
// shape the bridge writes (Coord.AppendJSON) without reflection and gives up
// on anything else — an unknown or repeated key, an escape, a null, nesting
// in attrs, any doubt about validity — and then Coord.UnmarshalJSON, the
// reference, decides. A differential test and a fuzz target hold the fast
// path to the reference's results.
//
// TODO(coord): this belongs in bridge/coord as Coord.UnmarshalJSON's own fast
// path; move it there when that package takes it.
func decodeCoord(data []byte, c *coord.Coord) error {
	var fast coord.Coord
	if decodeFast(data, &fast) {
		*c = fast
		return nil
	}
	*c = coord.Coord{}
	return c.UnmarshalJSON(data)
}

// Field bits, to refuse repeated keys.
const (
	fV = 1 << iota
	fDevice
	fTS
	fReceived
	fLat
	fLon
	fAlt
	fSpeed
	fHeading
	fAccuracy
	fBattery
	fEvent
	fTSMissing
	fAttrs
	fRaw
)

// decodeFast reports whether it decoded data into c exactly as
// Coord.UnmarshalJSON would; false means "not sure", never "invalid".
func decodeFast(data []byte, c *coord.Coord) bool {
	// One copy of the body; every string of the result is a slice of it.
	s := string(data)
	i := skipWS(s, 0)
	if i >= len(s) || s[i] != '{' {
		return false
	}
	i = skipWS(s, i+1)
	seen := 0
	if i < len(s) && s[i] == '}' {
		return false // {} : let the reference handle the degenerate case
	}
	for {
		key, end, ok := simpleString(s, i)
		if !ok {
			return false
		}
		i = skipWS(s, end)
		if i >= len(s) || s[i] != ':' {
			return false
		}
		i = skipWS(s, i+1)
		var bit int
		switch key {
		case "v":
			bit = fV
			lit, e, ok := number(s, i)
			if !ok {
				return false
			}
			n, err := strconv.ParseInt(lit, 10, strconv.IntSize)
			if err != nil {
				return false
			}
			c.V, i = int(n), e
		case "device_id", "event":
			bit = fDevice
			if key == "event" {
				bit = fEvent
			}
			str, e, ok := simpleString(s, i)
			if !ok {
				return false
			}
			if key == "event" {
				c.Event = str
			} else {
				c.DeviceID = str
			}
			i = e
		case "ts", "received_at":
			bit = fTS
			t := &c.TS
			if key == "received_at" {
				bit, t = fReceived, &c.ReceivedAt
			}
			_, e, ok := simpleString(s, i)
			if !ok || t.UnmarshalJSON(data[i:e]) != nil {
				return false
			}
			i = e
		case "lat", "lon":
			bit = fLat
			f := &c.Lat
			if key == "lon" {
				bit, f = fLon, &c.Lon
			}
			v, e, ok := float(s, i)
			if !ok {
				return false
			}
			*f, i = v, e
		case "alt_m", "speed_kmh", "heading_deg", "accuracy_m", "battery_pct":
			var p **float64
			switch key {
			case "alt_m":
				bit, p = fAlt, &c.AltM
			case "speed_kmh":
				bit, p = fSpeed, &c.SpeedKmh
			case "heading_deg":
				bit, p = fHeading, &c.HeadingDeg
			case "accuracy_m":
				bit, p = fAccuracy, &c.AccuracyM
			default:
				bit, p = fBattery, &c.BatteryPct
			}
			v, e, ok := float(s, i)
			if !ok {
				return false
			}
			*p, i = &v, e
		case "ts_missing":
			bit = fTSMissing
			switch {
			case hasLit(s, i, "true"):
				c.TSMissing, i = true, i+4
			case hasLit(s, i, "false"):
				c.TSMissing, i = false, i+5
			default:
				return false
			}
		case "attrs":
			bit = fAttrs
			m, e, ok := flatObject(s, i)
			if !ok {
				return false
			}
			c.Attrs, i = m, e
		case "raw":
			bit = fRaw
			if hasLit(s, i, "null") {
				return false
			}
			e, ok := skipValue(s, i, 0)
			if !ok {
				return false
			}
			c.Raw = json.RawMessage(append([]byte(nil), data[i:e]...))
			i = e
		default:
			return false
		}
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		i = skipWS(s, i)
		if i >= len(s) {
			return false
		}
		if s[i] == '}' {
			i++
			break
		}
		if s[i] != ',' {
			return false
		}
		i = skipWS(s, i+1)
	}
	return skipWS(s, i) == len(s)
}

func isWS(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func skipWS(s string, i int) int {
	for i < len(s) && isWS(s[i]) {
		i++
	}
	return i
}

func hasLit(s string, i int, lit string) bool {
	return len(s)-i >= len(lit) && s[i:i+len(lit)] == lit
}

// simpleString reads a JSON string at s[i] that needs no unescaping: no
// backslash, no control character, valid UTF-8. It returns the contents
// (aliasing s) and the index after the closing quote.
func simpleString(s string, i int) (string, int, bool) {
	if i >= len(s) || s[i] != '"' {
		return "", 0, false
	}
	start := i + 1
	ascii := true
	for j := start; j < len(s); j++ {
		switch b := s[j]; {
		case b == '"':
			str := s[start:j]
			if !ascii && !utf8.ValidString(str) {
				return "", 0, false
			}
			return str, j + 1, true
		case b == '\\', b < 0x20:
			return "", 0, false
		case b >= 0x80:
			ascii = false
		}
	}
	return "", 0, false
}

// number reads a JSON number at s[i] (the grammar exactly) and returns its
// literal.
func number(s string, i int) (string, int, bool) {
	j := i
	if j < len(s) && s[j] == '-' {
		j++
	}
	switch {
	case j < len(s) && s[j] == '0':
		j++
	case j < len(s) && s[j] >= '1' && s[j] <= '9':
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
	default:
		return "", 0, false
	}
	if j < len(s) && s[j] == '.' {
		j++
		k := j
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == k {
			return "", 0, false
		}
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		j++
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		k := j
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == k {
			return "", 0, false
		}
	}
	return s[i:j], j, true
}

func float(s string, i int) (float64, int, bool) {
	lit, e, ok := number(s, i)
	if !ok {
		return 0, 0, false
	}
	v, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return 0, 0, false
	}
	return v, e, true
}

// flatObject reads an object of simple keys and scalar values (simple
// strings, numbers as json.Number, true, false, null), the common shape of
// attrs; anything else (nesting, escapes, repeated keys) is left to the
// reference.
func flatObject(s string, i int) (map[string]any, int, bool) {
	if i >= len(s) || s[i] != '{' {
		return nil, 0, false
	}
	m := make(map[string]any, 8)
	i = skipWS(s, i+1)
	if i < len(s) && s[i] == '}' {
		return m, i + 1, true
	}
	for {
		key, end, ok := simpleString(s, i)
		if !ok {
			return nil, 0, false
		}
		if _, dup := m[key]; dup {
			return nil, 0, false
		}
		i = skipWS(s, end)
		if i >= len(s) || s[i] != ':' {
			return nil, 0, false
		}
		i = skipWS(s, i+1)
		if i >= len(s) {
			return nil, 0, false
		}
		var v any
		switch b := s[i]; {
		case b == '"':
			str, e, ok := simpleString(s, i)
			if !ok {
				return nil, 0, false
			}
			v, i = str, e
		case b == '-' || (b >= '0' && b <= '9'):
			lit, e, ok := number(s, i)
			if !ok {
				return nil, 0, false
			}
			v, i = json.Number(lit), e
		case hasLit(s, i, "true"):
			v, i = true, i+4
		case hasLit(s, i, "false"):
			v, i = false, i+5
		case hasLit(s, i, "null"):
			v, i = nil, i+4
		default:
			return nil, 0, false
		}
		m[key] = v
		i = skipWS(s, i)
		if i >= len(s) {
			return nil, 0, false
		}
		if s[i] == '}' {
			return m, i + 1, true
		}
		if s[i] != ',' {
			return nil, 0, false
		}
		i = skipWS(s, i+1)
	}
}

// skipValue returns the end of the JSON value at s[i], checking it as
// strictly as encoding/json does (strings may hold any escape and, as
// there, any non-control byte).
func skipValue(s string, i, depth int) (int, bool) {
	if i >= len(s) || depth > 100 {
		return 0, false
	}
	switch b := s[i]; {
	case b == '"':
		return skipString(s, i)
	case b == '-' || (b >= '0' && b <= '9'):
		_, e, ok := number(s, i)
		return e, ok
	case hasLit(s, i, "true"):
		return i + 4, true
	case hasLit(s, i, "false"):
		return i + 5, true
	case hasLit(s, i, "null"):
		return i + 4, true
	case b == '{' || b == '[':
		closing := byte('}')
		if b == '[' {
			closing = ']'
		}
		i = skipWS(s, i+1)
		if i < len(s) && s[i] == closing {
			return i + 1, true
		}
		for {
			if b == '{' {
				e, ok := skipString(s, i)
				if !ok {
					return 0, false
				}
				i = skipWS(s, e)
				if i >= len(s) || s[i] != ':' {
					return 0, false
				}
				i = skipWS(s, i+1)
			}
			e, ok := skipValue(s, i, depth+1)
			if !ok {
				return 0, false
			}
			i = skipWS(s, e)
			if i >= len(s) {
				return 0, false
			}
			if s[i] == closing {
				return i + 1, true
			}
			if s[i] != ',' {
				return 0, false
			}
			i = skipWS(s, i+1)
		}
	}
	return 0, false
}

func skipString(s string, i int) (int, bool) {
	if i >= len(s) || s[i] != '"' {
		return 0, false
	}
	for j := i + 1; j < len(s); j++ {
		switch b := s[j]; {
		case b == '"':
			return j + 1, true
		case b < 0x20:
			return 0, false
		case b == '\\':
			j++
			if j >= len(s) {
				return 0, false
			}
			switch s[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(s) {
					return 0, false
				}
				for k := j + 1; k <= j+4; k++ {
					if !isHex(s[k]) {
						return 0, false
					}
				}
				j += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}

func isHex(b byte) bool {
	return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F')
}
