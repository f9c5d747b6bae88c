package coord

import (
	"errors"
	"strings"
	"testing"
)

func TestToken(t *testing.T) {
	tests := []struct{ id, want string }{
		{"356938035643809", "356938035643809"},
		{"truck_7-B", "truck_7-B"},
		{"a.b", "a=2Eb"},
		{"camión 7", "cami=C3=B3n=207"},
		{"*", "=2A"},
		{">", "=3E"},
		{"a*.>", "a=2A=2E=3E"},
		{"=", "=3D"},
		{"=3D", "=3D3D"},
		{"x y\tz\n", "x=20y=09z=0A"},
		{"a/b\\c", "a=2Fb=5Cc"},
		{"日本", "=E6=97=A5=E6=9C=AC"},
		{"🚚", "=F0=9F=9A=9A"},
		{"\x00", "=00"},
		{"\u007f", "=7F"},
		{strings.Repeat("z", MaxIDLen), strings.Repeat("z", MaxIDLen)},
	}
	for _, tt := range tests {
		got, err := Token(tt.id)
		if err != nil || got != tt.want {
			t.Errorf("Token(%q) = %q, %v; want %q", tt.id, got, err, tt.want)
			continue
		}
		if app := string(AppendToken([]byte("p."), tt.id)); app != "p."+tt.want {
			t.Errorf("AppendToken(%q) = %q, want %q", tt.id, app, "p."+tt.want)
		}
		back, err := ParseToken(got)
		if err != nil || back != tt.id {
			t.Errorf("ParseToken(%q) = %q, %v; want %q", got, back, err, tt.id)
		}
		checkTokenChars(t, got)
	}
}

// checkTokenChars: a token is one NATS subject token: no '.', no wildcard,
// no white space or control byte, only A-Z a-z 0-9 _ - =.
func checkTokenChars(t testing.TB, tok string) {
	t.Helper()
	if tok == "" {
		t.Errorf("empty token")
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '=') {
			t.Errorf("token %q holds byte %q", tok, c)
		}
	}
}

func TestTokenErrors(t *testing.T) {
	for _, tt := range []struct{ id, want string }{
		{"", "bad device id: empty"},
		{strings.Repeat("z", MaxIDLen+1), "bad device id: 129 bytes, max 128"},
		{strings.Repeat("é", 65), "bad device id: 130 bytes, max 128"},
		{"ab\xff", "bad device id: not valid UTF-8"},
	} {
		got, err := Token(tt.id)
		if !errors.Is(err, ErrBadID) || err.Error() != tt.want || got != "" {
			t.Errorf("Token(%.20q) = %q, %v; want error %q", tt.id, got, err, tt.want)
		}
	}
}

// TestTokenInjective: ids that differ only in the characters a token escapes,
// or in something that looks like an escape, never share a token.
func TestTokenInjective(t *testing.T) {
	ids := []string{
		"a.b", "a b", "a=2Eb", "a=2eb", "a_b", "a-b", "a*b", "a>b", "a=b", "a==b",
		"ab", "a.", ".a", "a..b", "A.B", "=", "==", "=3D", "=2E", "camión", "camio\u0301n",
		"cami=C3=B3n", "x", "X", " x", "x ", "\tx",
	}
	seen := make(map[string]string)
	for _, id := range ids {
		tok, err := Token(id)
		if err != nil {
			t.Fatal(err)
		}
		if other, dup := seen[tok]; dup {
			t.Errorf("ids %q and %q share the token %q", other, id, tok)
		}
		seen[tok] = id
	}
}

func TestParseTokenErrors(t *testing.T) {
	for _, tt := range []struct{ tok, why string }{
		{"", "empty token"},
		{"a.b", `"." at 1 is not allowed`},
		{"a*", `"*" at 1 is not allowed`},
		{">", `">" at 0 is not allowed`},
		{"a b", `" " at 1 is not allowed`},
		{"é", `"\xc3" at 0 is not allowed`},
		{"a=", "truncated escape at 1"},
		{"a=2", "truncated escape at 1"},
		{"=2e", "escape at 0 is not =XX with upper-case hex"},
		{"=G0", "escape at 0 is not =XX with upper-case hex"},
		{"=41", `escape at 0 of "A", which a token keeps as it is`},
		{"=5F", `escape at 0 of "_", which a token keeps as it is`},
		{"=FF", "not valid UTF-8"},
		{"=C3", "not valid UTF-8"},
		{strings.Repeat("z", MaxIDLen+1), "129 bytes, max 128"},
		{strings.Repeat("=2E", MaxIDLen+1), "129 bytes, max 128"},
	} {
		id, err := ParseToken(tt.tok)
		if !errors.Is(err, ErrBadID) || !strings.Contains(err.Error(), tt.why) || id != "" {
			t.Errorf("ParseToken(%.20q) = %q, %v; want ErrBadID with %q", tt.tok, id, err, tt.why)
		}
	}
	// An error never repeats a huge token.
	_, err := ParseToken(strings.Repeat("a", 10000) + "*")
	if err == nil || len(err.Error()) > 200 {
		t.Errorf("error of a huge token: %d bytes", len(err.Error()))
	}
}

func TestSubject(t *testing.T) {
	got, err := Subject("ubiqo.coords", "camión 7")
	if err != nil || got != "ubiqo.coords.cami=C3=B3n=207" {
		t.Errorf("Subject = %q, %v", got, err)
	}
	got, err = Subject("x", "356938035643809")
	if err != nil || got != "x.356938035643809" {
		t.Errorf("Subject = %q, %v", got, err)
	}
	for _, p := range []string{"", ".a", "a.", "a..b", "a.*", "a.>", "a b", "a\tb", "a\x00"} {
		if _, err := Subject(p, "d"); !errors.Is(err, ErrBadPrefix) {
			t.Errorf("Subject(%q, d) error %v, want ErrBadPrefix", p, err)
		}
	}
	if _, err := Subject("ubiqo.coords", ""); !errors.Is(err, ErrBadID) {
		t.Errorf("Subject with an empty id: %v, want ErrBadID", err)
	}
}
