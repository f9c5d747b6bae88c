package coord

import (
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// addFileSeeds adds every testdata/decode file with one of the extensions to
// the corpus of f.
func addFileSeeds(f *testing.F, exts ...string) {
	f.Helper()
	n := 0
	for _, ext := range exts {
		files, err := filepath.Glob(filepath.Join("testdata", "decode", "*."+ext))
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(b)
			n++
		}
	}
	if n == 0 {
		f.Fatal("no seeds in testdata/decode")
	}
}

var sentinels = []error{ErrMalformed, ErrTooManyItems, ErrUnsupportedMediaType, ErrEmpty}

func checkSentinel(t *testing.T, err error) {
	t.Helper()
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %v wraps none of the package's errors", err)
}

// checkBatch asserts what holds for every successful decode.
func checkBatch(t *testing.T, b *Batch, maxItems int) {
	t.Helper()
	if b == nil || len(b.Coords)+len(b.Rejected) == 0 {
		t.Fatalf("no error and no item: %+v", b)
	}
	if maxItems > 0 && len(b.Coords)+len(b.Rejected) > maxItems {
		t.Fatalf("%d items with MaxItems %d", len(b.Coords)+len(b.Rejected), maxItems)
	}
	last := -1
	for _, r := range b.Rejected {
		if r.Index <= last || r.Index >= len(b.Coords)+len(b.Rejected) {
			t.Fatalf("rejection indexes out of order or range: %+v", b.Rejected)
		}
		last = r.Index
		if r.Error == "" || !utf8.ValidString(r.Error) || len(r.Error) > 2048 {
			t.Fatalf("bad rejection message %q", r.Error)
		}
	}
	for i := range b.Coords {
		c := &b.Coords[i]
		checkCoord(t, c)
		if strings.ContainsFunc(c.DeviceID, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			t.Fatalf("device id %q with a control character accepted: it cannot travel in the Ubiqo-Device header", c.DeviceID)
		}
		if out := c.AppendJSON(nil); !utf8.Valid(out) {
			t.Fatalf("AppendJSON output is not UTF-8: %q", out)
		}
		if !json.Valid(c.Raw) {
			t.Fatalf("raw is not JSON: %q", c.Raw)
		}
	}
}

// FuzzDecodeJSON: any body either fails with one of the package's errors or
// gives coordinates that validate, encode to valid UTF-8 JSON that reads
// back equal, and have tokens that round-trip. validJSON agrees with
// json.Valid on every input.
func FuzzDecodeJSON(f *testing.F) {
	addFileSeeds(f, "json")
	d := goldenDecoder(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		if got, want := validJSON(body), json.Valid(body); got != want {
			t.Fatalf("validJSON = %v, json.Valid = %v for %q", got, want, body)
		}
		b, err := d.DecodeJSON(body, goldenNow)
		if err != nil {
			checkSentinel(t, err)
			if b != nil {
				t.Fatal("batch returned with an error")
			}
			if len(err.Error()) > 512 {
				t.Fatalf("error message of %d bytes", len(err.Error()))
			}
			return
		}
		checkBatch(t, b, 5)
		// Decode picks the same path for JSON, with or without a content type.
		b2, err := d.Decode("application/json; charset=utf-8", body, nil, goldenNow)
		if err != nil || len(b2.Coords) != len(b.Coords) || len(b2.Rejected) != len(b.Rejected) {
			t.Fatalf("Decode and DecodeJSON differ: %v", err)
		}
	})
}

// FuzzDecodeValues: any query string either fails with one of the package's
// errors or gives a valid coordinate; the token never reaches attrs or raw.
func FuzzDecodeValues(f *testing.F) {
	for _, q := range []string{
		"device_id=a&lat=1&lon=2",
		"imei=356938035643809&location=19.4%2C-99.1&bateria=0.5&token=t",
		"dispositivo=x&latitud=%2019.4%20&longitud=-99&fecha=01%2F03%2F2026+05%3A30%3A00&velocidad=10&speed_unit=kn",
		"device_id=a&device_id=b&lat=1&lat=x&lon=2&ts=1772366340123&Token=t&TOKEN=u",
		"deviceId=%FF&lat=1&lon=2",
		"device_id=a&lat=1&lon=2&event=%00&x=%E2%80%A8",
		"lat=91",
		"=&&=",
	} {
		f.Add(q)
	}
	d := goldenDecoder(f)
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			// A form whose pairs partly parse keeps those (as a query
			// string does); one with none that parse is malformed.
			_, derr := d.Decode("application/x-www-form-urlencoded", []byte(q), nil, goldenNow)
			first, _ := firstByte([]byte(q))
			json := first == '{' || first == '[' // decoded as JSON whatever the type
			switch {
			case strings.TrimSpace(q) == "" || json:
			case len(v) == 0 && !errors.Is(derr, ErrMalformed):
				t.Fatalf("form %q of which no pair parses gave %v, want ErrMalformed", q, derr)
			case len(v) > 0 && derr != nil && !errors.Is(derr, ErrEmpty):
				t.Fatalf("form %q with pairs that parse gave %v, want them decoded", q, derr)
			}
			return
		}
		b, err := d.DecodeValues(v, goldenNow)
		if err != nil {
			if !errors.Is(err, ErrEmpty) {
				t.Fatalf("DecodeValues: %v, want only ErrEmpty", err)
			}
			return
		}
		checkBatch(t, b, 1)
		for i := range b.Coords {
			var raw map[string]any
			if err := json.Unmarshal(b.Coords[i].Raw, &raw); err != nil {
				t.Fatalf("raw: %v", err)
			}
			for _, m := range []map[string]any{raw, b.Coords[i].Attrs} {
				for k := range m {
					if normalize(k) == "token" {
						t.Fatalf("key %q kept: %s", k, b.Coords[i].AppendJSON(nil))
					}
				}
			}
		}
	})
}

// FuzzToken: Token and ParseToken are inverse; a token is a single subject
// token; ParseToken accepts only canonical tokens.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"356938035643809", "camión 7", "a.b*c>d", "=3D", "=41", "a b\t", "\xff", "", strings.Repeat("é", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		tok, err := Token(id)
		valid := id != "" && len(id) <= MaxIDLen && utf8.ValidString(id)
		if (err == nil) != valid {
			t.Fatalf("Token(%q) error %v, valid id %v", id, err, valid)
		}
		if err != nil {
			if !errors.Is(err, ErrBadID) {
				t.Fatalf("Token error %v does not wrap ErrBadID", err)
			}
		} else {
			checkTokenChars(t, tok)
			if back, err := ParseToken(tok); err != nil || back != id {
				t.Fatalf("ParseToken(Token(%q)) = %q, %v", id, back, err)
			}
			if app := string(AppendToken(nil, id)); app != tok {
				t.Fatalf("AppendToken %q != Token %q", app, tok)
			}
			if subj, err := Subject("ubiqo.coords", id); err != nil || subj != "ubiqo.coords."+tok {
				t.Fatalf("Subject = %q, %v", subj, err)
			}
		}
		// The input as a token: accepted only if it is the token of its id.
		if back, err := ParseToken(id); err == nil {
			if again, err := Token(back); err != nil || again != id {
				t.Fatalf("ParseToken(%q) = %q, but Token of that is %q, %v", id, back, again, err)
			}
		} else if !errors.Is(err, ErrBadID) {
			t.Fatalf("ParseToken error %v does not wrap ErrBadID", err)
		}
	})
}
