package alert

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// Defaults of Config.
const (
	DefaultDurable      = "alerter"
	DefaultScanInterval = 30 * time.Second
	DefaultTimeout      = 5 * time.Second
)

// kvReaders bounds the DEVICES reads in flight at once (devices not
// cached, reloads after a conflict).
const kvReaders = 32

// Config configures an Alerter. Zero values take the defaults named.
type Config struct {
	// Rules are the compiled rules (LoadRules). Required.
	Rules *Rules
	// Consumer configures the durable consumer on COORDS; Durable defaults
	// to "alerter". Replay sets its own durable and start time.
	Consumer subscribers.Config
	// Coords, when set, is ensured (created or updated) at start like the
	// bridge does, so the alerter can start first.
	Coords *jetstream.StreamConfig
	// ManageStreams creates or updates ALERTS, DLQ and the DEVICES bucket
	// at start; when false they must exist.
	ManageStreams bool
	// Replicas of ALERTS, DLQ and DEVICES when they are created; default 1.
	Replicas int
	// ScanInterval is how often devices are checked for offline rules;
	// default 30s.
	ScanInterval time.Duration
	// Timeout bounds each KV read or write and each ALERTS publish;
	// default 5s.
	Timeout time.Duration
	// Notify configures the webhook and Slack notifiers.
	Notify NotifyConfig
	// LogAlerts logs every new alert (the log notifier) at info level.
	LogAlerts bool
}

func (c *Config) fill() error {
	if c.Rules == nil {
		return errors.New("alert: config: no rules")
	}
	if c.Consumer.Durable == "" {
		c.Consumer.Durable = DefaultDurable
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.ScanInterval <= 0 {
		c.ScanInterval = DefaultScanInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	return c.Notify.fill()
}

// JetStream is the part of the JetStream API the alerter uses;
// jetstream.JetStream satisfies it.
type JetStream interface {
	subscribers.JetStream
	stream.StreamManager
	CreateOrUpdateKeyValue(ctx context.Context, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error)
	KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error)
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
	Consumer(ctx context.Context, stream, consumer string) (jetstream.Consumer, error)
	DeleteConsumer(ctx context.Context, stream, consumer string) error
}

// Alerter consumes COORDS, evaluates the rules, keeps device state in KV
// DEVICES, publishes alerts to ALERTS, scans for offline devices and runs
// the notifiers. Several alerters may share one durable: they agree through
// compare-and-set on DEVICES and the deterministic alert ids.
type Alerter struct {
	cfg    Config
	js     JetStream
	log    zerolog.Logger
	rt     *subscribers.Runtime
	engine *Engine
	proc   *processor
	m      *metrics

	// lag is the consume loop's distance behind the stream (stored time of
	// the last message handled), for the offline scan's clock.
	lastBatchAt atomic.Int64 // unix nanos
	lastLag     atomic.Int64 // nanoseconds

	client *http.Client
}

// New validates cfg and prepares an alerter; the subscriber runtime binds
// its health and metrics listener here when Consumer.HTTPAddr is set. It does
// not talk to the server.
func New(js JetStream, cfg Config, log zerolog.Logger) (*Alerter, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	rt, err := subscribers.New(js, cfg.Consumer, log)
	if err != nil {
		return nil, err
	}
	a := &Alerter{cfg: cfg, js: js, log: log, rt: rt, engine: NewEngine(cfg.Rules)}
	c := newCache()
	a.m = newMetrics(rt.Registerer(), func() float64 { return float64(c.len()) })
	a.proc = &processor{
		engine: a.engine, pub: js, prefix: stream.AlertsSubjectPrefix, bucket: "$KV." + stream.DevicesBucket + ".",
		timeout: cfg.Timeout, workers: kvReaders, cache: c, log: log, m: a.m,
	}
	if cfg.LogAlerts {
		a.proc.onAlert = func(al *Alert) {
			a.log.Info().Str("alert_id", al.ID).Str("kind", al.Kind).Str("rule", al.Rule).Str("device_id", al.DeviceID).
				Time("ts", al.TS).Float64("lat", al.Lat).Float64("lon", al.Lon).Msg(al.Message)
		}
	}
	a.client = &http.Client{Timeout: cfg.Notify.Timeout}
	return a, nil
}

// Runtime is the subscriber runtime running the COORDS consumer (health,
// metrics, readiness).
func (a *Alerter) Runtime() *subscribers.Runtime { return a.rt }

// Run sets up the topology (ALERTS, DLQ, DEVICES; see Config.ManageStreams),
// loads the device states, starts the notifiers, the offline scan and the
// consume loop, and runs until ctx is cancelled; then it drains the consume
// loop and stops. It returns an error when setup fails or a part stops with
// one.
func (a *Alerter) Run(ctx context.Context) error {
	kv, err := a.setup(ctx)
	if err != nil {
		return err
	}
	a.proc.kv = kv
	n, err := a.warm(ctx)
	if err != nil {
		return err
	}
	a.proc.warmed = true
	loops, err := a.notifiers(ctx)
	if err != nil {
		return err
	}
	a.log.Info().Int("rules", a.cfg.Rules.Len()).Interface("by_type", a.cfg.Rules.Counts()).Int("devices", n).
		Int("notifiers", len(loops)).Str("durable", a.cfg.Consumer.Durable).Msg("alerter started")

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := a.rt.RunBatch(gctx, subscribers.BatchHandlerFunc(a.HandleBatch))
		if err != nil {
			return fmt.Errorf("consume %s: %w", a.cfg.Consumer.Durable, err)
		}
		return nil
	})
	g.Go(func() error { return a.scanLoop(gctx) })
	for _, l := range loops {
		g.Go(func() error { return l.run(gctx) })
	}
	return g.Wait()
}

// setup ensures the streams and the bucket and returns the bucket.
func (a *Alerter) setup(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := a.ensure(ctx)
	if err != nil {
		return nil, err
	}
	alerts, err := a.js.Stream(ctx, stream.AlertsStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", stream.AlertsStream, err)
	}
	a.proc.alerts = alerts
	kvStream, err := a.js.Stream(ctx, "KV_"+stream.DevicesBucket)
	if err != nil {
		return nil, fmt.Errorf("stream KV_%s: %w", stream.DevicesBucket, err)
	}
	a.proc.kvStream = kvStream
	return kv, nil
}

func (a *Alerter) ensure(ctx context.Context) (jetstream.KeyValue, error) {
	if a.cfg.Coords != nil {
		if _, err := stream.Ensure(ctx, a.js, *a.cfg.Coords); err != nil {
			return nil, err
		}
	}
	if !a.cfg.ManageStreams {
		for _, name := range []string{stream.AlertsStream, stream.DLQStream} {
			if _, err := a.js.Stream(ctx, name); err != nil {
				return nil, fmt.Errorf("stream %s: %w (stream.manage is false: create it, or let the alerter manage it)", name, err)
			}
		}
		kv, err := a.js.KeyValue(ctx, stream.DevicesBucket)
		if err != nil {
			return nil, fmt.Errorf("KV bucket %s: %w (stream.manage is false: create it, or let the alerter manage it)", stream.DevicesBucket, err)
		}
		return kv, nil
	}
	for _, sc := range []jetstream.StreamConfig{stream.AlertsConfig(a.cfg.Replicas), stream.DLQConfig(a.cfg.Replicas)} {
		if _, err := stream.Ensure(ctx, a.js, sc); err != nil {
			return nil, err
		}
	}
	kv, err := a.js.CreateOrUpdateKeyValue(ctx, DevicesConfig(a.cfg.Replicas))
	if err != nil {
		return nil, fmt.Errorf("KV bucket %s: %w", stream.DevicesBucket, err)
	}
	return kv, nil
}

// DevicesConfig is the DEVICES bucket: one key per device token holding the
// alerter's State, latest value only.
//
// TODO(lead): move to bridge/stream/topology.go next to AlertsConfig.
func DevicesConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      stream.DevicesBucket,
		Description: "Per device: last fix and the alerter's state (ubiqo-bridge)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    replicas,
		// Not compressed: written on every fix, small values, one per key.
	}
}

// warm loads every stored device state into the cache, so the offline scan
// covers devices that are silent since before the start.
func (a *Alerter) warm(ctx context.Context) (int, error) {
	w, err := a.proc.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return 0, fmt.Errorf("load device states: %w", err)
	}
	defer func() { _ = w.Stop() }()
	n := 0
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	for {
		select {
		case kve := <-w.Updates():
			if kve == nil {
				return n, nil // initial values done
			}
			e := a.proc.cache.get(kve.Key())
			e.mu.Lock()
			if !e.loaded || kve.Revision() > e.rev {
				e.st, e.rev, e.loaded = a.proc.decode(kve.Key(), "", kve.Value()), kve.Revision(), true
				e.verify = len(e.st.Pending) > 0
			}
			e.mu.Unlock()
			n++
		case <-timeout.C:
			return n, fmt.Errorf("load device states: no end of initial values after 1m (%d read)", n)
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}

func (a *Alerter) notifiers(ctx context.Context) ([]*notifyLoop, error) {
	var ns []notifier
	if a.cfg.Notify.WebhookURL != "" {
		ns = append(ns, &webhook{url: a.cfg.Notify.WebhookURL, client: a.client})
	}
	if a.cfg.Notify.SlackURL != "" {
		ns = append(ns, &slack{url: a.cfg.Notify.SlackURL, client: a.client})
	}
	var loops []*notifyLoop
	for _, n := range ns {
		l, err := newNotifyLoop(ctx, a.js, a.cfg.Consumer.Durable+"-notify-"+n.name(), n, a.cfg.Notify, a.log, a.m)
		if err != nil {
			return nil, err
		}
		loops = append(loops, l)
	}
	return loops, nil
}

// HandleBatch is the consume loop's handler: fixes are grouped by device
// (each device's fixes in stream order) and the devices processed together
// (see processor: evaluation on all cores, one pipelined round of state
// writes, one of alert publishes). A fix that fails Validate is permanent
// (DLQ); the fixes of a device whose state or alerts could not be made
// durable are retried.
func (a *Alerter) HandleBatch(ctx context.Context, msgs []*subscribers.Msg) []error {
	var errs []error
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, len(msgs))
		}
		errs[i] = err
	}
	type group struct {
		job
		idx            []int
		applied, stale int
	}
	byToken := make(map[string]*group, len(msgs))
	var groups []*group
	for i, m := range msgs {
		if err := m.Coord.Validate(); err != nil {
			fail(i, subscribers.Permanent(fmt.Errorf("invalid coordinate: %w", err)))
			continue
		}
		tok := string(coord.AppendToken(nil, m.Coord.DeviceID))
		g := byToken[tok]
		if g == nil {
			g = &group{job: job{token: tok, deviceID: m.Coord.DeviceID}}
			byToken[tok] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	jobs := make([]*job, len(groups))
	for k, g := range groups {
		g.fn = func(st *State) ([]Alert, bool) {
			var out []Alert
			changed := false
			g.applied, g.stale = 0, 0
			for _, i := range g.idx {
				c := &msgs[i].Coord
				if Stale(st, c) {
					g.stale++
				} else {
					g.applied++
				}
				var ch bool
				out, ch = a.engine.Apply(out, st, c)
				changed = changed || ch
			}
			return out, changed
		}
		jobs[k] = &g.job
	}
	a.proc.run(ctx, jobs)
	applied, stale := 0, 0
	for _, g := range groups {
		applied, stale = applied+g.applied, stale+g.stale
		if g.err != nil {
			for _, i := range g.idx {
				fail(i, g.err)
			}
		}
	}
	a.m.fixes.WithLabelValues("applied").Add(float64(applied))
	a.m.fixes.WithLabelValues("stale").Add(float64(stale))
	if last := msgs[len(msgs)-1]; !last.Timestamp.IsZero() {
		a.lastLag.Store(int64(time.Since(last.Timestamp)))
		a.lastBatchAt.Store(time.Now().UnixNano())
	}
	return errs
}

// scanClock is the time the offline scan compares fix times with: now,
// minus how far the consume loop is behind the stream while it works
// through a backlog (so a device is not reported offline only because its
// fixes wait unread in COORDS).
func (a *Alerter) scanClock(now time.Time) time.Time {
	at := a.lastBatchAt.Load()
	if at == 0 || now.Sub(time.Unix(0, at)) > 5*time.Second {
		return now // idle: nothing waits unread
	}
	if lag := time.Duration(a.lastLag.Load()); lag > time.Second {
		return now.Add(-lag)
	}
	return now
}

func (a *Alerter) scanLoop(ctx context.Context) error {
	t := time.NewTicker(a.cfg.ScanInterval)
	defer t.Stop()
	lastDiscover := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			// Devices another instance created since the start; at most
			// once a minute (a key listing).
			if now.Sub(lastDiscover) >= max(a.cfg.ScanInterval, time.Minute) {
				a.discover(ctx)
				lastDiscover = now
			}
			a.scan(ctx, a.scanClock(now))
		}
	}
}

// scan raises the offline alerts due at clock. The devices whose cached
// state looks due go through the processor (up to scanBatch at a time), so
// a stale cache (the device's fixes went to another instance) loses
// compare-and-set, reloads and finds nothing due.
func (a *Alerter) scan(ctx context.Context, clock time.Time) {
	a.m.scans.Inc()
	var due []*job
	flush := func() {
		if len(due) == 0 {
			return
		}
		a.proc.run(ctx, due)
		for _, j := range due {
			if j.err != nil && ctx.Err() == nil {
				a.log.Warn().Err(j.err).Str("key", j.token).Msg("offline scan: device not updated; the next scan retries")
			}
		}
		due = due[:0]
	}
	for _, tok := range a.proc.cache.tokens() {
		if ctx.Err() != nil {
			return
		}
		e := a.proc.cache.get(tok)
		e.mu.Lock()
		var next time.Time
		var id string
		if e.st != nil {
			next, id = a.engine.NextOffline(e.st), e.st.DeviceID
		}
		e.mu.Unlock()
		if next.IsZero() || !clock.After(next) {
			continue
		}
		due = append(due, &job{token: tok, deviceID: id, fn: func(st *State) ([]Alert, bool) {
			out := a.engine.Scan(nil, st, clock)
			return out, len(out) > 0
		}})
		if len(due) == scanBatch {
			flush()
		}
	}
	flush()
}

// scanBatch is how many due devices the offline scan writes at once.
const scanBatch = 500

// discover adds to the cache the devices stored in DEVICES that it lacks.
func (a *Alerter) discover(ctx context.Context) {
	lister, err := a.proc.kv.ListKeys(ctx)
	if err != nil {
		a.log.Warn().Err(err).Msg("list device states")
		return
	}
	var fresh []string
	for k := range lister.Keys() {
		if !a.proc.cache.has(k) {
			fresh = append(fresh, k)
		}
	}
	_ = lister.Stop()
	for _, k := range fresh {
		id, err := coord.ParseToken(k)
		if err != nil {
			continue
		}
		e := a.proc.cache.get(k)
		e.mu.Lock()
		if err := a.proc.load(ctx, k, id, e); err != nil {
			a.log.Warn().Err(err).Str("key", k).Msg("load device state")
		}
		e.mu.Unlock()
	}
}
