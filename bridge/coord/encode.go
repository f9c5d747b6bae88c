package coord

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// The hand-written JSON writers behind Coord.AppendJSON. They follow
// encoding/json where it matters for readers (string escaping, float format,
// sorted map keys) but never fail: a value that JSON cannot hold is written
// as null.

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes \ufffd;
// U+2028 and U+2029 are escaped as encoding/json does. HTML characters are
// not escaped: the output is a message body, not a web page.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendFloat appends f in the shortest form that parses back to the same
// float64 ('f' format, or 'e' for very small and very large magnitudes, like
// encoding/json). NaN and infinities, which JSON cannot hold, become null.
func appendFloat(dst []byte, f float64) []byte {
	if f == math.Trunc(f) && math.Abs(f) < maxWhole && !(f == 0 && math.Signbit(f)) {
		// A whole number (a speed, heading or battery level often is):
		// the shortest form is its integer digits, and AppendInt writes them
		// several times faster. -0 keeps its sign through AppendFloat.
		return strconv.AppendInt(dst, int64(f), 10)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	dst = strconv.AppendFloat(dst, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// maxWhole bounds the whole numbers appendFloat writes with AppendInt. Below
// it float64 holds every integer and the gap between neighbours is under 1,
// so the shortest form of a whole value is exactly its integer digits.
const maxWhole = 1e15

// appendTime appends t in UTC as an RFC 3339 JSON string with the fraction
// trimmed of trailing zeros (time.RFC3339Nano), as encoding/json writes it.
func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}

// appendRaw appends raw compacted when it is valid JSON, and as a JSON string
// otherwise, so the output is always valid.
func appendRaw(dst []byte, raw []byte) []byte {
	ok, spaced := validate(raw)
	switch {
	case !ok:
		return appendString(dst, string(raw))
	case !spaced && utf8.Valid(raw):
		// Compact already, as the Raw of a decoded Coord is: copied as is,
		// which is what appendCompact would do in a second pass.
		return append(dst, raw...)
	}
	return appendCompact(dst, raw)
}

// appendAny appends v as JSON. It knows the types the decoder puts in attrs
// (nil, bool, string, json.Number, map[string]any, []any) and the common Go
// scalar types; anything else goes through encoding/json, and a value that
// cannot be encoded is written as null.
func appendAny(dst []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(dst, "null"...)
	case bool:
		return strconv.AppendBool(dst, v)
	case string:
		return appendString(dst, v)
	case json.Number:
		if v != "" && validJSON(v) && kindOf(v[0]) == kindNumber {
			return append(dst, v...)
		}
		return appendString(dst, string(v))
	case float64:
		return appendFloat(dst, v)
	case float32:
		return appendFloat(dst, float64(v))
	case int:
		return strconv.AppendInt(dst, int64(v), 10)
	case int64:
		return strconv.AppendInt(dst, v, 10)
	case int32:
		return strconv.AppendInt(dst, int64(v), 10)
	case uint64:
		return strconv.AppendUint(dst, v, 10)
	case uint32:
		return strconv.AppendUint(dst, uint64(v), 10)
	case map[string]any:
		return appendObject(dst, v)
	case []any:
		dst = append(dst, '[')
		for i, x := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendAny(dst, x)
		}
		return append(dst, ']')
	case []string:
		dst = append(dst, '[')
		for i, x := range v {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, x)
		}
		return append(dst, ']')
	case json.RawMessage:
		if len(v) == 0 {
			return append(dst, "null"...)
		}
		return appendRaw(dst, v)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return append(dst, "null"...)
	}
	return appendCompact(dst, b)
}

// appendObject appends m as a JSON object with its keys in sorted (byte)
// order, like encoding/json, so equal maps always encode equally.
func appendObject(dst []byte, m map[string]any) []byte {
	var arr [16]string
	keys := arr[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	dst = append(dst, '{')
	for i, k := range keys {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst = appendAny(dst, m[k])
	}
	return append(dst, '}')
}
