package bridge

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/rs/zerolog"
)

const (
	ctxRequestID = "ubiqo.request_id"
	ctxCounts    = "ubiqo.counts"
)

// requestIDs makes request ids: a random per-process prefix and a counter,
// cheap and unique enough to find one request in the logs.
var (
	requestIDPrefix = func() string {
		var b [4]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	requestCounter atomic.Uint64
)

func newRequestID() string {
	return requestIDPrefix + "-" + strconv.FormatUint(requestCounter.Add(1), 36)
}

func requestID(c echo.Context) string {
	id, _ := c.Get(ctxRequestID).(string)
	return id
}

type counts struct{ accepted, duplicates, spooled, rejected int }

func setCounts(c echo.Context, accepted, duplicates, spooled, rejected int) {
	c.Set(ctxCounts, counts{accepted, duplicates, spooled, rejected})
}

// validRequestID accepts a caller's X-Request-Id when it is short and plain.
func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		ch := id[i]
		if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_' || ch == '.') {
			return false
		}
	}
	return true
}

// observe wraps every request: request id, in-flight gauge, metrics by
// route and status, the access log, and panic recovery.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		req := c.Request()
		id := req.Header.Get(echo.HeaderXRequestID)
		if !validRequestID(id) {
			id = newRequestID()
		}
		c.Set(ctxRequestID, id)
		c.Response().Header().Set(echo.HeaderXRequestID, id)
		s.metrics.inFlight.Inc()
		defer s.metrics.inFlight.Dec()

		err := func() (err error) {
			defer func() {
				if p := recover(); p != nil {
					s.log.Error().Str("request_id", id).Str("panic", fmt.Sprint(p)).Bytes("stack", debug.Stack()).Msg("panic serving request")
					err = echo.NewHTTPError(http.StatusInternalServerError, "internal error")
				}
			}()
			return next(c)
		}()
		if err != nil {
			c.Error(err)
		}

		status := c.Response().Status
		route := c.Path()
		if route == "" || status == http.StatusNotFound {
			route = "unmatched"
		}
		elapsed := time.Since(start)
		s.metrics.requests.WithLabelValues(route, methodLabel(req.Method), strconv.Itoa(status)).Inc()
		s.metrics.duration.WithLabelValues(route).Observe(elapsed.Seconds())
		s.accessLog(c, id, route, status, elapsed)
		return nil
	}
}

// methodLabel bounds the method label: anyone can send a made-up method,
// and each new value would be a series of its own for good.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodHead, http.MethodPut,
		http.MethodDelete, http.MethodOptions, http.MethodPatch:
		return m
	}
	return "other"
}

func (s *Server) accessLog(c echo.Context, id, route string, status int, elapsed time.Duration) {
	var ev *zerolog.Event
	probe := route == "/healthz" || route == "/readyz"
	switch {
	case probe && status == http.StatusServiceUnavailable:
		// A load balancer asks every few seconds: "not ready" while NATS
		// is down is expected, and the bridge says so once on its own.
		ev = s.log.Debug()
	case status >= 500:
		ev = s.log.Warn()
	case s.opts.AccessLog == "none", s.opts.AccessLog == "errors" && status < 400:
		return
	default:
		ev = s.log.Info()
	}
	if ev == nil { // level disabled
		return
	}
	req := c.Request()
	ev = ev.Str("request_id", id).
		Str("method", req.Method).
		Str("path", redactQuery(req.URL)).
		Str("route", route).
		Int("status", status).
		Dur("duration", elapsed).
		Int64("bytes_in", req.ContentLength).
		Str("remote", c.RealIP())
	if n, ok := c.Get(ctxCounts).(counts); ok {
		ev = ev.Int("accepted", n.accepted).Int("duplicates", n.duplicates).Int("rejected", n.rejected)
		if n.spooled > 0 {
			ev = ev.Int("spooled", n.spooled)
		}
	}
	ev.Msg("request")
}

// redactQuery returns path?query with the values of credential parameters
// replaced, so a ?token= never reaches a log line.
func redactQuery(u *url.URL) string {
	if u.RawQuery == "" {
		return u.EscapedPath()
	}
	q := u.Query()
	for k := range q {
		if isSecretParam(k) {
			q[k] = []string{"REDACTED"}
		}
	}
	return u.EscapedPath() + "?" + q.Encode()
}

func isSecretParam(k string) bool {
	switch strings.ToLower(k) {
	case "token", "access_token", "api_key", "apikey", "key", "password", "secret":
		return true
	}
	return false
}
