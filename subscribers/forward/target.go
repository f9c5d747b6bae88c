package forward

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"time"
)

// Body formats of a target.
const (
	// FormatCanonical sends the JSON v1 message as stored in COORDS.
	FormatCanonical = "canonical"
	// FormatRaw sends the original item as UBIQO sent it (the message's
	// "raw" field), as JSON or, with RawForm, form-encoded.
	FormatRaw = "raw"
	// FormatBatch sends a JSON array of up to BatchSize canonical messages.
	FormatBatch = "batch"
)

// Target describes one secondary server. Zero durations and counts take the
// defaults named on each field (the same as the config package's).
type Target struct {
	// Name names the durable consumer forward-<Name>, the DLQ subjects and
	// the metrics: letters, digits, _ and -.
	Name string
	// URL is the http(s) endpoint.
	URL string
	// Method is POST (default), PUT or PATCH.
	Method string
	// Headers are added to every request. Values are secrets: never logged.
	Headers map[string]string
	// Timeout bounds one request including reading the answer; default 10s.
	Timeout time.Duration
	// Format is FormatCanonical (default), FormatRaw or FormatBatch.
	Format string
	// BatchSize is the most messages in one FormatBatch request; default 100.
	BatchSize int
	// RawForm sends FormatRaw bodies as application/x-www-form-urlencoded
	// (the item's top-level fields in their order; nested values as JSON
	// text) instead of the JSON item.
	RawForm bool
	// FilterSubjects restricts the target's consumer to these subjects;
	// empty = the whole stream.
	FilterSubjects []string
	// SigningSecret, when set, signs requests by the Standard Webhooks
	// scheme; whsec_<base64>.
	SigningSecret string
	// Concurrency is the most requests in flight; default 16.
	Concurrency int
	// MaxDeliver is the most counted attempts per coordinate; -1 = no
	// limit; default 10.
	MaxDeliver int
	// MaxAge: a retryable failure of a coordinate stored longer ago than
	// this dead-letters it; 0 = no limit.
	MaxAge time.Duration
	// BackoffMin and BackoffMax bound the exponential back-off; defaults
	// 500ms and 1m.
	BackoffMin, BackoffMax time.Duration
	// BreakerFailures consecutive retryable failures open the breaker; -1 =
	// no breaker; default 5.
	BreakerFailures int
	// BreakerCooldown is how long the breaker stays open before a probe;
	// default 30s.
	BreakerCooldown time.Duration
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Durable is the name of the target's consumer.
func (t Target) Durable() string { return "forward-" + t.Name }

// withDefaults returns t with zero fields set to their defaults, or an error
// naming the first bad field.
func (t Target) withDefaults() (Target, error) {
	if !nameRE.MatchString(t.Name) {
		return t, fmt.Errorf("target name %q: want 1 to 64 letters, digits, _ or -", t.Name)
	}
	if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return t, fmt.Errorf("target %s: url: want an absolute http(s) URL", t.Name)
	}
	if t.Method == "" {
		t.Method = http.MethodPost
	}
	if t.Timeout <= 0 {
		t.Timeout = 10 * time.Second
	}
	switch t.Format {
	case "":
		t.Format = FormatCanonical
	case FormatCanonical, FormatRaw, FormatBatch:
	default:
		return t, fmt.Errorf("target %s: format %q: want canonical, raw or batch", t.Name, t.Format)
	}
	if t.BatchSize <= 0 {
		t.BatchSize = 100
	}
	if t.Format != FormatBatch {
		t.BatchSize = 1
	}
	if t.Concurrency <= 0 {
		t.Concurrency = 16
	}
	if t.MaxDeliver == 0 {
		t.MaxDeliver = 10
	}
	if t.BackoffMin <= 0 {
		t.BackoffMin = 500 * time.Millisecond
	}
	if t.BackoffMax < t.BackoffMin {
		t.BackoffMax = max(time.Minute, t.BackoffMin)
	}
	if t.BreakerFailures == 0 {
		t.BreakerFailures = 5
	}
	if t.BreakerCooldown <= 0 {
		t.BreakerCooldown = 30 * time.Second
	}
	if t.SigningSecret != "" {
		if _, err := newSigner(t.SigningSecret); err != nil {
			return t, fmt.Errorf("target %s: %w", t.Name, err)
		}
	}
	return t, nil
}

// errNoTargets is returned by New for an empty target list.
var errNoTargets = errors.New("forward: no target")
