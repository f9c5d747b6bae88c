package subscribers

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// reference decodes as the coord package does.
func reference(data []byte) (coord.Coord, error) {
	var c coord.Coord
	err := c.UnmarshalJSON(data)
	return c, err
}

// checkSame fails when the fast path accepts data and its result differs
// from the reference, or when decodeCoord disagrees with the reference.
func checkSame(t *testing.T, data []byte) (fastTaken bool) {
	t.Helper()
	want, wantErr := reference(data)
	var fast coord.Coord
	fastTaken = decodeFast(data, &fast)
	if fastTaken {
		if wantErr != nil {
			t.Fatalf("fast path accepted what the reference rejects (%v): %s", wantErr, data)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("fast path differs from the reference for %s\nfast: %#v\nref:  %#v", data, fast, want)
		}
	}
	var got coord.Coord
	err := decodeCoord(data, &got)
	if (err != nil) != (wantErr != nil) || (err == nil && !reflect.DeepEqual(got, want)) {
		t.Fatalf("decodeCoord = %v, %#v; reference %v, %#v", err, got, wantErr, want)
	}
	return fastTaken
}

func randomCoord(r *rand.Rand) coord.Coord {
	f := func() *float64 {
		if r.IntN(3) == 0 {
			return nil
		}
		v := math.Round(r.Float64()*1e6) / 1e3
		return &v
	}
	ids := []string{"unit-1", "Ñandú 7", "dev\"quoted", "tab\there", "emoji-🚚", "a/b.c>d", "x\\y"}
	c := coord.Coord{
		V: coord.Version, DeviceID: ids[r.IntN(len(ids))],
		TS:         time.Unix(1700000000+r.Int64N(1e8), r.Int64N(1e9)).UTC(),
		ReceivedAt: time.Unix(1700000000+r.Int64N(1e8), 0).UTC(),
		Lat:        r.Float64()*180 - 90, Lon: r.Float64()*360 - 180,
		AltM: f(), SpeedKmh: f(), HeadingDeg: f(), AccuracyM: f(), BatteryPct: f(),
		TSMissing: r.IntN(2) == 0,
	}
	if r.IntN(2) == 0 {
		c.Event = []string{"stop", "ignición", "sos\n"}[r.IntN(3)]
	}
	switch r.IntN(4) {
	case 0:
	case 1:
		c.Attrs = map[string]any{"ignition": true, "odometer": json.Number("12000.5"), "driver": "Pérez", "none": nil}
	case 2:
		c.Attrs = map[string]any{"nested": map[string]any{"a": json.Number("1")}, "list": []any{"x", json.Number("2")}}
	case 3:
		c.Attrs = map[string]any{"esc": "line\nbreak", "big": json.Number("-1.5e300")}
	}
	if r.IntN(2) == 0 {
		c.Raw = json.RawMessage(`{"imei":"123","lat":"19.4","nested":{"k":[1,2,{"z":null}]},"s":"a\"b\u00e9"}`)
	}
	return c
}

func TestFastDecodeMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	taken := 0
	const n = 5000
	for range n {
		c := randomCoord(r)
		if checkSame(t, c.AppendJSON(nil)) {
			taken++
		}
	}
	t.Logf("fast path taken for %d of %d encoded coordinates (the rest hold escapes or nesting)", taken, n)
	// The bridge's usual output must take the fast path.
	c := coord.Coord{V: 1, DeviceID: "unit-1", TS: time.Now().UTC(), ReceivedAt: time.Now().UTC(), Lat: 1, Lon: 2,
		Attrs: map[string]any{"a": json.Number("1"), "b": "x"}, Raw: json.RawMessage(`{"x":[1,{"y":"\u00e9"}]}`)}
	var fast coord.Coord
	if !decodeFast(c.AppendJSON(nil), &fast) {
		t.Errorf("fast path refused a plain canonical body: %s", c.AppendJSON(nil))
	}
}

func TestFastDecodeOddInputs(t *testing.T) {
	base := `{"v":1,"device_id":"d","ts":"2025-03-01T12:00:00Z","received_at":"2025-03-01T12:00:01Z","lat":1.5,"lon":-2`
	for _, tail := range []string{
		`}`, ` } `, `}x`, `,"lat":3}`, `,"LAT":3}`, `,"unknown":1}`, `,"alt_m":null}`, `,"alt_m":1e999}`,
		`,"alt_m":01}`, `,"alt_m":-}`, `,"alt_m":1.}`, `,"alt_m":.5}`, `,"alt_m":1e+}`, `,"v":2}`, `,"ts_missing":1}`,
		`,"attrs":{}}`, `,"attrs":{"a":1,"a":2}}`, `,"attrs":{"a":{"b":1}}}`, `,"attrs":{"a":"\u0041"}}`, `,"attrs":[]}`,
		`,"attrs":null}`, `,"raw":null}`, `,"raw":"x"}`, `,"raw":{"a":}}`, `,"raw":[1,2,]}`, `,"raw":"\x"}`,
		`,"raw":"\u12G4"}`, `,"raw":{"a":"` + "\x01" + `"}}`, `,"event":"` + "\xff" + `"}`, `,"event":"a\/b"}`,
		`,"ts":"2025-13-01T00:00:00Z"}`, `,"ts":"2025-03-01 12:00:00"}`, `,"raw":` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `}`,
	} {
		checkSame(t, []byte(base+tail))
	}
	for _, body := range []string{``, `null`, `{}`, `[]`, `{"v":1}`, `{"v":1.0}`, `{"v":99999999999999999999}`, `   `} {
		checkSame(t, []byte(body))
	}
}

func FuzzFastDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 20 {
		c := randomCoord(r)
		f.Add(c.AppendJSON(nil))
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkSame(t, data) })
}

func BenchmarkDecode(b *testing.B) {
	f := func(v float64) *float64 { return &v }
	c := coord.Coord{V: 1, DeviceID: "ubq-000123", TS: time.Now().UTC(), ReceivedAt: time.Now().UTC(), Lat: 19.2, Lon: -99.3,
		AltM: f(2240), SpeedKmh: f(40), HeadingDeg: f(120), AccuracyM: f(4), BatteryPct: f(88),
		Attrs: map[string]any{"ignition": json.Number("1"), "odometer_km": json.Number("12000"), "satellites": json.Number("7"), "employee": "EMP-00001"},
		Raw:   []byte(`{"imei":"ubq-000001","latitud":"19.200000","longitud":"-99.300000","fechaHora":"2025-03-01 06:00:00","velocidad":"0","rumbo":0,"bateria":100}`)}
	body := c.AppendJSON(nil)
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			var c coord.Coord
			if err := decodeCoord(body, &c); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reference", func(b *testing.B) {
		for b.Loop() {
			if _, err := reference(body); err != nil {
				b.Fatal(err)
			}
		}
	})
}
