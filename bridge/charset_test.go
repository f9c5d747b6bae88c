package bridge_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// latin1 writes s (Latin-1 characters only) as ISO-8859-1 bytes.
func latin1(s string) string {
	var b []byte
	for _, r := range s {
		if r > 0xFF {
			panic("not Latin-1: " + s)
		}
		b = append(b, byte(r))
	}
	return string(b)
}

// A sender that posts Latin-1 and says so is read as the same text a UTF-8
// sender posts: "camión 7" is one device with one subject, and the same fix
// sent both ways is stored once.
func TestDeclaredCharsetIsTranscoded(t *testing.T) {
	e := newEnv(t, nil)
	const device = "camión 7"
	subject := "ubiqo.coords.cami=C3=B3n=207"
	fix := `{"device_id":"camión 7","lat":19.4326,"lon":-99.1332,"timestamp":"2026-03-01T10:00:00Z","conductor":"Peña"}`

	a := e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json; charset=ISO-8859-1", strings.NewReader(latin1(fix)), nil)
	if a.Status != http.StatusOK || a.Body["accepted"] != float64(1) {
		t.Fatalf("Latin-1 JSON: %d %s", a.Status, a.Raw)
	}
	m, err := e.stream.GetLastMsgForSubject(context.Background(), subject)
	if err != nil {
		t.Fatalf("no message on %s: %v", subject, err)
	}
	var c coord.Coord
	if err := json.Unmarshal(m.Data, &c); err != nil {
		t.Fatal(err)
	}
	if c.DeviceID != device || m.Header.Get("Ubiqo-Device") != device || c.Attrs["conductor"] != "Peña" {
		t.Fatalf("stored %s with headers %v", m.Data, m.Header)
	}
	if !strings.Contains(string(c.Raw), "Peña") {
		t.Fatalf("raw is not UTF-8 text: %s", c.Raw)
	}

	// The same fix again: in UTF-8, then as a windows-1252 form.
	a = e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json; charset=utf-8", strings.NewReader(fix), nil)
	if a.Status != http.StatusOK || a.Body["duplicates"] != float64(1) {
		t.Fatalf("UTF-8 JSON of the same fix: %d %s", a.Status, a.Raw)
	}
	form := "device_id=cami%F3n+7&lat=19.4326&lon=-99.1332&timestamp=2026-03-01T10%3A00%3A00Z"
	a = e.do(t, http.MethodPost, "/webhook/ubiqo", `application/x-www-form-urlencoded; Charset="windows-1252"`, strings.NewReader(form), nil)
	if a.Status != http.StatusOK || a.Body["duplicates"] != float64(1) {
		t.Fatalf("windows-1252 form of the same fix: %d %s", a.Status, a.Raw)
	}
	if n := e.msgs(t); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}

	// UTF-16 (little endian, with its byte order mark) is a charset too.
	var u16 []byte
	u16 = append(u16, 0xFF, 0xFE)
	for _, r := range strings.Replace(fix, "10:00:00Z", "10:00:05Z", 1) {
		u16 = append(u16, byte(r), byte(r>>8))
	}
	a = e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json; charset=utf-16", strings.NewReader(string(u16)), nil)
	if a.Status != http.StatusOK || a.Body["accepted"] != float64(1) {
		t.Fatalf("UTF-16 JSON: %d %s", a.Status, a.Raw)
	}
	if n := e.msgs(t); n != 2 {
		t.Fatalf("stream holds %d messages, want 2", n)
	}
}

func TestUnknownCharsetIs415(t *testing.T) {
	e := newEnv(t, nil)
	a := e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json; charset=klingon-8",
		strings.NewReader(`{"device_id":"t","lat":1,"lon":2}`), nil)
	if a.Status != http.StatusUnsupportedMediaType {
		t.Fatalf("status %d, want 415: %s", a.Status, a.Raw)
	}
	if msg, _ := a.Body["error"].(string); !strings.Contains(msg, `charset "klingon-8" is not supported`) {
		t.Fatalf("error %q does not name the charset", msg)
	}
	if n := e.msgs(t); n != 0 {
		t.Fatalf("stream holds %d messages, want 0", n)
	}
}

// A legacy sender that posts Latin-1 without saying so: a body (or query)
// that is not valid UTF-8 is read as windows-1252, so its truck is the same
// device as when it is sent as UTF-8.
func TestUndeclaredLatin1IsReadAsWindows1252(t *testing.T) {
	e := newEnv(t, nil)
	fix := `{"device_id":"camión 7","lat":19.4326,"lon":-99.1332,"timestamp":"2026-03-01T10:00:00Z"}`
	a := e.do(t, http.MethodPost, "/webhook/ubiqo", "application/json", strings.NewReader(latin1(fix)), nil)
	if a.Status != http.StatusOK || a.Body["accepted"] != float64(1) {
		t.Fatalf("Latin-1 JSON without a charset: %d %s", a.Status, a.Raw)
	}
	if _, err := e.stream.GetLastMsgForSubject(context.Background(), "ubiqo.coords.cami=C3=B3n=207"); err != nil {
		t.Fatalf("not stored as the UTF-8 device: %v", err)
	}
	a = e.do(t, http.MethodGet, "/webhook/ubiqo?device_id=cami%F3n+7&lat=19.4326&lon=-99.1332&timestamp=2026-03-01T10%3A00%3A00Z", "", nil, nil)
	if a.Status != http.StatusOK || a.Body["duplicates"] != float64(1) {
		t.Fatalf("Latin-1 query of the same fix: %d %s", a.Status, a.Raw)
	}
	a = e.do(t, http.MethodPost, "/webhook/ubiqo", "application/x-www-form-urlencoded",
		strings.NewReader("device_id=cami%F3n+7&lat=19.4326&lon=-99.1332&timestamp=2026-03-01T10%3A00%3A00Z"), nil)
	if a.Status != http.StatusOK || a.Body["duplicates"] != float64(1) {
		t.Fatalf("Latin-1 form of the same fix: %d %s", a.Status, a.Raw)
	}
	if n := e.msgs(t); n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
}

// What the review of the charset handling found: a declared US-ASCII body
// with Latin-1 bytes is read like an undeclared one, a byte order mark wins
// over the declared charset, a ';' inside a quoted parameter is not a
// separator, a GET's empty body has no charset to refuse, and the WHATWG
// "replacement" labels are refused.
func TestCharsetEdges(t *testing.T) {
	e := newEnv(t, nil)
	post := func(ct, body string) answer {
		t.Helper()
		return e.do(t, http.MethodPost, "/webhook/ubiqo", ct, strings.NewReader(body), nil)
	}
	fix := func(sec string) string {
		return `{"device_id":"camión 9","lat":19.4326,"lon":-99.1332,"timestamp":"2026-03-01T10:00:` + sec + `Z"}`
	}
	utf16be := func(s string) string {
		b := []byte{0xFE, 0xFF}
		for _, r := range s {
			b = append(b, byte(r>>8), byte(r))
		}
		return string(b)
	}
	for _, tt := range []struct {
		name, ct, body string
	}{
		{"us-ascii with Latin-1 bytes", "application/json; charset=us-ascii", latin1(fix("01"))},
		{"UTF-16 big endian by its byte order mark", "application/json; charset=utf-16", utf16be(fix("02"))},
		{"UTF-8 byte order mark beats a declared windows-1252", "application/json; charset=windows-1252", "\xEF\xBB\xBF" + fix("03")},
		{"a quoted ; is not a separator", `application/json; foo="a;charset=klingon"; charset=latin1`, latin1(fix("04"))},
	} {
		if a := post(tt.ct, tt.body); a.Status != http.StatusOK || a.Body["accepted"] != float64(1) {
			t.Errorf("%s: %d %s", tt.name, a.Status, a.Raw)
		}
	}
	if _, err := e.stream.GetLastMsgForSubject(context.Background(), "ubiqo.coords.cami=C3=B3n=209"); err != nil {
		t.Fatalf("not stored as the UTF-8 device: %v", err)
	}
	if n := e.msgs(t); n != 4 {
		t.Fatalf("stream holds %d messages, want 4", n)
	}
	a := e.do(t, http.MethodGet, "/webhook/ubiqo?device_id=g&lat=1&lon=2", "application/json; charset=klingon", nil, nil)
	if a.Status != http.StatusOK {
		t.Errorf("GET with a charset in its Content-Type: %d %s", a.Status, a.Raw)
	}
	if a := post("application/json; charset=iso-2022-kr", fix("05")); a.Status != http.StatusUnsupportedMediaType {
		t.Errorf("replacement charset: %d %s, want 415", a.Status, a.Raw)
	}
}
