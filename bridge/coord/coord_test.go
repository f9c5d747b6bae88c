package coord

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
)

// assertCoordEqual fails unless got and want are deeply equal (times with
// their location, attrs values with their types).
func assertCoordEqual(t testing.TB, got, want *Coord) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("coords differ:\n got %#v\nwant %#v", got, want)
	}
}

// fullCoord is a Coord with every field set, in canonical form (UTC times,
// compact raw, attrs as the decoder makes them).
func fullCoord() Coord {
	return Coord{
		V:          1,
		DeviceID:   "camión 7",
		TS:         time.Date(2026, 3, 1, 17, 58, 30, 120_000_000, time.UTC),
		ReceivedAt: goldenNow,
		Lat:        19.432608,
		Lon:        -99.133209,
		AltM:       fp(2240.5),
		SpeedKmh:   fp(18.52),
		HeadingDeg: fp(0),
		AccuracyM:  fp(4.8),
		BatteryPct: fp(87),
		Event:      `sos "now"`,
		TSMissing:  true,
		Attrs: map[string]any{
			"z": json.Number("1.10"),
			"a": "x",
			"n": nil,
			"l": []any{true, json.Number("2")},
			"o": map[string]any{"k": "v"},
		},
		Raw: json.RawMessage(`{"a":[1,2]}`),
	}
}

const fullCoordJSON = `{"v":1,"device_id":"camión 7","ts":"2026-03-01T17:58:30.12Z","received_at":"2026-03-01T12:00:00Z",` +
	`"lat":19.432608,"lon":-99.133209,"alt_m":2240.5,"speed_kmh":18.52,"heading_deg":0,"accuracy_m":4.8,"battery_pct":87,` +
	`"event":"sos \"now\"","ts_missing":true,"attrs":{"a":"x","l":[true,2],"n":null,"o":{"k":"v"},"z":1.10},"raw":{"a":[1,2]}}`

func TestAppendJSON(t *testing.T) {
	c := fullCoord()
	if got := string(c.AppendJSON(nil)); got != fullCoordJSON {
		t.Errorf("AppendJSON\n got %s\nwant %s", got, fullCoordJSON)
	}
	// Appends to what is there.
	if got := string(c.AppendJSON([]byte("x"))); got != "x"+fullCoordJSON {
		t.Errorf("AppendJSON does not append: %s", got)
	}
	// MarshalJSON is the same encoding, by pointer and by value.
	for _, v := range []any{&c, c, []Coord{c}} {
		b, err := json.Marshal(v)
		if err != nil || !strings.Contains(string(b), fullCoordJSON) {
			t.Errorf("json.Marshal(%T) = %s, %v", v, b, err)
		}
	}

	// The minimal coordinate leaves every optional field out.
	min := Coord{V: 1, DeviceID: "d", TS: goldenNow, ReceivedAt: goldenNow, Lat: -0.5, Lon: 0}
	want := `{"v":1,"device_id":"d","ts":"2026-03-01T12:00:00Z","received_at":"2026-03-01T12:00:00Z","lat":-0.5,"lon":0}`
	if got := string(min.AppendJSON(nil)); got != want {
		t.Errorf("AppendJSON\n got %s\nwant %s", got, want)
	}
}

// TestAppendJSONNormalizes: times in other zones are written in UTC, raw is
// compacted, and what cannot be JSON still gives valid JSON.
func TestAppendJSONNormalizes(t *testing.T) {
	c := Coord{
		V: 1, DeviceID: "bad\xffid", Lat: math.NaN(), Lon: math.Inf(1),
		TS:         time.Date(2026, 3, 1, 5, 58, 30, 0, time.FixedZone("CST", -6*3600)),
		ReceivedAt: time.Date(2026, 3, 1, 12, 0, 0, 1, time.UTC),
		SpeedKmh:   fp(math.Inf(-1)),
		Attrs:      map[string]any{"f": math.NaN(), "i": 3, "c": make(chan int), "s": []string{"a"}, "bad": json.Number("1x")},
		Raw:        json.RawMessage("{ \"a\" :\n 1 }"),
	}
	got := string(c.AppendJSON(nil))
	want := `{"v":1,"device_id":"bad\ufffdid","ts":"2026-03-01T11:58:30Z","received_at":"2026-03-01T12:00:00.000000001Z",` +
		`"lat":null,"lon":null,"speed_kmh":null,"attrs":{"bad":"1x","c":null,"f":null,"i":3,"s":["a"]},"raw":{"a":1}}`
	if got != want {
		t.Errorf("AppendJSON\n got %s\nwant %s", got, want)
	}
	c.Raw = json.RawMessage(`{"a":`)
	if got := string(c.AppendJSON(nil)); !strings.HasSuffix(got, `"raw":"{\"a\":"}`) || !json.Valid([]byte(got)) {
		t.Errorf("invalid raw must be written as a string: %s", got)
	}
}

// TestAppendJSONMatchesStructTags: the hand-written encoding says the same as
// encoding/json would from the struct tags (names, omitempty), so readers
// that use either agree.
func TestAppendJSONMatchesStructTags(t *testing.T) {
	type plain Coord // no methods: encoding/json uses the tags
	for _, c := range []Coord{fullCoord(), {V: 1, DeviceID: "d", TS: goldenNow, ReceivedAt: goldenNow}} {
		std, err := json.Marshal(plain(c))
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		if err := json.Unmarshal(c.AppendJSON(nil), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(std, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("AppendJSON and encoding/json disagree:\n%s\n%s", c.AppendJSON(nil), std)
		}
	}
}

func TestJSONRoundTrip(t *testing.T) {
	for name, c := range map[string]Coord{
		"full":    fullCoord(),
		"minimal": {V: 1, DeviceID: "d", TS: goldenNow, ReceivedAt: goldenNow, Lat: 90, Lon: -180},
		"extreme floats": {V: 1, DeviceID: "d", TS: goldenNow, ReceivedAt: goldenNow, Lat: 5e-324, Lon: -1e-7,
			AltM: fp(1e21), SpeedKmh: fp(1.7976931348623157e308), AccuracyM: fp(0.1), HeadingDeg: fp(359.99999999999994)},
		"strings": {V: 1, DeviceID: "a\"b\\c\u2028\x01", TS: goldenNow, ReceivedAt: goldenNow, Event: "\b\f\n\r\t</>&",
			Attrs: map[string]any{"\u2029": "é🚚"}},
		"year 0 and nanos": {V: 1, DeviceID: "d", TS: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC),
			ReceivedAt: time.Date(9999, 12, 31, 23, 59, 59, 999_999_999, time.UTC)},
	} {
		t.Run(name, func(t *testing.T) {
			out := c.AppendJSON(nil)
			var back Coord
			if err := json.Unmarshal(out, &back); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			assertCoordEqual(t, &back, &c)
			if again := back.AppendJSON(nil); !bytes.Equal(again, out) {
				t.Errorf("re-encoding differs:\n%s\n%s", out, again)
			}
		})
	}
}

// TestAppendScalarsMatchEncodingJSON: floats and strings are written byte
// for byte as encoding/json writes them (without HTML escaping).
func TestAppendScalarsMatchEncodingJSON(t *testing.T) {
	for _, f := range []float64{0, math.Copysign(0, -1), 1, -1.5, 0.1, 19.432608, -99.133209, 1e-6, 9.99e-7, 1e-7,
		123456789.123, 1e20, 1e21, 1.5e300, 5e-324, math.MaxFloat64, 18.520000000000003} {
		want, _ := json.Marshal(f)
		if got := appendFloat(nil, f); !bytes.Equal(got, want) {
			t.Errorf("appendFloat(%v) = %s, want %s", f, got, want)
		}
	}
	for _, s := range []string{"", "plain", `q"b\s`, "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é🚚", "\u2028\u2029",
		"bad\xff\xfe", "\xed\xa0\x80", "<a&b>"} {
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		want := strings.TrimSuffix(buf.String(), "\n")
		if got := string(appendString(nil, s)); got != want {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

// TestAppendFloatWhole: the fast path for whole numbers writes what
// encoding/json writes, at its edges and for many random values.
func TestAppendFloatWhole(t *testing.T) {
	fs := []float64{0, math.Copysign(0, -1), 1, -1, 7, 270, 360, 100, -45, 1e14, 1e15 - 1, -(1e15 - 1), 1e15, 1e15 + 2,
		1<<53 - 1, 1 << 53, 1e20, 1e21, -1e21, 999999999999999.9, 123456789012345, 0.5, -0.5}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		f := math.Trunc(r.NormFloat64() * math.Pow(10, float64(r.IntN(17))))
		fs = append(fs, f, f+0.5, math.Nextafter(f, math.Inf(1)))
	}
	for _, f := range fs {
		want, _ := json.Marshal(f)
		if got := appendFloat(nil, f); !bytes.Equal(got, want) {
			t.Fatalf("appendFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

func TestUnmarshalJSON(t *testing.T) {
	var c Coord
	err := json.Unmarshal([]byte(`{"v":1,"device_id":"d","ts":"2026-03-01T05:00:00-06:00","received_at":"2026-03-01T12:00:00Z","lat":1,"lon":2,`+
		`"attrs":{"n":1.50,"list":[1e2],"o":{"k":-0}},"raw":{"a": 1}}`), &c)
	if err != nil {
		t.Fatal(err)
	}
	wantAttrs := map[string]any{"n": json.Number("1.50"), "list": []any{json.Number("1e2")}, "o": map[string]any{"k": json.Number("-0")}}
	if !reflect.DeepEqual(c.Attrs, wantAttrs) {
		t.Errorf("attrs %#v, want %#v (numbers as json.Number)", c.Attrs, wantAttrs)
	}
	if !c.TS.Equal(time.Date(2026, 3, 1, 11, 0, 0, 0, time.UTC)) || string(c.Raw) != `{"a": 1}` || c.DeviceID != "d" {
		t.Errorf("decoded %+v", c)
	}
	// A message without attrs leaves none, even over a reused Coord.
	if err := json.Unmarshal([]byte(`{"v":1,"device_id":"e","attrs":null}`), &c); err != nil || c.Attrs != nil || c.DeviceID != "e" {
		t.Errorf("attrs %v, id %q, err %v", c.Attrs, c.DeviceID, err)
	}
	if err := json.Unmarshal([]byte(`null`), &c); err != nil || c.DeviceID != "e" {
		t.Errorf("null must leave the Coord alone: %v %q", err, c.DeviceID)
	}
	for _, bad := range []string{`{"attrs":[1]}`, `{"attrs":"x"}`, `{"lat":"1"}`, `{"ts":"yesterday"}`, `[`} {
		if err := json.Unmarshal([]byte(bad), new(Coord)); err == nil {
			t.Errorf("json.Unmarshal(%s) succeeded", bad)
		}
	}
}

func TestMsgID(t *testing.T) {
	base := Coord{V: 1, DeviceID: "truck-7", TS: time.Date(2026, 3, 1, 11, 59, 0, 0, time.UTC), Lat: 19.5, Lon: -99.25}
	id := base.MsgID()
	// The format is part of the stream contract: deduplication across a
	// deploy needs the same id for the same coordinate.
	if id != "0b94a2d6c720193c0c09d3b96ad49e37" {
		t.Errorf("MsgID of the reference coordinate = %s; the id format changed, which breaks deduplication across a deploy", id)
	}
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("MsgID %q is not 32 lower-case hex digits", id)
	}
	if base.MsgID() != id {
		t.Error("MsgID is not stable")
	}

	same := map[string]func(c *Coord){
		"other zone, same instant": func(c *Coord) { c.TS = c.TS.In(time.FixedZone("CST", -6*3600)) },
		"received_at":              func(c *Coord) { c.ReceivedAt = time.Now() },
		"attrs":                    func(c *Coord) { c.Attrs = map[string]any{"x": 1} },
		"raw":                      func(c *Coord) { c.Raw = json.RawMessage(`{"a":1}`) },
		"optional fields":          func(c *Coord) { c.SpeedKmh, c.Event, c.TSMissing = fp(3), "e", true },
		"lat -0 vs 0":              func(c *Coord) { c.Lat = math.Copysign(0, -1) },
	}
	zeroLat := base
	zeroLat.Lat = 0
	for name, change := range same {
		c := base
		if name == "lat -0 vs 0" {
			c = zeroLat
		}
		want := c.MsgID()
		change(&c)
		if got := c.MsgID(); got != want {
			t.Errorf("%s changed the MsgID", name)
		}
	}

	differ := map[string]func(c *Coord){
		"device id":         func(c *Coord) { c.DeviceID = "truck-8" },
		"device id case":    func(c *Coord) { c.DeviceID = "Truck-7" },
		"ts one nanosecond": func(c *Coord) { c.TS = c.TS.Add(time.Nanosecond) },
		"ts one second":     func(c *Coord) { c.TS = c.TS.Add(time.Second) },
		"lat":               func(c *Coord) { c.Lat = math.Nextafter(c.Lat, 90) },
		"lon":               func(c *Coord) { c.Lon = -99.250001 },
		"lat and lon swap":  func(c *Coord) { c.Lat, c.Lon = c.Lon, c.Lat },
	}
	seen := map[string]string{id: "base"}
	for name, change := range differ {
		c := base
		change(&c)
		got := c.MsgID()
		if other, dup := seen[got]; dup {
			t.Errorf("%s gives the MsgID of %s", name, other)
		}
		seen[got] = name
	}
}

// TestMsgIDFromDecoding: re-sent coordinates get the same id whatever the
// spelling of their numbers and times.
func TestMsgIDFromDecoding(t *testing.T) {
	d := newDecoder(t, Options{Location: mexicoCity(t)})
	bodies := []string{
		`{"device_id": "t-1", "lat": 19.5, "lon": -99.25, "ts": "2026-03-01T11:59:00Z"}`,
		`{"device_id": "t-1", "lat": "19.50", "lon": "-99.250", "ts": "2026-03-01T11:59:00.000Z", "speed": 5}`,
		`{"deviceId": " t-1 ", "latitude": 1.95e1, "lng": -99.25, "timestamp": "2026-03-01T05:59:00-06:00"}`,
		`{"device_id": "t-1", "location": "19.5,-99.25", "time": 1772366340}`,
		`{"device_id": "t-1", "lat": 19.5, "lon": -99.25, "fecha": "01/03/2026 05:59:00"}`,
		`{"device_id": "t-1", "lat": 19.5, "lon": -99.25, "ts": 1772366340000}`,
	}
	want := ""
	for _, body := range bodies {
		c := decodeOne(t, d, body)
		if want == "" {
			want = c.MsgID()
		} else if got := c.MsgID(); got != want {
			t.Errorf("%s: MsgID %s, want %s", body, got, want)
		}
	}
	other := decodeOne(t, d, `{"device_id": "t-1", "lat": 19.5, "lon": -99.25, "ts": "2026-03-01T11:59:01Z"}`)
	if other.MsgID() == want {
		t.Error("a different fix time gives the same MsgID")
	}
}

func TestValidate(t *testing.T) {
	valid := fullCoord()
	if err := valid.Validate(); err != nil {
		t.Fatalf("valid coord: %v", err)
	}
	tests := []struct {
		name   string
		change func(c *Coord)
		want   string
	}{
		{"empty id", func(c *Coord) { c.DeviceID = "" }, "bad device id: empty"},
		{"long id", func(c *Coord) { c.DeviceID = strings.Repeat("a", 129) }, "bad device id: 129 bytes, max 128"},
		{"lat", func(c *Coord) { c.Lat = 90.5 }, "lat 90.5 out of range [-90, 90]"},
		{"lat NaN", func(c *Coord) { c.Lat = math.NaN() }, "lat NaN out of range [-90, 90]"},
		{"lon", func(c *Coord) { c.Lon = -180.5 }, "lon -180.5 out of range [-180, 180]"},
		{"no ts", func(c *Coord) { c.TS = time.Time{} }, "ts missing"},
		{"ts year", func(c *Coord) { c.TS = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, "ts year 10000 out of range [0, 9999]"},
		{"no received_at", func(c *Coord) { c.ReceivedAt = time.Time{} }, "received_at missing"},
		{"alt inf", func(c *Coord) { c.AltM = fp(math.Inf(1)) }, "alt_m +Inf out of range"},
		{"speed", func(c *Coord) { c.SpeedKmh = fp(-1) }, "speed_kmh -1 out of range"},
		{"heading", func(c *Coord) { c.HeadingDeg = fp(360.5) }, "heading_deg 360.5 out of range"},
		{"accuracy", func(c *Coord) { c.AccuracyM = fp(math.NaN()) }, "accuracy_m NaN out of range"},
		{"battery", func(c *Coord) { c.BatteryPct = fp(100.1) }, "battery_pct 100.1 out of range"},
	}
	for _, tt := range tests {
		c := fullCoord()
		tt.change(&c)
		if err := c.Validate(); err == nil || err.Error() != tt.want {
			t.Errorf("%s: Validate() = %v, want %q", tt.name, err, tt.want)
		}
	}
}

// The allocation budget of the hot path (issue 7): decoding a request and
// encoding each coordinate's canonical record and message id stay within a
// fixed number of allocations per coordinate, whatever the batch size. The
// remaining ones are the body copy, the attrs map and its values.
func TestAllocationBudget(t *testing.T) {
	d, err := NewDecoder(Options{MaxItems: 1000})
	if err != nil {
		t.Fatal(err)
	}
	pipeline := func(body []byte, n int) float64 {
		return testing.AllocsPerRun(50, func() {
			batch, err := d.Decode("application/json", body, nil, goldenNow)
			if err != nil || len(batch.Coords) != n {
				t.Fatalf("decode: %v, %d coordinates", err, len(batch.Coords))
			}
			size := 0
			for i := range batch.Coords {
				size += 320 + 2*len(batch.Coords[i].Raw) // as bridge.Publisher.Records sizes it
			}
			buf := make([]byte, 0, size)
			for i := range batch.Coords {
				buf = batch.Coords[i].AppendJSON(buf)
				_ = batch.Coords[i].MsgID()
			}
		})
	}
	single := pipeline([]byte(benchItem(1)), 1)
	batch := pipeline(benchBatch(100), 100)
	t.Logf("allocations: %.0f for one coordinate, %.0f for 100 (%.2f each)", single, batch, batch/100)
	if single > 12 {
		t.Errorf("one coordinate takes %.0f allocations, budget 12", single)
	}
	if batch/100 > 6 {
		t.Errorf("a batch of 100 takes %.2f allocations per coordinate, budget 6", batch/100)
	}
}
