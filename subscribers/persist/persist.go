// Package persist owns the persister: it stores every coordinate of the
// COORDS stream exactly once in SQLite or PostgreSQL. Each batch the
// subscriber runtime hands it is written in one transaction (PostgreSQL: COPY
// into a temporary staging table, then INSERT ... SELECT ... ON CONFLICT
// (msg_id) DO NOTHING; SQLite: prepared multi-row INSERT ... ON CONFLICT DO
// NOTHING), and acked only after the commit, so a redelivered or replayed
// message never makes a second row and a crash loses nothing.
//
// Outcomes: a database that cannot be reached, is busy, times out or aborts
// the transaction (serialization, deadlock) makes the whole batch retryable
// and turns readiness false until a write succeeds again; a row the database
// rejects for its content is found by writing the batch row by row and only
// that message is dead-lettered (Permanent).
package persist

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// Drivers accepted by Config.Driver.
const (
	DriverSQLite   = "sqlite"
	DriverPostgres = "postgres"
)

// Config configures the database side of the persister.
type Config struct {
	// Driver is "sqlite" or "postgres".
	Driver string
	// DSN is an SQLite file URI (file:./data/coords.db; the directory is
	// created) or a libpq URL / key=value string.
	DSN string
	// MaxConns is the PostgreSQL pool size; default 4.
	MaxConns int
	// WriteTimeout bounds one batch transaction; default 20s. Keep it below
	// the consumer's AckWait.
	WriteTimeout time.Duration
	// BusyTimeout is how long an SQLite write waits for another connection's
	// lock; default 5s.
	BusyTimeout time.Duration
	// SQLiteSynchronous is "full" (default: a commit, and so the ack that
	// follows it, survives a power cut) or "normal" (WAL still keeps the file
	// consistent, but the last commits before a power cut may be lost after
	// they were acked).
	SQLiteSynchronous string
}

func (c *Config) fill() error {
	switch c.Driver {
	case DriverSQLite, DriverPostgres:
	default:
		return fmt.Errorf("persist: driver %q: want sqlite or postgres", c.Driver)
	}
	if c.DSN == "" {
		return errors.New("persist: empty DSN")
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 4
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 20 * time.Second
	}
	if c.BusyTimeout <= 0 {
		c.BusyTimeout = 5 * time.Second
	}
	switch c.SQLiteSynchronous {
	case "":
		c.SQLiteSynchronous = "full"
	case "full", "normal":
	default:
		return fmt.Errorf("persist: sqlite synchronous %q: want full or normal", c.SQLiteSynchronous)
	}
	return nil
}

// store is one database. insert writes rows in one transaction and returns
// how many were new; every error it returns is classified by kind.
type store interface {
	migrate(ctx context.Context) error
	insert(ctx context.Context, rows []row) (inserted int, err error)
	ping(ctx context.Context) error
	// rejected reports whether err means the database refuses the content
	// of a row (so retrying the same rows can never succeed).
	rejected(err error) bool
	// transient reports whether err means the database is unreachable,
	// busy or aborted the transaction: worth retrying as it is.
	transient(err error) bool
	close()
}

// Persister is the batch handler of the persister subscriber.
type Persister struct {
	cfg     Config
	store   store
	log     zerolog.Logger
	metrics *metrics

	migrateMu sync.Mutex
	migrated  bool

	mu      sync.Mutex
	downErr error // the last write's failure while the database is unusable; nil once a write succeeds
}

// Open opens the database described by cfg (creating the SQLite directory)
// and applies the schema migrations. A database that cannot be reached yet is
// not an error: Open logs it and the migrations are applied by the first
// batch that gets through; an error from a reachable database (a bad
// migration, no permission) is returned.
func Open(ctx context.Context, cfg Config, log zerolog.Logger) (*Persister, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	var (
		s   store
		err error
	)
	switch cfg.Driver {
	case DriverSQLite:
		s, err = openSQLite(cfg)
	case DriverPostgres:
		s, err = openPostgres(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	p := &Persister{cfg: cfg, store: s, log: log, metrics: newMetrics()}
	if err := p.ensureMigrated(ctx); err != nil {
		if !s.transient(err) {
			s.close()
			return nil, err
		}
		p.noteDown(err)
	}
	return p, nil
}

// BatchConcurrency is how many batches the runtime may hand over at once:
// PostgreSQL writes several on their own connections (keeping one for the
// readiness ping); SQLite has one writer.
func (p *Persister) BatchConcurrency() int {
	if p.cfg.Driver != DriverPostgres {
		return 1
	}
	// Two writers overlap one batch's commit (fsync) with the next one's
	// COPY; more gave nothing on the 2-core reference machine.
	return max(1, min(p.cfg.MaxConns-1, 2))
}

// Close releases the database.
func (p *Persister) Close() { p.store.close() }

// Collectors are the persister's metrics, to register on the runtime's registry.
func (p *Persister) Collectors() []prometheus.Collector { return p.metrics.collectors() }

// Ready is the persister's readiness check: the database answers and the last
// write did not fail for want of it.
func (p *Persister) Ready(ctx context.Context) error {
	if err := p.store.ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.downErr != nil {
		return fmt.Errorf("database: last write failed: %w", p.downErr)
	}
	return nil
}

func (p *Persister) ensureMigrated(ctx context.Context) error {
	p.migrateMu.Lock()
	defer p.migrateMu.Unlock()
	if p.migrated {
		return nil
	}
	mctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
	defer cancel()
	if err := p.store.migrate(mctx); err != nil {
		return fmt.Errorf("migrate %s schema: %w", p.cfg.Driver, err)
	}
	p.migrated = true
	return nil
}

// HandleBatch writes msgs in one transaction and reports their outcomes:
// nil for all after the commit; the same retryable error for all when the
// database is unusable; when the database rejects the content of a row, the
// batch is written row by row and only the rejected messages are Permanent.
func (p *Persister) HandleBatch(ctx context.Context, msgs []*subscribers.Msg) []error {
	if err := p.ensureMigrated(ctx); err != nil {
		p.noteDown(err)
		return subscribers.All(msgs, err)
	}
	rows := make([]row, len(msgs))
	for i, m := range msgs {
		rows[i] = rowOf(m)
	}
	n, err := p.write(ctx, rows)
	if err == nil {
		p.noteUp()
		p.metrics.rows.WithLabelValues("inserted").Add(float64(n))
		p.metrics.rows.WithLabelValues("duplicate").Add(float64(len(rows) - n))
		return nil
	}
	if ctx.Err() != nil {
		// The runtime's drain deadline passed mid-write: not the database's
		// fault; the messages are redelivered.
		return subscribers.All(msgs, fmt.Errorf("write %d coordinates: %w", len(rows), err))
	}
	if !p.store.rejected(err) {
		p.noteDown(err)
		return subscribers.All(msgs, fmt.Errorf("write %d coordinates: %w", len(rows), err))
	}
	return p.writeEach(ctx, msgs, rows, err)
}

func (p *Persister) write(ctx context.Context, rows []row) (int, error) {
	wctx, cancel := context.WithTimeout(ctx, p.cfg.WriteTimeout)
	defer cancel()
	start := time.Now()
	n, err := p.store.insert(wctx, rows)
	p.metrics.writeSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		kind := "unavailable"
		if p.store.rejected(err) {
			kind = "rejected"
		}
		p.metrics.writeErrors.WithLabelValues(kind).Inc()
	}
	return n, err
}

// writeEach isolates the rows the database refuses: each row in its own
// transaction. It is the slow path of a rare event.
func (p *Persister) writeEach(ctx context.Context, msgs []*subscribers.Msg, rows []row, batchErr error) []error {
	p.log.Warn().Err(batchErr).Int("rows", len(rows)).Msg("database rejected a batch; writing it row by row to find the bad rows")
	out := make([]error, len(rows))
	for i := range rows {
		n, err := p.write(ctx, rows[i:i+1])
		switch {
		case err == nil:
			p.metrics.rows.WithLabelValues("inserted").Add(float64(n))
			p.metrics.rows.WithLabelValues("duplicate").Add(float64(1 - n))
		case p.store.rejected(err):
			out[i] = subscribers.Permanent(fmt.Errorf("database rejected coordinate %s: %w", msgs[i].MsgID, err))
			p.metrics.rows.WithLabelValues("rejected").Inc()
		default:
			p.noteDown(err)
			for j := i; j < len(rows); j++ {
				out[j] = fmt.Errorf("write coordinate: %w", err)
			}
			return out
		}
	}
	p.noteUp()
	return out
}

// noteDown records that the database is unusable; the state change is
// logged once (each failed batch is logged by the runtime).
func (p *Persister) noteDown(err error) {
	p.mu.Lock()
	was := p.downErr
	p.downErr = err
	p.mu.Unlock()
	p.metrics.up.Set(0)
	if was == nil {
		p.log.Error().Err(err).Str("driver", p.cfg.Driver).Msg("database unavailable: nothing is acked, batches are retried with back-off")
	}
}

func (p *Persister) noteUp() {
	p.mu.Lock()
	was := p.downErr
	p.downErr = nil
	p.mu.Unlock()
	p.metrics.up.Set(1)
	if was != nil {
		p.log.Info().Str("driver", p.cfg.Driver).Msg("database available again")
	}
}

type metrics struct {
	up           prometheus.Gauge
	rows         *prometheus.CounterVec
	writeErrors  *prometheus.CounterVec
	writeSeconds prometheus.Histogram
}

func newMetrics() *metrics {
	m := &metrics{
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ubiqo_persist_db_up",
			Help: "1 when the last database write succeeded, 0 while the database is unusable.",
		}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_persist_rows_total",
			Help: "Coordinates written, by result: inserted, duplicate (already stored: redelivery or replay) or rejected (dead-lettered).",
		}, []string{"result"}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ubiqo_persist_write_errors_total",
			Help: "Failed batch transactions, by kind: unavailable (retried) or rejected (row content refused).",
		}, []string{"kind"}),
		writeSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ubiqo_persist_write_duration_seconds",
			Help:    "Time of one batch transaction, commit included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	m.up.Set(1)
	for _, r := range []string{"inserted", "duplicate", "rejected"} {
		m.rows.WithLabelValues(r)
	}
	for _, k := range []string{"unavailable", "rejected"} {
		m.writeErrors.WithLabelValues(k)
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.up, m.rows, m.writeErrors, m.writeSeconds}
}

// Run is the persister: it opens the database, then consumes with rt until
// ctx is cancelled. rt's readiness includes the database.
func Run(ctx context.Context, rt *subscribers.Runtime, cfg Config, log zerolog.Logger) error {
	p, err := Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer p.Close()
	for _, c := range p.Collectors() {
		if err := rt.Registerer().Register(c); err != nil {
			return fmt.Errorf("persist: register metrics: %w", err)
		}
	}
	rt.AddReadyCheck("database", p.Ready)
	return rt.RunBatch(ctx, p)
}
