package subscribers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// Defaults of Config.
const (
	DefaultStream        = "COORDS"
	DefaultSubjectPrefix = "ubiqo.coords"
	DefaultAckWait       = 30 * time.Second
	DefaultMaxAckPending = 10000
	DefaultBatchSize     = 500
	DefaultBatchWait     = 200 * time.Millisecond
	DefaultDrainTimeout  = 20 * time.Second
	DefaultLagInterval   = 5 * time.Second
)

// DefaultBackoff is the retry schedule when Config.Backoff is empty.
var DefaultBackoff = []time.Duration{time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second, time.Minute}

func (c *Config) fill() error {
	if c.Durable == "" {
		return errors.New("subscribers: config: durable consumer name is required")
	}
	if strings.ContainsAny(c.Durable, " \t\r\n.*>/\\") {
		return fmt.Errorf("subscribers: config: durable %q must not contain spaces, dots, *, >, / or \\", c.Durable)
	}
	if c.Description == "" {
		c.Description = "ubiqo-bridge subscriber " + c.Durable
	}
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	if c.AckWait <= 0 {
		c.AckWait = DefaultAckWait
	}
	if c.MaxDeliver == 0 || c.MaxDeliver < -1 {
		c.MaxDeliver = -1
	}
	if c.MaxAckPending <= 0 {
		c.MaxAckPending = DefaultMaxAckPending
	}
	if len(c.Backoff) == 0 {
		c.Backoff = DefaultBackoff
	}
	for _, d := range c.Backoff {
		if d <= 0 {
			return fmt.Errorf("subscribers: config: back-off delay %s must be positive", d)
		}
	}
	if c.BatchSize <= 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchSize > c.MaxAckPending {
		return fmt.Errorf("subscribers: config: batch size %d exceeds max ack pending %d: no batch could fill", c.BatchSize, c.MaxAckPending)
	}
	if c.BatchWait <= 0 {
		c.BatchWait = DefaultBatchWait
	}
	if c.DeliverPolicy == jetstream.DeliverByStartTimePolicy && c.StartTime.IsZero() {
		return errors.New("subscribers: config: deliver policy by_start_time needs a start time")
	}
	if c.DeliverPolicy == jetstream.DeliverByStartSequencePolicy && c.StartSeq == 0 {
		return errors.New("subscribers: config: deliver policy by_start_sequence needs a start sequence")
	}
	if c.DLQPrefix == "" {
		c.DLQPrefix = stream.DLQSubjectPrefix
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.LagInterval <= 0 {
		c.LagInterval = DefaultLagInterval
	}
	return nil
}

// ParseDeliverPolicy turns a consumer.deliver_policy value (all, new, last,
// last_per_subject, by_start_time, by_start_sequence) into the JetStream one.
func ParseDeliverPolicy(s string) (jetstream.DeliverPolicy, error) {
	var p jetstream.DeliverPolicy
	if s == "" {
		return jetstream.DeliverAllPolicy, nil
	}
	if err := p.UnmarshalJSON([]byte(`"` + s + `"`)); err != nil {
		return 0, fmt.Errorf("deliver policy %q: want all, new, last, last_per_subject, by_start_time or by_start_sequence", s)
	}
	return p, nil
}

// consumerConfig is the server-side consumer the runtime creates or updates.
// MaxDeliver stays unlimited on the server: the runtime enforces
// Config.MaxDeliver itself so a message is dead-lettered, never dropped.
func (c *Config) consumerConfig() jetstream.ConsumerConfig {
	cc := jetstream.ConsumerConfig{
		Durable:       c.Durable,
		Description:   c.Description,
		DeliverPolicy: c.DeliverPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: c.MaxAckPending,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
	switch c.DeliverPolicy {
	case jetstream.DeliverByStartTimePolicy:
		t := c.StartTime
		cc.OptStartTime = &t
	case jetstream.DeliverByStartSequencePolicy:
		cc.OptStartSeq = c.StartSeq
	}
	switch len(c.FilterSubjects) {
	case 0:
	case 1:
		cc.FilterSubject = c.FilterSubjects[0]
	default:
		cc.FilterSubjects = c.FilterSubjects
	}
	return cc
}

func newRuntime(js JetStream, cfg Config, log zerolog.Logger) (*Runtime, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	log = log.With().Str("consumer", cfg.Durable).Logger()
	r := &Runtime{
		cfg: cfg,
		js:  js,
		log: log,
		reg: prometheus.NewRegistry(),
	}
	r.metrics = newMetrics(r.reg, cfg.Durable)
	r.health = newHealth(js.Conn())
	if cfg.HTTPAddr != "" {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			return nil, fmt.Errorf("subscribers: health and metrics listener %s: %w", cfg.HTTPAddr, err)
		}
		r.ln = ln
	}
	return r, nil
}

// loop is one handler shape's consume loop: it reads the delivered messages
// from in until in is closed and settles every one it took (or, once ctx
// is cancelled at the drain deadline, leaves them to redelivery).
type loop interface {
	// fetchSize is the most messages one pull request asks for.
	fetchSize(c *Config) int
	consume(ctx context.Context, r *Runtime, in <-chan jetstream.Msg)
	// wait blocks until every message the loop dispatched is settled or ctx
	// is done; it reports whether all were.
	wait(ctx context.Context) bool
}

// errConsumerGone stops Run when the server deleted the durable under it.
var errConsumerGone = errors.New("the durable consumer was deleted on the server")

// fetchWait bounds one pull request: how long it waits on an idle stream,
// and so how long a stop may wait for the request in flight.
const fetchWait = 500 * time.Millisecond

// fetch pulls messages into in, one bounded request (Fetch) at a time, until
// stop is done. Every message a request brings is handed over before the
// next request or the return, so a graceful stop leaves no message delivered
// by the server and never seen (which stopping a continuous pull would,
// leaving it unacked until AckWait). One request at a time also keeps stream
// order: the server spreads messages over the requests waiting at once. It
// returns early, dropping what it holds, when hard is closed, and with an
// error when the consumer is gone.
func (r *Runtime) fetch(stop context.Context, cons jetstream.Consumer, n int, in chan<- jetstream.Msg, hard <-chan struct{}) error {
	failing := pullFailures{r: r}
	defer func() {
		if failing.unready {
			r.health.pullFailing(nil) // stopping: the consumer check says the rest
		}
	}()
	for stop.Err() == nil {
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(fetchWait))
		if err == nil {
			for m := range batch.Messages() {
				select {
				case in <- m:
				case <-hard:
					return nil
				}
			}
			err = batch.Error()
		}
		switch {
		case err == nil, errors.Is(err, nats.ErrTimeout):
			failing.ok()
		case errors.Is(err, jetstream.ErrConsumerDeleted), errors.Is(err, jetstream.ErrConsumerNotFound):
			return fmt.Errorf("%w: %v", errConsumerGone, err)
		default:
			// Disconnected, server restarting, leader moving: the
			// connection reconnects by itself; try again shortly.
			r.metrics.pullErrors.Inc()
			failing.failed(err)
			select {
			case <-stop.Done():
			case <-hard:
				return nil
			case <-time.After(250 * time.Millisecond):
			}
		}
	}
	return nil
}

// pullFailingAfter is how long pull requests must fail in a row before
// /readyz turns false: longer than a leader election or a reconnect, which
// heal by themselves.
const pullFailingAfter = 5 * time.Second

// pullFailingLogEvery spaces the warnings while pulls keep failing.
const pullFailingLogEvery = 30 * time.Second

// pullFailures follows a run of failed pull requests. A consumer without a
// leader (a cluster that lost quorum), a JetStream that went away or a
// permissions change make every pull fail while the connection stays up;
// past pullFailingAfter that shows on /readyz and in the log, rather than
// the subscriber idling and looking healthy.
type pullFailures struct {
	r       *Runtime
	since   time.Time // zero: the last pull succeeded
	count   int
	logged  time.Time
	unready bool
}

func (f *pullFailures) failed(err error) {
	now := time.Now()
	if f.since.IsZero() {
		f.since = now
	}
	f.count++
	failingFor := now.Sub(f.since)
	if failingFor < pullFailingAfter {
		f.r.log.Debug().Err(err).Msg("pull request failed; retrying")
		return
	}
	if !f.unready {
		f.unready = true
		f.r.health.pullFailing(fmt.Errorf("pull requests failing for %s (%d in a row): %w", failingFor.Round(time.Second), f.count, err))
	}
	if now.Sub(f.logged) >= pullFailingLogEvery {
		f.logged = now
		f.r.log.Warn().Err(err).Dur("failing_for", failingFor).Int("failed_pulls", f.count).
			Str("hint", "a consumer without a leader (cluster quorum lost) answers no responders; see nats consumer info "+f.r.cfg.Stream+" "+f.r.cfg.Durable).
			Msg("pull requests keep failing: no messages are consumed")
	}
}

func (f *pullFailures) ok() {
	if f.since.IsZero() {
		return
	}
	if f.unready {
		f.r.health.pullFailing(nil)
		f.r.log.Info().Dur("failed_for", time.Since(f.since)).Int("failed_pulls", f.count).Msg("pull requests succeed again")
	}
	*f = pullFailures{r: f.r}
}

func (r *Runtime) run(ctx context.Context, l loop) error {
	if r.running.Swap(true) {
		return errors.New("subscribers: Run called twice")
	}
	var bg sync.WaitGroup
	defer bg.Wait() // after the HTTP shutdown below

	// HTTP first, so /healthz answers and /readyz says why while the
	// consumer is being set up.
	if r.ln != nil {
		srv := &http.Server{Handler: r.Handler(), ReadHeaderTimeout: 5 * time.Second}
		bg.Add(1)
		go func() {
			defer bg.Done()
			if err := srv.Serve(r.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error().Err(err).Msg("health and metrics listener stopped")
			}
		}()
		// Shut down before bg.Wait (deferred calls run last-in first-out).
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
		r.log.Info().Str("addr", r.ln.Addr().String()).Msg("serving /healthz /readyz /metrics")
	}

	cons, err := r.setupConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.health.consumerOK(nil)

	pollCtx, stopPoll := context.WithCancel(ctx)
	defer stopPoll()
	bg.Add(1)
	go func() {
		defer bg.Done()
		r.pollLag(pollCtx, cons)
	}()

	// work is the handlers' context: it outlives ctx by the drain deadline,
	// so a batch under way when the stop comes can still commit and be acked.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()

	// The fetcher is the only sender on in and closes it when it returns:
	// on the stop (after the request in flight brought all its messages), past the deadline (hardStop), or when the consumer is gone.
	in := make(chan jetstream.Msg, r.cfg.BatchSize)
	hardStop := make(chan struct{})
	fetchDone := make(chan struct{})
	var fetchErr error
	go func() {
		defer close(fetchDone)
		defer close(in)
		fetchErr = r.fetch(ctx, cons, l.fetchSize(&r.cfg), in, hardStop)
	}()
	r.log.Info().Str("stream", r.cfg.Stream).Int("batch_size", r.cfg.BatchSize).
		Int("max_ack_pending", r.cfg.MaxAckPending).Msg("consuming")

	// The stopper enforces the drain deadline: past it, it cancels work
	// (the handlers' context and the loop) and stops the fetcher at once.
	stopperDone := make(chan struct{})
	go func() {
		defer close(stopperDone)
		select {
		case <-ctx.Done():
		case <-fetchDone:
		}
		r.log.Info().Dur("deadline", r.cfg.DrainTimeout).Msg("stopping: finishing the messages in flight")
		deadline := time.NewTimer(r.cfg.DrainTimeout)
		defer deadline.Stop()
		select {
		case <-deadline.C:
			cancelWork()
			close(hardStop)
		case <-work.Done():
		}
	}()

	l.consume(work, r, in)
	settled := l.wait(work)
	drainedInTime := work.Err() == nil && settled
	cancelWork() // releases the stopper
	stopPoll()
	<-stopperDone
	<-fetchDone
	if fetchErr != nil {
		r.health.consumerOK(fetchErr)
		return fmt.Errorf("consumer %s: %w", r.cfg.Durable, fetchErr)
	}
	if !drainedInTime {
		r.log.Warn().Msg("drain deadline passed; unsettled messages will be redelivered after ack_wait")
		return fmt.Errorf("consumer %s: %w (consumer.drain_timeout %s)", r.cfg.Durable, ErrDrainTimeout, r.cfg.DrainTimeout)
	}
	r.log.Info().Msg("stopped")
	return nil
}

// setupConsumer creates or updates the durable. A missing stream or an
// unreachable server is waited for (the bridge may start later); a refusal of
// the configuration is returned at once.
func (r *Runtime) setupConsumer(ctx context.Context) (jetstream.Consumer, error) {
	want := r.cfg.consumerConfig()
	delay := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := r.js.CreateOrUpdateConsumer(cctx, r.cfg.Stream, want)
		cancel()
		if err == nil {
			return cons, nil
		}
		if !transientSetupError(err) {
			r.health.consumerOK(err)
			return nil, fmt.Errorf("create or update consumer %s on stream %s: %w%s", r.cfg.Durable, r.cfg.Stream, err, setupHint(err, r.cfg))
		}
		r.health.consumerOK(err)
		ev := r.log.Warn()
		if attempt > 1 {
			ev = r.log.Debug()
		}
		ev.Err(err).Str("stream", r.cfg.Stream).Dur("retry_in", delay).Msg("consumer not set up yet (is the bridge running and the stream created?)")
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 10*time.Second)
	}
}

func transientSetupError(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, nats.ErrConnectionClosed) ||
		errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting)
}

func setupHint(err error, c Config) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "can not be updated"), strings.Contains(msg, "cannot be updated"):
		return fmt.Sprintf(" (the server cannot change this setting of an existing durable; to start over from another point use a new consumer.durable, or remove it with: nats consumer rm %s %s)", c.Stream, c.Durable)
	case strings.Contains(msg, "filter"):
		return " (check consumer.filter_subjects: they must lie inside the stream's subjects)"
	default:
		return ""
	}
}

// pollDLQ reads how many messages the DLQ stream holds.
func (r *Runtime) pollDLQ(ctx context.Context) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, err := r.js.Stream(ictx, stream.DLQStream)
	switch {
	case err == nil:
		r.metrics.dlq.Set(float64(s.CachedInfo().State.Msgs))
	case errors.Is(err, jetstream.ErrStreamNotFound):
		r.metrics.dlq.Set(0)
	default:
		r.log.Debug().Err(err).Msg("DLQ stream info")
	}
}

// pollLag reads the consumer's lag from the server every LagInterval, and
// notes for /readyz whether the consumer still exists.
func (r *Runtime) pollLag(ctx context.Context, cons jetstream.Consumer) {
	t := time.NewTicker(r.cfg.LagInterval)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := cons.Info(ictx)
		cancel()
		switch {
		case err == nil:
			r.metrics.pending.Set(float64(info.NumPending))
			r.metrics.ackPending.Set(float64(info.NumAckPending))
			r.health.consumerOK(nil)
			r.pollDLQ(ctx)
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrConsumerNotFound):
			r.health.consumerOK(err)
			r.log.Error().Err(err).Msg("consumer missing on the server")
		default:
			// A slow or disconnected server: the NATS check of /readyz
			// covers the connection; keep the last lag figures.
			r.log.Debug().Err(err).Msg("consumer info")
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
