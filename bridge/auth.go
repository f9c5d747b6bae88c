package bridge

import (
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// authenticator checks webhook credentials: a token (Authorization: Bearer,
// X-Ubiqo-Token or ?token=) or HTTP basic auth. Secrets are compared as
// SHA-256 digests in constant time, against every configured secret, so
// neither the time taken nor the length of a guess tells anything.
type authenticator struct {
	tokens    [][sha256.Size]byte
	user      [sha256.Size]byte
	pass      [sha256.Size]byte
	basic     bool
	open      bool
	challenge string
}

func newAuthenticator(tokens []string, user, pass string) *authenticator {
	a := &authenticator{}
	for _, t := range tokens {
		a.tokens = append(a.tokens, sha256.Sum256([]byte(t)))
	}
	if user != "" {
		a.basic = true
		a.user = sha256.Sum256([]byte(user))
		a.pass = sha256.Sum256([]byte(pass))
	}
	a.open = len(a.tokens) == 0 && !a.basic
	a.challenge = `Bearer realm="ubiqo-bridge"`
	if a.basic {
		a.challenge += `, Basic realm="ubiqo-bridge"`
	}
	return a
}

func (a *authenticator) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	if a.open {
		return next
	}
	return func(c echo.Context) error {
		if a.check(c.Request()) {
			return next(c)
		}
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, a.challenge)
		return echo.NewHTTPError(http.StatusUnauthorized, "missing or invalid credentials")
	}
}

func (a *authenticator) check(r *http.Request) bool {
	if h := r.Header.Get(echo.HeaderAuthorization); h != "" {
		scheme, rest, _ := strings.Cut(h, " ")
		switch {
		case strings.EqualFold(scheme, "Bearer"):
			return a.token(strings.TrimSpace(rest))
		case strings.EqualFold(scheme, "Basic") && a.basic:
			user, pass, ok := r.BasicAuth()
			return ok && a.basicOK(user, pass)
		}
	}
	if t := r.Header.Get("X-Ubiqo-Token"); t != "" {
		return a.token(t)
	}
	if strings.Contains(r.URL.RawQuery, "token=") {
		if t := r.URL.Query().Get("token"); t != "" {
			return a.token(t)
		}
	}
	return false
}

func (a *authenticator) token(t string) bool {
	got := sha256.Sum256([]byte(t))
	match := 0
	for i := range a.tokens {
		match |= subtle.ConstantTimeCompare(got[:], a.tokens[i][:])
	}
	return match == 1
}

func (a *authenticator) basicOK(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	return subtle.ConstantTimeCompare(u[:], a.user[:])&subtle.ConstantTimeCompare(p[:], a.pass[:]) == 1
}
