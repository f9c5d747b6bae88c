package bridge

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// limitInFlight bounds the ingest requests served at once, so memory held by
// bodies and pending acks stays bounded; past the bound it answers 429.
func (s *Server) limitInFlight(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
			return next(c)
		default:
			return echo.NewHTTPError(http.StatusTooManyRequests, "too many requests in flight (http.max_in_flight); retry later")
		}
	}
}

// ipAllowList admits callers by the TCP peer address (never by
// X-Forwarded-For, which any caller can write).
type ipAllowList struct{ prefixes []netip.Prefix }

func newIPAllowList(entries []string) (*ipAllowList, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	a := &ipAllowList{}
	for _, e := range entries {
		if p, err := netip.ParsePrefix(e); err == nil {
			a.prefixes = append(a.prefixes, p.Masked())
			continue
		}
		addr, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("http.allow_ips: %q is neither an IP nor a CIDR", e)
		}
		a.prefixes = append(a.prefixes, netip.PrefixFrom(addr.Unmap(), addr.Unmap().BitLen()))
	}
	return a, nil
}

func (a *ipAllowList) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	if a == nil {
		return next
	}
	return func(c echo.Context) error {
		host, _, err := net.SplitHostPort(c.Request().RemoteAddr)
		if err == nil {
			if addr, err := netip.ParseAddr(host); err == nil {
				addr = addr.Unmap()
				for _, p := range a.prefixes {
					if p.Contains(addr) {
						return next(c)
					}
				}
			}
		}
		return echo.NewHTTPError(http.StatusForbidden, "client address not allowed (http.allow_ips)")
	}
}

// clientRateLimiter allows each client address rate requests per second
// with bursts of burst; past that the ingest path answers 429. Addresses
// are the TCP peer, as for the allow-list. The table is bounded: when it
// holds maxClients addresses it starts afresh.
type clientRateLimiter struct {
	limit rate.Limit
	burst int
	mu    sync.Mutex
	m     map[netip.Addr]*rate.Limiter
}

const maxClients = 10000

func newClientRateLimiter(perSecond float64, burst int) *clientRateLimiter {
	if perSecond <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(perSecond))
	}
	return &clientRateLimiter{limit: rate.Limit(perSecond), burst: burst, m: map[netip.Addr]*rate.Limiter{}}
}

func (c *clientRateLimiter) allow(addr netip.Addr) bool {
	c.mu.Lock()
	l := c.m[addr]
	if l == nil {
		if len(c.m) >= maxClients {
			clear(c.m)
		}
		l = rate.NewLimiter(c.limit, c.burst)
		c.m[addr] = l
	}
	c.mu.Unlock()
	return l.Allow()
}

func (c *clientRateLimiter) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	if c == nil {
		return next
	}
	return func(ctx echo.Context) error {
		var addr netip.Addr
		if ap, err := netip.ParseAddrPort(ctx.Request().RemoteAddr); err == nil {
			addr = ap.Addr().Unmap()
		}
		if !c.allow(addr) {
			return echo.NewHTTPError(http.StatusTooManyRequests, "rate limit exceeded (http.rate_limit); retry later")
		}
		return next(ctx)
	}
}
