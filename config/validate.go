package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Validate checks the configuration for binary b and returns one error that
// names every bad key, or nil.
func (c *Config) Validate(b Binary) error {
	var v validator

	// http
	if b == Bridge || c.HTTP.Addr != "" {
		v.hostPort("http.addr", c.HTTP.Addr)
	}
	if b == Bridge {
		if !strings.HasPrefix(c.HTTP.Path, "/") {
			v.bad("http.path", c.HTTP.Path, "must start with /")
		}
		v.positive("http.max_body_bytes", c.HTTP.MaxBodyBytes)
		v.positive("http.max_batch", int64(c.HTTP.MaxBatch))
		v.duration("http.read_header_timeout", c.HTTP.ReadHeaderTimeout)
		v.duration("http.read_timeout", c.HTTP.ReadTimeout)
		v.duration("http.write_timeout", c.HTTP.WriteTimeout)
		v.duration("http.idle_timeout", c.HTTP.IdleTimeout)
		v.pair("http.tls_cert", c.HTTP.TLSCert, "http.tls_key", c.HTTP.TLSKey)
		v.pair("auth.basic_user", c.Auth.BasicUser, "auth.basic_password", c.Auth.BasicPassword)
		for i, t := range c.Auth.Tokens {
			if strings.TrimSpace(t) == "" {
				v.errs = append(v.errs, fmt.Errorf("config: auth.tokens: entry %d is empty", i))
			}
		}
		v.duration("nats.publish_timeout", c.NATS.PublishTimeout)
		v.positive("nats.max_pending", int64(c.NATS.MaxPending))
		if c.NATS.MaxPending > maxPending {
			v.bad("nats.max_pending", c.NATS.MaxPending, fmt.Sprintf("must be at most %d (the bridge keeps a slot for each)", maxPending))
		}
		if c.NATS.URL == "" {
			v.hostPort("nats.embedded.listen", c.NATS.Embedded.Listen)
			if c.NATS.Embedded.StoreDir == "" {
				v.bad("nats.embedded.store_dir", "", "must not be empty when nats.url is empty")
			}
			if c.NATS.Embedded.MaxStore < 0 {
				v.bad("nats.embedded.max_store", c.NATS.Embedded.MaxStore, "must be 0 (server default) or positive")
			}
		}
		if _, err := time.LoadLocation(c.Ingest.DefaultTimezone); err != nil || c.Ingest.DefaultTimezone == "" {
			v.bad("ingest.default_timezone", c.Ingest.DefaultTimezone, "unknown time zone (use an IANA name such as America/Mexico_City)")
		}
		v.duration("ingest.max_future", c.Ingest.MaxFuture)
		switch c.Ingest.BatteryScale {
		case "auto", "percent", "fraction":
		default:
			v.bad("ingest.battery_scale", c.Ingest.BatteryScale, "must be auto, percent or fraction")
		}
		v.positive("http.max_in_flight", int64(c.HTTP.MaxInFlight))
		if c.HTTP.RateLimit < 0 {
			v.bad("http.rate_limit", c.HTTP.RateLimit, "must be 0 (off) or positive")
		}
		if c.HTTP.RateBurst < 0 {
			v.bad("http.rate_burst", c.HTTP.RateBurst, "must be 0 or positive")
		}
		for _, ip := range c.HTTP.AllowIPs {
			if _, _, err := net.ParseCIDR(ip); err != nil && net.ParseIP(ip) == nil {
				v.bad("http.allow_ips", ip, "must be an IP address or a CIDR such as 10.0.0.0/8")
			}
		}
		switch c.Spool.Mode {
		case "spool":
			if c.Spool.Dir == "" {
				v.bad("spool.dir", "", "must not be empty when spool.mode is spool")
			}
			v.positive("spool.max_bytes", c.Spool.MaxBytes)
		case "reject":
		default:
			v.bad("spool.mode", c.Spool.Mode, "must be spool or reject")
		}
	}
	v.duration("http.shutdown_timeout", c.HTTP.ShutdownTimeout)
	if b == Bridge && c.HTTP.AdminAddr != "" {
		v.hostPort("http.admin_addr", c.HTTP.AdminAddr)
		if c.HTTP.AdminAddr == c.HTTP.Addr {
			v.bad("http.admin_addr", c.HTTP.AdminAddr, "must differ from http.addr")
		}
	}
	if c.HTTP.Pprof {
		switch {
		case b == Bridge && c.HTTP.AdminAddr == "":
			v.bad("http.pprof", true, "needs http.admin_addr: profiles are served on the admin listener, never on the webhook's")
		case b != Bridge && c.HTTP.Addr == "":
			v.bad("http.pprof", true, "needs http.addr (the health and metrics listener)")
		}
	}

	// nats
	if c.NATS.URL != "" {
		for _, u := range strings.Split(c.NATS.URL, ",") {
			if err := checkNATSURL(strings.TrimSpace(u)); err != nil {
				v.bad("nats.url", MaskURLs(u), err.Error())
			}
		}
	}
	v.pair("nats.tls_cert", c.NATS.TLSCert, "nats.tls_key", c.NATS.TLSKey)
	if c.NATS.User != "" && c.NATS.Token != "" {
		v.errs = append(v.errs, errors.New("config: nats.user and nats.token: set one, not both"))
	}
	v.duration("nats.connect_timeout", c.NATS.ConnectTimeout)

	// stream
	if !validName(c.Stream.Name) {
		v.bad("stream.name", c.Stream.Name, "must be a non-empty name without spaces, dots, *, >, / or \\")
	}
	if !validSubjectPrefix(c.Stream.SubjectPrefix) {
		v.bad("stream.subject_prefix", c.Stream.SubjectPrefix, "must be dot-separated tokens without wildcards or spaces")
	}
	if c.Stream.Replicas < 1 || c.Stream.Replicas > 5 {
		v.bad("stream.replicas", c.Stream.Replicas, "must be 1 to 5")
	}
	if c.Stream.MaxAge < 0 {
		v.bad("stream.max_age", c.Stream.MaxAge, "must not be negative (0 = forever)")
	}
	if c.Stream.MaxBytes == 0 || c.Stream.MaxBytes < -1 {
		v.bad("stream.max_bytes", c.Stream.MaxBytes, "must be -1 (unlimited) or positive")
	}
	v.duration("stream.duplicate_window", c.Stream.DuplicateWindow)
	if c.Stream.MaxAge > 0 && c.Stream.DuplicateWindow > c.Stream.MaxAge {
		v.bad("stream.duplicate_window", c.Stream.DuplicateWindow, "must not exceed stream.max_age")
	}
	switch c.Stream.Compression {
	case "s2", "none":
	default:
		v.bad("stream.compression", c.Stream.Compression, "must be s2 or none")
	}

	// persist
	if b == Persister {
		switch c.Persist.Driver {
		case "sqlite", "postgres":
		default:
			v.bad("persist.driver", c.Persist.Driver, "must be sqlite or postgres")
		}
		if c.Persist.DSN == "" {
			v.bad("persist.dsn", "", "must not be empty")
		} else if c.Persist.Driver == "postgres" && !postgresDSN(c.Persist.DSN) {
			v.bad("persist.dsn", MaskDSN(c.Persist.DSN), "must be a PostgreSQL URL (postgres://user@host:5432/db) or key=value DSN (host=... dbname=...) for persist.driver postgres")
		}
	}

	// log
	switch strings.ToLower(c.Log.Level) {
	case "trace", "debug", "info", "warn", "error":
	default:
		v.bad("log.level", c.Log.Level, "must be debug, info, warn or error")
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		v.bad("log.format", c.Log.Format, "must be json or console")
	}

	switch c.Log.Access {
	case "all", "errors", "none":
	default:
		v.bad("log.access", c.Log.Access, "must be all, errors or none")
	}

	for _, f := range extraValidators {
		v.errs = append(v.errs, f(c, b)...)
	}
	return errors.Join(v.errs...)
}

// extraValidators lets the files of other sections (subscribers, forwarder,
// alerter) add their checks without growing Validate.
var extraValidators []func(c *Config, b Binary) []error

type validator struct{ errs []error }

// maxPending bounds nats.max_pending: the bridge allocates a ring slot for
// each publish awaiting its ack.
const maxPending = 1 << 20

func (v *validator) bad(key string, got any, msg string) {
	v.errs = append(v.errs, fmt.Errorf("config: %s: %s (got %q)", key, msg, fmt.Sprint(got)))
}

func (v *validator) positive(key string, n int64) {
	if n <= 0 {
		v.bad(key, n, "must be positive")
	}
}

func (v *validator) duration(key string, d time.Duration) {
	if d <= 0 {
		v.bad(key, d, "must be a positive duration such as 5s")
	}
}

func (v *validator) pair(k1, v1, k2, v2 string) {
	if (v1 == "") != (v2 == "") {
		v.errs = append(v.errs, fmt.Errorf("config: %s and %s: set both or neither", k1, k2))
	}
}

func (v *validator) hostPort(key, addr string) {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		v.bad(key, addr, "must be host:port, e.g. :8080 or 127.0.0.1:8080")
	} else if !validPort(port) {
		v.bad(key, addr, "port must be a number from 0 to 65535")
	}
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

func checkNATSURL(s string) error {
	if s == "" {
		return errors.New("empty URL in list")
	}
	if !strings.Contains(s, "://") {
		s = "nats://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return errors.New("not a URL")
	}
	switch u.Scheme {
	case "nats", "tls", "ws", "wss":
	default:
		return fmt.Errorf("scheme %q: want nats, tls, ws or wss", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("no host")
	}
	if p := u.Port(); p != "" && (!validPort(p) || p == "0") {
		return fmt.Errorf("port %q: want 1 to 65535", p)
	}
	return nil
}

var nameRE = regexp.MustCompile(`^[^\s.*>/\\]+$`)

func validName(s string) bool { return nameRE.MatchString(s) && len(s) <= 255 }

func validSubjectPrefix(s string) bool {
	if s == "" {
		return false
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return false
		}
	}
	return true
}

var (
	// libpq key=value: spaces may surround "=", a quoted value may hold
	// spaces and \' escapes.
	userinfoRE = regexp.MustCompile(`(?i)\b(password|sslpassword)\s*=\s*('(?:[^'\\]|\\.)*'|(?:\\.|\S)+)`)
	// the password query parameter of a URL that does not parse
	queryPasswordRE = regexp.MustCompile(`(?i)([?&](?:ssl)?password=)[^&#]*`)
)

// MaskURLs hides the secrets a NATS server list (comma-separated URLs) may
// hold in its userinfo: the password of nats://user:pass@host, and the
// whole user part of nats://TOKEN@host.
func MaskURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p // as nats.go and checkNATSURL read "user:pass@host"
		}
		u, err := url.Parse(p)
		if err != nil || u.User == nil {
			if err != nil && strings.Contains(p, "@") {
				parts[i] = masked // unparsable: cannot tell what is secret
			}
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), masked)
		} else {
			u.User = url.User(masked) // nats://TOKEN@host: the user part is the secret
		}
		parts[i] = strings.Replace(u.String(), url.PathEscape(masked), masked, 1)
	}
	return strings.Join(parts, ",")
}

// MaskDSN hides the password of a database DSN (URL userinfo, a password
// query parameter, or a libpq key=value password) and keeps the rest.
func MaskDSN(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" && u.Scheme != "file" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), masked)
		}
		q := u.Query()
		changed := false
		for k := range q {
			lk := strings.ToLower(k)
			if lk == "password" || lk == "sslpassword" {
				q.Set(k, masked)
				changed = true
			}
		}
		if changed {
			u.RawQuery = q.Encode()
		}
		s := u.String()
		return strings.ReplaceAll(s, url.QueryEscape(masked), masked)
	}
	if scheme, rest, ok := strings.Cut(dsn, "://"); ok {
		// A URL that does not parse (a bad port, an unescaped % in the
		// password): everything before its last @ may be secret.
		if at := strings.LastIndexByte(rest, '@'); at >= 0 {
			rest = masked + rest[at:]
		}
		return queryPasswordRE.ReplaceAllString(scheme+"://"+rest, "${1}"+masked)
	}
	return userinfoRE.ReplaceAllString(dsn, "$1="+masked)
}

// postgresDSN reports whether dsn has the shape of a PostgreSQL connection
// string: a postgres:// or postgresql:// URL, or libpq key=value pairs.
func postgresDSN(dsn string) bool {
	l := strings.ToLower(strings.TrimSpace(dsn))
	if strings.HasPrefix(l, "postgres://") || strings.HasPrefix(l, "postgresql://") {
		return true
	}
	if strings.Contains(l, "://") || strings.HasPrefix(l, "file:") {
		return false
	}
	for _, f := range strings.Fields(l) {
		if k, _, ok := strings.Cut(f, "="); ok && k != "" {
			return true
		}
	}
	return false
}
