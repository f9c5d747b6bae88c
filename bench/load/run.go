package load

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Runner defaults, used where a Config field is zero.
const (
	DefaultConnections   = 64
	DefaultTimeout       = 10 * time.Second
	DefaultProgressEvery = time.Second
	DefaultGrace         = 2 * time.Second
)

// lateAfter is how far behind its intended time a send counts as late.
const lateAfter = time.Millisecond

// Config describes a load run.
type Config struct {
	// URL is the webhook, http:// or https://.
	URL string
	// Token, when set, is sent as Authorization: Bearer.
	Token string
	// Method is POST (default: a JSON body) or GET (one coordinate as
	// query parameters).
	Method string
	// Batch is the number of coordinates in one POST: 1 (default) sends a
	// JSON object, more a JSON array. GET takes 1.
	Batch int
	// Rate is the total requests per second, sent open loop: request i is
	// due at start + i/Rate whether or not earlier ones were answered, and
	// its latency counts from that intended time, so a stalled server shows
	// in the percentiles even though only Connections requests are in
	// flight. 0 runs closed loop: each connection sends its next request as
	// soon as the previous one is answered.
	Rate float64
	// Connections is the number of keep-alive connections, and so the most
	// requests in flight; 0 means DefaultConnections.
	Connections int
	// Duration and Count end the run, whichever comes first; with neither
	// it runs until ctx is cancelled. Open loop, Duration bounds the
	// intended send times.
	Duration time.Duration
	Count    int64
	// Timeout bounds one request, connecting included; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Fleet makes the coordinates; nil means NewFleet(FleetConfig{}).
	Fleet *Fleet
	// Progress, when set, is called every ProgressEvery (default 1s) from
	// the goroutine that called Run; it should return quickly.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Grace is how long requests in flight may finish after ctx is
	// cancelled before their connections are closed; 0 means DefaultGrace.
	Grace time.Duration
	// TLS configures https targets; nil means the system roots.
	TLS *tls.Config
}

// Progress is a snapshot of a run, handed to Config.Progress.
type Progress struct {
	Elapsed  time.Duration
	Sent     int64
	Answered int64
	Errors   int64
	// Status counts the answers by HTTP status so far.
	Status   map[int]int64
	Accepted int64
	Spooled  int64
	// Rate is the answers per second, and P99 the 99th percentile latency,
	// over the last interval.
	Rate float64
	P99  time.Duration
}

// Run sends the load cfg describes and returns what it measured. It returns
// an error only for a bad Config; failed requests are counted in the
// Summary. Cancelling ctx ends the run early: no new request is sent,
// requests in flight get cfg.Grace to finish, and the Summary (Interrupted
// set) covers what was sent.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return Summary{}, err
	}
	return r.run(ctx), nil
}

type runner struct {
	cfg    Config
	t      *target
	fleet  *Fleet
	get    bool
	open   bool    // fixed rate
	period float64 // ns between intended sends, open loop

	start   time.Time
	end     time.Time // zero: no duration
	tickets atomic.Int64
	stopped atomic.Bool
	workers []*worker

	// abortCtx ends dials in progress once the grace period is over.
	abortCtx context.Context
	abort    context.CancelFunc
}

func newRunner(cfg Config) (*runner, error) {
	if cfg.Method == "" {
		cfg.Method = "POST"
	}
	if cfg.Batch == 0 {
		cfg.Batch = 1
	}
	if cfg.Connections == 0 {
		cfg.Connections = DefaultConnections
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ProgressEvery == 0 {
		cfg.ProgressEvery = DefaultProgressEvery
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	var errs []error
	if cfg.Method != "POST" && cfg.Method != "GET" {
		errs = append(errs, fmt.Errorf("method %q: want POST or GET", cfg.Method))
	}
	if cfg.Batch < 1 || cfg.Batch > 100_000 {
		errs = append(errs, fmt.Errorf("batch %d: want 1 to 100000", cfg.Batch))
	} else if cfg.Method == "GET" && cfg.Batch != 1 {
		errs = append(errs, fmt.Errorf("batch %d: GET sends one coordinate per request", cfg.Batch))
	}
	if !(cfg.Rate >= 0) || math.IsInf(cfg.Rate, 0) {
		errs = append(errs, fmt.Errorf("rate %v: want 0 (as fast as possible) or a positive number of requests per second", cfg.Rate))
	}
	if cfg.Connections < 1 || cfg.Connections > 100_000 {
		errs = append(errs, fmt.Errorf("connections %d: want 1 to 100000", cfg.Connections))
	}
	if cfg.Duration < 0 || cfg.Count < 0 {
		errs = append(errs, errors.New("duration and count must not be negative"))
	}
	if cfg.Timeout < 0 || cfg.ProgressEvery < 0 || cfg.Grace < 0 {
		errs = append(errs, errors.New("timeout, progress interval and grace must not be negative"))
	}
	t, err := newTarget(cfg.URL, cfg.Token, cfg.TLS)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("load: %w", errors.Join(errs...))
	}
	fleet := cfg.Fleet
	if fleet == nil {
		if fleet, err = NewFleet(FleetConfig{}); err != nil {
			return nil, err
		}
	}
	r := &runner{cfg: cfg, t: t, fleet: fleet, get: cfg.Method == "GET", open: cfg.Rate > 0}
	if r.open {
		r.period = 1e9 / cfg.Rate
	}
	return r, nil
}

func (r *runner) run(ctx context.Context) Summary {
	r.abortCtx, r.abort = context.WithCancel(context.Background())
	defer r.abort()
	r.workers = make([]*worker, r.cfg.Connections)
	for i := range r.workers {
		r.workers[i] = newWorker(r)
	}
	col := newCollector(r)
	r.start = time.Now()
	if r.cfg.Duration > 0 {
		r.end = r.start.Add(r.cfg.Duration)
	}

	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Go(func() { w.run(ctx) })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	tick := time.NewTicker(r.cfg.ProgressEvery)
	defer tick.Stop()
	var graceOver <-chan time.Time
	interrupted := false
	ctxDone := ctx.Done()
loop:
	for {
		select {
		case <-done:
			break loop
		case <-ctxDone:
			ctxDone = nil
			interrupted = true
			r.stopped.Store(true)
			graceOver = time.After(r.cfg.Grace)
		case <-graceOver:
			r.abort()
			for _, w := range r.workers {
				w.conn.abort()
			}
		case <-tick.C:
			p := col.collect()
			if r.cfg.Progress != nil {
				r.cfg.Progress(p)
			}
		}
	}
	elapsed := time.Since(r.start)
	for _, w := range r.workers {
		w.conn.drop()
	}
	col.collect()
	return col.summary(elapsed, interrupted)
}

// worker owns one connection and sends requests on it one at a time.
type worker struct {
	r     *runner
	conn  conn
	req   []byte // the whole request, reused
	body  []byte // the JSON body, reused
	ans   answer
	timer *time.Timer

	mu sync.Mutex // guards st against the collector
	st stats
}

func newWorker(r *runner) *worker {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &worker{r: r, conn: conn{t: r.t}, timer: t, st: newStats()}
}

func (w *worker) run(ctx context.Context) {
	r := w.r
	for !r.stopped.Load() {
		i := r.tickets.Add(1) - 1
		if r.cfg.Count > 0 && i >= r.cfg.Count {
			return
		}
		var intended time.Time
		if r.open {
			intended = r.start.Add(time.Duration(float64(i) * r.period))
			if !r.end.IsZero() && !intended.Before(r.end) {
				return
			}
		} else if !r.end.IsZero() && !time.Now().Before(r.end) {
			return
		}
		coords := w.build()
		if r.open && !w.sleepUntil(ctx, intended) {
			return
		}
		sent := time.Now()
		if r.open && !r.end.IsZero() && !sent.Before(r.end) {
			// Due before the end but every connection was busy until
			// then: the run is over, the request is counted as missed.
			return
		}
		if !r.open {
			intended = sent
		}
		err := w.conn.roundTrip(r.abortCtx, w.req, sent.Add(r.cfg.Timeout), &w.ans)
		done := time.Now()
		w.record(coords, intended, sent, done, err)
		if err != nil && !r.open && isDialError(err) {
			// Closed loop against a server that refuses connections would
			// spin; pace the retries a little.
			if !w.sleepUntil(ctx, done.Add(10*time.Millisecond)) {
				return
			}
		}
	}
}

// build writes the next request into w.req and returns its coordinate count.
func (w *worker) build() int {
	r := w.r
	if r.get {
		fx := r.fleet.Next()
		w.req = append(w.req[:0], r.t.getPrefix...)
		w.req = fx.AppendQuery(w.req)
		w.req = append(w.req, r.t.getTail...)
		return 1
	}
	n := r.cfg.Batch
	if n == 1 {
		fx := r.fleet.Next()
		w.body = fx.AppendJSON(w.body[:0])
	} else {
		w.body = append(w.body[:0], '[')
		for j := 0; j < n; j++ {
			if j > 0 {
				w.body = append(w.body, ',')
			}
			fx := r.fleet.Next()
			w.body = fx.AppendJSON(w.body)
		}
		w.body = append(w.body, ']')
	}
	w.req = append(w.req[:0], r.t.postHead...)
	w.req = strconv.AppendInt(w.req, int64(len(w.body)), 10)
	w.req = append(w.req, "\r\n\r\n"...)
	w.req = append(w.req, w.body...)
	return n
}

// sleepUntil waits for t; false when ctx ended first.
func (w *worker) sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	w.timer.Reset(d)
	select {
	case <-w.timer.C:
		return true
	case <-ctx.Done():
		w.timer.Stop()
		return false
	}
}

func (w *worker) record(coords int, intended, sent, done time.Time, err error) {
	var c counts
	if err == nil {
		c = parseCounts(w.ans.body)
	}
	lat := done.Sub(intended)
	lag := sent.Sub(intended)
	w.mu.Lock()
	defer w.mu.Unlock()
	s := &w.st
	s.sent++
	s.coords += int64(coords)
	if w.r.open {
		if lag > lateAfter {
			s.late++
		}
		s.maxLag = max(s.maxLag, lag)
	}
	if err != nil {
		s.errors++
		s.errs[errorKind(err)]++
		return
	}
	s.answered++
	s.status[w.ans.status]++
	s.record(lat)
	switch st := w.ans.status; {
	case st >= 200 && st < 300:
		s.coords2xx += int64(coords)
		if c.ok {
			s.accepted += c.accepted
			s.duplicates += c.duplicates
			s.spooled += c.spooled
			s.rejected += max(0, int64(coords)-c.accepted-c.duplicates-c.spooled)
		}
	case st == 422:
		s.rejected += int64(coords)
	}
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// errorKind names a transport error for the summary, without addresses.
func errorKind(err error) string {
	var dns *net.DNSError
	switch {
	case errors.Is(err, errAborted), errors.Is(err, net.ErrClosed), errors.Is(err, context.Canceled):
		return "aborted at interrupt"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return "no local port available"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by server"
	case errors.As(err, &dns):
		return "dns: " + dns.Err
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// counts are the numbers of a bridge answer.
type counts struct {
	accepted, duplicates, spooled int64
	ok                            bool // the answer had "accepted" or "spooled"
}

// parseCounts reads "accepted", "duplicates" and "spooled" from a JSON
// answer without decoding it. A key cannot match inside a JSON string: there
// its closing quote would be escaped.
func parseCounts(body []byte) counts {
	var c counts
	var ok1, ok2 bool
	c.accepted, ok1 = jsonInt(body, keyAccepted)
	c.duplicates, _ = jsonInt(body, keyDuplicates)
	c.spooled, ok2 = jsonInt(body, keySpooled)
	c.ok = ok1 || ok2
	return c
}

var (
	keyAccepted   = []byte(`"accepted":`)
	keyDuplicates = []byte(`"duplicates":`)
	keySpooled    = []byte(`"spooled":`)
)

func jsonInt(body, key []byte) (int64, bool) {
	i := bytes.Index(body, key)
	if i < 0 {
		return 0, false
	}
	j := i + len(key)
	for j < len(body) && (body[j] == ' ' || body[j] == '\t' || body[j] == '\n' || body[j] == '\r') {
		j++
	}
	var n int64
	k := j
	for k < len(body) && body[k] >= '0' && body[k] <= '9' {
		n = n*10 + int64(body[k]-'0')
		k++
	}
	return n, k > j
}

// Histogram range: 1 µs to 10 min at 3 significant digits; longer
// latencies are recorded as 10 min, the exact maximum is kept aside.
const (
	histLowest  = 1
	histHighest = int64(10 * time.Minute / time.Microsecond)
	histSigFigs = 3
)

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(histLowest, histHighest, histSigFigs)
}

// stats are counters a worker adds to and the collector takes.
type stats struct {
	sent, answered, errors                  int64
	coords, coords2xx                       int64
	accepted, duplicates, rejected, spooled int64
	late                                    int64
	maxLag, maxLat                          time.Duration
	status                                  map[int]int64
	errs                                    map[string]int64
	hist                                    *hdrhistogram.Histogram
}

func newStats() stats {
	return stats{status: map[int]int64{}, errs: map[string]int64{}, hist: newHist()}
}

func (s *stats) record(lat time.Duration) {
	s.maxLat = max(s.maxLat, lat)
	us := min(max(int64(lat/time.Microsecond), histLowest), histHighest)
	_ = s.hist.RecordValue(us)
}

// add moves the counts of o into s and resets o.
func (s *stats) add(o *stats) {
	s.sent += o.sent
	s.answered += o.answered
	s.errors += o.errors
	s.coords += o.coords
	s.coords2xx += o.coords2xx
	s.accepted += o.accepted
	s.duplicates += o.duplicates
	s.rejected += o.rejected
	s.spooled += o.spooled
	s.late += o.late
	s.maxLag = max(s.maxLag, o.maxLag)
	s.maxLat = max(s.maxLat, o.maxLat)
	for k, v := range o.status {
		s.status[k] += v
	}
	for k, v := range o.errs {
		s.errs[k] += v
	}
	s.hist.Merge(o.hist)
	hist := o.hist
	hist.Reset()
	clear(o.status)
	clear(o.errs)
	*o = stats{status: o.status, errs: o.errs, hist: hist}
}

// collector gathers the workers' stats each interval into the totals.
type collector struct {
	r        *runner
	total    stats
	interval stats
	last     time.Time
}

func newCollector(r *runner) *collector {
	return &collector{r: r, total: newStats(), interval: newStats()}
}

func (c *collector) collect() Progress {
	for _, w := range c.r.workers {
		w.mu.Lock()
		c.interval.add(&w.st)
		w.mu.Unlock()
	}
	now := time.Now()
	since := c.last
	if since.IsZero() {
		since = c.r.start
	}
	c.last = now
	iv := &c.interval
	p := Progress{Rate: float64(iv.answered) / now.Sub(since).Seconds()}
	if iv.hist.TotalCount() > 0 {
		p.P99 = min(time.Duration(iv.hist.ValueAtQuantile(99))*time.Microsecond, iv.maxLat)
	}
	c.total.add(iv)
	t := &c.total
	p.Elapsed = now.Sub(c.r.start)
	p.Sent, p.Answered, p.Errors = t.sent, t.answered, t.errors
	p.Accepted, p.Spooled = t.accepted, t.spooled
	p.Status = make(map[int]int64, len(t.status))
	for k, v := range t.status {
		p.Status[k] = v
	}
	return p
}
