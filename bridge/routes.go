package bridge

import (
	"net/http"
	"net/http/pprof"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes lists the HTTP API of the main listener: the webhook and the health
// probes, plus /metrics (and /debug/pprof) unless they have a listener of
// their own (AdminAddr).
func (s *Server) routes() *echo.Echo {
	e := newEcho(s)
	e.Use(s.observe) // request id, access log, metrics, panic recovery

	ingest := s.allow.middleware(s.limiter.middleware(s.limitInFlight(s.auth.middleware(s.handleIngest))))
	e.POST(s.opts.Path, ingest)
	e.GET(s.opts.Path, ingest)

	e.GET("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
	if s.opts.AdminAddr == "" {
		s.adminRoutes(e)
	}
	return e
}

// adminEcho is the admin listener's API: health probes, /metrics and, when
// enabled, /debug/pprof. Nothing on it takes coordinates.
func (s *Server) adminEcho() *echo.Echo {
	e := newEcho(s)
	e.GET("/healthz", s.handleHealthz)
	e.GET("/readyz", s.handleReadyz)
	s.adminRoutes(e)
	return e
}

func newEcho(s *Server) *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.handleError
	return e
}

func (s *Server) adminRoutes(e *echo.Echo) {
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{})))
	if s.opts.Pprof {
		// The named profiles (heap, goroutine, allocs, ...), CPU profile,
		// trace and symbols for go tool pprof. Not /debug/pprof/cmdline: the
		// command line may hold secrets given as flags.
		e.GET("/debug/pprof/", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
		e.GET("/debug/pprof/cmdline", func(c echo.Context) error {
			return echo.NewHTTPError(http.StatusNotFound, "not served: the command line may hold secrets")
		})
		e.GET("/debug/pprof/profile", echo.WrapHandler(http.HandlerFunc(pprof.Profile)))
		e.GET("/debug/pprof/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
		e.POST("/debug/pprof/symbol", echo.WrapHandler(http.HandlerFunc(pprof.Symbol)))
		e.GET("/debug/pprof/trace", echo.WrapHandler(http.HandlerFunc(pprof.Trace)))
		e.GET("/debug/pprof/:profile", echo.WrapHandler(http.HandlerFunc(pprof.Index)))
	}
}

func (s *Server) handleHealthz(c echo.Context) error {
	return c.JSONBlob(http.StatusOK, []byte(`{"status":"ok"}`))
}

type readyResponse struct {
	Ready  bool   `json:"ready"`
	Reason string `json:"reason,omitempty"`
}

func (s *Server) handleReadyz(c echo.Context) error {
	ok, why := s.Ready()
	code := http.StatusOK
	if !ok {
		code = http.StatusServiceUnavailable
	}
	return c.JSON(code, readyResponse{Ready: ok, Reason: why})
}
