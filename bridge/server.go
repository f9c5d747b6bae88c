// Package bridge is the HTTP front end of ubiqo-bridge: the Echo server that
// takes UBIQO webhooks, decodes every coordinate, publishes it to JetStream and
// answers only once JetStream has stored it; with auth, limits, health,
// readiness and Prometheus metrics.
package bridge

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// Options configures the server. The zero value of a duration means its
// default.
type Options struct {
	Addr              string // listen address, e.g. ":8080"
	Path              string // ingest path, POST and GET
	MaxBodyBytes      int64
	MaxBatch          int
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	WriteTimeout      time.Duration
	IdleTimeout       time.Duration
	ShutdownTimeout   time.Duration
	// PublishTimeout bounds the wait for JetStream's acks of a request (and
	// of a spool replay batch).
	PublishTimeout time.Duration
	// MaxPending bounds the publishes awaiting their ack at once; a request
	// waits (up to PublishTimeout) for room beyond it.
	MaxPending      int
	TLSCert, TLSKey string
	// AdminAddr, when set, is a second listener (plain HTTP, meant for an
	// internal interface) serving /healthz, /readyz, /metrics and, with
	// Pprof, /debug/pprof; /metrics then leaves the main listener. Empty:
	// /metrics is on the main listener, as DESIGN.md has it.
	AdminAddr string
	// Pprof serves /debug/pprof on the admin listener; it needs AdminAddr,
	// so profiles never reach the webhook's public port.
	Pprof       bool
	MaxInFlight int      // concurrent ingest requests; more answer 429
	AllowIPs    []string // client IPs/CIDRs allowed on the ingest path; empty = any
	RateLimit   float64  // ingest requests per second per client address; 0 = off
	RateBurst   int      // burst above RateLimit; 0 = one second's worth

	Tokens        []string
	BasicUser     string
	BasicPassword string

	// AccessLog is "all" (every request), "errors" (non-2xx) or "none".
	AccessLog string

	// Decode configures the decoder; its MaxItems is always MaxBatch.
	Decode coord.Options

	Stream       stream.CoordsConfig
	ManageStream bool // create/update the stream; false = only check it exists
}

// Deps are the server's collaborators.
type Deps struct {
	Log      zerolog.Logger
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Registry *prometheus.Registry // nil = a new one
	// Spool receives coordinates JetStream cannot store (answered 202) and
	// is replayed while the server runs; nil = answer 503 instead.
	Spool *spool.Spool
}

// Server is the bridge's HTTP server. Create it with New, then Run.
type Server struct {
	opts    Options
	log     zerolog.Logger
	nc      *nats.Conn
	js      jetstream.JetStream
	dec     *coord.Decoder
	pub     *Publisher
	reg     *prometheus.Registry
	metrics *metrics
	auth    *authenticator
	allow   *ipAllowList
	limiter *clientRateLimiter
	spool   *spool.Spool
	order   *deviceOrder
	slots   chan struct{} // ingest requests in flight
	echo    *echo.Echo
	admin   *echo.Echo // nil without AdminAddr

	streamOK  atomic.Bool
	draining  atomic.Bool
	addr      atomic.Value // net.Addr once listening
	adminAddr atomic.Value // net.Addr once the admin listener is up
}

// New builds the server and its routes; it does not listen yet.
func New(opts Options, deps Deps) (*Server, error) {
	if deps.JS == nil || deps.Conn == nil {
		return nil, errors.New("bridge: a NATS connection and JetStream context are required")
	}
	setDefaults(&opts)
	if opts.Pprof && opts.AdminAddr == "" {
		return nil, errors.New("bridge: pprof is served only on the admin listener: set AdminAddr (http.admin_addr)")
	}
	opts.Decode.MaxItems = opts.MaxBatch
	dec, err := coord.NewDecoder(opts.Decode)
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	reg := deps.Registry
	if reg == nil {
		reg = NewRegistry()
	}
	allow, err := newIPAllowList(opts.AllowIPs)
	if err != nil {
		return nil, err
	}
	s := &Server{
		opts:    opts,
		allow:   allow,
		limiter: newClientRateLimiter(opts.RateLimit, opts.RateBurst),
		spool:   deps.Spool,
		order:   newDeviceOrder(),
		slots:   make(chan struct{}, opts.MaxInFlight),
		log:     deps.Log,
		nc:      deps.Conn,
		js:      deps.JS,
		dec:     dec,
		reg:     reg,
		metrics: newMetrics(reg),
		auth:    newAuthenticator(opts.Tokens, opts.BasicUser, opts.BasicPassword),
	}
	if s.pub, err = NewPublisher(deps.Conn, opts.Stream.SubjectPrefix, opts.MaxPending, opts.PublishTimeout); err != nil {
		return nil, err
	}
	s.pub.OnConnectionLost(s.order.lost)
	s.metrics.watchPublisher(reg, s.pub)
	if s.spool != nil {
		s.metrics.watchSpool(reg, s.spool)
	}
	s.echo = s.routes()
	if opts.AdminAddr != "" {
		s.admin = s.adminEcho()
	}
	return s, nil
}

func setDefaults(o *Options) {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.ReadHeaderTimeout, 5*time.Second)
	def(&o.ReadTimeout, 30*time.Second)
	def(&o.WriteTimeout, 30*time.Second)
	def(&o.IdleTimeout, 120*time.Second)
	def(&o.ShutdownTimeout, 20*time.Second)
	if o.MaxPending <= 0 {
		o.MaxPending = 4096
	}
	def(&o.PublishTimeout, 5*time.Second)
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 1000
	}
	if o.Path == "" {
		o.Path = "/webhook/ubiqo"
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	if o.AccessLog == "" {
		o.AccessLog = "all"
	}
}

// Handler returns the server's HTTP handler (for tests with httptest).
func (s *Server) Handler() http.Handler { return s.echo }

// AdminAddr returns the address of the admin listener once Run has started
// it, or nil.
func (s *Server) AdminAddr() net.Addr {
	a, _ := s.adminAddr.Load().(net.Addr)
	return a
}

// Addr returns the address the server listens on once Run has started
// listening, or nil.
func (s *Server) Addr() net.Addr {
	a, _ := s.addr.Load().(net.Addr)
	return a
}

// EnsureStream creates or updates the coordinate stream (or, when the server
// does not manage it, checks that it exists).
func (s *Server) EnsureStream(ctx context.Context) error {
	var err error
	if s.opts.ManageStream {
		_, err = stream.Ensure(ctx, s.js, s.opts.Stream.StreamConfig())
	} else {
		_, err = s.js.Stream(ctx, s.opts.Stream.Name)
		if err != nil {
			err = fmt.Errorf("stream %s: %w (stream.manage is false: create it first)", s.opts.Stream.Name, err)
		}
	}
	s.streamOK.Store(err == nil)
	return err
}

// Run listens and serves until ctx ends, then shuts down gracefully: stop
// accepting, let in-flight requests finish (they hold their acks) within
// the shutdown timeout. The caller drains the NATS connection afterwards.
// A topology watcher keeps readiness current and recreates the stream if it
// disappears.
func (s *Server) Run(ctx context.Context) error {
	defer s.pub.Close()
	ln, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("listen on %s (http.addr): %w", s.opts.Addr, err)
	}
	s.addr.Store(ln.Addr())
	hs := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		ReadTimeout:       s.opts.ReadTimeout,
		WriteTimeout:      s.opts.WriteTimeout,
		IdleTimeout:       s.opts.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	if s.opts.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.opts.TLSCert, s.opts.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("http.tls_cert/http.tls_key: %w", err)
		}
		hs.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, hs.TLSConfig)
	}

	// The watcher and the spool replayer outlive ctx until the HTTP server
	// has shut down, so requests finishing late still see a ready server
	// and the spool keeps draining.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); s.watchTopology(watchCtx) }()
		if s.spool != nil {
			wg.Add(1)
			go func() { defer wg.Done(); s.replaySpool(watchCtx) }()
		}
		wg.Wait()
	}()

	var admin *http.Server
	adminErr := make(chan error, 1)
	if s.admin != nil {
		aln, err := net.Listen("tcp", s.opts.AdminAddr)
		if err != nil {
			ln.Close()
			stopWatch()
			<-watchDone
			return fmt.Errorf("listen on %s (http.admin_addr): %w", s.opts.AdminAddr, err)
		}
		s.adminAddr.Store(aln.Addr())
		admin = &http.Server{Handler: s.admin, ReadHeaderTimeout: s.opts.ReadHeaderTimeout, IdleTimeout: s.opts.IdleTimeout}
		go func() { adminErr <- admin.Serve(aln) }()
		s.log.Info().Str("addr", aln.Addr().String()).Bool("pprof", s.opts.Pprof).Msg("admin listener: /healthz /readyz /metrics")
	}
	// The admin listener goes last, so probes and scrapes see the drain.
	defer func() {
		if admin != nil {
			actx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = admin.Shutdown(actx)
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(ln) }()
	scheme := "http"
	if s.opts.TLSCert != "" {
		scheme = "https"
	}
	s.log.Info().Str("addr", ln.Addr().String()).Str("url", scheme+"://"+ln.Addr().String()+s.opts.Path).Msg("bridge listening")
	if mp := s.nc.MaxPayload(); mp > 0 && mp < 2*s.opts.MaxBodyBytes {
		// A message carries an item about twice (raw, and attrs for the
		// fields not mapped).
		s.log.Info().Int64("nats_max_payload", mp).Int64("http_max_body_bytes", s.opts.MaxBodyBytes).
			Msg("a coordinate whose message would pass the NATS server's max_payload is rejected (413, or listed in rejected); real GPS items are far smaller")
	}

	select {
	case err := <-serveErr:
		stopWatch()
		<-watchDone
		return fmt.Errorf("http server: %w", err)
	case err := <-adminErr:
		_ = hs.Close()
		stopWatch()
		<-watchDone
		return fmt.Errorf("admin http server: %w", err)
	case <-ctx.Done():
	}

	s.draining.Store(true)
	s.log.Info().Dur("grace", s.opts.ShutdownTimeout).Msg("shutting down: finishing in-flight requests")
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	err = hs.Shutdown(sctx)
	stopWatch()
	<-watchDone
	if errors.Is(err, context.DeadlineExceeded) {
		// The grace ran out: what is still in flight is cut off. None of
		// it was answered, so its senders send it again (a coordinate
		// already stored is then a duplicate). A planned stop, not a
		// failure of the service: the exit status stays 0.
		_ = hs.Close()
		s.log.Warn().Dur("grace", s.opts.ShutdownTimeout).Float64("in_flight", gaugeValue(s.metrics.inFlight)).
			Msg("http.shutdown_timeout ran out: the requests still in flight were cut off unanswered (their senders retry)")
		err = nil
	}
	if err != nil {
		return fmt.Errorf("http shutdown: %w", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("http server: %w", err)
	}
	return nil
}

// watchTopology checks the connection and the stream every few seconds (at
// once after a reconnect), so /readyz tells the truth and a stream lost with
// a server's storage comes back.
func (s *Server) watchTopology(ctx context.Context) {
	reconnected := make(chan struct{}, 1)
	s.nc.SetReconnectHandler(chainReconnect(s.nc.Opts.ReconnectedCB, func() {
		select {
		case reconnected <- struct{}{}:
		default:
		}
	}))
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	lastOK := s.streamOK.Load()
	for {
		connected := s.nc.IsConnected()
		s.metrics.natsUp.Set(b2f(connected))
		if connected {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := s.EnsureStream(cctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Error().Err(err).Msg("coordinate stream not ready")
			} else if err == nil && !lastOK {
				s.log.Info().Str("stream", s.opts.Stream.Name).Msg("coordinate stream ready")
			}
		} else {
			s.streamOK.Store(false)
		}
		lastOK = s.streamOK.Load()
		s.metrics.streamReady.Set(b2f(lastOK))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-reconnected:
		}
	}
}

func chainReconnect(prev nats.ConnHandler, f func()) nats.ConnHandler {
	return func(nc *nats.Conn) {
		if prev != nil {
			prev(nc)
		}
		f()
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Ready reports whether the bridge can store coordinates now, and why not.
func (s *Server) Ready() (bool, string) {
	switch {
	case s.draining.Load():
		return false, "shutting down"
	case !s.nc.IsConnected():
		return false, "nats: " + s.nc.Status().String()
	case !s.streamOK.Load():
		return false, "stream " + s.opts.Stream.Name + " not available"
	}
	return true, ""
}
