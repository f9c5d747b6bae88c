// Package subscribers owns the consume loop every ubiqo-bridge subscriber
// (persister, alerter, forwarder) shares: a durable pull consumer on the
// COORDS stream created or updated from configuration, decoding of the
// canonical coordinate, the one policy that turns a handler's outcome into
// Ack, NakWithDelay or DLQ copy + Term, graceful drain, and the /healthz,
// /readyz and /metrics endpoints.
//
// A subscriber writes a handler in one of two shapes — BatchHandler (the
// runtime hands it up to BatchSize messages and settles them after it
// returns) or AsyncHandler (the handler settles each message later, from any
// goroutine) — and calls Runtime.RunBatch or Runtime.RunAsync.
//
// Outcomes, decided in one place (policy.go) for both shapes:
//
//   - nil: Ack.
//   - a retryable error (any error not marked Permanent): NakWithDelay, the
//     delay taken from Config.Backoff by delivery count (attempt n waits
//     Backoff[n-1], the last step repeating), or the delay given with
//     RetryAfter. When the message was delivered MaxDeliver times (MaxDeliver
//     > 0) it is dead-lettered instead, so it never silently vanishes.
//   - Permanent(err): the message is copied to the DLQ stream on
//     <DLQPrefix>.<durable>.<token> with the headers Ubiqo-Error,
//     Ubiqo-Attempts, Ubiqo-Consumer, Ubiqo-Original-Subject,
//     Ubiqo-Original-Seq plus its original headers, published with a
//     Nats-Msg-Id (<durable>:<stream seq>) so a retried copy is stored once,
//     and only after the DLQ acknowledged the copy it is terminated. If the
//     copy fails the message is Nak'ed and tried again later.
//   - A body that is not valid canonical JSON never reaches the handler: it
//     is dead-lettered as permanent.
package subscribers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// Header names the runtime writes on dead-lettered copies.
const (
	HeaderError           = "Ubiqo-Error"
	HeaderAttempts        = "Ubiqo-Attempts"
	HeaderConsumer        = "Ubiqo-Consumer"
	HeaderOriginalSubject = "Ubiqo-Original-Subject"
	HeaderOriginalSeq     = "Ubiqo-Original-Seq"
)

// Config configures a Runtime. Zero values take the defaults named on each
// field; New validates the rest.
type Config struct {
	// Durable is the durable consumer name (persister, alerter,
	// forward-<target>). Required.
	Durable string
	// Description is shown by `nats consumer info`; default names the durable.
	Description string
	// Stream is the stream consumed; default "COORDS".
	Stream string
	// SubjectPrefix is the stream's subject prefix; the device token of a
	// message is its subject after SubjectPrefix + ".". Default "ubiqo.coords".
	SubjectPrefix string
	// FilterSubjects restricts the consumer; empty = every subject of the stream.
	FilterSubjects []string

	// AckWait is how long the server waits for a settlement before it
	// redelivers; default 30s. Long work calls Msg.InProgress.
	AckWait time.Duration
	// MaxDeliver: -1 (or 0) = retry retryable failures for ever; N > 0 = a
	// message whose N-th delivery fails retryably is dead-lettered. The limit
	// is enforced by the runtime; the server consumer is created with no
	// limit, so a message whose last delivery was lost with a crashed process
	// is delivered again and dead-lettered rather than dropped by the server.
	MaxDeliver int
	// MaxAckPending bounds the messages delivered and not yet settled, on the
	// server and, for AsyncHandler, in this process; default 10000.
	MaxAckPending int
	// Backoff is the NakWithDelay schedule: attempt n waits Backoff[n-1], the
	// last step repeating; default 1s,2s,5s,10s,30s,1m.
	Backoff []time.Duration

	// BatchSize is the most messages handed to a BatchHandler at once; also
	// sizes the pull requests; default 500.
	BatchSize int
	// BatchWait is the longest a partial batch waits for more messages
	// after its first one arrived; default 200ms.
	BatchWait time.Duration

	// DeliverPolicy is where a new durable starts: all (default), new, last,
	// last_per_subject, by_start_time (with StartTime) or by_start_sequence
	// (with StartSeq). The server cannot change it for an existing durable: to
	// replay from a time, use a new Durable name.
	DeliverPolicy jetstream.DeliverPolicy
	StartTime     time.Time
	StartSeq      uint64

	// DLQPrefix is the dead-letter subject prefix; default "ubiqo.dlq". The
	// DLQ stream itself is the caller's (stream.Ensure(ctx, js,
	// stream.DLQConfig(n)) at start); while it is missing, permanent failures
	// are retried instead of lost.
	DLQPrefix string

	// HTTPAddr, when set, is where /healthz, /readyz and /metrics are
	// served; New binds it (":0" picks a port, see Runtime.HTTPAddr).
	HTTPAddr string
	// Pprof also serves /debug/pprof on the HTTPAddr listener.
	Pprof bool
	// DrainTimeout bounds the graceful stop: finishing the in-flight batch or
	// waiting for unsettled async messages; default 20s.
	DrainTimeout time.Duration
	// LagInterval is how often the consumer's num_pending and
	// num_ack_pending are read from the server (and the consumer's existence
	// checked for /readyz); default 5s.
	LagInterval time.Duration
}

// JetStream is the role of the JetStream API the runtime uses;
// jetstream.JetStream satisfies it.
type JetStream interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
	PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error)
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
	Conn() *nats.Conn
}

// Msg is one coordinate message delivered to a handler. Handlers may read
// every field; they must not settle the message themselves (the runtime
// does, from the handler's outcome).
type Msg struct {
	// Coord is the decoded canonical coordinate.
	Coord coord.Coord
	// Data is the message body as stored in the stream.
	Data []byte
	// Subject is the message subject, <prefix>.<token>.
	Subject string
	// Header holds the message headers (Nats-Msg-Id, Ubiqo-Device, ...).
	Header nats.Header
	// MsgID is the Nats-Msg-Id header, or when absent the coordinate's own
	// deterministic id; it identifies the coordinate across redeliveries and
	// re-publications.
	MsgID string
	// StreamSeq is the message's sequence in the stream.
	StreamSeq uint64
	// NumDelivered is the delivery count, 1 on the first delivery.
	NumDelivered uint64
	// Timestamp is when the stream stored the message.
	Timestamp time.Time

	raw    jetstream.Msg
	prefix string
}

// InProgress tells the server the message is still being worked on, so it
// resets its ack-wait timer instead of redelivering. Call it from work that
// may take longer than AckWait.
func (m *Msg) InProgress() error {
	if m.raw == nil {
		return errors.New("subscribers: message has no server delivery")
	}
	if err := m.raw.InProgress(); err != nil {
		return fmt.Errorf("in progress seq %d: %w", m.StreamSeq, err)
	}
	return nil
}

// Token returns the device token of the subject (the subject after the
// stream's prefix), the part dead-letter subjects end with.
func (m *Msg) Token() string { return m.token(m.prefix) }

// BatchHandler handles messages a batch at a time.
type BatchHandler interface {
	// HandleBatch receives 1 to BatchSize messages in stream order and
	// returns their outcomes: nil when every message succeeded, or a slice
	// of exactly len(msgs) errors (nil, retryable or Permanent), index i for
	// msgs[i]; All builds one for a shared outcome. A slice of any other
	// length is a bug: every message is then retried. The runtime settles
	// the messages after HandleBatch returns. ctx is cancelled only when the
	// graceful stop's deadline passes, so a batch under way can commit.
	HandleBatch(ctx context.Context, msgs []*Msg) []error
}

// ConcurrentBatchHandler is a BatchHandler that may be called for several
// batches at once (each on its own goroutine, e.g. one database connection
// each). BatchConcurrency is read once at start; 1 (or less) means one batch
// at a time, the default for a plain BatchHandler. Batches are then settled
// in the order they finish, not in stream order.
type ConcurrentBatchHandler interface {
	BatchHandler
	BatchConcurrency() int
}

// BatchHandlerFunc adapts a function to BatchHandler.
type BatchHandlerFunc func(ctx context.Context, msgs []*Msg) []error

// HandleBatch calls f.
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, msgs []*Msg) []error {
	return f(ctx, msgs)
}

// All returns the outcome err for each of msgs; All(msgs, nil) is nil.
func All(msgs []*Msg, err error) []error {
	if err == nil {
		return nil
	}
	out := make([]error, len(msgs))
	for i := range out {
		out[i] = err
	}
	return out
}

// Settle settles one message with a handler outcome: nil, retryable or
// Permanent. The first call counts; later calls are ignored and report what
// the first did. Settle may be called from any goroutine and returns once
// the ack, nak or DLQ copy + term was sent.
//
// It reports whether the message is finished: acked, or copied to the DLQ
// and terminated. It is false when the message was nak'ed to come back (a
// retryable error, or a Permanent one whose DLQ copy failed): a handler that
// remembers what it settled must then treat the redelivery as new work, not
// as a stale copy. An ack that could not be sent still counts as finished
// (the work was done; its redelivery is a copy).
type Settle func(err error) (finished bool)

// AsyncHandler handles messages one at a time and settles each later.
type AsyncHandler interface {
	// HandleAsync receives each message, in stream order, from the
	// runtime's single dispatch goroutine, so it must not block: it hands the
	// message to its own goroutine or queue and returns. It must eventually
	// call settle exactly once for the message. At most MaxAckPending
	// messages are unsettled at a time: when that many are, dispatch waits
	// for a settlement; nothing else blocks other devices. While a message
	// is unsettled the runtime keeps it from being redelivered (InProgress
	// every AckWait/2), so holding a device's later messages behind an
	// earlier one is safe. ctx is cancelled when the graceful stop's
	// deadline passes.
	HandleAsync(ctx context.Context, m *Msg, settle Settle)
}

// AsyncHandlerFunc adapts a function to AsyncHandler.
type AsyncHandlerFunc func(ctx context.Context, m *Msg, settle Settle)

// HandleAsync calls f.
func (f AsyncHandlerFunc) HandleAsync(ctx context.Context, m *Msg, settle Settle) {
	f(ctx, m, settle)
}

// ReadyCheck reports whether a dependency of the subscriber (a database, a
// target) is usable; a non-nil error makes /readyz answer 503 with it.
type ReadyCheck func(ctx context.Context) error

// ErrDrainTimeout is returned by RunBatch and RunAsync when the graceful stop
// did not finish within DrainTimeout; unsettled messages are redelivered
// after AckWait.
var ErrDrainTimeout = errors.New("subscribers: drain deadline passed with messages unsettled")

// Runtime runs one durable consumer. Create it with New, register extra
// collectors and readiness checks, then call RunBatch or RunAsync once.
type Runtime struct {
	cfg Config
	js  JetStream
	log zerolog.Logger

	reg     *prometheus.Registry
	metrics *metrics
	health  *health
	ln      net.Listener
	running atomic.Bool
}

// New validates cfg (filling defaults), creates the runtime's metrics
// registry and, when cfg.HTTPAddr is set, binds the health and metrics
// listener (so a busy port fails here). It does not talk to the server.
func New(js JetStream, cfg Config, log zerolog.Logger) (*Runtime, error) {
	return newRuntime(js, cfg, log)
}

// Config returns the effective configuration, defaults filled.
func (r *Runtime) Config() Config { return r.cfg }

// Registerer is the runtime's own Prometheus registry (not the global
// default): a subscriber registers its collectors here and they are served on
// /metrics with the runtime's.
func (r *Runtime) Registerer() prometheus.Registerer { return r.reg }

// Gatherer is the runtime's registry, for tests and embedding.
func (r *Runtime) Gatherer() prometheus.Gatherer { return r.reg }

// AddReadyCheck adds a named check to /readyz and Ready. Call it before Run.
func (r *Runtime) AddReadyCheck(name string, check ReadyCheck) { r.health.add(name, check) }

// Ready reports nil when NATS is connected, the consumer exists (as last seen
// by the lag poller) and every ReadyCheck passes; otherwise an error naming
// what is not ready.
func (r *Runtime) Ready(ctx context.Context) error { return r.health.ready(ctx) }

// HTTPAddr is the bound address of the health and metrics listener, or nil
// when Config.HTTPAddr is empty.
func (r *Runtime) HTTPAddr() net.Addr {
	if r.ln == nil {
		return nil
	}
	return r.ln.Addr()
}

// Handler serves /healthz, /readyz and /metrics (what the listener serves).
func (r *Runtime) Handler() http.Handler { return r.health.handler(r.reg, r.cfg.Pprof) }

// RunBatch creates or updates the durable consumer, serves HTTP when
// configured, and feeds h batches until ctx is cancelled; then it stops
// fetching, finishes and settles the batch in flight and the messages already
// buffered, and returns nil (ErrDrainTimeout if that took longer than
// DrainTimeout). It returns an error at once when the consumer cannot be
// created or updated (the server's refusal named). Call it once.
func (r *Runtime) RunBatch(ctx context.Context, h BatchHandler) error {
	return r.run(ctx, batchLoop{h: h})
}

// RunAsync is RunBatch for an AsyncHandler: on ctx cancel it stops
// dispatching and waits (up to DrainTimeout) until every dispatched message
// was settled.
func (r *Runtime) RunAsync(ctx context.Context, h AsyncHandler) error {
	return r.run(ctx, &asyncLoop{h: h})
}

// Permanent marks err as permanent: the message can never succeed, so it is
// dead-lettered and terminated. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// RetryAfter marks err as retryable after d instead of the back-off
// schedule (e.g. an HTTP Retry-After). RetryAfter(nil, d) is nil.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &retryAfterError{err: err, delay: d}
}

// IsPermanent reports whether err, or an error it wraps, was marked Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// RetryDelay returns the delay given with RetryAfter, if any.
func RetryDelay(err error) (time.Duration, bool) {
	var r *retryAfterError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

type retryAfterError struct {
	err   error
	delay time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }
