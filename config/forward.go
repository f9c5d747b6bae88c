package config

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

// Forward configures the forwarder: the targets it delivers coordinates to.
// Its keys are appended to Keys in init and its checks to extraValidators, so
// this file is the whole section.
//
// Targets come from the YAML file (forward.targets, a list) or, for
// environments that configure by variables, from UBIQO_FORWARD_TARGETS_JSON
// (forward.targets_json: the same list as a JSON array, same field names);
// set one or the other. A list of structs cannot come through
// UBIQO_FORWARD_TARGETS because the loader splits list variables on commas.
//
// Validation fills every target's defaults in place (see ForwardTarget), so
// after Load each target is complete.
type Forward struct {
	Targets     []ForwardTarget `mapstructure:"targets"`
	TargetsJSON string          `mapstructure:"targets_json"`
}

// ForwardTarget is one secondary server. The zero value of a field takes the
// default named on it.
type ForwardTarget struct {
	// Name names the target in metrics, logs, the durable consumer
	// forward-<name> and the DLQ subjects ubiqo.dlq.forward-<name>.<token>:
	// letters, digits, _ and -, at most 64. Required, unique.
	Name string `mapstructure:"name" json:"name"`
	// URL is the http or https endpoint. Required.
	URL string `mapstructure:"url" json:"url"`
	// Method is POST (default), PUT or PATCH.
	Method string `mapstructure:"method" json:"method"`
	// Headers are sent with every request (e.g. Authorization). Their values
	// are secrets: never logged, masked by --print-config.
	Headers map[string]string `mapstructure:"headers" json:"headers"`
	// Timeout bounds one request, connection to end of the answer; default 10s.
	Timeout time.Duration `mapstructure:"timeout" json:"timeout"`
	// Format of the body: canonical (default: the JSON v1 message as
	// stored), raw (the original item as UBIQO sent it) or batch (a JSON
	// array of up to BatchSize canonical messages).
	Format string `mapstructure:"format" json:"format"`
	// BatchSize is the most messages in one batch request; default 100.
	BatchSize int `mapstructure:"batch_size" json:"batch_size"`
	// RawContentType is how the raw format is encoded: json (default; the
	// item as received, application/json) or form (the item's fields as
	// application/x-www-form-urlencoded, for receivers that take what
	// UBIQO's form posts look like).
	RawContentType string `mapstructure:"raw_content_type" json:"raw_content_type"`
	// Subjects restricts the target to these COORDS subjects (wildcards
	// allowed); Devices to these device ids. Both empty = every device
	// (or consumer.filter_subjects when that is set).
	Subjects []string `mapstructure:"subjects" json:"subjects"`
	Devices  []string `mapstructure:"devices" json:"devices"`
	// SigningSecret, when set, signs every request by the Standard Webhooks
	// scheme; the secret is whsec_<base64> (the prefix optional) of 24 to 64
	// bytes.
	SigningSecret string `mapstructure:"signing_secret" json:"signing_secret"`
	// Concurrency is the most requests in flight to the target; default 16.
	Concurrency int `mapstructure:"concurrency" json:"concurrency"`
	// MaxDeliver is the most attempts for one coordinate before it is
	// dead-lettered; -1 = no limit; default 10. Attempts made while the
	// target is down as a whole (circuit breaker open or probing) do not count.
	MaxDeliver int `mapstructure:"max_deliver" json:"max_deliver"`
	// MaxAge: a coordinate stored longer ago than this is dead-lettered at
	// its next retryable failure instead of retried; 0 = no limit; default 24h.
	MaxAge time.Duration `mapstructure:"max_age" json:"max_age"`
	// BackoffMin and BackoffMax bound the exponential back-off between
	// attempts (full jitter); defaults 500ms and 1m.
	BackoffMin time.Duration `mapstructure:"backoff_min" json:"backoff_min"`
	BackoffMax time.Duration `mapstructure:"backoff_max" json:"backoff_max"`
	// BreakerFailures consecutive retryable failures open the circuit
	// breaker; -1 turns the breaker off; default 5.
	BreakerFailures int `mapstructure:"breaker_failures" json:"breaker_failures"`
	// BreakerCooldown is how long the open breaker waits before one probe
	// request; default 30s.
	BreakerCooldown time.Duration `mapstructure:"breaker_cooldown" json:"breaker_cooldown"`
}

// Defaults of a forward target.
const (
	DefaultForwardMethod          = http.MethodPost
	DefaultForwardTimeout         = 10 * time.Second
	DefaultForwardFormat          = "canonical"
	DefaultForwardBatchSize       = 100
	DefaultForwardRawContentType  = "json"
	DefaultForwardConcurrency     = 16
	DefaultForwardMaxDeliver      = 10
	DefaultForwardMaxAge          = 24 * time.Hour
	DefaultForwardBackoffMin      = 500 * time.Millisecond
	DefaultForwardBackoffMax      = time.Minute
	DefaultForwardBreakerFailures = 5
	DefaultForwardBreakerCooldown = 30 * time.Second
)

// ForwardFormats are the accepted values of a target's format.
var ForwardFormats = []string{"canonical", "raw", "batch"}

func init() {
	only := bins(Forwarder)
	Keys = append(Keys, []Key{
		{Name: "forward.targets", Default: []any{}, Secret: true, Only: only,
			Usage: "the targets, a list (file only): name, url, method, headers, timeout, format, batch_size, raw_content_type, subjects, devices, signing_secret, concurrency, max_deliver, max_age, backoff_min, backoff_max, breaker_failures, breaker_cooldown"},
		{Name: "forward.targets_json", Default: "", Secret: true, Only: only,
			Usage: "the targets as a JSON array with the fields of forward.targets; instead of forward.targets"},
	}...)
	extraValidators = append(extraValidators, validateForward)
}

// validateForward completes every target with its defaults (decoding
// forward.targets_json first) and checks it. Completing in place is why this
// validator takes the Config by pointer: after Load a target needs no
// further defaulting.
func validateForward(c *Config, b Binary) []error {
	if b != Forwarder {
		return nil
	}
	f := &c.Forward
	var v validator
	if f.TargetsJSON != "" {
		if len(f.Targets) > 0 {
			v.errs = append(v.errs, errors.New("config: forward.targets and forward.targets_json: set one, not both"))
			return v.errs
		}
		ts, err := decodeTargetsJSON(f.TargetsJSON)
		if err != nil {
			v.errs = append(v.errs, fmt.Errorf("config: forward.targets_json: %w", err))
			return v.errs
		}
		f.Targets = ts
	}
	if len(f.Targets) == 0 {
		v.errs = append(v.errs, errors.New("config: forward.targets: no target: list at least one (name, url) in the file, or set UBIQO_FORWARD_TARGETS_JSON"))
		return v.errs
	}
	seen := map[string]bool{}
	for i := range f.Targets {
		t := &f.Targets[i]
		t.complete()
		key := fmt.Sprintf("forward.targets[%d]", i)
		if t.Name != "" {
			key = fmt.Sprintf("forward.targets[%s]", t.Name)
		}
		v.errs = append(v.errs, t.check(key)...)
		if seen[t.Name] {
			v.bad(key+".name", t.Name, "is used by two targets")
		}
		seen[t.Name] = true
	}
	return v.errs
}

func decodeTargetsJSON(s string) ([]ForwardTarget, error) {
	var list []map[string]any
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		return nil, fmt.Errorf("not a JSON array of objects: %w", err)
	}
	var out []ForwardTarget
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		DecodeHook:       mapstructure.ComposeDecodeHookFunc(bareNumberDuration, mapstructure.StringToTimeDurationHookFunc()),
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		Result:           &out,
	})
	if err != nil {
		return nil, err
	}
	if err := dec.Decode(list); err != nil {
		return nil, err
	}
	return out, nil
}

// complete fills the defaults of the fields left empty.
func (t *ForwardTarget) complete() {
	t.Method = strings.ToUpper(strings.TrimSpace(t.Method))
	if t.Method == "" {
		t.Method = DefaultForwardMethod
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultForwardTimeout
	}
	t.Format = strings.ToLower(strings.TrimSpace(t.Format))
	if t.Format == "" {
		t.Format = DefaultForwardFormat
	}
	if t.BatchSize == 0 {
		t.BatchSize = DefaultForwardBatchSize
	}
	t.RawContentType = strings.ToLower(strings.TrimSpace(t.RawContentType))
	if t.RawContentType == "" {
		t.RawContentType = DefaultForwardRawContentType
	}
	if t.Concurrency == 0 {
		t.Concurrency = DefaultForwardConcurrency
	}
	if t.MaxDeliver == 0 {
		t.MaxDeliver = DefaultForwardMaxDeliver
	}
	if t.MaxAge == 0 {
		t.MaxAge = DefaultForwardMaxAge
	}
	if t.BackoffMin == 0 {
		t.BackoffMin = DefaultForwardBackoffMin
	}
	if t.BackoffMax == 0 {
		t.BackoffMax = max(DefaultForwardBackoffMax, t.BackoffMin)
	}
	if t.BreakerFailures == 0 {
		t.BreakerFailures = DefaultForwardBreakerFailures
	}
	if t.BreakerCooldown == 0 {
		t.BreakerCooldown = DefaultForwardBreakerCooldown
	}
}

var (
	targetNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
	// headerNameRE is an RFC 9110 token.
	headerNameRE = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
)

func (t *ForwardTarget) check(key string) []error {
	var v validator
	if !targetNameRE.MatchString(t.Name) {
		v.bad(key+".name", t.Name, "must be 1 to 64 letters, digits, _ or - (it names the consumer forward-<name>)")
	}
	if u, err := url.Parse(t.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.bad(key+".url", RedactURL(t.URL), "must be an absolute http:// or https:// URL")
	}
	switch t.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch:
	default:
		v.bad(key+".method", t.Method, "must be POST, PUT or PATCH")
	}
	for name, val := range t.Headers {
		if !headerNameRE.MatchString(name) {
			v.bad(key+".headers", name, "header names must be HTTP tokens")
		}
		if strings.ContainsAny(val, "\r\n\x00") {
			// The value is a secret: name the header, not the value.
			v.bad(key+".headers."+name, masked, "must not contain CR, LF or NUL")
		}
	}
	v.duration(key+".timeout", t.Timeout)
	switch t.Format {
	case "canonical", "raw", "batch":
	default:
		v.bad(key+".format", t.Format, "must be one of "+strings.Join(ForwardFormats, ", "))
	}
	if t.BatchSize < 1 || t.BatchSize > 10000 {
		v.bad(key+".batch_size", t.BatchSize, "must be 1 to 10000")
	}
	switch t.RawContentType {
	case "json", "form":
	default:
		v.bad(key+".raw_content_type", t.RawContentType, "must be json or form")
	}
	for _, s := range t.Subjects {
		if strings.TrimSpace(s) == "" || strings.ContainsAny(s, " \t\r\n") {
			v.bad(key+".subjects", s, "must be subjects without spaces")
		}
	}
	for _, d := range t.Devices {
		if d == "" || len(d) > 128 {
			v.bad(key+".devices", d, "device ids must be 1 to 128 bytes")
		}
	}
	if t.SigningSecret != "" {
		if _, err := DecodeSigningSecret(t.SigningSecret); err != nil {
			v.bad(key+".signing_secret", masked, err.Error())
		}
	}
	if t.Concurrency < 1 || t.Concurrency > 1024 {
		v.bad(key+".concurrency", t.Concurrency, "must be 1 to 1024")
	}
	if t.MaxDeliver < -1 || t.MaxDeliver == 0 {
		v.bad(key+".max_deliver", t.MaxDeliver, "must be -1 (no limit) or positive")
	}
	if t.MaxAge < 0 {
		v.bad(key+".max_age", t.MaxAge, "must not be negative")
	}
	v.duration(key+".backoff_min", t.BackoffMin)
	if t.BackoffMax < t.BackoffMin {
		v.bad(key+".backoff_max", t.BackoffMax, "must not be shorter than backoff_min")
	}
	if t.BreakerFailures < -1 {
		v.bad(key+".breaker_failures", t.BreakerFailures, "must be -1 (off) or positive")
	}
	v.duration(key+".breaker_cooldown", t.BreakerCooldown)
	return v.errs
}

// DecodeSigningSecret returns the key bytes of a Standard Webhooks secret:
// whsec_ followed by standard base64 (the prefix may be left out) of 24 to
// 64 bytes. The error never repeats the secret.
func DecodeSigningSecret(s string) ([]byte, error) {
	b64 := strings.TrimPrefix(s, "whsec_")
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, errors.New("must be whsec_ followed by standard base64")
	}
	if len(key) < 24 || len(key) > 64 {
		return nil, fmt.Errorf("must decode to 24 to 64 bytes, got %d", len(key))
	}
	return key, nil
}

// RedactURL hides the password of URL userinfo (or the user, which may be
// a token) and the values of query parameters (which often carry tokens),
// keeping where the URL points.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	const x = "xxxxx"
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), x)
		} else {
			u.User = url.User(x)
		}
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{x}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
