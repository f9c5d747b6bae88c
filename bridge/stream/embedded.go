package stream

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"
)

// EmbeddedConfig configures the in-process JetStream server.
type EmbeddedConfig struct {
	// Listen is host:port for clients (subscribers, the nats CLI); port 0
	// picks a free one (tests).
	Listen string
	// StoreDir holds the JetStream files.
	StoreDir string
	// MaxStore limits file storage in bytes; 0 = server default.
	MaxStore int64
	// ServerName names the server; default "ubiqo-bridge-embedded".
	ServerName string
}

// ErrAddrInUse is returned by StartEmbedded when its listen address is taken.
var ErrAddrInUse = errors.New("address already in use")

// StartEmbedded starts a nats-server with JetStream inside this process and
// waits until it accepts connections. The caller owns the server and must
// call Shutdown then WaitForShutdown.
func StartEmbedded(cfg EmbeddedConfig, log zerolog.Logger) (*server.Server, error) {
	host, portStr, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: listen %q: %w", cfg.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: listen %q: bad port", cfg.Listen)
	}
	// nats-server logs a failed listen and carries on without clients; find
	// out first so the operator gets a clear message instead of a hang.
	if port != 0 {
		l, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("embedded nats: cannot listen on %s: %w: %w; a NATS server may already run there: "+
				"to use it set nats.url (e.g. UBIQO_NATS_URL=nats://%s), or move the embedded server with nats.embedded.listen",
				cfg.Listen, ErrAddrInUse, err, cfg.Listen)
		}
		_ = l.Close()
	}
	if host == "" {
		host = "0.0.0.0"
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		// The embedded server has no authentication: anyone who reaches
		// it can read, publish and delete every stream.
		log.Warn().Str("listen", net.JoinHostPort(host, strconv.Itoa(port))).
			Msg("the embedded NATS server listens beyond this machine without authentication; keep nats.embedded.listen on 127.0.0.1 or firewall the port, or run a NATS server with accounts and set nats.url")
	}
	name := cfg.ServerName
	if name == "" {
		name = "ubiqo-bridge-embedded"
	}
	storeDir, err := filepath.Abs(cfg.StoreDir)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: store dir %q: %w", cfg.StoreDir, err)
	}
	opts := &server.Options{
		ServerName:        name,
		Host:              host,
		Port:              port,
		JetStream:         true,
		StoreDir:          storeDir,
		JetStreamMaxStore: cfg.MaxStore,
		NoSigs:            true,
		MaxPayload:        8 << 20,
	}
	if port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	s.SetLogger(serverLogger{log.With().Str("component", "nats-server").Logger()}, false, false)
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after 30s on %s (store %s)", cfg.Listen, storeDir)
	}
	if !s.JetStreamEnabled() {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: JetStream did not start (store %s: is it writable?)", storeDir)
	}
	return s, nil
}

// serverLogger routes nats-server's log lines to zerolog.
type serverLogger struct{ l zerolog.Logger }

func (s serverLogger) Noticef(format string, v ...any) { s.l.Debug().Msgf(format, v...) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warn().Msgf(format, v...) }
func (s serverLogger) Fatalf(format string, v ...any)  { s.l.Error().Msgf(format, v...) }
func (s serverLogger) Errorf(format string, v ...any)  { s.l.Error().Msgf(format, v...) }
func (s serverLogger) Debugf(format string, v ...any)  { s.l.Debug().Msgf(format, v...) }
func (s serverLogger) Tracef(format string, v ...any)  { s.l.Trace().Msgf(format, v...) }
