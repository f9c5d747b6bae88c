package coord

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds the small JSON toolkit the decoder works with. The body is
// converted to a string once; every key, number and escape-free string taken
// from it is a substring of that one copy, so decoding allocates little.
//
// validJSON decides whether a text is JSON (it agrees with json.Valid, which the
// fuzz tests check); the walking functions after it (skipValue, appendMembers,
// appendElements) do not validate and must only be trusted on text that
// validJSON accepted — on other text they never panic but their answer is
// meaningless.

// kind is the type of a JSON value, read from its first byte.
type kind uint8

const (
	kindInvalid kind = iota
	kindNull
	kindBool
	kindNumber
	kindString
	kindObject
	kindArray
)

func kindOf(c byte) kind {
	switch c {
	case 'n':
		return kindNull
	case 't', 'f':
		return kindBool
	case '"':
		return kindString
	case '{':
		return kindObject
	case '[':
		return kindArray
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return kindNumber
	}
	return kindInvalid
}

// noun names the kind for error messages ("got an object").
func (k kind) noun() string {
	switch k {
	case kindNull:
		return "null"
	case kindBool:
		return "a boolean"
	case kindNumber:
		return "a number"
	case kindString:
		return "a string"
	case kindObject:
		return "an object"
	case kindArray:
		return "an array"
	}
	return "an invalid value"
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

func skipSpace(s string, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

// maxDepth is the nesting limit of encoding/json, kept so that validJSON and
// json.Valid agree on every input.
const maxDepth = 10000

// validJSON reports whether s is exactly one JSON value with optional
// surrounding white space. Like json.Valid it accepts any byte >= 0x80 inside
// strings (invalid UTF-8 is replaced later, when strings are used).
func validJSON[T ~string | ~[]byte](s T) bool {
	ok, _ := validate(s)
	return ok
}

// validate is validJSON that also reports whether s has white space outside
// its strings: a valid s without any, and valid UTF-8, is its own compact
// form (appendCompact would copy it unchanged).
func validate[T ~string | ~[]byte](s T) (ok, spaced bool) {
	v := validator[T]{s: s}
	i, ok := v.value(v.space(s, 0), 1)
	return ok && v.space(s, i) == len(s), v.spaced
}

func skipSpaceT[T ~string | ~[]byte](s T, i int) int {
	for i < len(s) && isSpace(s[i]) {
		i++
	}
	return i
}

type validator[T ~string | ~[]byte] struct {
	s      T
	spaced bool // white space was skipped
}

// space returns the index of the first byte of s (which is v.s) from i on
// that is not white space, noting whether there was any.
func (v *validator[T]) space(s T, i int) int {
	j := skipSpaceT(s, i)
	if j != i {
		v.spaced = true
	}
	return j
}

// value checks the value starting at i (no leading space) and returns the
// index just after it.
func (v *validator[T]) value(i, depth int) (int, bool) {
	s := v.s
	if i >= len(s) {
		return i, false
	}
	switch c := s[i]; c {
	case '{':
		if depth > maxDepth {
			return i, false
		}
		i = v.space(s, i+1)
		if i < len(s) && s[i] == '}' {
			return i + 1, true
		}
		for {
			if i >= len(s) || s[i] != '"' {
				return i, false
			}
			var ok bool
			if i, ok = v.str(i); !ok {
				return i, false
			}
			i = v.space(s, i)
			if i >= len(s) || s[i] != ':' {
				return i, false
			}
			if i, ok = v.value(v.space(s, i+1), depth+1); !ok {
				return i, false
			}
			i = v.space(s, i)
			if i >= len(s) {
				return i, false
			}
			if s[i] == '}' {
				return i + 1, true
			}
			if s[i] != ',' {
				return i, false
			}
			i = v.space(s, i+1)
		}
	case '[':
		if depth > maxDepth {
			return i, false
		}
		i = v.space(s, i+1)
		if i < len(s) && s[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = v.value(i, depth+1); !ok {
				return i, false
			}
			i = v.space(s, i)
			if i >= len(s) {
				return i, false
			}
			if s[i] == ']' {
				return i + 1, true
			}
			if s[i] != ',' {
				return i, false
			}
			i = v.space(s, i+1)
		}
	case '"':
		return v.str(i)
	case 't':
		return v.lit(i, "true")
	case 'f':
		return v.lit(i, "false")
	case 'n':
		return v.lit(i, "null")
	default:
		return v.num(i)
	}
}

func (v *validator[T]) lit(i int, word string) (int, bool) {
	if len(v.s)-i < len(word) || string(v.s[i:i+len(word)]) != word {
		return i, false
	}
	return i + len(word), true
}

func (v *validator[T]) str(i int) (int, bool) {
	s := v.s
	for i++; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return i + 1, true
		case c < 0x20:
			return i, false
		case c == '\\':
			i++
			if i >= len(s) {
				return i, false
			}
			switch s[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(s)-i < 5 {
					return i, false
				}
				for _, h := range []byte{s[i+1], s[i+2], s[i+3], s[i+4]} {
					if unhex(h) < 0 {
						return i, false
					}
				}
				i += 4
			default:
				return i, false
			}
		}
	}
	return i, false
}

func (v *validator[T]) num(i int) (int, bool) {
	s := v.s
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	default:
		return i, false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if i >= len(s) || !isDigit(s[i]) {
			return i, false
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if i >= len(s) || !isDigit(s[i]) {
			return i, false
		}
		for i < len(s) && isDigit(s[i]) {
			i++
		}
	}
	return i, true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// syntaxDetail returns a short description of why s is not JSON, for
// ErrMalformed. It is only called on the error path.
func syntaxDetail(s string) string {
	var raw json.RawMessage
	err := json.Unmarshal([]byte(s), &raw)
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se)
	case err != nil:
		return "invalid JSON: " + err.Error()
	}
	return "invalid JSON" // validJSON and encoding/json disagree; cannot happen
}

// skipString returns the index just after the string starting at s[i] == '"'.
func skipString(s string, i int) (int, bool) {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '"':
			return j + 1, true
		case '\\':
			j++
		}
	}
	return len(s), false
}

// skipValue returns the index just after the value starting at s[i].
func skipValue(s string, i int) (int, bool) {
	if i >= len(s) {
		return i, false
	}
	switch s[i] {
	case '"':
		return skipString(s, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(s); j++ {
			switch s[j] {
			case '"':
				end, ok := skipString(s, j)
				if !ok {
					return end, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return len(s), false
	}
	j := i
	for j < len(s) {
		c := s[j]
		if c == ',' || c == '}' || c == ']' || c == ':' || c == '"' || isSpace(c) {
			break
		}
		j++
	}
	return j, j > i
}

// member is one key/value pair of a JSON object, or one key of form values.
type member struct {
	key  string   // the decoded key
	raw  string   // JSON: the value exactly as written; form: the first value
	kind kind     // kindString for every form value
	form bool     // the member comes from form or query values
	list []string // form only: every value, when the key was repeated
	used bool     // mapped to a Coord field, so left out of attrs
}

// appendMembers appends the members of the object s (s[0] == '{') to dst.
func appendMembers(dst []member, s string) ([]member, bool) {
	i := skipSpace(s, 1)
	if i < len(s) && s[i] == '}' {
		return dst, true
	}
	for {
		if i >= len(s) || s[i] != '"' {
			return dst, false
		}
		end, ok := skipString(s, i)
		if !ok {
			return dst, false
		}
		key := unquote(s[i:end])
		i = skipSpace(s, end)
		if i >= len(s) || s[i] != ':' {
			return dst, false
		}
		i = skipSpace(s, i+1)
		vend, ok := skipValue(s, i)
		if !ok {
			return dst, false
		}
		dst = append(dst, member{key: key, raw: s[i:vend], kind: kindOf(s[i])})
		i = skipSpace(s, vend)
		if i >= len(s) {
			return dst, false
		}
		if s[i] == '}' {
			return dst, true
		}
		if s[i] != ',' {
			return dst, false
		}
		i = skipSpace(s, i+1)
	}
}

// elements describes the elements of a JSON array.
type elements struct {
	items     []string // each element as written
	nonObject int      // index of the first element that is not an object, or -1
	tooMany   bool     // more than the limit; items holds limit+1 elements
}

// appendElements collects the elements of the array s (s[0] == '['), stopping
// as soon as there are more than limit (limit <= 0: no limit), so an oversized
// batch is refused without walking all of it. The elements are appended to
// dst[:0], whose array is reused when it is large enough.
func appendElements(dst []string, s string, limit int) (elements, bool) {
	e := elements{items: dst[:0], nonObject: -1}
	i := skipSpace(s, 1)
	if i < len(s) && s[i] == ']' {
		return e, true
	}
	for {
		end, ok := skipValue(s, i)
		if !ok {
			return e, false
		}
		if s[i] != '{' && e.nonObject < 0 {
			e.nonObject = len(e.items)
		}
		e.items = append(e.items, s[i:end])
		if limit > 0 && len(e.items) > limit {
			e.tooMany = true
			return e, true
		}
		i = skipSpace(s, end)
		if i >= len(s) {
			return e, false
		}
		if s[i] == ']' {
			return e, true
		}
		if s[i] != ',' {
			return e, false
		}
		i = skipSpace(s, i+1)
	}
}

// unquote decodes the JSON string literal q (quotes included). Bytes that are
// not valid UTF-8 are kept as they are: callers decide (a device id is
// rejected, other text is repaired with validUTF8). A lone surrogate escape
// becomes U+FFFD, as in encoding/json.
func unquote(q string) string {
	if len(q) < 2 {
		return ""
	}
	s := q[1 : len(q)-1]
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b = append(b, c)
			i++
			continue
		}
		i++
		switch e := s[i]; e {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, ok := hex4(s[i+1:])
			if !ok {
				b = append(b, '\\', 'u')
				i++
				continue
			}
			i += 4
			if utf16.IsSurrogate(r) {
				r2, ok := rune(0), false
				if len(s)-i >= 7 && s[i+1] == '\\' && s[i+2] == 'u' {
					r2, ok = hex4(s[i+3:])
				}
				if dec := utf16.DecodeRune(r, r2); ok && dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			b = utf8.AppendRune(b, r)
		default: // '"', '\\', '/'
			b = append(b, e)
		}
		i++
	}
	return string(b)
}

func hex4(s string) (rune, bool) {
	if len(s) < 4 {
		return 0, false
	}
	var r rune
	for i := range 4 {
		h := unhex(s[i])
		if h < 0 {
			return 0, false
		}
		r = r<<4 | rune(h)
	}
	return r, true
}

// validUTF8 returns s with every byte that is not part of valid UTF-8 replaced
// by U+FFFD, as encoding/json does when it decodes a string.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, "\uFFFD"...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(b)
}

// appendCompact appends the JSON text s, which must be valid, without
// insignificant white space and with every invalid UTF-8 byte inside strings
// replaced by U+FFFD, so the result is valid UTF-8 whatever the sender wrote.
//
// It copies runs of bytes that stay as they are with one append each, so
// text that is already compact (the usual case: Raw of a decoded Coord) costs
// one scan and one copy.
func appendCompact[T ~string | ~[]byte](dst []byte, s T) []byte {
	start := 0 // s[start:i] is kept, not yet appended
	for i := 0; i < len(s); {
		c := s[i]
		if isSpace(c) {
			dst = append(dst, s[start:i]...)
			i++
			start = i
			continue
		}
		i++
		if c != '"' {
			continue
		}
		// A string: keep it, checking UTF-8 only where a byte is >= 0x80.
	str:
		for i < len(s) {
			switch c := s[i]; {
			case c == '"':
				i++
				break str
			case c == '\\':
				i += 2 // the escaped byte is kept whatever it is
			case c < utf8.RuneSelf:
				i++
			default:
				var buf [utf8.UTFMax]byte
				n := copy(buf[:], s[i:min(i+utf8.UTFMax, len(s))])
				r, size := utf8.DecodeRune(buf[:n])
				if r == utf8.RuneError && size == 1 {
					dst = append(dst, s[start:i]...)
					dst = append(dst, "\uFFFD"...)
					start = i + 1
				}
				i += size
			}
		}
	}
	return append(dst, s[start:]...)
}

// toAny converts the JSON value s (valid) to the value encoding/json would give
// with UseNumber: nil, bool, json.Number, string, map[string]any, []any. When
// an object repeats a key, the first one wins (as everywhere in this package).
func toAny(s string) any {
	switch kindOf(s[0]) {
	case kindNull:
		return nil
	case kindBool:
		return s[0] == 't'
	case kindNumber:
		return json.Number(s)
	case kindString:
		return validUTF8(unquote(s))
	case kindObject:
		ms, _ := appendMembers(nil, s)
		m := make(map[string]any, len(ms))
		for _, x := range ms {
			k := validUTF8(x.key)
			if _, dup := m[k]; !dup {
				m[k] = toAny(x.raw)
			}
		}
		return m
	case kindArray:
		a := []any{}
		i := skipSpace(s, 1)
		for i < len(s) && s[i] != ']' {
			end, ok := skipValue(s, i)
			if !ok {
				break
			}
			a = append(a, toAny(s[i:end]))
			i = skipSpace(s, end)
			if i < len(s) && s[i] == ',' {
				i = skipSpace(s, i+1)
			}
		}
		return a
	}
	return nil
}
