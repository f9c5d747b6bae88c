package bridge

import (
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/unicode"
)

// toUTF8 returns body as UTF-8, transcoded from the charset its Content-Type
// names (charset=ISO-8859-1, windows-1252, UTF-16...; any label of the
// WHATWG Encoding Standard, as browsers read them). With UTF-8 or US-ASCII
// named, body is returned as it is. A charset nobody knows is a 415.
//
// Without a charset, a body that is valid UTF-8 is returned as it is, and
// one that is not (and holds no UTF-8 character beyond ASCII either, see
// legacy) is read as windows-1252 (the superset of ISO-8859-1 that browsers
// read for it): a legacy sender that does not say it posts Latin-1.
//
// A JSON body is transcoded whole. A form body is parsed first and its
// decoded names and values transcoded, since the bytes a charset gives
// meaning to travel percent-encoded; it is returned re-encoded as a UTF-8
// form. A form that does not parse at all is left to the decoder, which
// says why.
//
// Senders in Spanish-speaking countries still post Latin-1: without this,
// "camión 7" would become the device "cami\uFFFDn 7", another device than
// the same truck sent as UTF-8.
func toUTF8(contentType string, body []byte) ([]byte, error) {
	if len(body) == 0 {
		return body, nil // a GET: its query is checked by queryToUTF8
	}
	label := charsetOf(contentType)
	form := mediaType(contentType) == "application/x-www-form-urlencoded" && !looksJSON(body)
	if !form {
		// A byte order mark says what the text is, whatever the header
		// says (as the WHATWG decode does).
		switch {
		case len(body) >= 3 && body[0] == 0xEF && body[1] == 0xBB && body[2] == 0xBF:
			return body, nil // the decoder skips it
		case len(body) >= 2 && (body[0] == 0xFE && body[1] == 0xFF || body[0] == 0xFF && body[1] == 0xFE):
			label = "utf-16"
		}
	}
	var enc encoding.Encoding
	switch {
	case label == "" || strings.EqualFold(label, "us-ascii"):
		// US-ASCII promises no byte beyond 0x7F: one that is there is
		// read as when no charset is named.
		if form || !legacy(body) {
			break // a form is checked once parsed
		}
		enc, label = charmap.Windows1252, "windows-1252"
	case strings.EqualFold(label, "utf-8") || strings.EqualFold(label, "utf8"):
		return body, nil
	case strings.EqualFold(label, "utf-16") && len(body) >= 2 && body[0] == 0xFE && body[1] == 0xFF:
		enc = unicode.UTF16(unicode.BigEndian, unicode.ExpectBOM)
	case strings.EqualFold(label, "utf-16") && len(body) >= 2 && body[0] == 0xFF && body[1] == 0xFE:
		enc = unicode.UTF16(unicode.LittleEndian, unicode.ExpectBOM)
	default:
		var err error
		enc, err = htmlindex.Get(label)
		name := ""
		if err == nil {
			name, _ = htmlindex.Name(enc)
		}
		switch name {
		case "utf-8":
			return body, nil
		case "", "replacement": // unknown, or one that is only there to be refused
			return nil, echo.NewHTTPError(http.StatusUnsupportedMediaType,
				"charset "+quoteLabel(label)+" is not supported; send UTF-8 or name a charset of the WHATWG Encoding Standard (e.g. ISO-8859-1)")
		}
	}
	if form {
		if enc == nil && !mayBeLegacyForm(body) {
			return body, nil
		}
		v, err := url.ParseQuery(string(body))
		if err != nil && len(v) == 0 {
			return body, nil
		}
		if enc == nil {
			if valuesValid(v) {
				return body, nil
			}
			enc, label = charmap.Windows1252, "windows-1252"
		}
		if v, err = valuesToUTF8(v, enc, label); err != nil {
			return nil, err
		}
		return []byte(v.Encode()), nil
	}
	if enc == nil {
		return body, nil
	}
	out, err := enc.NewDecoder().Bytes(body)
	if err != nil {
		return nil, badCharset(label, err)
	}
	return out, nil
}

// mayBeLegacyForm reports whether a form body can hold a byte beyond ASCII
// once decoded: one written raw, or a %XX escape of one (%80 to %FF). The
// common ASCII form is passed on without being parsed twice.
func mayBeLegacyForm(body []byte) bool {
	for i, c := range body {
		if c >= utf8.RuneSelf {
			return true
		}
		if c == '%' && i+1 < len(body) {
			switch body[i+1] {
			case '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', 'A', 'B', 'C', 'D', 'E', 'F':
				return true
			}
		}
	}
	return false
}

// queryToUTF8 returns the query parameters of a GET as UTF-8: as they are
// when they are valid UTF-8, read as windows-1252 when they are not (a
// query names no charset).
func queryToUTF8(v url.Values) url.Values {
	if !queryHasHighBytes(v) || valuesValid(v) {
		return v
	}
	out, err := valuesToUTF8(v, charmap.Windows1252, "windows-1252")
	if err != nil {
		return v // windows-1252 decodes every byte: not reached
	}
	return out
}

// queryHasHighBytes reports whether any name or value of v has a byte
// beyond ASCII: the cheap test every GET takes.
func queryHasHighBytes(v url.Values) bool {
	for k, vs := range v {
		if !ascii(k) {
			return true
		}
		for _, s := range vs {
			if !ascii(s) {
				return true
			}
		}
	}
	return false
}

func ascii(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// valuesValid reports whether the names and values of v are UTF-8 text as
// far as legacy can tell.
func valuesValid(v url.Values) bool {
	var all []byte
	for k, vs := range v {
		all = append(all, k...)
		for _, s := range vs {
			all = append(all, s...)
		}
	}
	return !legacy(all)
}

// legacy reports whether b is text in a legacy 8-bit charset rather than
// UTF-8: it is not valid UTF-8, and no multi-byte UTF-8 character is in it
// (Latin-1 text almost never forms one). Text mixing UTF-8 characters and
// stray bytes is left as it is: the stray bytes become U+FFFD, and a device
// id holding one is rejected.
func legacy(b []byte) bool {
	if utf8.Valid(b) {
		return false
	}
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r != utf8.RuneError || size > 1 {
			return false
		}
		i++
	}
	return true
}

func valuesToUTF8(v url.Values, enc encoding.Encoding, label string) (url.Values, error) {
	dec := enc.NewDecoder()
	out := make(url.Values, len(v))
	for k, vs := range v {
		key, err := dec.String(k)
		if err != nil {
			return nil, badCharset(label, err)
		}
		for _, s := range vs {
			s, err := dec.String(s)
			if err != nil {
				return nil, badCharset(label, err)
			}
			out[key] = append(out[key], s)
		}
	}
	return out, nil
}

func badCharset(label string, err error) error {
	return echo.NewHTTPError(http.StatusBadRequest, "body is not valid "+quoteLabel(label)+": "+err.Error())
}

// quoteLabel quotes a charset label for an error message, cut short.
func quoteLabel(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}

// charsetOf returns the charset parameter of a Content-Type value, without
// quotes; "" when there is none. A ';' or "charset=" inside another
// parameter's quoted value does not count. It allocates nothing.
func charsetOf(contentType string) string {
	i := paramEnd(contentType, 0)
	for i < len(contentType) {
		start := i + 1
		i = paramEnd(contentType, start)
		param := strings.TrimLeft(contentType[start:i], " \t")
		const name = "charset"
		if len(param) <= len(name) || !strings.EqualFold(param[:len(name)], name) {
			continue
		}
		v := strings.TrimLeft(param[len(name):], " \t")
		if v == "" || v[0] != '=' {
			continue
		}
		v = strings.Trim(v[1:], " \t")
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v
	}
	return ""
}

// paramEnd returns the index of the next ';' of a Content-Type value from i
// on that is not inside a quoted string, or len(s).
func paramEnd(s string, i int) int {
	quoted := false
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case c == ';' && !quoted:
			return i
		}
	}
	return len(s)
}

// mediaType is the media type of a Content-Type value, lower case.
func mediaType(contentType string) string {
	if i := strings.IndexByte(contentType, ';'); i >= 0 {
		contentType = contentType[:i]
	}
	return strings.ToLower(strings.TrimSpace(contentType))
}

// looksJSON reports whether body starts (after white space) with { or [:
// a JSON body sent under a form type, which the decoder reads as JSON.
func looksJSON(body []byte) bool {
	for _, c := range body {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		case '{', '[':
			return true
		}
		return false
	}
	return false
}
