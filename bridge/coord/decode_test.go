package coord

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func newDecoder(t testing.TB, o Options) *Decoder {
	t.Helper()
	d, err := NewDecoder(o)
	if err != nil {
		t.Fatalf("NewDecoder: %v", err)
	}
	return d
}

// decodeOne decodes a JSON body that must give exactly one accepted
// coordinate.
func decodeOne(t *testing.T, d *Decoder, body string) *Coord {
	t.Helper()
	b, err := d.DecodeJSON([]byte(body), goldenNow)
	if err != nil {
		t.Fatalf("DecodeJSON(%s): %v", body, err)
	}
	if len(b.Coords) != 1 || len(b.Rejected) != 0 {
		t.Fatalf("DecodeJSON(%s): %d coords, rejected %+v; want 1 coord", body, len(b.Coords), b.Rejected)
	}
	checkCoord(t, &b.Coords[0])
	return &b.Coords[0]
}

// decodeRejected decodes a JSON body holding one item that must be rejected,
// and returns the message.
func decodeRejected(t *testing.T, d *Decoder, body string) string {
	t.Helper()
	b, err := d.DecodeJSON([]byte(body), goldenNow)
	if err != nil {
		t.Fatalf("DecodeJSON(%s): %v", body, err)
	}
	if len(b.Coords) != 0 || len(b.Rejected) != 1 || b.Rejected[0].Index != 0 {
		t.Fatalf("DecodeJSON(%s): coords %+v, rejected %+v; want one rejection at 0", body, b.Coords, b.Rejected)
	}
	return b.Rejected[0].Error
}

func fp(v float64) *float64 { return &v }

func fpString(p *float64) string {
	if p == nil {
		return "nil"
	}
	return fmt.Sprint(*p)
}

// getters read a canonical field from a Coord as a comparable string, so one
// table covers every field.
var getters = map[string]func(c *Coord) string{
	"device_id":   func(c *Coord) string { return c.DeviceID },
	"lat":         func(c *Coord) string { return fmt.Sprint(c.Lat) },
	"lon":         func(c *Coord) string { return fmt.Sprint(c.Lon) },
	"ts":          func(c *Coord) string { return c.TS.Format(time.RFC3339Nano) },
	"speed_kmh":   func(c *Coord) string { return fpString(c.SpeedKmh) },
	"heading_deg": func(c *Coord) string { return fpString(c.HeadingDeg) },
	"alt_m":       func(c *Coord) string { return fpString(c.AltM) },
	"accuracy_m":  func(c *Coord) string { return fpString(c.AccuracyM) },
	"battery_pct": func(c *Coord) string { return fpString(c.BatteryPct) },
	"event":       func(c *Coord) string { return c.Event },
}

// TestDecodeAliases decodes, for every documented source name (and the
// spellings that normalization makes equal), an item carrying that name, and
// checks that it lands in its canonical field and not in attrs.
func TestDecodeAliases(t *testing.T) {
	d := newDecoder(t, Options{})
	type alias struct {
		key   string // source key as sent
		value string // JSON value
		field string // canonical field
		want  string // getters[field] of the result
	}
	var cases []alias
	add := func(field, value, want string, keys ...string) {
		for _, k := range keys {
			cases = append(cases, alias{k, value, field, want})
		}
	}
	add("device_id", `"dev-1"`, "dev-1", "device_id", "deviceId", "deviceid", "DEVICE-ID", "Device_Id", "imei", "IMEI", "uniqueId", "unique_id", "dispositivo", "id", "Id")
	add("lat", `12.5`, "12.5", "lat", "Lat", "LAT", "latitude", "Latitude", "latitud")
	add("lon", `-45.25`, "-45.25", "lon", "lng", "long", "longitude", "Longitude", "longitud")
	add("ts", `"2026-03-01T11:00:00Z"`, "2026-03-01T11:00:00Z", "timestamp", "ts", "time", "date", "fecha", "fechaHora", "fecha_hora", "datetime", "dateTime", "fix_time", "fixTime")
	add("speed_kmh", `33`, "33", "speed", "Speed", "velocidad", "speed_kmh", "speedKmh", "speed_kph")
	add("heading_deg", `91`, "91", "heading", "bearing", "course", "rumbo", "heading_deg")
	add("alt_m", `-12`, "-12", "alt", "altitude", "altitud", "elevation", "alt_m")
	add("accuracy_m", `3.5`, "3.5", "accuracy", "acc", "precision", "precision_m", "accuracy_m")
	add("battery_pct", `64`, "64", "batt", "battery", "bateria", "battery_pct", "BatteryPct")
	add("event", `"ignition_on"`, "ignition_on", "event", "evento", "EVENT")

	base := map[string]string{"device_id": `"base"`, "lat": `1`, "lon": `2`}
	for _, a := range cases {
		t.Run(a.field+"/"+a.key, func(t *testing.T) {
			parts := []string{fmt.Sprintf("%q: %s", a.key, a.value)}
			for _, f := range []string{"device_id", "lat", "lon"} {
				if f != a.field {
					parts = append(parts, fmt.Sprintf("%q: %s", f, base[f]))
				}
			}
			body := "{" + strings.Join(parts, ", ") + "}"
			c := decodeOne(t, d, body)
			if got := getters[a.field](c); got != a.want {
				t.Errorf("%s: %s = %q, want %q", body, a.field, got, a.want)
			}
			if _, ok := c.Attrs[a.key]; ok {
				t.Errorf("%s: mapped key %q also kept in attrs %v", body, a.key, c.Attrs)
			}
		})
	}
}

// TestDecodeAliasPriority: when several names of one field are present, the
// earlier one in the documented order wins and the others stay in attrs.
func TestDecodeAliasPriority(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		body  string
		field string
		want  string
		attrs map[string]any
	}{
		{"device_id before imei before id", Options{},
			`{"id": "rec-1", "imei": "3569", "device_id": "d-1", "lat": 1, "lon": 2}`, "device_id", "d-1",
			map[string]any{"id": "rec-1", "imei": "3569"}},
		{"imei before id", Options{},
			`{"id": 77, "imei": 3569, "lat": 1, "lon": 2}`, "device_id", "3569",
			map[string]any{"id": json.Number("77")}},
		{"lat before latitude", Options{},
			`{"device_id": "d", "latitude": 5, "lat": 6, "lon": 2}`, "lat", "6",
			map[string]any{"latitude": json.Number("5")}},
		{"timestamp before time", Options{},
			`{"device_id": "d", "lat": 1, "lon": 2, "time": "2026-03-01T10:00:00Z", "timestamp": "2026-03-01T11:00:00Z"}`, "ts", "2026-03-01T11:00:00Z",
			map[string]any{"time": "2026-03-01T10:00:00Z"}},
		{"null alias falls through to the next", Options{},
			`{"device_id": null, "imei": "3569", "lat": 1, "lon": 2}`, "device_id", "3569",
			map[string]any{"device_id": nil}},
		{"blank alias falls through to the next", Options{},
			`{"device_id": "  ", "imei": "3569", "lat": 1, "lon": 2}`, "device_id", "3569",
			map[string]any{"device_id": "  "}},
		{"same name twice after normalization: first wins", Options{},
			`{"deviceId": "first", "device_id": "second", "lat": 1, "lon": 2}`, "device_id", "first",
			map[string]any{"device_id": "second"}},
		{"exact duplicate key: first wins, no attrs", Options{},
			`{"device_id": "d", "lat": 1, "lat": 7, "lon": 2}`, "lat", "1", nil},
		{"configured alias before built-ins", Options{Aliases: map[string][]string{"device_id": {"unit"}}},
			`{"device_id": "built-in", "unit": "configured", "lat": 1, "lon": 2}`, "device_id", "configured",
			map[string]any{"device_id": "built-in"}},
		{"configured aliases in their order", Options{Aliases: map[string][]string{"lat": {"y_second", "Y-First"}}},
			`{"device_id": "d", "ySecond": 3, "yfirst": 4, "lon": 2}`, "lat", "3",
			map[string]any{"yfirst": json.Number("4")}},
		{"configured alias takes a built-in name from another field", Options{Aliases: map[string][]string{"event": {"id"}}},
			`{"imei": "3569", "id": "evt-9", "lat": 1, "lon": 2}`, "event", "evt-9", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := decodeOne(t, newDecoder(t, tt.opts), tt.body)
			if got := getters[tt.field](c); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.field, got, tt.want)
			}
			if !reflect.DeepEqual(c.Attrs, tt.attrs) {
				t.Errorf("attrs = %#v, want %#v", c.Attrs, tt.attrs)
			}
		})
	}
}

// TestDecodeTimes covers every time form, zone-less ones read in
// America/Mexico_City (UTC-6).
func TestDecodeTimes(t *testing.T) {
	d := newDecoder(t, Options{Location: mexicoCity(t)})
	utc := newDecoder(t, Options{})
	tests := []struct {
		name  string
		value string // JSON value of "timestamp"
		want  string // RFC 3339 UTC; "" = rejected
		utc   string // with the default UTC decoder, when it differs
	}{
		{"RFC 3339 Z", `"2026-03-01T11:59:00Z"`, "2026-03-01T11:59:00Z", ""},
		{"RFC 3339 offset", `"2026-03-01T05:59:00-06:00"`, "2026-03-01T11:59:00Z", ""},
		{"RFC 3339 positive offset", `"2026-03-01T13:29:00+01:30"`, "2026-03-01T11:59:00Z", ""},
		{"RFC 3339 millis", `"2026-03-01T11:59:00.123Z"`, "2026-03-01T11:59:00.123Z", ""},
		{"RFC 3339 nanos", `"2026-03-01T11:59:00.123456789Z"`, "2026-03-01T11:59:00.123456789Z", ""},
		{"RFC 3339 lower case", `"2026-03-01t11:59:00z"`, "2026-03-01T11:59:00Z", ""},
		{"a + offset that arrived as a space (unescaped in a query)", `"2026-03-01T13:29:00 01:30"`, "2026-03-01T11:59:00Z", ""},
		{"the same, hhmm", `"2026-03-01 12:59:00 0100"`, "2026-03-01T11:59:00Z", ""},
		{"offset without colon", `"2026-03-01T05:59:00-0600"`, "2026-03-01T11:59:00Z", ""},
		{"offset hours only", `"2026-03-01T05:59:00-06"`, "2026-03-01T11:59:00Z", ""},
		{"space and Z", `"2026-03-01 11:59:00Z"`, "2026-03-01T11:59:00Z", ""},
		{"ISO without zone", `"2026-03-01T05:59:00"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"ISO without zone, fraction", `"2026-03-01T05:59:00.250"`, "2026-03-01T11:59:00.25Z", "2026-03-01T05:59:00.25Z"},
		{"space without zone", `"2026-03-01 05:59:00"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"space without zone, comma fraction", `"2026-03-01 05:59:00,5"`, "2026-03-01T11:59:00.5Z", "2026-03-01T05:59:00.5Z"},
		{"DD/MM/YYYY", `"01/03/2026 05:59:00"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"D/M/YYYY", `"1/3/2026 5:59:00"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"epoch seconds", `1772366340`, "2026-03-01T11:59:00Z", ""},
		{"epoch seconds string", `" 1772366340 "`, "2026-03-01T11:59:00Z", ""},
		{"epoch seconds fraction", `1772366340.5`, "2026-03-01T11:59:00.5Z", ""},
		{"epoch seconds exact nanos", `"1772366340.123456789"`, "2026-03-01T11:59:00.123456789Z", ""},
		{"epoch seconds exponent", `1.77236634e9`, "2026-03-01T11:59:00Z", ""},
		{"epoch millis", `1772366340123`, "2026-03-01T11:59:00.123Z", ""},
		{"epoch millis string", `"1772366340123"`, "2026-03-01T11:59:00.123Z", ""},
		{"epoch millis fraction", `1772366340123.5`, "2026-03-01T11:59:00.1235Z", ""},
		{"1e12 is millis", `1000000000000`, "2001-09-09T01:46:40Z", ""},
		{"just under 1e12 is seconds, too far ahead", `999999999999`, "", ""},
		{"epoch zero (a device without a fix)", `0`, "", ""},
		{"a clock time is not a Unix time", `"115900"`, "", ""},
		{"a bare date is not a Unix time", `"20260301"`, "", ""},
		{"a year is not a Unix time", `"2026"`, "", ""},
		{"first plausible Unix second", `946684800`, "2000-01-01T00:00:00Z", ""},
		{"negative epoch", `-5`, "", ""},
		{"words", `"yesterday"`, "", ""},
		{"no such day", `"2026-02-30T10:00:00Z"`, "", ""},
		{"to the minute", `"2026-03-01 05:59"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"to the minute, T", `"2026-03-01T05:59"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"DD/MM/YYYY to the minute", `"01/03/2026 05:59"`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{".NET JSON date", `"/Date(1772366340000)/"`, "2026-03-01T11:59:00Z", ""},
		{".NET JSON date with its offset", `"/Date(1772366340000-0600)/"`, "2026-03-01T11:59:00Z", ""},
		{".NET JSON date, garbage", `"/Date(abc)/"`, "", ""},
		{"12-hour clock, a. m. (es-MX)", `"01/03/2026 05:59:00 a. m."`, "2026-03-01T11:59:00Z", "2026-03-01T05:59:00Z"},
		{"12-hour clock, p. m. (es-MX)", `"28/02/2026 05:59:00 p. m."`, "2026-02-28T23:59:00Z", "2026-02-28T17:59:00Z"},
		{"12-hour clock, one-digit hour and no-break spaces (ICU)", `"28/2/2026 5:59:00\u00a0p.\u00a0m."`, "2026-02-28T23:59:00Z", "2026-02-28T17:59:00Z"},
		{"12-hour clock, narrow no-break space and PM", `"2026-02-28 5:59:00\u202fPM"`, "2026-02-28T23:59:00Z", "2026-02-28T17:59:00Z"},
		{"12-hour clock, pm without a space, to the minute", `"2026-02-28 05:59pm"`, "2026-02-28T23:59:00Z", "2026-02-28T17:59:00Z"},
		{"12-hour clock, a.m. with a fraction", `"2026-03-01T05:59:00.5 a.m."`, "2026-03-01T11:59:00.5Z", "2026-03-01T05:59:00.5Z"},
		{"12 a.m. is midnight", `"01/03/2026 12:30:00 AM"`, "2026-03-01T06:30:00Z", "2026-03-01T00:30:00Z"},
		{"12 p.m. is noon", `"28/02/2026 12:30:00 PM"`, "2026-02-28T18:30:00Z", "2026-02-28T12:30:00Z"},
		{"12-hour clock, hour 13", `"01/03/2026 13:30:00 p. m."`, "", ""},
		{"12-hour clock, hour 0", `"01/03/2026 00:30:00 a. m."`, "", ""},
		{"12-hour clock with a zone", `"2026-03-01T05:59:00-06:00 PM"`, "", ""},
		{"a marker alone", `"p. m."`, "", ""},
		{"hours only", `"2026-03-01 05"`, "", ""},
		{"US order month 13", `"03/13/2026 05:59:00"`, "", ""},
		{"bad zone", `"2026-03-01T05:59:00 CST"`, "", ""},
		{"boolean", `true`, "", ""},
		{"object", `{"s": 1}`, "", ""},
		{"NaN string", `"NaN"`, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := `{"device_id": "t", "lat": 1, "lon": 2, "timestamp": ` + tt.value + `}`
			if tt.want == "" {
				msg := decodeRejected(t, d, body)
				if !strings.HasPrefix(msg, "timestamp ") {
					t.Errorf("message %q does not name the field", msg)
				}
				return
			}
			for _, dec := range []struct {
				d    *Decoder
				want string
			}{{d, tt.want}, {utc, cmp.Or(tt.utc, tt.want)}} {
				c := decodeOne(t, dec.d, body)
				if got := c.TS.Format(time.RFC3339Nano); got != dec.want {
					t.Errorf("ts = %s, want %s", got, dec.want)
				}
				if c.TS.Location() != time.UTC || c.TSMissing {
					t.Errorf("ts %v must be UTC and not flagged missing (%v)", c.TS, c.TSMissing)
				}
			}
		})
	}
}

// When the best-ranked time field does not read (a bare date in "fecha"
// beside "fechaHora", a clock time in "time" beside "datetime"), the next
// one that does gives the fix time; the other stays in attrs.
func TestDecodeTimeFallsBackToAnotherTimeField(t *testing.T) {
	d := newDecoder(t, Options{})
	want := "2026-03-01T11:59:00Z"
	for _, body := range []string{
		`{"imei":"356938035643809","latitud":20.5888,"longitud":-100.3899,"fecha":"2026-03-01","fechaHora":"2026-03-01 11:59:00"}`,
		`{"imei":"356938035643809","latitud":20.5888,"longitud":-100.3899,"fecha":"01/03/2026","fechaHora":"01/03/2026 11:59:00"}`,
		`{"imei":"356938035643809","lat":20.5888,"lon":-100.3899,"time":"11:59:00","datetime":"2026-03-01T11:59:00Z"}`,
		`{"imei":"356938035643809","lat":20.5888,"lon":-100.3899,"date":"2026-03-01","fix_time":"2026-03-01T11:59:00Z"}`,
	} {
		c := decodeOne(t, d, body)
		if got := c.TS.Format(time.RFC3339); got != want || c.TSMissing {
			t.Errorf("%s: ts %s (missing %v), want %s", body, got, c.TSMissing, want)
		}
		if len(c.Attrs) == 0 {
			t.Errorf("%s: the unread time field is not kept in attrs", body)
		}
	}
	// When none reads, the best-ranked one is named.
	msg := decodeRejected(t, d, `{"device_id":"a","lat":1,"lon":2,"time":"11:59:00","fecha":"ayer"}`)
	if !strings.Contains(msg, "11:59:00") {
		t.Errorf("message %q does not name the best-ranked time field", msg)
	}
}

// A lone top-level lat is not paired with the longitude of a nested
// object that holds a position of its own: the nested pair is the position.
func TestDecodeLatLonFromOneObject(t *testing.T) {
	d := newDecoder(t, Options{})
	c := decodeOne(t, d, `{"imei":"356938035643809","lat":20.5888,"lon":null,"position":{"lat":19.4326,"lon":-99.1332}}`)
	if c.Lat != 19.4326 || c.Lon != -99.1332 {
		t.Errorf("got (%v, %v), want the nested pair (19.4326, -99.1332)", c.Lat, c.Lon)
	}
	if _, ok := c.Attrs["lat"]; !ok {
		t.Errorf("the unused top-level lat is not kept in attrs: %v", c.Attrs)
	}
}

// A location string holding a place name does not hide a nested position;
// without one, the string's problem is named.
func TestDecodeLocationNameBesideNestedPosition(t *testing.T) {
	d := newDecoder(t, Options{})
	for _, body := range []string{
		`{"imei":"356938035643809","location":"Querétaro, Qro.","position":{"lat":20.5888,"lon":-100.3899}}`,
		`{"imei":"356938035643809","location":"Querétaro","coords":{"lat":20.5888,"lon":-100.3899}}`,
	} {
		c := decodeOne(t, d, body)
		if c.Lat != 20.5888 || c.Lon != -100.3899 {
			t.Errorf("%s: (%v, %v)", body, c.Lat, c.Lon)
		}
	}
	if msg := decodeRejected(t, d, `{"imei":"356938035643809","location":"Querétaro"}`); !strings.Contains(msg, "location") {
		t.Errorf("message %q does not name location", msg)
	}
}

func TestDecodeAccentedSpanishNames(t *testing.T) {
	d := newDecoder(t, Options{})
	c := decodeOne(t, d, `{"imei":"356938035643809","latitud":20.5888,"longitud":-100.3899,"batería":55,"precisión":5,"Velocidad":40}`)
	if c.BatteryPct == nil || *c.BatteryPct != 55 || c.AccuracyM == nil || *c.AccuracyM != 5 {
		t.Errorf("battery %v accuracy %v (attrs %v)", fpString(c.BatteryPct), fpString(c.AccuracyM), c.Attrs)
	}
}

// A wrapper's device id goes to its items that have none.
func TestDecodeWrapperDeviceID(t *testing.T) {
	d := newDecoder(t, Options{})
	b, err := d.DecodeJSON([]byte(`{"imei":"356938035643809","points":[{"lat":20.5888,"lon":-100.3899,"ts":1772366340},{"imei":"other","lat":20.5890,"lon":-100.3901,"ts":1772366350}]}`), goldenNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Coords) != 2 || b.Coords[0].DeviceID != "356938035643809" || b.Coords[1].DeviceID != "other" {
		t.Fatalf("coords %+v rejected %+v", b.Coords, b.Rejected)
	}
}

// A null written as text ("null", "undefined"), as a query string carries
// a sender's null, counts as no value: no device called "null", a time
// "null" is a missing time.
func TestDecodeNullAsText(t *testing.T) {
	d := newDecoder(t, Options{})
	u, _ := url.ParseQuery("imei=null&deviceId=u7&lat=20.5888&lon=-100.3899&fechaHora=null")
	b, err := d.DecodeValues(u, goldenNow)
	if err != nil || len(b.Coords) != 1 {
		t.Fatalf("err %v, batch %+v", err, b)
	}
	if c := b.Coords[0]; c.DeviceID != "u7" || !c.TSMissing {
		t.Errorf("device %q (want u7 from the next alias), ts missing %v (want true)", c.DeviceID, c.TSMissing)
	}
	if msg := decodeRejected(t, d, `{"device_id":"undefined","lat":1,"lon":2}`); !strings.Contains(msg, "device_id missing") {
		t.Errorf("message %q", msg)
	}
}

func TestDecodeTimeMessages(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct{ value, want string }{
		{`"yesterday"`, `timestamp "yesterday" is not a recognised time (want RFC 3339, YYYY-MM-DD HH:MM[:SS] or DD/MM/YYYY HH:MM[:SS] on a 24-hour clock or with a.m./p.m., /Date(ms)/, or Unix seconds or milliseconds)`},
		{`true`, `timestamp must be a string or a number, got a boolean`},
		{`"2026-03-01T12:10:01Z"`, `timestamp "2026-03-01T12:10:01Z" is 10m1s ahead of the receive time (max 10m0s)`},
		{`1772367001`, `timestamp 1772367001 is 10m1s ahead of the receive time (max 10m0s)`},
	}
	for _, tt := range tests {
		body := `{"device_id": "t", "lat": 1, "lon": 2, "timestamp": ` + tt.value + `}`
		if got := decodeRejected(t, d, body); got != tt.want {
			t.Errorf("%s:\n got %s\nwant %s", tt.value, got, tt.want)
		}
	}
}

// TestDecodeFuture: a fix time up to MaxFuture ahead is accepted, one
// nanosecond more is not; MaxFuture is configurable.
func TestDecodeFuture(t *testing.T) {
	body := func(ts time.Time) string {
		return `{"device_id": "f", "lat": 1, "lon": 2, "ts": "` + ts.Format(time.RFC3339Nano) + `"}`
	}
	def := newDecoder(t, Options{})
	if c := decodeOne(t, def, body(goldenNow.Add(10*time.Minute))); !c.TS.Equal(goldenNow.Add(10 * time.Minute)) {
		t.Errorf("ts = %v", c.TS)
	}
	decodeRejected(t, def, body(goldenNow.Add(10*time.Minute+time.Nanosecond)))

	wide := newDecoder(t, Options{MaxFuture: time.Hour})
	decodeOne(t, wide, body(goldenNow.Add(59*time.Minute)))
	if msg := decodeRejected(t, wide, body(goldenNow.Add(61*time.Minute))); !strings.Contains(msg, "(max 1h0m0s)") {
		t.Errorf("message %q does not give the limit", msg)
	}
	// The past has no limit.
	decodeOne(t, def, body(time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)))
}

// TestDecodeTSMissing: no time field, or a null / blank one, means the
// receive time, flagged.
func TestDecodeTSMissing(t *testing.T) {
	d := newDecoder(t, Options{})
	now := time.Date(2026, 3, 1, 6, 0, 0, 0, mexicoCity(t)) // = 12:00Z
	for _, body := range []string{
		`{"device_id": "m", "lat": 1, "lon": 2}`,
		`{"device_id": "m", "lat": 1, "lon": 2, "timestamp": null}`,
		`{"device_id": "m", "lat": 1, "lon": 2, "timestamp": " "}`,
	} {
		b, err := d.DecodeJSON([]byte(body), now)
		if err != nil || len(b.Coords) != 1 {
			t.Fatalf("%s: %v %+v", body, err, b)
		}
		c := b.Coords[0]
		if !c.TSMissing || !c.TS.Equal(goldenNow) || !c.ReceivedAt.Equal(goldenNow) {
			t.Errorf("%s: ts %v missing %v received %v; want the receive time, flagged", body, c.TS, c.TSMissing, c.ReceivedAt)
		}
		if c.TS.Location() != time.UTC || c.ReceivedAt.Location() != time.UTC {
			t.Errorf("%s: times not in UTC: %v %v", body, c.TS, c.ReceivedAt)
		}
	}
	// A time that is given is not flagged, and received_at is still now.
	c := decodeOne(t, d, `{"device_id": "m", "lat": 1, "lon": 2, "ts": 1772366000}`)
	if c.TSMissing || !c.ReceivedAt.Equal(goldenNow) {
		t.Errorf("ts_missing %v, received_at %v", c.TSMissing, c.ReceivedAt)
	}
}

// TestDecodeNumbers: numbers as JSON numbers or strings, with spaces; device
// ids from numbers keep their digits.
func TestDecodeNumbers(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct {
		name, body string
		field      string
		want       string
	}{
		{"lat string", `{"device_id": "n", "lat": "19.43", "lon": 1}`, "lat", "19.43"},
		{"lat string with spaces", `{"device_id": "n", "lat": " 19.43 ", "lon": 1}`, "lat", "19.43"},
		{"lon string negative", `{"device_id": "n", "lat": 1, "lon": "-99.13"}`, "lon", "-99.13"},
		{"lat string with plus", `{"device_id": "n", "lat": "+19.5", "lon": 1}`, "lat", "19.5"},
		{"lat string exponent", `{"device_id": "n", "lat": "1.95e1", "lon": 1}`, "lat", "19.5"},
		{"lat boundary", `{"device_id": "n", "lat": -90, "lon": 180}`, "lat", "-90"},
		{"lon boundary", `{"device_id": "n", "lat": 90, "lon": -180}`, "lon", "-180"},
		{"speed string", `{"device_id": "n", "lat": 1, "lon": 1, "speed": "45.5"}`, "speed_kmh", "45.5"},
		{"heading string", `{"device_id": "n", "lat": 1, "lon": 1, "heading": " 360 "}`, "heading_deg", "360"},
		{"alt string", `{"device_id": "n", "lat": 1, "lon": 1, "alt": "-3.5"}`, "alt_m", "-3.5"},
		{"imei number keeps digits", `{"imei": 356938035643809, "lat": 1, "lon": 1}`, "device_id", "356938035643809"},
		{"id number beyond float precision", `{"id": 12345678901234567890123, "lat": 1, "lon": 1}`, "device_id", "12345678901234567890123"},
		{"id number as written", `{"id": 1.50, "lat": 1, "lon": 1}`, "device_id", "1.50"},
		{"id string trimmed", `{"id": "  abc  ", "lat": 1, "lon": 1}`, "device_id", "abc"},
		{"event number as written", `{"device_id": "n", "lat": 1, "lon": 1, "event": 17}`, "event", "17"},
		{"event string trimmed", `{"device_id": "n", "lat": 1, "lon": 1, "event": " sos "}`, "event", "sos"},
		{"escaped string", `{"device_id": "n\u00e9", "lat": "\u0031\u0039", "lon": 1}`, "lat", "19"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := decodeOne(t, d, tt.body)
			if got := getters[tt.field](c); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.field, got, tt.want)
			}
		})
	}
}

// TestDecodeBattery: fractions written with a point or exponent become
// percent, integers are percent, out of range stays in attrs.
func TestDecodeBattery(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct {
		value string
		want  *float64 // nil: not mapped, kept in attrs
	}{
		{`0.87`, fp(87)},
		{`"0.5"`, fp(50)},
		{`1.0`, fp(100)},
		{`0.0`, fp(0)},
		{`5e-1`, fp(50)},
		{`0.123`, fp(12.3)},
		{`1`, fp(1)},
		{`0`, fp(0)},
		{`87`, fp(87)},
		{`"87"`, fp(87)},
		{`87.5`, fp(87.5)},
		{`100`, fp(100)},
		{`"87%"`, fp(87)},
		{`"0.5 %"`, fp(0.5)},
		{`100.5`, nil},
		{`150`, nil},
		{`-5`, nil},
		{`-0.5`, nil},
		{`"full"`, nil},
		{`"%"`, nil},
		{`true`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			c := decodeOne(t, d, `{"device_id": "b", "lat": 1, "lon": 1, "battery": `+tt.value+`}`)
			if fpString(c.BatteryPct) != fpString(tt.want) {
				t.Errorf("battery_pct = %s, want %s", fpString(c.BatteryPct), fpString(tt.want))
			}
			_, inAttrs := c.Attrs["battery"]
			if inAttrs != (tt.want == nil) {
				t.Errorf("battery in attrs = %v, want %v (attrs %v)", inAttrs, tt.want == nil, c.Attrs)
			}
		})
	}
}

// With ingest.battery_scale set, the sender's scale is known: "1.0" from a
// percent sender is 1 %, "1" from a fraction sender is 100 %.
func TestDecodeBatteryScale(t *testing.T) {
	for _, tt := range []struct {
		scale, value string
		want         *float64
	}{
		{"percent", `1.0`, fp(1)},
		{"percent", `0.5`, fp(0.5)},
		{"percent", `87`, fp(87)},
		{"percent", `"0.5%"`, fp(0.5)},
		{"fraction", `1`, fp(100)},
		{"fraction", `0.87`, fp(87)},
		{"fraction", `0`, fp(0)},
		{"fraction", `87`, nil}, // not a fraction: kept in attrs
		{"fraction", `"87%"`, fp(87)},
	} {
		d := newDecoder(t, Options{BatteryScale: tt.scale})
		c := decodeOne(t, d, `{"device_id": "b", "lat": 1, "lon": 1, "battery": `+tt.value+`}`)
		if fpString(c.BatteryPct) != fpString(tt.want) {
			t.Errorf("%s %s: battery_pct = %s, want %s", tt.scale, tt.value, fpString(c.BatteryPct), fpString(tt.want))
		}
	}
	if _, err := NewDecoder(Options{BatteryScale: "per-mille"}); err == nil {
		t.Error("an unknown battery scale was accepted")
	}
}

// TestDecodeSpeed: km/h by default; unit fields and unit-named fields
// convert; an unknown unit leaves speed and unit in attrs.
func TestDecodeSpeed(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct {
		name   string
		fields string
		want   *float64
		attrs  []string // keys that must be in attrs
	}{
		{"default km/h", `"speed": 50`, fp(50), nil},
		{"knots unit", `"speed": 10, "speed_unit": "knots"`, fp(18.52), nil},
		{"kn", `"speed": 10, "speedUnit": "kn"`, fp(18.52), nil},
		{"kt upper case", `"speed": 10, "speed_unit": " KT "`, fp(18.52), nil},
		{"nudos", `"velocidad": 10, "unidad_velocidad": "nudos"`, fp(18.52), nil},
		{"mph", `"speed": 10, "speed_unit": "mph"`, fp(16.09344), nil},
		{"m/s", `"speed": 10, "speed_unit": "m/s"`, fp(36), nil},
		{"mps", `"speed": 2.5, "speed_unit": "mps"`, fp(9), nil},
		{"explicit km/h", `"speed": 10, "speed_unit": "km/h"`, fp(10), nil},
		{"speed_knots", `"speed_knots": 10`, fp(18.52), nil},
		{"speedKnots", `"speedKnots": "1"`, fp(1.852), nil},
		{"speed_mps", `"speed_mps": 10`, fp(36), nil},
		{"speed_knots ignores the unit field", `"speed_knots": 10, "speed_unit": "mph"`, fp(18.52), []string{"speed_unit"}},
		{"unknown unit", `"speed": 10, "speed_unit": "furlongs"`, nil, []string{"speed", "speed_unit"}},
		{"unit without speed stays", `"speed_unit": "knots"`, nil, []string{"speed_unit"}},
		{"negative speed", `"speed": -1, "speed_unit": "knots"`, nil, []string{"speed", "speed_unit"}},
		{"zero", `"speed": 0`, fp(0), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := decodeOne(t, d, `{"device_id": "s", "lat": 1, "lon": 1, `+tt.fields+`}`)
			if fpString(c.SpeedKmh) != fpString(tt.want) {
				t.Errorf("speed_kmh = %s, want %s", fpString(c.SpeedKmh), fpString(tt.want))
			}
			if len(c.Attrs) != len(tt.attrs) {
				t.Errorf("attrs = %v, want keys %v", c.Attrs, tt.attrs)
			}
			for _, k := range tt.attrs {
				if _, ok := c.Attrs[k]; !ok {
					t.Errorf("attrs = %v, want key %q", c.Attrs, k)
				}
			}
		})
	}
}

// TestDecodeOptionalInvalid: an unusable optional value never rejects the
// coordinate; it stays in attrs unchanged.
func TestDecodeOptionalInvalid(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct {
		field string
		value string
		attr  any
	}{
		{"heading", `400`, json.Number("400")},
		{"heading", `-1`, json.Number("-1")},
		{"speed", `-3`, json.Number("-3")},
		{"speed", `"fast"`, "fast"},
		{"accuracy", `-0.5`, json.Number("-0.5")},
		{"altitude", `"high"`, "high"},
		{"altitude", `"1e999"`, "1e999"},
		{"altitude", `[1]`, []any{json.Number("1")}},
		{"battery", `true`, true},
		{"battery", `101`, json.Number("101")},
		{"event", `false`, false},
		{"event", `{"code": 1}`, map[string]any{"code": json.Number("1")}},
	}
	for _, tt := range tests {
		t.Run(tt.field+"="+tt.value, func(t *testing.T) {
			c := decodeOne(t, d, `{"device_id": "o", "lat": 1, "lon": 1, "`+tt.field+`": `+tt.value+`}`)
			if c.AltM != nil || c.SpeedKmh != nil || c.HeadingDeg != nil || c.AccuracyM != nil || c.BatteryPct != nil || c.Event != "" {
				t.Errorf("an invalid %s was mapped: %s", tt.field, c.AppendJSON(nil))
			}
			if want := map[string]any{tt.field: tt.attr}; !reflect.DeepEqual(c.Attrs, want) {
				t.Errorf("attrs = %#v, want %#v", c.Attrs, want)
			}
		})
	}
}

// TestDecodeNested: coords / location / position objects hold fields; the
// top level wins; their leftovers stay in attrs under their own key.
func TestDecodeNested(t *testing.T) {
	d := newDecoder(t, Options{})
	tests := []struct {
		name     string
		body     string
		lat, lon float64
		attrs    map[string]any
		check    func(t *testing.T, c *Coord)
	}{
		{"coords", `{"device_id": "n", "coords": {"lat": 19.1, "lon": -99.1}}`, 19.1, -99.1, nil, nil},
		{"Location object, case-insensitive", `{"device_id": "n", "Location": {"Latitude": 19.2, "LNG": -99.2}}`, 19.2, -99.2, nil, nil},
		{"position with leftovers", `{"device_id": "n", "position": {"lat": 19.3, "lon": -99.3, "hdop": 0.8}}`, 19.3, -99.3,
			map[string]any{"position": map[string]any{"hdop": json.Number("0.8")}}, nil},
		{"top level wins", `{"device_id": "n", "lat": 1, "lon": 2, "coords": {"lat": 3, "lon": 4}}`, 1, 2,
			map[string]any{"coords": map[string]any{"lat": json.Number("3"), "lon": json.Number("4")}}, nil},
		{"lat and lon come from one object", `{"device_id": "n", "position": {"lat": 5, "lon": 6}, "coords": {"lat": 3}}`, 5, 6,
			map[string]any{"coords": map[string]any{"lat": json.Number("3")}}, nil},
		{"first object holding a field wins when none holds both", `{"device_id": "n", "position": {"lon": 6, "lat": null}, "location": {"lat": 4}, "coords": {"lat": 3}}`, 3, 6,
			map[string]any{"location": map[string]any{"lat": json.Number("4")}, "position": map[string]any{"lat": nil}}, nil},
		{"device id and time nested", `{"position": {"device_id": "deep", "lat": 1, "lon": 2, "ts": "2026-03-01T11:00:00Z", "speed": 7}}`, 1, 2, nil,
			func(t *testing.T, c *Coord) {
				if c.DeviceID != "deep" || c.TSMissing || c.SpeedKmh == nil || *c.SpeedKmh != 7 {
					t.Errorf("nested fields not mapped: %s", c.AppendJSON(nil))
				}
			}},
		{"unit field beside a nested speed", `{"device_id": "n", "location": {"lat": 1, "lon": 2, "speed": 10, "speed_unit": "kn"}}`, 1, 2, nil,
			func(t *testing.T, c *Coord) {
				if c.SpeedKmh == nil || *c.SpeedKmh != 18.52 {
					t.Errorf("speed_kmh = %s, want 18.52", fpString(c.SpeedKmh))
				}
			}},
		{"top-level unit applies to a nested speed", `{"device_id": "n", "speed_unit": "mph", "location": {"lat": 1, "lon": 2, "speed": 10}}`, 1, 2, nil,
			func(t *testing.T, c *Coord) {
				if c.SpeedKmh == nil || *c.SpeedKmh != 16.09344 {
					t.Errorf("speed_kmh = %s, want 16.09344", fpString(c.SpeedKmh))
				}
			}},
		{"unused nested object kept whole", `{"device_id": "n", "lat": 1, "lon": 2, "position": {}}`, 1, 2,
			map[string]any{"position": map[string]any{}}, nil},
		{"only one level deep", `{"device_id": "n", "lat": 1, "lon": 2, "position": {"coords": {"speed": 3}}}`, 1, 2,
			map[string]any{"position": map[string]any{"coords": map[string]any{"speed": json.Number("3")}}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := decodeOne(t, d, tt.body)
			if c.Lat != tt.lat || c.Lon != tt.lon {
				t.Errorf("lat, lon = %v, %v, want %v, %v", c.Lat, c.Lon, tt.lat, tt.lon)
			}
			if !reflect.DeepEqual(c.Attrs, tt.attrs) {
				t.Errorf("attrs = %#v, want %#v", c.Attrs, tt.attrs)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// TestDecodeLocationString: "location": "lat,lon" stands for both when
// neither is given.
func TestDecodeLocationString(t *testing.T) {
	d := newDecoder(t, Options{})
	c := decodeOne(t, d, `{"device_id": "l", "location": " 19.4326 , -99.1332 "}`)
	if c.Lat != 19.4326 || c.Lon != -99.1332 || c.Attrs != nil {
		t.Errorf("lat, lon = %v, %v, attrs %v", c.Lat, c.Lon, c.Attrs)
	}
	c = decodeOne(t, d, `{"device_id": "l", "lat": 1, "lon": 2, "location": "3,4"}`)
	if c.Lat != 1 || c.Lon != 2 || c.Attrs["location"] != "3,4" {
		t.Errorf("top-level lat/lon must win and keep location in attrs: %s", c.AppendJSON(nil))
	}
	for body, want := range map[string]string{
		`{"device_id": "l", "location": "Centro"}`:        `location "Centro" is not "lat,lon"`,
		`{"device_id": "l", "location": "1,2,3"}`:         `location "1,2,3" is not "lat,lon"`,
		`{"device_id": "l", "location": "95,-99"}`:        `location lat 95 out of range [-90, 90]`,
		`{"device_id": "l", "Location": "19,-200"}`:       `Location lon -200 out of range [-180, 180]`,
		`{"device_id": "l", "location": "1,2", "lat": 3}`: `lon missing`,
	} {
		if got := decodeRejected(t, d, body); got != want {
			t.Errorf("%s:\n got %s\nwant %s", body, got, want)
		}
	}
}

// TestDecodeRejections: every way a required field can fail, with the exact
// message, naming the field as the sender wrote it.
func TestDecodeRejections(t *testing.T) {
	d := newDecoder(t, Options{})
	long := strings.Repeat("x", 129)
	tests := []struct{ name, body, want string }{
		{"no device", `{"lat": 1, "lon": 2}`, "device_id missing"},
		{"blank device", `{"device_id": " \t", "lat": 1, "lon": 2}`, "device_id missing"},
		{"device object", `{"device_id": {}, "lat": 1, "lon": 2}`, "device_id must be a string or a number, got an object"},
		{"device bool", `{"imei": true, "lat": 1, "lon": 2}`, "imei must be a string or a number, got a boolean"},
		{"device 129 bytes", `{"device_id": "` + long + `", "lat": 1, "lon": 2}`,
			`device_id "` + strings.Repeat("x", 64) + `…" is longer than 128 bytes`},
		{"device invalid UTF-8", "{\"device_id\": \"ab\xff\", \"lat\": 1, \"lon\": 2}", "device_id is not valid UTF-8"},
		{"device with a line break", `{"device_id": "a\r\nNats-Msg-Id: forged", "lat": 1, "lon": 2}`, `device_id "a\r\nNats-Msg-Id: forged" contains a control character (byte 0x0d)`},
		{"device with a NUL", `{"device_id": "a\u0000b", "lat": 1, "lon": 2}`, `device_id "a\x00b" contains a control character (byte 0x00)`},
		{"no lat", `{"device_id": "r", "lon": 2}`, "lat missing"},
		{"no lon", `{"device_id": "r", "lat": 2}`, "lon missing"},
		{"lat 91", `{"device_id": "r", "lat": 91, "lon": 2}`, "lat 91 out of range [-90, 90]"},
		{"latitude -90.0001", `{"device_id": "r", "Latitude": -90.0001, "lon": 2}`, "Latitude -90.0001 out of range [-90, 90]"},
		{"lon 181 string", `{"device_id": "r", "lat": 1, "lng": "181"}`, `lng "181" out of range [-180, 180]`},
		{"lat overflow", `{"device_id": "r", "lat": 1e999, "lon": 2}`, "lat 1e999 out of range [-90, 90]"},
		{"lat NaN", `{"device_id": "r", "lat": "NaN", "lon": 2}`, `lat "NaN" is not a number`},
		{"lat Inf", `{"device_id": "r", "lat": "-Inf", "lon": 2}`, `lat "-Inf" is not a number`},
		{"lat hex", `{"device_id": "r", "lat": "0x10", "lon": 2}`, `lat "0x10" is not a number`},
		{"lat comma decimal", `{"device_id": "r", "lat": "19,5", "lon": 2}`, `lat "19,5" is not a number`},
		{"lat bool", `{"device_id": "r", "lat": false, "lon": 2}`, "lat must be a number, got a boolean"},
		{"lat object", `{"device_id": "r", "lat": {"v": 1}, "lon": 2}`, "lat must be a number, got an object"},
		{"lon array", `{"device_id": "r", "lat": 1, "lon": [2]}`, "lon must be a number, got an array"},
		{"nested lat names its path", `{"device_id": "r", "position": {"lat": 100, "lon": 2}}`, "position.lat 100 out of range [-90, 90]"},
		{"huge value is cut", `{"device_id": "r", "lat": "` + strings.Repeat("9", 500) + `x", "lon": 2}`,
			`lat "` + strings.Repeat("9", 64) + `…" is not a number`},
		{"everything wrong", `{"device_id": [], "lat": "a", "lon": 999, "ts": "never"}`,
			`device_id must be a string or a number, got an array; lat "a" is not a number; lon 999 out of range [-180, 180]; ts "never" is not a recognised time (want RFC 3339, YYYY-MM-DD HH:MM[:SS] or DD/MM/YYYY HH:MM[:SS] on a 24-hour clock or with a.m./p.m., /Date(ms)/, or Unix seconds or milliseconds)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := decodeRejected(t, d, tt.body); got != tt.want {
				t.Errorf("\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}

// TestDecodeBatchIndexes: rejections carry the index of the item in the
// request; accepted coordinates keep request order.
func TestDecodeBatchIndexes(t *testing.T) {
	d := newDecoder(t, Options{})
	body := `{"items": [
		{"device_id": "a", "lat": 1, "lon": 1},
		{"device_id": "b", "lat": 100, "lon": 1},
		{"device_id": "c", "lat": 2, "lon": 2},
		{"lat": 3, "lon": 3},
		{"device_id": "e", "lat": 4, "lon": 4}
	]}`
	b, err := d.DecodeJSON([]byte(body), goldenNow)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range b.Coords {
		ids = append(ids, c.DeviceID)
	}
	if strings.Join(ids, ",") != "a,c,e" {
		t.Errorf("accepted %v, want a,c,e in order", ids)
	}
	want := []Rejection{{1, "lat 100 out of range [-90, 90]"}, {3, "device_id missing"}}
	if !reflect.DeepEqual(b.Rejected, want) {
		t.Errorf("rejected %+v, want %+v", b.Rejected, want)
	}
	// Each raw is that item only.
	if got := string(b.Coords[1].Raw); got != `{"device_id":"c","lat":2,"lon":2}` {
		t.Errorf("raw of item 2 = %s", got)
	}
}

// encodeBatch writes everything a Batch holds, for comparisons.
func encodeBatch(b *Batch) string {
	var out []byte
	for i := range b.Coords {
		out = b.Coords[i].AppendJSON(out)
		out = append(out, '\n')
	}
	return fmt.Sprintf("%s%+v", out, b.Rejected)
}

// TestDecodeBatchMatchesSingles: an item decodes the same alone and among
// items with other keys in other orders, compact or not, so nothing the
// decoder remembers from one item (the roles of its keys, its members)
// leaks into the next.
func TestDecodeBatchMatchesSingles(t *testing.T) {
	d := newDecoder(t, Options{Aliases: map[string][]string{"device_id": {"unidad"}, "event": {"id"}}})
	items := []string{
		`{"device_id":"a","lat":1,"lon":2,"x":1}`,
		`{"lat":3,"device_id":"b","lon":4,"unidad":"u"}`,
		`{"unidad":"c","Lat":5,"LNG":6,"bateria":0.5,"position":{"speed":7,"speed_unit":"kn"}}`,
		`{"unidad":"d","position":{"lat":7,"lon":8},"lat":null,"id":"ev"}`,
		`{"unidad":"e","location":"9,10","ts":1772366340,"position":{"speed_unit":"mph","speed":7}}`,
		`{"unidad":"f","lon":11}`,
		`{"device_id":"g","lat":1,"lon":2,"x":1,"extra":{"lat":1}}`,
		`{"device_id":"h","lat":1,"lon":2,"x":"caf\u00e9","y":"a b"}`,
	}
	for _, sep := range []string{",", ",\n  "} {
		b, err := d.DecodeJSON([]byte("["+strings.Join(items, sep)+"]"), goldenNow)
		if err != nil {
			t.Fatal(err)
		}
		k := 0 // the index in b.Coords of the next accepted item
		for i, it := range items {
			one, err := d.DecodeJSON([]byte(it), goldenNow)
			if err != nil {
				t.Fatal(err)
			}
			var got string
			if j := slices.IndexFunc(b.Rejected, func(r Rejection) bool { return r.Index == i }); j >= 0 {
				got = fmt.Sprintf("%+v", []Rejection{{0, b.Rejected[j].Error}})
			} else {
				got = encodeBatch(&Batch{Coords: b.Coords[k : k+1]})
				k++
			}
			if want := encodeBatch(one); got != want {
				t.Errorf("item %d in a batch:\n got %s\nwant %s", i, got, want)
			}
		}
	}
}

// TestDecodeResultOwnsMemory: a Batch stays as it was when the body is
// overwritten and when the decoder (and its pooled scratch space) decodes
// other requests, with this decoder or another.
func TestDecodeResultOwnsMemory(t *testing.T) {
	d := goldenDecoder(t)
	other := newDecoder(t, Options{Aliases: map[string][]string{"lat": {"x"}, "lon": {"y"}}})
	bodies := []string{
		`{"device_id":"a","lat":1,"lon":2,"speed":3,"n":4,"s":"t","o":{"k":[1,"v"]}}`,
		"{ \"device_id\" : \"a\", \"lat\" : 1, \"lon\" : 2, \"battery\" : \"0.5\", \"s\" : \"caf\\u00e9 \xff\" }",
		`[{"device_id":"a","lat":1,"lon":2,"x":1},{"device_id":"b","position":{"lat":3,"lon":4,"z":[]}},{"lat":1}]`,
		`{"data":[{"imei":"1","lat":1,"lon":2,"alt":3},{"imei":"2","lat":1,"lon":2,"alt":4}]}`,
	}
	check := func(name string, decode func() (*Batch, error), scribble func()) {
		b, err := decode()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := encodeBatch(b)
		scribble()
		for range 3 {
			for _, body := range bodies {
				for _, dec := range []*Decoder{d, other} {
					dec.DecodeJSON([]byte(body), goldenNow.Add(time.Hour))
					dec.DecodeValues(url.Values{"id": {"q"}, "x": {"5"}, "y": {"6"}, "k": {"1", "2"}}, goldenNow)
				}
			}
		}
		if got := encodeBatch(b); got != want {
			t.Errorf("%s: batch changed by later decodes:\n got %s\nwant %s", name, got, want)
		}
	}
	for i, body := range bodies {
		buf := []byte(body)
		check(fmt.Sprint("body ", i), func() (*Batch, error) { return d.DecodeJSON(buf, goldenNow) },
			func() { copy(buf, strings.Repeat("#", len(buf))) })
	}
	v := url.Values{"device_id": {"f"}, "lat": {"1"}, "lon": {"2"}, "k": {"a", "b"}}
	check("values", func() (*Batch, error) { return d.DecodeValues(v, goldenNow) },
		func() { v["k"][0], v["device_id"][0] = "changed", "changed" })
}

// TestDecodeShapes: every body shape, and which are errors.
func TestDecodeShapes(t *testing.T) {
	d := newDecoder(t, Options{MaxItems: 3})
	one := `{"device_id": "a", "lat": 1, "lon": 2}`
	tests := []struct {
		name    string
		ct      string
		body    string
		query   url.Values
		ids     []string
		wantErr error
	}{
		{"object", "application/json", one, nil, []string{"a"}, nil},
		{"array", "application/json", `[` + one + `, {"device_id": "b", "lat": 1, "lon": 2}]`, nil, []string{"a", "b"}, nil},
		{"wrapper coordinates", "application/json", `{"coordinates": [` + one + `]}`, nil, []string{"a"}, nil},
		{"wrapper COORDINATES", "application/json", `{"COORDINATES": [` + one + `]}`, nil, []string{"a"}, nil},
		{"wrapper data", "application/json", `{"data": [` + one + `]}`, nil, []string{"a"}, nil},
		{"wrapper items", "application/json", `{"Items": [` + one + `]}`, nil, []string{"a"}, nil},
		{"wrapper points", "application/json", `{"points": [` + one + `], "other": 1}`, nil, []string{"a"}, nil},
		{"wrapper priority coordinates over data", "application/json",
			`{"data": [{"device_id": "d", "lat": 1, "lon": 2}], "coordinates": [` + one + `]}`, nil, []string{"a"}, nil},
		{"GeoJSON coordinates are not a wrapper", "application/json",
			`{"device_id": "g", "type": "Point", "coordinates": [-99.1, 19.4], "lat": 19.4, "lon": -99.1}`, nil, []string{"g"}, nil},
		{"an item with a data list is not a wrapper", "application/json",
			`{"device_id": "s", "lat": 1, "lon": 2, "data": [{"t": 1}]}`, nil, []string{"s"}, nil},
		{"wrapper key beside location is an item", "application/json",
			`{"device_id": "w", "location": "1,2", "items": [1, 2]}`, nil, []string{"w"}, nil},
		{"BOM and spaces", "application/json", "\xEF\xBB\xBF \n" + one + "\n", nil, []string{"a"}, nil},
		{"charset parameter", "application/json; charset=UTF-8", one, nil, []string{"a"}, nil},
		{"upper-case media type", "Application/JSON", one, nil, []string{"a"}, nil},
		{"text/json", "text/json", one, nil, []string{"a"}, nil},
		{"vendor +json", "application/vnd.ubiqo.v1+json", one, nil, []string{"a"}, nil},
		{"no content type, object", "", one, nil, []string{"a"}, nil},
		{"no content type, array", "", "  [" + one + "]", nil, []string{"a"}, nil},
		{"form", "application/x-www-form-urlencoded", "device_id=f&lat=1&lon=2", nil, []string{"f"}, nil},
		{"form with charset", "application/x-www-form-urlencoded;charset=utf-8", "device_id=f&lat=1&lon=2", nil, []string{"f"}, nil},
		{"GET query", "", "", url.Values{"device_id": {"q"}, "lat": {"1"}, "lon": {"2"}}, []string{"q"}, nil},
		{"empty body with a content type uses the query", "application/json", " \n", url.Values{"device_id": {"q"}, "lat": {"1"}, "lon": {"2"}}, []string{"q"}, nil},
		{"body wins over query", "application/json", one, url.Values{"device_id": {"q"}, "lat": {"1"}, "lon": {"2"}}, []string{"a"}, nil},

		{"JSON as text/plain (.NET StringContent)", "text/plain; charset=utf-8", one, nil, []string{"a"}, nil},
		{"JSON as octet-stream", "application/octet-stream", one, nil, []string{"a"}, nil},
		{"JSON under a form type (curl -d)", "application/x-www-form-urlencoded", one, nil, []string{"a"}, nil},
		{"text/plain that is not JSON", "text/plain", "device_id=f&lat=1&lon=2", nil, nil, ErrUnsupportedMediaType},
		{"a form with one bad pair keeps the others", "application/x-www-form-urlencoded", "device_id=f&lat=1&lon=2&bateria=87%", nil, []string{"f"}, nil},
		{"a form with a ; keeps the others", "application/x-www-form-urlencoded", "device_id=g&lat=1&lon=2&evento=Encendido;Motor", nil, []string{"g"}, nil},
		{"multipart", "multipart/form-data; boundary=x", "--x--", nil, nil, ErrUnsupportedMediaType},
		{"no content type, form body", "", "device_id=f&lat=1&lon=2", nil, nil, ErrUnsupportedMediaType},
		{"+json without a type", "+json", one, nil, nil, ErrUnsupportedMediaType},
		{"bad JSON", "application/json", `{"device_id": "a",}`, nil, nil, ErrMalformed},
		{"truncated JSON", "application/json", `[{"device_id": "a"`, nil, nil, ErrMalformed},
		{"trailing data", "application/json", one + ` {}`, nil, nil, ErrMalformed},
		{"JSON string", "application/json", `"hello"`, nil, nil, ErrMalformed},
		{"JSON number", "application/json", `42`, nil, nil, ErrMalformed},
		{"JSON null", "application/json", `null`, nil, nil, ErrMalformed},
		{"array of numbers", "application/json", `[1, 2]`, nil, nil, ErrMalformed},
		{"array with an array", "application/json", `[` + one + `, []]`, nil, nil, ErrMalformed},
		{"bad form escape", "application/x-www-form-urlencoded", "device_id=%zz", nil, nil, ErrMalformed},
		{"body starting with NUL is not empty", "application/x-www-form-urlencoded", "\x00%0", url.Values{"device_id": {"q"}, "lat": {"1"}, "lon": {"2"}}, nil, ErrMalformed},
		{"NUL body without a content type", "", "\x00", nil, nil, ErrUnsupportedMediaType},
		{"empty array", "application/json", `[]`, nil, nil, ErrEmpty},
		{"empty wrapper", "application/json", `{"points": []}`, nil, nil, ErrEmpty},
		{"no body, no query", "", "", nil, nil, ErrEmpty},
		{"no body, only the token", "", "", url.Values{"token": {"s"}}, nil, ErrEmpty},
		{"empty form", "application/x-www-form-urlencoded", "&", nil, nil, ErrEmpty},
		{"too many", "application/json", "[" + strings.Repeat(one+",", 3) + one + "]", nil, nil, ErrTooManyItems},
		{"too many in a wrapper", "application/json", `{"data": [` + strings.Repeat(one+",", 3) + one + "]}", nil, nil, ErrTooManyItems},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := d.Decode(tt.ct, []byte(tt.body), tt.query, goldenNow)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if b != nil {
					t.Errorf("batch %+v returned with an error", b)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			var ids []string
			for i := range b.Coords {
				ids = append(ids, b.Coords[i].DeviceID)
				checkCoord(t, &b.Coords[i])
			}
			if !reflect.DeepEqual(ids, tt.ids) || len(b.Rejected) != 0 {
				t.Errorf("ids %v rejected %+v, want %v", ids, b.Rejected, tt.ids)
			}
		})
	}
}

// TestDecodeErrorMessages: errors are wrapped with a useful, short detail.
func TestDecodeErrorMessages(t *testing.T) {
	d := newDecoder(t, Options{MaxItems: 2})
	tests := []struct{ ct, body, want string }{
		{"application/json", `{"a": 1,}`, "malformed body: invalid JSON at byte 9: invalid character '}' looking for beginning of object key string"},
		{"application/json", `[{}, 3]`, "malformed body: array element 1 is a number, want an object"},
		{"application/json", `true`, "malformed body: body is a boolean, want an object or an array of objects"},
		{"application/json", `"hello"`, "malformed body: body is a string, want an object or an array of objects"},
		{"text/plain", `"{\"a\": 1,}"`, "malformed body: invalid JSON at byte 9: invalid character '}' looking for beginning of object key string"}, // the JSON the string holds
		{"application/json", `"\"{}\""`, "malformed body: body is a string, want an object or an array of objects"},
		{"application/json", `[{},{},{}]`, "too many coordinates: more than 2 in one request"},
		{"application/json", `[]`, "no coordinate in request: empty array"},
		{"", ``, "no coordinate in request: empty body and no query parameters"},
		{"text/csv; header=present", `a,b`, `unsupported media type: "text/csv"`},
		{"application/" + strings.Repeat("x", 200), `{}`, `unsupported media type: "application/` + strings.Repeat("x", 52) + `…"`},
	}
	for _, tt := range tests {
		_, err := d.Decode(tt.ct, []byte(tt.body), nil, goldenNow)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Decode(%q, %s):\n got %v\nwant %s", tt.ct, tt.body, err, tt.want)
		}
	}
}

// TestDecodeTooManyEarly: the item limit is enforced before the body is
// walked further or validated: a 100k-item array is refused after reading
// MaxItems+1 of them, even though its tail is not JSON at all.
func TestDecodeTooManyEarly(t *testing.T) {
	d := newDecoder(t, Options{MaxItems: 10})
	item := `{"device_id":"x","lat":1,"lon":2},`
	body := []byte("[" + strings.Repeat(item, 100_000) + " not JSON")
	_, err := d.DecodeJSON(body, goldenNow)
	if !errors.Is(err, ErrTooManyItems) {
		t.Fatalf("err = %v, want ErrTooManyItems", err)
	}
	allocs := testing.AllocsPerRun(5, func() { _, _ = d.DecodeJSON(body, goldenNow) })
	if allocs > 20 {
		t.Errorf("refusing an oversized batch took %v allocations; it must not decode the items", allocs)
	}
	// Exactly MaxItems is fine.
	ok := []byte("[" + strings.TrimSuffix(strings.Repeat(item, 10), ",") + "]")
	if b, err := d.DecodeJSON(ok, goldenNow); err != nil || len(b.Coords) != 10 {
		t.Fatalf("10 items with MaxItems 10: %v", err)
	}
}

// TestDecodeAttrsRaw: unmapped fields keep their JSON values (numbers exact,
// as json.Number) and raw is the item compacted, byte for byte otherwise.
func TestDecodeAttrsRaw(t *testing.T) {
	d := newDecoder(t, Options{})
	body := "{ \"device_id\" : \"a\" ,\n \"lat\": 19.50, \"lon\": -99.10,\n" +
		" \"n\": 1.10, \"big\": 12345678901234567890123, \"e\": 1E3, \"s\": \"x\\ty \\u00e9\\ud83d\\ude9a\"," +
		" \"z\": null, \"b\": false, \"l\": [1, \"2\", {\"k\": 3.0}], \"o\": {\"y\": 2, \"x\": 1}, \"bad\": \"\xff\" }"
	c := decodeOne(t, d, body)
	want := map[string]any{
		"n":   json.Number("1.10"),
		"big": json.Number("12345678901234567890123"),
		"e":   json.Number("1E3"),
		"s":   "x\ty é🚚",
		"z":   nil,
		"b":   false,
		"l":   []any{json.Number("1"), "2", map[string]any{"k": json.Number("3.0")}},
		"o":   map[string]any{"y": json.Number("2"), "x": json.Number("1")},
		"bad": "\uFFFD",
	}
	if !reflect.DeepEqual(c.Attrs, want) {
		t.Errorf("attrs\n got %#v\nwant %#v", c.Attrs, want)
	}
	wantRaw := `{"device_id":"a","lat":19.50,"lon":-99.10,"n":1.10,"big":12345678901234567890123,"e":1E3,` +
		`"s":"x\ty \u00e9\ud83d\ude9a","z":null,"b":false,"l":[1,"2",{"k":3.0}],"o":{"y":2,"x":1},"bad":"` + "\uFFFD" + `"}`
	if string(c.Raw) != wantRaw {
		t.Errorf("raw\n got %s\nwant %s", c.Raw, wantRaw)
	}
	// Attrs re-encode with sorted keys and the numbers exactly as sent.
	out := string(c.AppendJSON(nil))
	wantAttrs := `"attrs":{"b":false,"bad":"` + "\uFFFD" + `","big":12345678901234567890123,"e":1E3,"l":[1,"2",{"k":3.0}],"n":1.10,"o":{"x":1,"y":2},"s":"x\ty é🚚","z":null}`
	if !strings.Contains(out, wantAttrs) {
		t.Errorf("encoded attrs\n got %s\nwant …%s…", out, wantAttrs)
	}
}

// TestDecodeValues: form and query items, with repeated keys, the token
// dropped, and raw as a JSON object of strings.
func TestDecodeValues(t *testing.T) {
	d := newDecoder(t, Options{})
	v := url.Values{
		"DeviceId": {"q-1"},
		"lat":      {"19.5", "20"},
		"lon":      {" -99.1 "},
		"fecha":    {"01/03/2026 11:00:00"},
		"tag":      {"a", "b"},
		"note":     {"ñ"},
		"blank":    {""},
		"TOKEN":    {"secret-1"},
		"token":    {"secret-2"},
		"none":     {},
	}
	b, err := d.DecodeValues(v, goldenNow)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Coords) != 1 {
		t.Fatalf("rejected: %+v", b.Rejected)
	}
	c := &b.Coords[0]
	checkCoord(t, c)
	if c.DeviceID != "q-1" || c.Lat != 19.5 || c.Lon != -99.1 || !c.TS.Equal(time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)) {
		t.Errorf("mapped wrong: %s", c.AppendJSON(nil))
	}
	wantAttrs := map[string]any{"tag": []any{"a", "b"}, "note": "ñ", "blank": ""}
	if !reflect.DeepEqual(c.Attrs, wantAttrs) {
		t.Errorf("attrs %#v, want %#v", c.Attrs, wantAttrs)
	}
	wantRaw := `{"DeviceId":"q-1","blank":"","fecha":"01/03/2026 11:00:00","lat":["19.5","20"],"lon":" -99.1 ","note":"ñ","tag":["a","b"]}`
	if string(c.Raw) != wantRaw {
		t.Errorf("raw\n got %s\nwant %s", c.Raw, wantRaw)
	}

	// Rejected form items have index 0.
	b, err = d.DecodeValues(url.Values{"lat": {"1"}, "lon": {"2"}}, goldenNow)
	if err != nil || len(b.Coords) != 0 || !reflect.DeepEqual(b.Rejected, []Rejection{{0, "device_id missing"}}) {
		t.Errorf("got %+v, %v", b, err)
	}
}

// TestDecodeIgnoreKeys: the token (or configured keys) never reach attrs or
// raw, whatever their case; an empty list keeps everything.
func TestDecodeIgnoreKeys(t *testing.T) {
	q := url.Values{"device_id": {"i"}, "lat": {"1"}, "lon": {"2"}, "token": {"tok-1"}, "Api-Key": {"key-1"}, "keep": {"k"}}
	tests := []struct {
		name    string
		opts    Options
		dropped []string
		kept    []string
	}{
		{"default drops token", Options{}, []string{"tok-1"}, []string{"key-1", "k"}},
		{"configured keys", Options{IgnoreKeys: []string{"api_key", "TOKEN"}}, []string{"tok-1", "key-1"}, []string{"k"}},
		{"empty list keeps all", Options{IgnoreKeys: []string{}}, nil, []string{"tok-1", "key-1", "k"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDecoder(t, tt.opts)
			for _, via := range []string{"query", "form"} {
				var b *Batch
				var err error
				if via == "query" {
					b, err = d.Decode("", nil, q, goldenNow)
				} else {
					b, err = d.Decode("application/x-www-form-urlencoded", []byte(q.Encode()), nil, goldenNow)
				}
				if err != nil || len(b.Coords) != 1 {
					t.Fatalf("%s: %v %+v", via, err, b)
				}
				out := string(b.Coords[0].AppendJSON(nil))
				for _, s := range tt.dropped {
					if strings.Contains(out, s) {
						t.Errorf("%s: %q must be dropped: %s", via, s, out)
					}
				}
				for _, s := range tt.kept {
					if !strings.Contains(string(b.Coords[0].Raw), s) {
						t.Errorf("%s: %q must be kept in raw: %s", via, s, out)
					}
				}
			}
		})
	}
}

func TestNewDecoderErrors(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"unknown alias key", Options{Aliases: map[string][]string{"latitude": {"y"}}}, `unknown field "latitude" (want one of device_id, lat, lon, ts, speed_kmh, heading_deg, alt_m, accuracy_m, battery_pct, event)`},
		{"empty alias", Options{Aliases: map[string][]string{"lat": {"_-"}}}, `lat: empty alias "_-"`},
		{"reserved container", Options{Aliases: map[string][]string{"device_id": {"Position"}}}, `device_id: alias "Position" is reserved (a nested object or speed unit field)`},
		{"reserved unit", Options{Aliases: map[string][]string{"speed_kmh": {"speed_unit"}}}, `speed_kmh: alias "speed_unit" is reserved (a nested object or speed unit field)`},
		{"two fields", Options{Aliases: map[string][]string{"lat": {"y"}, "lon": {"Y"}}}, `alias "Y" is configured for both lat and lon`},
		{"negative max items", Options{MaxItems: -1}, "max items -1 is negative"},
		{"negative max future", Options{MaxFuture: -time.Second}, "max future -1s is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDecoder(tt.opts)
			if err == nil || err.Error() != tt.want {
				t.Errorf("NewDecoder = %v, %v; want error %q", d, err, tt.want)
			}
		})
	}
	// The same alias twice for one field is harmless.
	newDecoder(t, Options{Aliases: map[string][]string{"lat": {"y", "Y"}}})
}

// TestDecoderConcurrent: one Decoder serves many goroutines (run with -race).
func TestDecoderConcurrent(t *testing.T) {
	d := goldenDecoder(t)
	body := []byte(`[{"device_id": "a", "lat": 1, "lon": 2, "x": 1}, {"device_id": "b", "position": {"lat": 3, "lon": 4, "y": 2}}]`)
	encode := func(b *Batch) string {
		var out []byte
		for i := range b.Coords {
			out = b.Coords[i].AppendJSON(out)
		}
		return fmt.Sprintf("%s %+v", out, b.Rejected)
	}
	first, err := d.DecodeJSON(body, goldenNow)
	if err != nil {
		t.Fatal(err)
	}
	want := encode(first)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 50 {
				b, err := d.DecodeJSON(body, goldenNow)
				if err != nil || encode(b) != want {
					t.Errorf("concurrent decode differs: %v\n%s", err, encode(b))
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestDecodeWrapperOfNonObjects: a wrapper key whose array does not hold
// objects does not make a wrapper; the object is one item.
func TestDecodeWrapperOfNonObjects(t *testing.T) {
	d := newDecoder(t, Options{})
	msg := decodeRejected(t, d, `{"device_id": "w", "items": [1, 2]}`)
	if msg != "lat missing; lon missing" {
		t.Errorf("message %q", msg)
	}
}

// TestDecodeManyKeysIsLinear: an item with very many fields (a 1 MB body
// can hold ~100k) decodes in time linear in its size. A quadratic step would
// make this test run for minutes.
func TestDecodeManyKeysIsLinear(t *testing.T) {
	d := newDecoder(t, Options{})
	var sb strings.Builder
	sb.WriteString(`{"device_id": "k", "lat": 1, "lon": 2, "position": {"speed": 3`)
	for i := range 100_000 {
		fmt.Fprintf(&sb, `, "n%d": %d`, i, i)
	}
	sb.WriteString(`}`)
	for i := range 100_000 {
		fmt.Fprintf(&sb, `, "k%d": %d`, i, i)
	}
	sb.WriteString(`}`)
	start := time.Now()
	b, err := d.DecodeJSON([]byte(sb.String()), goldenNow)
	elapsed := time.Since(start)
	if err != nil || len(b.Coords) != 1 {
		t.Fatalf("%v %+v", err, b.Rejected)
	}
	c := &b.Coords[0]
	if len(c.Attrs) != 100_001 || len(c.Attrs["position"].(map[string]any)) != 100_000 || c.SpeedKmh == nil {
		t.Errorf("attrs has %d keys, want 100001", len(c.Attrs))
	}
	t.Logf("decoded %d bytes with 200k fields in %v", sb.Len(), elapsed)
}

// TestDecodeDoubleEncoded: a sender that serialises its JSON text once more
// posts a JSON string holding the object or array; it is decoded as that
// object or array, under a JSON or a generic media type. One level only.
func TestDecodeDoubleEncoded(t *testing.T) {
	d := newDecoder(t, Options{MaxItems: 10})
	item := `{"imei":"356938035643809","lat":19.4326,"lng":-99.1332,"fechaHora":"2026-03-01 05:59:00","nota":"cami\u00f3n"}`
	quoted, err := json.Marshal(item)
	if err != nil {
		t.Fatal(err)
	}
	list, _ := json.Marshal("[" + item + "," + strings.Replace(item, "05:59:00", "05:59:30", 1) + "]")
	for _, tt := range []struct {
		ct, body string
		n        int
	}{
		{"application/json", string(quoted), 1},
		{"text/plain; charset=utf-8", " " + string(quoted) + "\n", 1},
		{"", string(quoted), 1},
		{"application/json", string(list), 2},
	} {
		b, err := d.Decode(tt.ct, []byte(tt.body), nil, goldenNow)
		if err != nil {
			t.Fatalf("Decode(%q, %s): %v", tt.ct, tt.body, err)
		}
		if len(b.Coords) != tt.n || len(b.Rejected) != 0 {
			t.Fatalf("Decode(%q, %s): %d coords, rejected %+v; want %d", tt.ct, tt.body, len(b.Coords), b.Rejected, tt.n)
		}
		c := &b.Coords[0]
		if c.DeviceID != "356938035643809" || c.Lat != 19.4326 || c.Attrs["nota"] != "camión" {
			t.Fatalf("decoded %+v", c)
		}
		if !strings.HasPrefix(string(c.Raw), `{"imei":"356938035643809"`) {
			t.Fatalf("raw is the inner object as sent, got %s", c.Raw)
		}
	}
}

// TestTwelveHourClockAcrossDaylightSaving: a p.m. time reads as the same
// instant as its 24-hour form, also on the day the clocks spring forward
// (Tijuana still observes daylight saving), whose 2 a.m. hour does not
// exist.
func TestTwelveHourClockAcrossDaylightSaving(t *testing.T) {
	tijuana, err := time.LoadLocation("America/Tijuana")
	if err != nil {
		t.Fatal(err)
	}
	d := newDecoder(t, Options{MaxItems: 10, Location: tijuana})
	now := time.Date(2026, 3, 9, 12, 0, 0, 0, time.UTC)
	for _, pair := range [][2]string{
		{"08/03/2026 02:30:00 p. m.", "08/03/2026 14:30:00"}, // spring forward: 02:00 → 03:00 that morning
		{"08/03/2026 01:30:00 a. m.", "08/03/2026 01:30:00"},
		{"08/03/2026 03:30:00 a. m.", "08/03/2026 03:30:00"},
		{"01/11/2025 11:59:00 p. m.", "01/11/2025 23:59:00"},
	} {
		var ts [2]time.Time
		for i, s := range pair {
			body := `{"device_id":"t","lat":1,"lon":2,"fecha":"` + s + `"}`
			b, err := d.Decode("application/json", []byte(body), nil, now)
			if err != nil || len(b.Coords) != 1 {
				t.Fatalf("%s: %v %+v", s, err, b)
			}
			ts[i] = b.Coords[0].TS
		}
		if !ts[0].Equal(ts[1]) {
			t.Errorf("%q = %v, but %q = %v", pair[0], ts[0], pair[1], ts[1])
		}
	}
}

// TestDecodeDoubleEncodedKeepsInvalidBytes: bytes that are not UTF-8 in a
// body encoded twice are not turned into U+FFFD on the way: a device id
// holding one is rejected, as it is in a body sent once, rather than stored
// as another id that other trucks' ids would collide with.
func TestDecodeDoubleEncodedKeepsInvalidBytes(t *testing.T) {
	d := newDecoder(t, Options{MaxItems: 10})
	for _, body := range []string{
		"{\"device_id\":\"cami\xF3n 2\",\"lat\":1,\"lon\":2}",
		"\"{\\\"device_id\\\":\\\"cami\xF3n 2\\\",\\\"lat\\\":1,\\\"lon\\\":2}\"",
	} {
		b, err := d.Decode("application/json", []byte(body), nil, goldenNow)
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if len(b.Coords) != 0 || len(b.Rejected) != 1 || !strings.Contains(b.Rejected[0].Error, "UTF-8") {
			t.Errorf("%q: coords %+v rejected %+v, want the device id rejected as not UTF-8", body, b.Coords, b.Rejected)
		}
	}
}
