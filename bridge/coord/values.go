package coord

import (
	"math"
	"strconv"
	"strings"
	"time"
)

// isDecimal reports whether s is a decimal number: an optional sign, digits
// with an optional fraction (at least one digit in all), an optional
// exponent. It refuses what strconv.ParseFloat would also take but a GPS
// source never means as a number: "NaN", "Inf", hex floats, underscores.
func isDecimal(s string) bool {
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	digits := 0
	for i < len(s) && isDigit(s[i]) {
		i++
		digits++
	}
	if i < len(s) && s[i] == '.' {
		i++
		for i < len(s) && isDigit(s[i]) {
			i++
			digits++
		}
	}
	if digits == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return false
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	return i == len(s)
}

// epochMillisFrom is the smallest value read as milliseconds, not seconds:
// 1e12 s is in the year 33658, 1e12 ms in 2001.
const epochMillisFrom = 13 // integer digits of 1e12

// epoch reads a decimal number (isDecimal) as Unix time: seconds, or
// milliseconds when the value is at least 1e12, with any fraction, exactly to
// the nanosecond (further digits are cut). Negative values and values past
// the year 9999 are refused.
func epoch(s string) (time.Time, bool) {
	if s[0] == '-' {
		return time.Time{}, false
	}
	if s[0] == '+' {
		s = s[1:]
	}
	mant, exp := s, 0
	if i := indexExp(s); i >= 0 {
		mant = s[:i]
		e, err := strconv.Atoi(s[i+1:])
		if err != nil { // an exponent beyond int: zero, or far too large
			if s[i+1] == '-' {
				return time.Unix(0, 0).UTC(), true
			}
			e = math.MaxInt32
		}
		exp = max(min(e, math.MaxInt32), math.MinInt32)
	}
	intPart, frac := mant, ""
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		intPart, frac = mant[:i], mant[i+1:]
	}
	// The value is 0.D × 10^k, D the digits without leading zeros.
	digit := func(j int) byte { // j-th digit of intPart+frac
		if j < len(intPart) {
			return intPart[j]
		}
		return frac[j-len(intPart)]
	}
	n := len(intPart) + len(frac)
	lead := 0
	for lead < n && digit(lead) == '0' {
		lead++
	}
	if lead == n {
		return time.Unix(0, 0).UTC(), true
	}
	k := int64(len(intPart)-lead) + int64(exp)
	if k >= epochMillisFrom {
		k -= 3
	}
	if k > 12 { // 1e12 s and more: past the year 9999
		return time.Time{}, false
	}
	// d returns the i-th digit of the significand, 0-based, zeros outside.
	d := func(i int64) int64 {
		if i < 0 || i >= int64(n-lead) {
			return 0
		}
		return int64(digit(lead+int(i)) - '0')
	}
	var sec, nsec int64
	for i := int64(0); i < k; i++ {
		sec = sec*10 + d(i)
	}
	for i := k; i < k+9; i++ {
		nsec = nsec*10 + d(i)
	}
	t := time.Unix(sec, nsec).UTC()
	if t.Year() > 9999 {
		return time.Time{}, false
	}
	return t, true
}

// Layouts of the zone-less and zoned ISO forms, with T and with a space
// between date and time. Fractions of a second need no layout: time.Parse accepts them after
// the seconds.
var isoLayouts = [2][4]string{
	{"2006-01-02T15:04:05", "2006-01-02T15:04:05Z07:00", "2006-01-02T15:04:05Z0700", "2006-01-02T15:04:05Z07"},
	{"2006-01-02 15:04:05", "2006-01-02 15:04:05Z07:00", "2006-01-02 15:04:05Z0700", "2006-01-02 15:04:05Z07"},
}

// parseTime reads the textual time forms: RFC 3339 (any fraction, Z or
// offset; a space may stand for the T, and ±hhmm or ±hh for ±hh:mm),
// YYYY-MM-DD[T ]HH:MM:SS[.fff] without a zone and DD/MM/YYYY HH:MM:SS[.fff]
// (both in loc), those two also to the minute and on a 12-hour clock
// (parse12h).
func parseTime(s string, loc *time.Location) (time.Time, bool) {
	if rest, pm, ok := cutMeridiem(s); ok {
		return parse12h(rest, pm, loc)
	}
	return parse24h(s, loc)
}

// parse12h reads a zone-less time s on a 12-hour clock whose a.m. or p.m.
// marker was cut off: its hour must be 1 to 12, and 12 a.m. is midnight.
// Windows and .NET write times so in Mexico: "27/11/2026 03:15:22 p. m.".
func parse12h(s string, pm bool, loc *time.Location) (time.Time, bool) {
	// A 12-hour clock often writes the hour with one digit: "3:15:22".
	if sp := strings.LastIndexAny(s, " Tt"); sp >= 0 && strings.IndexByte(s[sp+1:], ':') == 1 {
		s = s[:sp+1] + "0" + s[sp+1:]
	}
	// Read the wall clock as written, in a zone of its own without
	// daylight saving: read in loc, an hour that does not exist there
	// (spring forward) would move before the p.m. hours are added. A time
	// with a zone or offset of its own comes back in another zone.
	t, ok := parse24h(s, wallClock)
	if !ok || t.Location() != wallClock {
		return time.Time{}, false
	}
	h := t.Hour()
	if h < 1 || h > 12 {
		return time.Time{}, false
	}
	h %= 12
	if pm {
		h += 12
	}
	y, mo, d := t.Date()
	return time.Date(y, mo, d, h, t.Minute(), t.Second(), t.Nanosecond(), loc), true
}

// wallClock is the zone parse12h reads times in: only its identity matters.
var wallClock = time.FixedZone("wall clock", 0)

// cutMeridiem cuts a trailing a.m. or p.m. marker, and the white space
// before it, off s: "am", "a.m.", "a. m." (Spanish locales), "a.m", in any
// case; the spaces may be no-break spaces (U+00A0, U+202F: what ICU and
// newer .NET write). What is left must end with a digit.
func cutMeridiem(s string) (rest string, pm, ok bool) {
	i := len(s)
	if i > 0 && s[i-1] == '.' {
		i--
	}
	if i == 0 || s[i-1]|0x20 != 'm' {
		return s, false, false
	}
	i--
	i = backOverSpace(s, i)
	if i > 0 && s[i-1] == '.' {
		i--
	}
	if i == 0 {
		return s, false, false
	}
	switch s[i-1] | 0x20 {
	case 'a':
	case 'p':
		pm = true
	default:
		return s, false, false
	}
	rest = s[:backOverSpace(s, i-1)]
	if rest == "" || !isDigit(rest[len(rest)-1]) {
		return s, false, false
	}
	return rest, pm, true
}

// backOverSpace returns the index before the spaces (ASCII, U+00A0 and
// U+202F) that end s[:i].
func backOverSpace(s string, i int) int {
	for {
		switch t := s[:i]; {
		case strings.HasSuffix(t, " "):
			i--
		case strings.HasSuffix(t, "\u00a0"):
			i -= len("\u00a0")
		case strings.HasSuffix(t, "\u202f"):
			i -= len("\u202f")
		default:
			return i
		}
	}
}

// parse24h reads the forms of parseTime on a 24-hour clock.
func parse24h(s string, loc *time.Location) (time.Time, bool) {
	if len(s) >= 19 && s[4] == '-' && s[7] == '-' && s[13] == ':' && s[16] == ':' {
		if s[10] == 't' || s[len(s)-1] == 'z' { // RFC 3339 allows lower case
			s = strings.ToUpper(s)
		}
		var layouts *[4]string
		switch s[10] {
		case 'T':
			layouts = &isoLayouts[0]
		case ' ':
			layouts = &isoLayouts[1]
		default:
			return time.Time{}, false
		}
		i := 19
		if i < len(s) && (s[i] == '.' || s[i] == ',') {
			for i++; i < len(s) && isDigit(s[i]); i++ {
			}
		}
		if zone := s[i:]; len(zone) > 1 && zone[0] == ' ' && allDigitsOrColon(zone[1:]) {
			// A "+hh:mm" sent unescaped in a query or form arrives as " hh:mm".
			s = s[:i] + "+" + zone[1:]
		}
		var layout string
		switch zone := s[i:]; {
		case zone == "":
			t, err := time.ParseInLocation(layouts[0], s, loc)
			return t, err == nil
		case zone == "Z" || len(zone) == 6:
			layout = layouts[1]
		case len(zone) == 5:
			layout = layouts[2]
		case len(zone) == 3:
			layout = layouts[3]
		default:
			return time.Time{}, false
		}
		t, err := time.Parse(layout, s)
		return t, err == nil
	}
	if len(s) == 16 && s[4] == '-' && s[7] == '-' && s[13] == ':' && (s[10] == ' ' || s[10] == 'T') {
		// YYYY-MM-DD HH:MM: a time to the minute.
		t, err := time.ParseInLocation("2006-01-02 15:04", s[:10]+" "+s[11:], loc)
		return t, err == nil
	}
	if strings.HasPrefix(s, "/Date(") && strings.HasSuffix(s, ")/") {
		return dotNetDate(s[len("/Date(") : len(s)-len(")/")])
	}
	if strings.IndexByte(s, '/') > 0 {
		t, err := time.ParseInLocation("2/1/2006 15:04:05", s, loc)
		if err != nil {
			t, err = time.ParseInLocation("2/1/2006 15:04", s, loc) // to the minute
		}
		return t, err == nil
	}
	return time.Time{}, false
}

// dotNetDate reads the inside of .NET's JSON date, "/Date(1772366340000)/"
// or "/Date(1772366340000-0600)/": Unix milliseconds (UTC), then an offset
// that only says where the sender was.
func dotNetDate(s string) (time.Time, bool) {
	if i := strings.IndexAny(s[min(1, len(s)):], "+-"); i >= 0 {
		s = s[:i+min(1, len(s))]
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	t := time.UnixMilli(ms).UTC()
	return t, !t.Before(minEpochTime)
}

// batteryScale is how a battery level without "%" is read (Options).
type batteryScale uint8

const (
	batteryAuto batteryScale = iota
	batteryPercent
	batteryFraction
)

// percentOf reads a battery level as a percent in [0, 100]. A string with a
// trailing "%" is always a percent. Otherwise scale says: a percent, a
// fraction in [0, 1], or (auto) a percent unless a value in [0, 1] written
// with a decimal point or exponent (0.87, "1.0"), which is a fraction.
func percentOf(m *member, scale batteryScale) (float64, bool) {
	text, why := numberText(m)
	pct := false
	if why != "" {
		if m.kind != kindString {
			return 0, false
		}
		t := strings.TrimSpace(m.str())
		if !strings.HasSuffix(t, "%") {
			return 0, false
		}
		text = strings.TrimSpace(t[:len(t)-1])
		if !isDecimal(text) {
			return 0, false
		}
		pct = true
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil {
		return 0, false
	}
	switch {
	case pct || scale == batteryPercent:
	case scale == batteryFraction:
		if !(v >= 0 && v <= 1) {
			return 0, false
		}
		v = times100(text, v)
	case v >= 0 && v <= 1 && (strings.IndexByte(text, '.') >= 0 || indexExp(text) >= 0):
		v = times100(text, v)
	}
	if !(v >= 0 && v <= 100) {
		return 0, false
	}
	return v, true
}

// times100 returns the decimal text s (worth v) times 100, exactly: it moves
// the decimal point instead of multiplying, so 0.87 gives 87, not
// 87.00000000000001.
func times100(s string, v float64) float64 {
	mant, exp := s, 0
	if i := indexExp(s); i >= 0 {
		e, err := strconv.Atoi(s[i+1:])
		if err != nil {
			return v * 100
		}
		mant, exp = s[:i], e
	}
	var buf [48]byte
	b := append(buf[:0], mant...)
	b = append(b, 'e')
	b = strconv.AppendInt(b, int64(exp)+2, 10)
	r, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return v * 100
	}
	return r
}

// unitOf reads the value of a speed unit field.
func unitOf(m *member) (speedUnit, bool) {
	if m.kind != kindString {
		return 0, false
	}
	switch strings.ToLower(strings.TrimSpace(m.str())) {
	case "km/h", "kmh", "kph", "kmph", "km/hr":
		return unitKmh, true
	case "knots", "knot", "kn", "kt", "kts", "nudos", "nudo":
		return unitKnots, true
	case "mph", "mi/h":
		return unitMph, true
	case "m/s", "mps":
		return unitMps, true
	}
	return 0, false
}

// toKmh converts v in unit u to km/h. A converted value is rounded to 6
// decimals (a millimetre per hour) so that 10 knots reads 18.52, not
// 18.520000000000003.
func toKmh(v float64, u speedUnit) float64 {
	f := kmhPer[u]
	if f == 1 {
		return v
	}
	r := v * f
	if r < 1e15 {
		r = math.Round(r*1e6) / 1e6
	}
	return r
}

// indexExp returns the index of the first 'e' or 'E' in s, or -1. It is
// strings.IndexAny(s, "eE") for the short texts of numbers, without the
// set-up cost of IndexAny.
func indexExp(s string) int {
	for i := 0; i < len(s); i++ {
		if s[i]|0x20 == 'e' { // 'E' | 0x20 == 'e', and no other byte
			return i
		}
	}
	return -1
}

// parseFloat parses decimal text (isDecimal) as a float64.
func parseFloat(s string) (float64, error) { return strconv.ParseFloat(s, 64) }

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// allDigitsOrColon reports whether z looks like the rest of an offset:
// hh:mm, hhmm or hh.
func allDigitsOrColon(z string) bool {
	switch len(z) {
	case 2, 4:
	case 5:
		if z[2] != ':' {
			return false
		}
		z = z[:2] + z[3:]
	default:
		return false
	}
	for i := 0; i < len(z); i++ {
		if !isDigit(z[i]) {
			return false
		}
	}
	return true
}
