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
	label := charsetOf(contentType)
	form := mediaType(contentType) == "application/x-www-form-urlencoded" && !looksJSON(body)
	var enc encoding.Encoding
	switch {
	case label == "":
		if form || !legacy(body) {
			break // a form is checked once parsed
		}
		enc, label = charmap.Windows1252, "windows-1252"
	case strings.EqualFold(label, "utf-8") || strings.EqualFold(label, "utf8") || strings.EqualFold(label, "us-ascii"):
		return body, nil
	default:
		var err error
		if enc, err = htmlindex.Get(label); err != nil {
			return nil, echo.NewHTTPError(http.StatusUnsupportedMediaType,
				"charset "+quoteLabel(label)+" is not supported; send UTF-8 or name a charset of the WHATWG Encoding Standard (e.g. ISO-8859-1)")
		}
		if name, _ := htmlindex.Name(enc); name == "utf-8" {
			return body, nil
		}
	}
	if form {
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
// quotes; "" when there is none. It allocates nothing.
func charsetOf(contentType string) string {
	rest := contentType
	for {
		i := strings.IndexByte(rest, ';')
		if i < 0 {
			return ""
		}
		rest = rest[i+1:]
		param := strings.TrimLeft(rest, " \t")
		const name = "charset"
		if len(param) <= len(name) || !strings.EqualFold(param[:len(name)], name) {
			continue
		}
		param = strings.TrimLeft(param[len(name):], " \t")
		if param == "" || param[0] != '=' {
			continue
		}
		v := strings.TrimLeft(param[1:], " \t")
		if end := strings.IndexByte(v, ';'); end >= 0 {
			v = v[:end]
		}
		v = strings.TrimRight(v, " \t")
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		return v
	}
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
