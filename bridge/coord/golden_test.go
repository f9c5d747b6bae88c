package coord

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	_ "time/tzdata" // America/Mexico_City without relying on the host's zoneinfo
)

var update = flag.Bool("update", false, "rewrite testdata/decode/*.golden from the current output")

// goldenNow is the receive time of every golden and table test.
var goldenNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// goldenDecoder is the decoder of the golden files: zone-less times in
// America/Mexico_City (UTC-6, no DST since 2022), at most 5 items, and two
// configured aliases.
func goldenDecoder(tb testing.TB) *Decoder {
	tb.Helper()
	d, err := NewDecoder(Options{
		Location: mexicoCity(tb),
		MaxItems: 5,
		Aliases: map[string][]string{
			"device_id":   {"unidad"},
			"battery_pct": {"nivel_bateria"},
		},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func mexicoCity(tb testing.TB) *time.Location {
	tb.Helper()
	loc, err := time.LoadLocation("America/Mexico_City")
	if err != nil {
		tb.Fatal(err)
	}
	return loc
}

// decodeFile decodes one testdata input by its extension: .json is a JSON
// body, .form a form body, .query a query string with an empty body (GET).
// Every request also carries ?token=s3cret, which must never show.
func decodeFile(d *Decoder, path string, input []byte) (*Batch, error) {
	query := url.Values{"token": {"s3cret"}}
	switch filepath.Ext(path) {
	case ".form":
		return d.Decode("application/x-www-form-urlencoded; charset=utf-8", bytes.TrimSpace(input), query, goldenNow)
	case ".query":
		v, err := url.ParseQuery(strings.TrimSpace(string(input)))
		if err != nil {
			return nil, err
		}
		v.Set("token", "s3cret")
		return d.Decode("", nil, v, goldenNow)
	}
	return d.Decode("application/json", input, query, goldenNow)
}

// batchJSON is the golden form of a Decode result: the accepted coordinates
// as AppendJSON writes them and the rejections, or the error, indented.
func batchJSON(tb testing.TB, b *Batch, err error) []byte {
	tb.Helper()
	var out []byte
	if err != nil {
		out = appendString([]byte(`{"error":`), err.Error())
		out = append(out, '}')
	} else {
		out = append(out, `{"coords":[`...)
		for i := range b.Coords {
			if i > 0 {
				out = append(out, ',')
			}
			out = b.Coords[i].AppendJSON(out)
		}
		out = append(out, `],"rejected":`...)
		rejected := b.Rejected
		if rejected == nil {
			rejected = []Rejection{}
		}
		rej, merr := json.Marshal(rejected)
		if merr != nil {
			tb.Fatal(merr)
		}
		out = append(out, rej...)
		out = append(out, '}')
	}
	var ind bytes.Buffer
	if err := json.Indent(&ind, out, "", "  "); err != nil {
		tb.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	ind.WriteByte('\n')
	return ind.Bytes()
}

func goldenInputs(tb testing.TB) []string {
	tb.Helper()
	var files []string
	for _, ext := range []string{"json", "form", "query"} {
		m, err := filepath.Glob(filepath.Join("testdata", "decode", "*."+ext))
		if err != nil {
			tb.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		tb.Fatal("no golden inputs in testdata/decode")
	}
	return files
}

// TestDecodeGolden decodes every input in testdata/decode and compares the
// result with <name>.golden. Run with -update to rewrite them, then review
// the diff: the golden files are the ingest contract in examples.
func TestDecodeGolden(t *testing.T) {
	d := goldenDecoder(t)
	for _, path := range goldenInputs(t) {
		name := filepath.Base(path)
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			b, derr := decodeFile(d, path, input)
			got := batchJSON(t, b, derr)
			for _, secret := range []string{"s3cret", "also-secret"} {
				if bytes.Contains(got, []byte(secret)) {
					t.Errorf("the token %q leaked into the output:\n%s", secret, got)
				}
			}
			golden := strings.TrimSuffix(path, filepath.Ext(path)) + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestDecodeGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s (run with -update and review the diff)\ngot:\n%s\nwant:\n%s", name, golden, got, want)
			}
			// Every accepted coordinate is valid and survives a round trip.
			if derr == nil {
				for i := range b.Coords {
					checkCoord(t, &b.Coords[i])
				}
			}
		})
	}
}

// checkCoord asserts the invariants every decoded coordinate has: it
// validates, its token round-trips, and AppendJSON output is valid JSON that
// reads back to an equal Coord.
func checkCoord(t testing.TB, c *Coord) {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Errorf("decoded coord does not validate: %v\n%+v", err, c)
	}
	tok, err := Token(c.DeviceID)
	if err != nil {
		t.Errorf("Token(%q): %v", c.DeviceID, err)
	} else if id, err := ParseToken(tok); err != nil || id != c.DeviceID {
		t.Errorf("ParseToken(Token(%q)) = %q, %v", c.DeviceID, id, err)
	}
	out := c.AppendJSON(nil)
	if !json.Valid(out) {
		t.Fatalf("AppendJSON output is not valid JSON: %s", out)
	}
	var back Coord
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatalf("json.Unmarshal(AppendJSON): %v\n%s", err, out)
	}
	if again := back.AppendJSON(nil); !bytes.Equal(again, out) {
		t.Errorf("re-encoding differs:\n%s\n%s", out, again)
	}
	assertCoordEqual(t, &back, c)
}
