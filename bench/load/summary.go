package load

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// Summary is what a run sent and measured.
type Summary struct {
	// The run: URL without query or credentials; Rate 0 = closed loop.
	URL         string
	Method      string
	Batch       int
	Rate        float64
	Connections int
	Devices     int
	Started     time.Time
	// Elapsed runs from the start to the last answer.
	Elapsed time.Duration
	// Interrupted: the context was cancelled before the run's end.
	Interrupted bool

	// Sent = Answered + Errors. Errors are requests without an HTTP
	// answer (refused, reset, timed out), by kind in ErrorKinds.
	Sent, Answered, Errors int64
	Status                 map[int]int64
	ErrorKinds             map[string]int64

	// Coordinates is how many the requests sent carried; CoordinatesOK
	// those in requests answered 2xx. Accepted, Duplicates and Spooled add
	// up the numbers of the bridge's answers; Rejected counts the
	// coordinates a 2xx answer did not account for and those of 422
	// answers.
	Coordinates, CoordinatesOK              int64
	Accepted, Duplicates, Rejected, Spooled int64

	// Throughput is answers per second; CoordinatesPerSec coordinates in
	// 2xx answers per second, both over Elapsed.
	Throughput        float64
	CoordinatesPerSec float64

	// Latency of the answered requests, from the intended send time (open
	// loop) or the send time (closed loop) to the end of the answer.
	Latency Latency
	// Open loop: Late counts the requests sent more than 1 ms after their
	// intended time (every connection was busy, or the generator could not
	// keep up); MaxLag is the most any was late. Missed counts the
	// requests due before the end of Duration that were never sent because
	// no connection was free in time: a target slower than Rate.
	Late   int64
	MaxLag time.Duration
	Missed int64
}

// Latency summarises a latency histogram (3 significant digits; Max exact).
type Latency struct {
	Min, Mean, P50, P90, P99, P999, Max time.Duration
}

func (c *collector) summary(elapsed time.Duration, interrupted bool) Summary {
	r, t := c.r, &c.total
	s := Summary{
		URL:           redactURL(r.cfg.URL),
		Method:        r.cfg.Method,
		Batch:         r.cfg.Batch,
		Rate:          r.cfg.Rate,
		Connections:   r.cfg.Connections,
		Devices:       r.fleet.Len(),
		Started:       r.start,
		Elapsed:       elapsed,
		Interrupted:   interrupted,
		Sent:          t.sent,
		Answered:      t.answered,
		Errors:        t.errors,
		Status:        t.status,
		ErrorKinds:    t.errs,
		Coordinates:   t.coords,
		CoordinatesOK: t.coords2xx,
		Accepted:      t.accepted,
		Duplicates:    t.duplicates,
		Rejected:      t.rejected,
		Spooled:       t.spooled,
		Late:          t.late,
		MaxLag:        t.maxLag,
	}
	if r.open && !r.end.IsZero() && !interrupted {
		due := int64(math.Ceil(r.cfg.Duration.Seconds() * r.cfg.Rate))
		if r.cfg.Count > 0 {
			due = min(due, r.cfg.Count)
		}
		s.Missed = max(0, due-t.sent)
	}
	if secs := elapsed.Seconds(); secs > 0 {
		s.Throughput = float64(t.answered) / secs
		s.CoordinatesPerSec = float64(t.coords2xx) / secs
	}
	if h := t.hist; h.TotalCount() > 0 {
		// A quantile is the highest value of its histogram bucket, which
		// can lie above the exact maximum; clamp so that P99 <= Max holds.
		us := func(v int64) time.Duration { return min(time.Duration(v)*time.Microsecond, t.maxLat) }
		s.Latency = Latency{
			Min:  us(h.Min()),
			Mean: time.Duration(h.Mean() * float64(time.Microsecond)),
			P50:  us(h.ValueAtQuantile(50)),
			P90:  us(h.ValueAtQuantile(90)),
			P99:  us(h.ValueAtQuantile(99)),
			P999: us(h.ValueAtQuantile(99.9)),
			Max:  t.maxLat,
		}
	}
	return s
}

// String renders the summary for people, a few lines.
func (s Summary) String() string {
	var b strings.Builder
	mode := "closed loop (as fast as possible)"
	if s.Rate > 0 {
		mode = fmt.Sprintf("open loop at %g req/s", s.Rate)
	}
	fmt.Fprintf(&b, "target       %s %s, %d devices, batch %d, %s, %d connections\n",
		s.Method, s.URL, s.Devices, s.Batch, mode, s.Connections)
	fmt.Fprintf(&b, "elapsed      %s", fmtDuration(s.Elapsed))
	if s.Interrupted {
		b.WriteString(" (interrupted)")
	}
	fmt.Fprintf(&b, "\nrequests     sent %d, answered %d, errors %d; %.1f answers/s\n",
		s.Sent, s.Answered, s.Errors, s.Throughput)
	fmt.Fprintf(&b, "status       %s\n", fmtStatus(s.Status))
	fmt.Fprintf(&b, "coordinates  sent %d, in 2xx answers %d (%.1f/s); accepted %d, duplicates %d, rejected %d, spooled %d\n",
		s.Coordinates, s.CoordinatesOK, s.CoordinatesPerSec, s.Accepted, s.Duplicates, s.Rejected, s.Spooled)
	from := "send time"
	if s.Rate > 0 {
		from = "intended send time"
	}
	l := s.Latency
	fmt.Fprintf(&b, "latency      p50 %s, p90 %s, p99 %s, p99.9 %s, max %s (mean %s; from the %s)\n",
		fmtDuration(l.P50), fmtDuration(l.P90), fmtDuration(l.P99), fmtDuration(l.P999),
		fmtDuration(l.Max), fmtDuration(l.Mean), from)
	if s.Rate > 0 {
		fmt.Fprintf(&b, "schedule     %d requests sent more than 1ms late, at most %s", s.Late, fmtDuration(s.MaxLag))
		if s.Missed > 0 {
			fmt.Fprintf(&b, "; %d due before the end never sent (the target is slower than the rate)", s.Missed)
		}
		b.WriteByte('\n')
	}
	if len(s.ErrorKinds) > 0 {
		fmt.Fprintf(&b, "errors       %s\n", fmtKinds(s.ErrorKinds))
	}
	return b.String()
}

// fmtStatus writes "200: 98, 503: 2" in status order.
func fmtStatus(m map[int]int64) string {
	if len(m) == 0 {
		return "none"
	}
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	parts := make([]string, len(codes))
	for i, c := range codes {
		parts[i] = fmt.Sprintf("%d: %d", c, m[c])
	}
	return strings.Join(parts, ", ")
}

func fmtKinds(m map[string]int64) string {
	kinds := make([]string, 0, len(m))
	for k := range m {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	parts := make([]string, len(kinds))
	for i, k := range kinds {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// fmtDuration rounds to 3 significant digits: 412µs, 1.23ms, 2.5s.
func fmtDuration(d time.Duration) string {
	switch {
	case d <= 0:
		return "0"
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < 10*time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	case d < 100*time.Millisecond:
		return d.Round(100 * time.Microsecond).String()
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	default:
		return d.Round(10 * time.Millisecond).String()
	}
}

// summaryJSON is the JSON form of a Summary: durations in milliseconds.
type summaryJSON struct {
	URL               string           `json:"url"`
	Method            string           `json:"method"`
	Batch             int              `json:"batch"`
	Rate              float64          `json:"rate"`
	Connections       int              `json:"connections"`
	Devices           int              `json:"devices"`
	Started           time.Time        `json:"started"`
	ElapsedMs         float64          `json:"elapsed_ms"`
	Interrupted       bool             `json:"interrupted"`
	Sent              int64            `json:"sent"`
	Answered          int64            `json:"answered"`
	Errors            int64            `json:"errors"`
	Status            map[int]int64    `json:"status"`
	ErrorKinds        map[string]int64 `json:"error_kinds,omitempty"`
	Coordinates       int64            `json:"coordinates"`
	CoordinatesOK     int64            `json:"coordinates_ok"`
	Accepted          int64            `json:"accepted"`
	Duplicates        int64            `json:"duplicates"`
	Rejected          int64            `json:"rejected"`
	Spooled           int64            `json:"spooled"`
	Throughput        float64          `json:"throughput"`
	CoordinatesPerSec float64          `json:"coordinates_per_sec"`
	Latency           latencyJSON      `json:"latency_ms"`
	Late              int64            `json:"late"`
	MaxLagMs          float64          `json:"max_lag_ms"`
	Missed            int64            `json:"missed"`
}

type latencyJSON struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p99_9"`
	Max  float64 `json:"max"`
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func fromMs(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// MarshalJSON writes the summary with snake_case names and durations in
// milliseconds (elapsed_ms, latency_ms.p99, max_lag_ms).
func (s Summary) MarshalJSON() ([]byte, error) {
	l := s.Latency
	return json.Marshal(summaryJSON{
		URL: s.URL, Method: s.Method, Batch: s.Batch, Rate: s.Rate, Connections: s.Connections,
		Devices: s.Devices, Started: s.Started, ElapsedMs: ms(s.Elapsed), Interrupted: s.Interrupted,
		Sent: s.Sent, Answered: s.Answered, Errors: s.Errors, Status: s.Status, ErrorKinds: s.ErrorKinds,
		Coordinates: s.Coordinates, CoordinatesOK: s.CoordinatesOK, Accepted: s.Accepted,
		Duplicates: s.Duplicates, Rejected: s.Rejected, Spooled: s.Spooled,
		Throughput: s.Throughput, CoordinatesPerSec: s.CoordinatesPerSec,
		Latency: latencyJSON{Min: ms(l.Min), Mean: ms(l.Mean), P50: ms(l.P50), P90: ms(l.P90),
			P99: ms(l.P99), P999: ms(l.P999), Max: ms(l.Max)},
		Late: s.Late, MaxLagMs: ms(s.MaxLag), Missed: s.Missed,
	})
}

// UnmarshalJSON reads what MarshalJSON wrote.
func (s *Summary) UnmarshalJSON(b []byte) error {
	var j summaryJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	l := j.Latency
	*s = Summary{
		URL: j.URL, Method: j.Method, Batch: j.Batch, Rate: j.Rate, Connections: j.Connections,
		Devices: j.Devices, Started: j.Started, Elapsed: fromMs(j.ElapsedMs), Interrupted: j.Interrupted,
		Sent: j.Sent, Answered: j.Answered, Errors: j.Errors, Status: j.Status, ErrorKinds: j.ErrorKinds,
		Coordinates: j.Coordinates, CoordinatesOK: j.CoordinatesOK, Accepted: j.Accepted,
		Duplicates: j.Duplicates, Rejected: j.Rejected, Spooled: j.Spooled,
		Throughput: j.Throughput, CoordinatesPerSec: j.CoordinatesPerSec,
		Latency: Latency{Min: fromMs(l.Min), Mean: fromMs(l.Mean), P50: fromMs(l.P50), P90: fromMs(l.P90),
			P99: fromMs(l.P99), P999: fromMs(l.P999), Max: fromMs(l.Max)},
		Late: j.Late, MaxLag: fromMs(j.MaxLagMs), Missed: j.Missed,
	}
	return nil
}
