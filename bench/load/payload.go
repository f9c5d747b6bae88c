package load

import (
	"math/rand/v2"
	"strconv"
	"time"
)

// A shape is how one kind of device writes its fixes: field names from the
// ingest contract's aliases, the time format (and so its resolution), and
// whether numbers travel as JSON strings. Each device keeps one shape.
type shape struct {
	name    string
	res     time.Duration // resolution of the time format
	weight  int           // share of the fleet, out of the sum of weights
	strings bool          // JSON numbers written as strings ("20.588800")
	fields  []field
}

type field struct {
	key string
	val valueKind
}

type valueKind uint8

const (
	vID          valueKind = iota // the device id as a string
	vIDNumber                     // the device id as a JSON number when it is all digits
	vLat                          // degrees, 6 decimals
	vLon                          // degrees, 6 decimals
	vSpeed                        // km/h
	vHeading                      // degrees
	vAlt                          // metres
	vAccuracy                     // metres
	vBattery                      // percent, integer
	vBatteryPct                   // percent with a % sign in JSON ("85%")
	vBatteryFrac                  // fraction with a decimal point (0.85)
	vTimeLocal                    // "YYYY-MM-DD HH:MM:SS" in the fleet's zone
	vTimeDMY                      // "DD/MM/YYYY HH:MM:SS" in the fleet's zone
	vTimeRFC3339                  // RFC 3339 UTC with milliseconds
	vTimeMillis                   // Unix milliseconds
	vTimeSeconds                  // Unix seconds
	vOpen                         // opens a nested object named key (flattened in queries)
	vClose                        // closes it
)

// shapes are the payload shapes of the fleet. The field names are aliases of
// DESIGN.md "Ingest contract"; a receiver that follows it decodes all of them.
var shapes = []*shape{
	{name: "ubiqo", res: time.Second, weight: 30, fields: []field{
		{"imei", vID}, {"lat", vLat}, {"lng", vLon}, {"speed", vSpeed}, {"rumbo", vHeading},
		{"bateria", vBattery}, {"fechaHora", vTimeLocal},
	}},
	{name: "es-strings", res: time.Second, weight: 10, strings: true, fields: []field{
		{"dispositivo", vIDNumber}, {"latitud", vLat}, {"longitud", vLon}, {"velocidad", vSpeed},
		{"rumbo", vHeading}, {"bateria", vBatteryPct}, {"fecha", vTimeDMY},
	}},
	{name: "rfc3339", res: time.Millisecond, weight: 25, fields: []field{
		{"deviceId", vID}, {"latitude", vLat}, {"longitude", vLon}, {"speed", vSpeed},
		{"heading", vHeading}, {"altitude", vAlt}, {"battery", vBatteryFrac}, {"timestamp", vTimeRFC3339},
	}},
	{name: "nested-ms", res: time.Millisecond, weight: 25, fields: []field{
		{"device_id", vID}, {"position", vOpen}, {"lat", vLat}, {"lon", vLon}, {"alt", vAlt},
		{"accuracy", vAccuracy}, {"", vClose}, {"speed", vSpeed}, {"course", vHeading},
		{"batt", vBattery}, {"ts", vTimeMillis},
	}},
	{name: "epoch", res: time.Second, weight: 10, fields: []field{
		{"uniqueId", vID}, {"lat", vLat}, {"lon", vLon}, {"speed", vSpeed}, {"bearing", vHeading},
		{"batt", vBattery}, {"fix_time", vTimeSeconds},
	}},
}

func pickShape(rng *rand.Rand) *shape {
	total := 0
	for _, s := range shapes {
		total += s.weight
	}
	x := rng.IntN(total)
	for _, s := range shapes {
		if x < s.weight {
			return s
		}
		x -= s.weight
	}
	return shapes[0]
}

// AppendJSON appends the fix as one JSON object in its device's shape.
func (fx *Fix) AppendJSON(dst []byte) []byte {
	dst = append(dst, '{')
	first := true
	for _, f := range fx.shape.fields {
		if f.val == vClose {
			dst = append(dst, '}')
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, '"')
		dst = append(dst, f.key...)
		dst = append(dst, '"', ':')
		if f.val == vOpen {
			dst = append(dst, '{')
			first = true
			continue
		}
		dst = fx.appendValue(dst, f.val, false)
	}
	if fx.Event != "" {
		dst = append(dst, `,"event":"`...)
		dst = append(dst, fx.Event...)
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// AppendQuery appends the fix as URL query parameters (key=value&...,
// without a leading ? or &) in its device's shape, nested objects flattened.
func (fx *Fix) AppendQuery(dst []byte) []byte {
	first := true
	for _, f := range fx.shape.fields {
		if f.val == vOpen || f.val == vClose {
			continue
		}
		if !first {
			dst = append(dst, '&')
		}
		first = false
		dst = append(dst, f.key...)
		dst = append(dst, '=')
		dst = fx.appendValue(dst, f.val, true)
	}
	if fx.Event != "" {
		dst = append(dst, "&event="...)
		dst = append(dst, fx.Event...)
	}
	return dst
}

// appendValue writes one value: query-escaped when query, else as JSON (a
// string, or a number that the shape may quote).
func (fx *Fix) appendValue(dst []byte, v valueKind, query bool) []byte {
	quote := fx.shape.strings && !query
	num := func(dst []byte, x float64, prec int) []byte {
		if quote {
			dst = append(dst, '"')
		}
		dst = strconv.AppendFloat(dst, x, 'f', prec, 64)
		if quote {
			dst = append(dst, '"')
		}
		return dst
	}
	switch v {
	case vID, vIDNumber:
		switch {
		case query:
			return append(dst, fx.qid...)
		case v == vIDNumber && allDigits(fx.Device):
			return append(dst, fx.Device...)
		}
		return append(dst, fx.jid...)
	case vLat:
		return num(dst, fx.Lat, 6)
	case vLon:
		return num(dst, fx.Lon, 6)
	case vSpeed:
		return num(dst, fx.SpeedKmh, 1)
	case vHeading:
		return num(dst, fx.HeadingDeg, 1)
	case vAlt:
		return num(dst, fx.AltM, 1)
	case vAccuracy:
		return num(dst, fx.AccuracyM, 1)
	case vBattery:
		return num(dst, fx.BatteryPct, 0)
	case vBatteryPct:
		if query {
			return num(dst, fx.BatteryPct, 0)
		}
		dst = append(dst, '"')
		dst = strconv.AppendFloat(dst, fx.BatteryPct, 'f', 0, 64)
		return append(dst, '%', '"')
	case vBatteryFrac:
		return num(dst, fx.BatteryPct/100, 2)
	case vTimeMillis:
		return num(dst, float64(fx.Time.UnixMilli()), 0)
	case vTimeSeconds:
		return num(dst, float64(fx.Time.Unix()), 0)
	}
	var layout string
	t := fx.Time.In(fx.loc)
	switch v {
	case vTimeLocal:
		layout = "2006-01-02 15:04:05"
	case vTimeDMY:
		layout = "02/01/2006 15:04:05"
	default: // vTimeRFC3339
		layout = "2006-01-02T15:04:05.000Z07:00"
		t = fx.Time.UTC()
	}
	if query {
		// The layouts hold only digits, - : / . T Z and one space: the
		// space is the only byte to escape.
		n := len(dst)
		dst = t.AppendFormat(dst, layout)
		for i := n; i < len(dst); i++ {
			if dst[i] == ' ' {
				dst[i] = '+'
			}
		}
		return dst
	}
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, layout)
	return append(dst, '"')
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

// namedDevices are the bases of the few ids that are names rather than IMEIs:
// spaces, accents and a slash, to exercise the subject token codec.
var namedDevices = []string{
	"Camión", "Grúa Norte", "Unidad José Pérez", "Moto Ñandú", "Patrulla Querétaro",
	"Reparto Peña/Sur", "Tráiler 5ª Rueda",
}

// deviceIDs returns n distinct ids: 15-digit IMEIs (Luhn check digit
// included), and one name in fifty (at least one from five devices).
func deviceIDs(rng *rand.Rand, n int) []string {
	named := n / 50
	if named == 0 && n >= 5 {
		named = 1
	}
	ids := make([]string, 0, n)
	seen := make(map[string]bool, n)
	for len(ids) < n-named {
		var b [15]byte
		b[0], b[1] = '3', '5' // a common TAC prefix
		for i := 2; i < 14; i++ {
			b[i] = byte('0' + rng.IntN(10))
		}
		b[14] = luhnDigit(b[:14])
		id := string(b[:])
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for i := 0; i < named; i++ {
		ids = append(ids, namedDevices[i%len(namedDevices)]+" "+strconv.Itoa(i/len(namedDevices)+1))
	}
	// Spread the names over the fleet instead of leaving them at the end.
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	return ids
}

// luhnDigit is the check digit that makes digits+check pass the Luhn test,
// as an IMEI's last digit does.
func luhnDigit(digits []byte) byte {
	sum := 0
	for i := len(digits) - 1; i >= 0; i-- {
		d := int(digits[i] - '0')
		if (len(digits)-i)%2 == 1 { // doubled: every second digit from the right of the full number
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return byte('0' + (10-sum%10)%10)
}
