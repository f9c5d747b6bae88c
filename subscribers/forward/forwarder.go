package forward

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// JetStream is the role of the JetStream API the forwarder uses: the
// runtime's, and reading a consumer's state at start.
type JetStream interface {
	subscribers.JetStream
	Consumer(ctx context.Context, stream, consumer string) (jetstream.Consumer, error)
}

// Options configures a Service.
type Options struct {
	// Targets are the secondary servers; at least one, names unique.
	Targets []Target
	// Runtime is the template of every target's consumer runtime (stream,
	// AckWait, MaxAckPending, BatchSize of the pulls, DeliverPolicy,
	// DrainTimeout, LagInterval, DLQPrefix, and FilterSubjects for targets
	// that set none). Per target the Service sets Durable (forward-<name>),
	// FilterSubjects when the target has its own, MaxDeliver -1 (the
	// forwarder counts attempts itself) and no HTTP listener.
	Runtime subscribers.Config
	// HTTPAddr, when set, serves /healthz, /readyz and /metrics for all
	// targets; New binds it.
	HTTPAddr string
	// Pprof also serves /debug/pprof on the HTTPAddr listener.
	Pprof bool
	// ShutdownTimeout bounds the HTTP listener's shutdown; default 5s.
	ShutdownTimeout time.Duration
	// Version goes in the User-Agent: ubiqo-forwarder/<Version>.
	Version string
}

// Service forwards COORDS to every target, each on its own durable
// consumer, and serves their health and metrics.
type Service struct {
	targets         []*targetRun
	reg             *prometheus.Registry
	ln              net.Listener
	shutdownTimeout time.Duration
	pprof           bool
	log             zerolog.Logger
}

// New checks the options, fills defaults and builds every target's client
// and runtime; with HTTPAddr it binds the listener, so a busy port fails
// here. It does not talk to the server.
func New(js JetStream, opts Options, log zerolog.Logger) (*Service, error) {
	if len(opts.Targets) == 0 {
		return nil, errNoTargets
	}
	s := &Service{reg: prometheus.NewRegistry(), shutdownTimeout: opts.ShutdownTimeout, pprof: opts.Pprof, log: log}
	if s.shutdownTimeout <= 0 {
		s.shutdownTimeout = 5 * time.Second
	}
	m := newMetrics(s.reg)
	seen := map[string]bool{}
	for _, t := range opts.Targets {
		t, err := t.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("forward: %w", err)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("forward: target name %q used twice", t.Name)
		}
		seen[t.Name] = true
		r, err := newTargetRun(js, t, opts, m, s.reg, log.With().Str("target", t.Name).Logger())
		if err != nil {
			return nil, err
		}
		s.targets = append(s.targets, r)
	}
	if opts.HTTPAddr != "" {
		ln, err := net.Listen("tcp", opts.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("forward: listen %s: %w", opts.HTTPAddr, err)
		}
		s.ln = ln
	}
	return s, nil
}

// HTTPAddr is the bound address of the health and metrics listener, or nil.
func (s *Service) HTTPAddr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Gatherer returns every series the Service serves on /metrics: its own,
// and each target runtime's with a target label.
func (s *Service) Gatherer() prometheus.Gatherer {
	gs := prometheus.Gatherers{s.reg}
	for _, r := range s.targets {
		gs = append(gs, labelGatherer{g: r.rt.Gatherer(), name: "target", value: r.t.Name})
	}
	return gs
}

// Ready reports nil when every target's runtime is ready (NATS connected,
// consumer present); a target that is down does not make the forwarder
// unready: holding its coordinates is its job.
func (s *Service) Ready(ctx context.Context) error {
	var errs []error
	for _, r := range s.targets {
		if err := r.rt.Ready(ctx); err != nil {
			errs = append(errs, fmt.Errorf("target %s: %w", r.t.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Handler serves /healthz, /readyz, /metrics and, with Options.Pprof,
// /debug/pprof.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if err := s.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, `{"status":"unavailable","error":%s}`, strconv.Quote(err.Error()))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ready"}`))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.Gatherer(), promhttp.HandlerOpts{}))
	if s.pprof {
		subscribers.MountPprof(mux)
	}
	return mux
}

// Run forwards until ctx is cancelled, then stops every target (finishing
// the requests under way and handing the other held messages back in
// stream order) and the listener. It returns at once with an error when a
// target's consumer cannot be created; the other targets are then stopped.
func (s *Service) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(s.targets)+1)
	for i, r := range s.targets {
		wg.Go(func() {
			if err := r.run(ctx); err != nil {
				errs[i] = fmt.Errorf("target %s: %w", r.t.Name, err)
				cancel()
			}
		})
	}
	if s.ln != nil {
		srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
		wg.Go(func() {
			if err := srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs[len(s.targets)] = fmt.Errorf("forward: http: %w", err)
				cancel()
			}
		})
		wg.Go(func() {
			<-ctx.Done()
			sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
			defer scancel()
			_ = srv.Shutdown(sctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// errHandBack settles a message the forwarder hands back unsent on
// shutdown: an immediate Nak, so the next run gets it first.
var errHandBack = subscribers.RetryAfter(errors.New("forwarder stopping: handed back unsent"), 0)

// gateGrace is added to AckWait for the start gate's longest wait.
const gateGrace = 5 * time.Second

// targetRun is one target: its runtime, scheduler, client, breaker and
// workers.
type targetRun struct {
	t      Target
	js     JetStream
	rt     *subscribers.Runtime
	rtCfg  subscribers.Config
	client *client
	brk    *breaker
	sched  *scheduler
	m      *metrics
	log    zerolog.Logger

	pauseMu    sync.Mutex
	pauseUntil time.Time // Retry-After: nothing is sent to the target before
}

func newTargetRun(js JetStream, t Target, opts Options, m *metrics, reg prometheus.Registerer, log zerolog.Logger) (*targetRun, error) {
	cl, err := newClient(t, opts.Version)
	if err != nil {
		return nil, err
	}
	cfg := opts.Runtime
	cfg.Durable = t.Durable()
	cfg.Description = "ubiqo-bridge forwarder to target " + t.Name
	if len(t.FilterSubjects) > 0 {
		cfg.FilterSubjects = t.FilterSubjects
	}
	cfg.MaxDeliver = -1
	cfg.HTTPAddr = ""
	rt, err := subscribers.New(js, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", t.Name, err)
	}
	r := &targetRun{t: t, js: js, rt: rt, rtCfg: rt.Config(), client: cl, m: m, log: log}
	// A stale copy comes shortly after its original's ack, unless it waits
	// in a backed-up runtime for a slot: remember settled sequences for ten
	// AckWaits, five minutes at least (about a bit each: a few MB at 10,000
	// coordinates/s). A copy later still is sent again, counted out of
	// order; nothing is ever acked unsent.
	keep := max(10*r.rtCfg.AckWait, 5*time.Minute)
	r.sched = newScheduler(t.BatchSize, keep, func(msg *subscribers.Msg) {
		m.outOfOrder.WithLabelValues(t.Name).Inc()
		log.Warn().Uint64("seq", msg.StreamSeq).Str("device", msg.Coord.DeviceID).
			Msg("coordinate arrived after a newer one of its device was sent (is a second forwarder running on this durable?)")
	}, func(msg *subscribers.Msg) {
		m.stale.WithLabelValues(t.Name).Inc()
		log.Debug().Uint64("seq", msg.StreamSeq).Uint64("delivery", msg.NumDelivered).Msg("dropped a redelivery of a coordinate already settled")
	})
	// Counters exist from the start at 0, so rate() and increase() see
	// the first event.
	m.delivered.WithLabelValues(t.Name)
	m.outOfOrder.WithLabelValues(t.Name)
	m.stale.WithLabelValues(t.Name)
	// The reasons that are not an HTTP status are known in advance; an
	// http_<code> reason appears at its first event.
	for _, reason := range []string{"timeout", "network"} {
		m.retried.WithLabelValues(t.Name, reason)
	}
	for _, reason := range []string{"max_deliver", "max_age", "encode"} {
		m.dead.WithLabelValues(t.Name, reason)
	}
	gauge := m.breaker.WithLabelValues(t.Name)
	gauge.Set(float64(breakerClosed))
	r.brk = newBreaker(t.BreakerFailures, t.BreakerCooldown, func(from, to breakerState) {
		gauge.Set(float64(to))
		ev := log.Info()
		if to == breakerOpen {
			ev = log.Warn()
		}
		ev.Str("from", from.String()).Str("to", to.String()).Msg("circuit breaker")
	})
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name:        "ubiqo_forward_held_messages",
		Help:        "Coordinates held in memory for the target: queued behind their device's previous one, in flight or waiting to be retried.",
		ConstLabels: prometheus.Labels{"target": t.Name},
	}, func() float64 { n, _ := r.sched.stats(); return float64(n) }))
	return r, nil
}

// run runs the target until ctx is cancelled. See Service.Run.
func (r *targetRun) run(ctx context.Context) error {
	defer r.client.close()
	r.armGate(ctx)

	// Requests under way when ctx is cancelled may finish (so a delivered
	// coordinate is acked, not sent again) until half the drain time passed.
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelHard()
	stopHard := context.AfterFunc(ctx, func() { time.AfterFunc(r.rtCfg.DrainTimeout/2, cancelHard) })
	defer stopHard()

	wctx, stopWorkers := context.WithCancel(ctx)
	defer stopWorkers()
	var workers sync.WaitGroup
	for range r.t.Concurrency {
		workers.Go(func() { r.work(wctx, hard) })
	}
	handedBack := make(chan struct{})
	go func() {
		defer close(handedBack)
		workers.Wait()
		held := r.sched.close()
		for _, h := range held {
			for _, settle := range h.settles {
				settle(errHandBack)
			}
		}
		if len(held) > 0 {
			r.log.Info().Int("messages", len(held)).Msg("handed back unsent coordinates for the next run, in stream order")
		}
	}()

	headers := make([]string, 0, len(r.t.Headers))
	for k := range r.t.Headers {
		headers = append(headers, k) // names only: the values are secrets
	}
	slices.Sort(headers)
	r.log.Info().Str("url", redactURL(r.t.URL)).Str("method", r.t.Method).Str("format", r.t.Format).
		Str("durable", r.t.Durable()).Strs("filter_subjects", r.rtCfg.FilterSubjects).Strs("headers", headers).
		Bool("signed", r.t.SigningSecret != "").Int("concurrency", r.t.Concurrency).
		Int("max_deliver", r.t.MaxDeliver).Dur("max_age", r.t.MaxAge).Int("breaker_failures", r.t.BreakerFailures).
		Msg("forwarding")
	err := r.rt.RunAsync(ctx, subscribers.AsyncHandlerFunc(func(_ context.Context, m *subscribers.Msg, settle subscribers.Settle) {
		r.sched.add(m, settle)
	}))
	stopWorkers()
	<-handedBack
	return err
}

// armGate reads the consumer's state left by an earlier run: when messages
// are still unacknowledged, sending waits until they came back (see the
// package comment).
func (r *targetRun) armGate(ctx context.Context) {
	c, err := r.js.Consumer(ctx, r.rtCfg.Stream, r.t.Durable())
	if err != nil {
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			r.log.Warn().Err(err).Msg("cannot read the consumer's state; starting without waiting for an earlier run's unacknowledged coordinates")
		}
		return
	}
	info := c.CachedInfo()
	if info == nil || info.NumAckPending == 0 {
		return
	}
	wait := max(info.Config.AckWait, r.rtCfg.AckWait) + gateGrace
	r.sched.holdBack(info.Delivered.Stream, info.NumAckPending, wait)
	r.log.Info().Int("unacknowledged", info.NumAckPending).Uint64("up_to_seq", info.Delivered.Stream).
		Dur("at_most", wait).Msg("an earlier run left coordinates unacknowledged: sending waits until they are redelivered, to keep each device's order")
}

func (r *targetRun) work(ctx, hard context.Context) {
	for {
		u := r.sched.next(ctx)
		if u == nil {
			return
		}
		r.attempt(ctx, hard, u)
	}
}

// attempt sends u once and settles or reschedules it. This is the one place
// where the forwarder decides between delivered, retry and give up.
func (r *targetRun) attempt(ctx, hard context.Context, u *unit) {
	if !u.built {
		msgs := make([]*subscribers.Msg, len(u.msgs))
		for i, h := range u.msgs {
			msgs[i] = h.msg
		}
		req, err := r.client.build(msgs)
		if err != nil {
			r.giveUp(u, &DeliveryError{Target: r.t.Name, Reason: "encode", Err: err})
			return
		}
		u.req, u.built = req, true
	}
	probe, counts, err := r.brk.acquire(ctx)
	if err != nil {
		r.sched.retry(u, 0) // stopping: close hands it back
		return
	}
	if err := r.waitPause(ctx); err != nil {
		r.brk.release(probe)
		r.sched.retry(u, 0)
		return
	}
	res := r.client.send(hard, u.req)
	out := res.outcome()
	if out == retryable && ctx.Err() != nil {
		// Stopping, and the request was cut short or failed: neither the
		// target's fault nor an attempt to count; close hands it back.
		r.brk.release(probe)
		r.sched.retry(u, 0)
		return
	}
	// A 429 or 503 with Retry-After is the target pacing us, not failing:
	// the pause handles it, the breaker does not count it.
	r.brk.record(probe, out != retryable || res.retryAfter > 0)
	r.m.latency.WithLabelValues(r.t.Name, out.String()).Observe(res.latency.Seconds())

	switch out {
	case delivered:
		r.settle(u, nil)
		r.sched.done(u)
		r.m.delivered.WithLabelValues(r.t.Name).Add(float64(len(u.msgs)))
	case permanent:
		u.attempts++
		r.giveUp(u, r.deliveryError(u, res, res.reason()))
	case retryable:
		if counts {
			u.attempts++
		}
		if res.retryAfter > 0 {
			r.pause(res.retryAfter)
		}
		if counts && r.t.MaxDeliver > 0 && u.attempts >= r.t.MaxDeliver {
			r.giveUp(u, r.deliveryError(u, res, "max_deliver"))
			return
		}
		if counts && r.t.MaxAge > 0 && time.Since(oldest(u)) > r.t.MaxAge {
			r.giveUp(u, r.deliveryError(u, res, "max_age"))
			return
		}
		delay := res.retryAfter
		if delay == 0 {
			delay = backoff(u.attempts, r.t.BackoffMin, r.t.BackoffMax)
		}
		r.m.retried.WithLabelValues(r.t.Name, res.reason()).Add(float64(len(u.msgs)))
		r.log.Debug().Str("result", res.describe()).Int("attempts", u.attempts).Dur("retry_in", delay).
			Uint64("seq", u.msgs[0].seq()).Int("coordinates", len(u.msgs)).Msg("retrying")
		r.sched.retry(u, delay)
	}
}

func (r *targetRun) deliveryError(u *unit, res result, reason string) *DeliveryError {
	return &DeliveryError{Target: r.t.Name, Reason: reason, Status: res.status, Answer: res.answer, Attempts: u.attempts, Err: res.err}
}

// giveUp dead-letters every message of u (the runtime copies each to the
// DLQ, then terminates it) and frees its devices.
func (r *targetRun) giveUp(u *unit, e *DeliveryError) {
	r.log.Warn().Str("reason", e.Reason).Str("result", e.describe()).Int("attempts", e.Attempts).
		Uint64("seq", u.msgs[0].seq()).Str("device", u.msgs[0].msg.Coord.DeviceID).Int("coordinates", len(u.msgs)).
		Msg("giving up: dead-lettered")
	r.settle(u, subscribers.Permanent(e))
	r.sched.done(u)
	r.m.dead.WithLabelValues(r.t.Name, e.Reason).Add(float64(len(u.msgs)))
}

// settle settles every delivery of every message of u with err and notes
// which messages are finished. The redelivered copies of a dead-lettered
// message are acked (the first copy went to the DLQ); if its DLQ copy
// failed (the runtime nak'ed it to come back), each copy tries again.
func (r *targetRun) settle(u *unit, err error) {
	for _, h := range u.msgs {
		settles := r.sched.settlesOf(h)
		h.finished = settles[0](err)
		for _, s := range settles[1:] {
			if h.finished && subscribers.IsPermanent(err) {
				s(nil)
				continue
			}
			h.finished = s(err) || h.finished
		}
	}
}

func oldest(u *unit) time.Time {
	t := u.msgs[0].msg.Timestamp
	for _, h := range u.msgs[1:] {
		if h.msg.Timestamp.Before(t) {
			t = h.msg.Timestamp
		}
	}
	return t
}

// pause keeps every request to the target back for d (Retry-After).
func (r *targetRun) pause(d time.Duration) {
	r.pauseMu.Lock()
	defer r.pauseMu.Unlock()
	if until := time.Now().Add(d); until.After(r.pauseUntil) {
		r.pauseUntil = until
	}
}

func (r *targetRun) waitPause(ctx context.Context) error {
	for {
		r.pauseMu.Lock()
		wait := time.Until(r.pauseUntil)
		r.pauseMu.Unlock()
		if wait <= 0 {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
	}
}

// backoff is the delay before the next attempt after n counted attempts:
// lo doubled per attempt, capped at hi, with "equal jitter" (half fixed,
// half random) so retries of many devices spread out but still grow.
func backoff(n int, lo, hi time.Duration) time.Duration {
	base := lo
	for i := 1; i < n && base < hi; i++ {
		base *= 2
	}
	base = min(base, hi)
	half := base / 2
	return half + rand.N(base-half+1)
}

// DeliveryError says why coordinates were given up: the target's last
// answer, or why no request could be made. The DLQ copy carries its text in
// Ubiqo-Error and its fields in the headers of DLQHeader.
type DeliveryError struct {
	Target string
	// Reason is http_<code> (a permanent answer), max_deliver, max_age or
	// encode.
	Reason   string
	Status   int    // the target's last status, 0 when none
	Answer   []byte // the start of its last answer
	Attempts int
	Err      error // the transport or encoding error, when there was no answer
}

// DLQ header names the forwarder adds to its dead-lettered copies.
const (
	HeaderTarget         = "Ubiqo-Target"
	HeaderTargetStatus   = "Ubiqo-Target-Status"
	HeaderTargetAnswer   = "Ubiqo-Target-Answer"
	HeaderForwardReason  = "Ubiqo-Forward-Reason"
	HeaderForwardAttempt = "Ubiqo-Forward-Attempts"
	// maxHeaderAnswer caps the answer kept in a DLQ header.
	maxHeaderAnswer = 1024
)

func (e *DeliveryError) describe() string {
	return result{status: e.Status, answer: e.Answer, err: e.Err}.describe()
}

func (e *DeliveryError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "forward to %s: ", e.Target)
	switch e.Reason {
	case "max_deliver":
		fmt.Fprintf(&b, "gave up after %d attempts (max_deliver): ", e.Attempts)
	case "max_age":
		fmt.Fprintf(&b, "gave up after %d attempts, coordinate older than max_age: ", e.Attempts)
	case "encode":
		return b.String() + e.Err.Error()
	}
	b.WriteString(e.describe())
	return b.String()
}

func (e *DeliveryError) Unwrap() error { return e.Err }

// DLQHeader returns the headers describing the failure for the DLQ copy:
// target, reason, attempts, and the target's status and answer (one line,
// at most 1 KiB).
func (e *DeliveryError) DLQHeader() nats.Header {
	h := nats.Header{}
	h.Set(HeaderTarget, e.Target)
	h.Set(HeaderForwardReason, e.Reason)
	h.Set(HeaderForwardAttempt, strconv.Itoa(e.Attempts))
	if e.Status != 0 {
		h.Set(HeaderTargetStatus, strconv.Itoa(e.Status))
		h.Set(HeaderTargetAnswer, oneLine(e.Answer, maxHeaderAnswer))
	}
	return h
}
