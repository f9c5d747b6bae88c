package stream

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// ConnConfig configures a client connection to NATS.
type ConnConfig struct {
	// URL is one or more comma-separated server URLs.
	URL       string
	User      string
	Password  string
	Token     string
	CredsFile string
	TLSCA     string
	TLSCert   string
	TLSKey    string
	// Name is the connection name the server shows (nats server report connections).
	Name string
	// ConnectTimeout bounds each connection attempt.
	ConnectTimeout time.Duration
	// WaitConnected: when true Connect fails if the first connection cannot be
	// made; when false it returns at once and keeps trying in the background.
	WaitConnected bool
	// NoReconnectBuffer makes a publish fail at once while the connection
	// is down, instead of being buffered and sent after the reconnect. The
	// bridge sets it: what it publishes then goes to its spool, behind
	// whatever the broken connection lost, so a device's coordinates are
	// never stored out of order.
	NoReconnectBuffer bool
}

// Connect opens a connection that reconnects forever: a NATS outage is a
// fault to ride out, not a reason to exit. Disconnects, reconnects and async
// errors are logged (never with credentials).
func Connect(cfg ConnConfig, log zerolog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(250*time.Millisecond, time.Second),
		nats.ReconnectBufSize(32 << 20),
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			ev := log.Warn()
			if err == nil && (nc.IsClosed() || nc.IsDraining()) {
				ev = log.Debug() // our own shutdown, not a fault
			}
			if err != nil {
				ev = ev.Err(err)
			}
			ev.Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("server", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Error().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
		nats.ClosedHandler(func(*nats.Conn) { log.Debug().Msg("nats connection closed") }),
	}
	if cfg.ConnectTimeout > 0 {
		opts = append(opts, nats.Timeout(cfg.ConnectTimeout))
	}
	if !cfg.WaitConnected {
		opts = append(opts, nats.RetryOnFailedConnect(true))
	}
	if cfg.User != "" {
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	}
	if cfg.Token != "" {
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	if cfg.TLSCert != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	servers := cfg.URL
	if servers == "" {
		servers = nats.DefaultURL
	}
	if cfg.NoReconnectBuffer {
		opts = append(opts, nats.ReconnectBufSize(-1))
	}
	nc, err := nats.Connect(servers, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", redactURLs(servers), err)
	}
	return nc, nil
}

// redactURLs hides the secrets a NATS server list may hold in its userinfo:
// the password of nats://user:pass@host and the user part of
// nats://TOKEN@host. (config.MaskURLs does the same for the configuration;
// this package may not import config.)
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if !strings.Contains(p, "://") {
			p = "nats://" + p
		}
		u, err := url.Parse(p)
		if err != nil {
			if strings.Contains(p, "@") {
				parts[i] = "xxxxx"
			}
			continue
		}
		if u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			parts[i] = u.Redacted()
		} else {
			u.User = url.User("xxxxx")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
