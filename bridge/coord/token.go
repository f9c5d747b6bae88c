package coord

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDLen is the longest device id accepted, in bytes of UTF-8.
const MaxIDLen = 128

// ErrBadID is returned, wrapped with the reason, for a device id that is
// empty, longer than MaxIDLen bytes or not valid UTF-8, and by ParseToken for
// a token that is not the token of such an id.
var ErrBadID = errors.New("bad device id")

// ErrBadPrefix is returned, wrapped, by Subject for a subject prefix that is
// not a literal NATS subject (empty, an empty token, white space, * or >).
var ErrBadPrefix = errors.New("bad subject prefix")

// tokenSafe marks the bytes that a token keeps as they are.
var tokenSafe = func() (t [256]bool) {
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
		t[c+'a'-'A'] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	t['_'], t['-'] = true, true
	return t
}()

const upperHex = "0123456789ABCDEF"

// checkID returns nil when id is a device id that Token accepts.
func checkID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty", ErrBadID)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: %d bytes, max %d", ErrBadID, len(id), MaxIDLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: not valid UTF-8", ErrBadID)
	}
	return nil
}

// tokenLen returns the length of the token of id.
func tokenLen(id string) int {
	n := len(id)
	for i := 0; i < len(id); i++ {
		if !tokenSafe[id[i]] {
			n += 2
		}
	}
	return n
}

// Token returns the subject token of a device id (DESIGN.md, "Message
// contract"): the bytes A-Z a-z 0-9 _ - are kept, every other byte of the
// UTF-8 id is written =XX with upper-case hex. Different ids always give
// different tokens, a token never holds '.', '*', '>' or white space, and
// ParseToken reverses it. The error wraps ErrBadID when id is empty, longer
// than MaxIDLen bytes or not valid UTF-8.
func Token(id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	n := tokenLen(id)
	if n == len(id) {
		return id, nil
	}
	var b strings.Builder
	b.Grow(n)
	appendTokenTo(&b, id)
	return b.String(), nil
}

// AppendToken appends the token of id to dst without checking id: it is the
// fast path for an id already checked (every Coord a Decoder returns has a
// valid DeviceID). For an invalid id the output is still reversible but
// Token would have refused it.
func AppendToken(dst []byte, id string) []byte {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if tokenSafe[c] {
			dst = append(dst, c)
		} else {
			dst = append(dst, '=', upperHex[c>>4], upperHex[c&0xF])
		}
	}
	return dst
}

func appendTokenTo(b *strings.Builder, id string) {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if tokenSafe[c] {
			b.WriteByte(c)
		} else {
			b.WriteByte('=')
			b.WriteByte(upperHex[c>>4])
			b.WriteByte(upperHex[c&0xF])
		}
	}
}

// ParseToken returns the device id that tok is the token of. It accepts only
// what Token produces, so ParseToken(tok) succeeds exactly when
// Token(id) == tok for the returned id: any byte other than A-Z a-z 0-9 _ -
// and =, a truncated escape, lower-case or non-hex digits, an escape of a byte
// that a token keeps as it is (=41 for A), and a result that is not a valid
// id all give an error wrapping ErrBadID.
func ParseToken(tok string) (string, error) {
	if tok == "" {
		return "", fmt.Errorf("%w: empty token", ErrBadID)
	}
	if tokenLen(tok) == len(tok) { // nothing escaped
		if len(tok) > MaxIDLen {
			return "", fmt.Errorf("%w: token %s: %d bytes, max %d", ErrBadID, quoteShort(tok), len(tok), MaxIDLen)
		}
		return tok, nil
	}
	b := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); {
		c := tok[i]
		if tokenSafe[c] {
			b = append(b, c)
			i++
			continue
		}
		if c != '=' {
			return "", fmt.Errorf("%w: token %s: byte %q at %d is not allowed", ErrBadID, quoteShort(tok), []byte{c}, i)
		}
		if len(tok)-i < 3 {
			return "", fmt.Errorf("%w: token %s: truncated escape at %d", ErrBadID, quoteShort(tok), i)
		}
		hi, lo := unhexUpper(tok[i+1]), unhexUpper(tok[i+2])
		if hi < 0 || lo < 0 {
			return "", fmt.Errorf("%w: token %s: escape at %d is not =XX with upper-case hex", ErrBadID, quoteShort(tok), i)
		}
		v := byte(hi<<4 | lo)
		if tokenSafe[v] {
			return "", fmt.Errorf("%w: token %s: escape at %d of %q, which a token keeps as it is", ErrBadID, quoteShort(tok), i, []byte{v})
		}
		b = append(b, v)
		i += 3
	}
	id := string(b)
	if err := checkID(id); err != nil {
		return "", fmt.Errorf("token %s: %w", quoteShort(tok), err)
	}
	return id, nil
}

func unhexUpper(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// Subject returns the subject of device id under prefix: prefix + "." +
// Token(id), e.g. Subject("ubiqo.coords", "camión 7") is
// "ubiqo.coords.cami=C3=B3n=207". The error wraps ErrBadID for a bad id and
// ErrBadPrefix for a prefix that is empty, has an empty token (leading,
// trailing or double dot), white space, control bytes, '*' or '>'.
func Subject(prefix, id string) (string, error) {
	if err := checkPrefix(prefix); err != nil {
		return "", err
	}
	if err := checkID(id); err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(prefix) + 1 + tokenLen(id))
	b.WriteString(prefix)
	b.WriteByte('.')
	appendTokenTo(&b, id)
	return b.String(), nil
}

func checkPrefix(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty", ErrBadPrefix)
	}
	if p[0] == '.' || p[len(p)-1] == '.' || strings.Contains(p, "..") {
		return fmt.Errorf("%w: %s has an empty token", ErrBadPrefix, quoteShort(p))
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f || c == '*' || c == '>' {
			return fmt.Errorf("%w: %s: byte %q at %d is not allowed", ErrBadPrefix, quoteShort(p), []byte{c}, i)
		}
	}
	return nil
}

// maxQuoted is how many bytes of an input value an error message repeats.
const maxQuoted = 64

// quoteShort quotes s for an error message, cut to maxQuoted bytes (on a
// rune boundary) with "…" marking the cut, so a huge input is never echoed.
func quoteShort(s string) string {
	return fmt.Sprintf("%q", shorten(s))
}

func shorten(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	n := maxQuoted
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
