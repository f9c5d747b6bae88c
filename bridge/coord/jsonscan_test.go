package coord

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// jsonCorpus holds texts at the edges of the JSON grammar.
var jsonCorpus = []string{
	``, ` `, `{}`, `[]`, ` { } `, `{"a":1}`, `{"a":1,}`, `{,}`, `{"a"}`, `{"a":}`, `{a:1}`, `{'a':1}`, `{"a":1 "b":2}`,
	`[1,]`, `[,1]`, `[1 2]`, `[[[]]]`, `[[[]]`, `]`, `}`, `{"a":[}`, `[{]`,
	`0`, `-0`, `01`, `-`, `1.`, `.5`, `1.5`, `1e5`, `1E+5`, `1e-5`, `1e`, `1e+`, `+1`, `0x10`, `1.5e3.2`, `-01`, `2.`, `NaN`, `Infinity`,
	`true`, `false`, `null`, `tru`, `True`, `nul`, `nulll`, `true false`,
	`""`, `"a`, `"\"`, `"\\"`, `"\/"`, `"\b\f\n\r\t"`, `"\u00e9"`, `"\u00E9"`, `"\u00g9"`, `"\u00e"`, `"\x"`, `"\'"`, "\"\t\"", "\"\x00\"",
	"\"\x7f\"", "\"\xff\"", "\"\xed\xa0\x80\"", `"\ud83d\ude9a"`, `"\ud83d"`, "\xef\xbb\xbf{}", "{}\x00", "{} ", "\n{}\n", "{}{}",
	`{"a":{"b":{"c":[1,{"d":null}]}}}`, `{"a":"}"}`, `{"a":"\"}"}`, `["]"]`,
}

// TestValidJSONAgrees: validJSON decides exactly like json.Valid.
func TestValidJSONAgrees(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	deepObj := func(n int) string { return strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) }
	corpus := append([]string{deep(maxDepth), deep(maxDepth + 1), deepObj(maxDepth), deepObj(maxDepth + 1)}, jsonCorpus...)
	for _, s := range corpus {
		want := json.Valid([]byte(s))
		if got := validJSON(s); got != want {
			t.Errorf("validJSON(%.40q) = %v, json.Valid = %v", s, got, want)
		}
		if got := validJSON([]byte(s)); got != want {
			t.Errorf("validJSON([]byte(%.40q)) = %v, json.Valid = %v", s, got, want)
		}
	}
}

// TestUnquote: strings decode as encoding/json decodes them, except that
// invalid UTF-8 is kept for the caller to judge.
func TestUnquote(t *testing.T) {
	for _, q := range []string{`""`, `"plain"`, `"\"\\\/\b\f\n\r\t"`, `"\u00e9\u00E9"`, `"\ud83d\ude9a"`, `"a\ud83db"`,
		`"\ude9a"`, `"\ud83d\u0041"`, `"\u0000"`, `"é🚚"`, `"\\u0041"`} {
		var want string
		if err := json.Unmarshal([]byte(q), &want); err != nil {
			t.Fatal(err)
		}
		if got := unquote(q); got != want {
			t.Errorf("unquote(%s) = %q, want %q", q, got, want)
		}
	}
	if got := unquote("\"a\xffb\""); got != "a\xffb" {
		t.Errorf("unquote kept %q, want the invalid byte", got)
	}
	if got := validUTF8("a\xff\xfeb"); got != "a\uFFFD\uFFFDb" {
		t.Errorf("validUTF8 = %q", got)
	}
}

func TestAppendCompact(t *testing.T) {
	for _, s := range []string{`{}`, " { \"a\" : [ 1 , 2 ] ,\n\t\"b\" : \" x  y \" } ", `[ "\" ]" , { } ]`, `"é🚚"`, "\"\u2028\""} {
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if got := appendCompact(nil, s); !bytes.Equal(got, want.Bytes()) {
			t.Errorf("appendCompact(%q) = %s, want %s", s, got, want.Bytes())
		}
	}
	if got := string(appendCompact(nil, "[ \"a\xffb\" ]")); got != "[\"a\uFFFDb\"]" {
		t.Errorf("invalid UTF-8 not replaced: %q", got)
	}
}

// TestEpoch: Unix times are read exactly, without going through float64.
func TestEpoch(t *testing.T) {
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"0", time.Unix(0, 0), true},
		{"0.000000001", time.Unix(0, 1), true},
		{"0.0000000019", time.Unix(0, 1), true},
		{"1e-5", time.Unix(0, 10_000), true},
		{"1e3", time.Unix(1000, 0), true},
		{"+1772366340", time.Unix(1772366340, 0), true},
		{"1772366340.987654321", time.Unix(1772366340, 987654321), true},
		{"0001772366340", time.Unix(1772366340, 0), true},
		{"1772366340123", time.Unix(1772366340, 123_000_000), true},
		{"1772366340123.456789", time.Unix(1772366340, 123_456_789), true},
		{"1.772366340123e12", time.Unix(1772366340, 123_000_000), true},
		{"177236634012300e-2", time.Unix(1772366340, 123_000_000), true},
		{"1e-99999999999999999999", time.Unix(0, 0), true},
		{"253402300799", time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), true},
		{"253402300800", time.Time{}, false}, // year 10000
		{"999999999999", time.Time{}, false},
		{"1e99999999999999999999", time.Time{}, false},
		{"-1", time.Time{}, false},
	}
	for _, tt := range tests {
		got, ok := epoch(tt.in)
		if ok != tt.ok || ok && !got.Equal(tt.want) {
			t.Errorf("epoch(%s) = %v, %v; want %v, %v", tt.in, got, ok, tt.want.UTC(), tt.ok)
		}
	}
}

func TestIsDecimal(t *testing.T) {
	for s, want := range map[string]bool{
		"1": true, "-1.5": true, "+2": true, ".5": true, "5.": true, "1e3": true, "1E-3": true, "007": true,
		"": false, "-": false, ".": false, "e3": false, "1e": false, "1e+": false, "NaN": false, "Inf": false,
		"0x1p3": false, "1_000": false, " 1": false, "1,5": false, "--1": false,
	} {
		if got := isDecimal(s); got != want {
			t.Errorf("isDecimal(%q) = %v, want %v", s, got, want)
		}
	}
}
