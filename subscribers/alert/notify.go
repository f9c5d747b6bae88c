package alert

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// Notifiers run off the consume loop: each one is a durable consumer of its
// own on the ALERTS stream (<durable>-notify-<name>), created with deliver
// policy "new" so a first start does not notify the stream's history. An
// alert id is stored once in ALERTS (Nats-Msg-Id), so each notifier sees
// each alert once, across restarts, instances and replays; it is acked
// after the target accepted it (a crash in between sends it again: delivery
// is at least once, and the webhook carries the id in Idempotency-Key).
// Delivery is one alert at a time, in stream order; a retryable failure
// (network, timeout, 408, 429, 5xx) is retried with exponential back-off
// (Retry-After honoured) and holds the alerts behind it, a permanent one
// (other 4xx) is logged and dropped, and after MaxAttempts the alert is
// logged and dropped.

// NotifyConfig configures the notifiers.
type NotifyConfig struct {
	// WebhookURL receives every alert body as JSON (POST); empty = off.
	WebhookURL string
	// SlackURL is a Slack-style incoming webhook ({"text": "..."}); empty = off.
	SlackURL string
	// Timeout bounds each HTTP call; default 10s.
	Timeout time.Duration
	// MaxAttempts is how many times an alert is tried before it is dropped
	// (logged); default 50, -1 = for ever.
	MaxAttempts int
	// Backoff is the first retry delay, doubled per attempt up to
	// BackoffMax; defaults 1s and 5m.
	Backoff, BackoffMax time.Duration
	// Kinds limits the notified alert kinds; empty = all.
	Kinds []string
}

func (c *NotifyConfig) fill() error {
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = 50
	}
	if c.Backoff <= 0 {
		c.Backoff = time.Second
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = 5 * time.Minute
	}
	for _, k := range c.Kinds {
		if !contains(Kinds, k) {
			return fmt.Errorf("notify kind %q: want one of %s", k, strings.Join(Kinds, ", "))
		}
	}
	for _, u := range []string{c.WebhookURL, c.SlackURL} {
		if u == "" {
			continue
		}
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return errors.New("notifier URL must be an http or https URL") // never echo it: it holds a secret
		}
	}
	return nil
}

// notifier delivers one alert.
type notifier interface {
	name() string
	// notify returns nil when delivered, a permanentNotifyError when it can
	// never be, or another error to retry (with retryAfter when the target
	// said when).
	notify(ctx context.Context, a *Alert, body []byte) error
}

type permanentNotifyError struct{ err error }

func (e permanentNotifyError) Error() string { return e.err.Error() }
func (e permanentNotifyError) Unwrap() error { return e.err }

type retryAfterNotifyError struct {
	err   error
	after time.Duration
}

func (e retryAfterNotifyError) Error() string { return e.err.Error() }
func (e retryAfterNotifyError) Unwrap() error { return e.err }

// webhook POSTs the alert body as JSON.
type webhook struct {
	url    string
	client *http.Client
}

func (w *webhook) name() string { return "webhook" }

func (w *webhook) notify(ctx context.Context, a *Alert, body []byte) error {
	return post(ctx, w.client, w.url, body, map[string]string{"Idempotency-Key": a.ID, "Ubiqo-Alert-Id": a.ID, "Ubiqo-Alert-Kind": a.Kind})
}

// slack POSTs {"text": ...} to a Slack-style incoming webhook.
type slack struct {
	url    string
	client *http.Client
}

func (s *slack) name() string { return "slack" }

func (s *slack) notify(ctx context.Context, a *Alert, _ []byte) error {
	body, err := json.Marshal(map[string]string{"text": SlackText(a)})
	if err != nil {
		return permanentNotifyError{err}
	}
	return post(ctx, s.client, s.url, body, nil)
}

var kindEmoji = map[string]string{
	KindEnter: ":arrow_right:", KindExit: ":arrow_left:", KindOverspeed: ":racing_car:", KindOverspeedEnd: ":white_check_mark:",
	KindOffline: ":electric_plug:", KindOnline: ":white_check_mark:", KindBatteryLow: ":battery:", KindBatteryOK: ":white_check_mark:",
	KindPanic: ":rotating_light:", KindJump: ":warning:",
}

// SlackText is the text of the Slack notification of a: emoji, kind, the
// message, the fix time and a map link.
func SlackText(a *Alert) string {
	return fmt.Sprintf("%s *%s* %s\n%s · rule `%s` · <https://maps.google.com/?q=%.6f,%.6f|%.5f, %.5f>",
		kindEmoji[a.Kind], a.Kind, a.Message, a.TS.UTC().Format(time.RFC3339), a.Rule, a.Lat, a.Lon, a.Lat, a.Lon)
}

// post sends body and classifies the outcome. Errors never carry the URL
// (it usually holds a secret token).
func post(ctx context.Context, client *http.Client, target string, body []byte, headers map[string]string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return permanentNotifyError{errors.New("bad notifier URL")}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ubiqo-bridge-alerter")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop "Post <url>:"
		}
		return fmt.Errorf("POST: %w", err)
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // drain for keep-alive
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	err = fmt.Errorf("POST: status %d: %s", resp.StatusCode, strings.TrimSpace(string(snippet)))
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		if s, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && s >= 0 {
			return retryAfterNotifyError{err, time.Duration(s) * time.Second}
		}
		return err
	case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode >= 500:
		return err
	default:
		return permanentNotifyError{err}
	}
}

// notifyConsumerCreator is the role of the JetStream API a notifier needs.
type notifyConsumerCreator interface {
	CreateOrUpdateConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error)
}

// notifyLoop delivers the alerts of one notifier.
type notifyLoop struct {
	n    notifier
	cfg  NotifyConfig
	cons jetstream.Consumer
	log  zerolog.Logger
	m    *metrics
}

// newNotifyLoop creates or updates the notifier's durable consumer.
func newNotifyLoop(ctx context.Context, js notifyConsumerCreator, durable string, n notifier, cfg NotifyConfig, log zerolog.Logger, m *metrics) (*notifyLoop, error) {
	cc := jetstream.ConsumerConfig{
		Durable:       durable,
		Description:   "ubiqo-bridge alerter notifier " + n.name(),
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.Timeout + 30*time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 1, // in order, one at a time
	}
	var subjects []string
	for _, k := range cfg.Kinds {
		subjects = append(subjects, stream.AlertsSubjectPrefix+"."+k+".>")
	}
	switch len(subjects) {
	case 0:
	case 1:
		cc.FilterSubject = subjects[0]
	default:
		cc.FilterSubjects = subjects
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, stream.AlertsStream, cc)
	if err != nil {
		return nil, fmt.Errorf("notifier %s: consumer %s on %s: %w", n.name(), durable, stream.AlertsStream, err)
	}
	return &notifyLoop{n: n, cfg: cfg, cons: cons, log: log.With().Str("notifier", n.name()).Logger(), m: m}, nil
}

// run delivers until ctx is cancelled; an alert being delivered then is
// finished first (bounded by the notifier timeout).
func (l *notifyLoop) run(ctx context.Context) error {
	it, err := l.cons.Messages(jetstream.PullMaxMessages(1))
	if err != nil {
		return fmt.Errorf("notifier %s: %w", l.n.name(), err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			l.log.Warn().Err(err).Msg("notifier fetch")
			continue
		}
		l.handle(context.WithoutCancel(ctx), msg)
	}
}

func (l *notifyLoop) handle(ctx context.Context, msg jetstream.Msg) {
	var a Alert
	if err := json.Unmarshal(msg.Data(), &a); err != nil {
		l.log.Error().Err(err).Str("subject", msg.Subject()).Msg("alert body is not an alert; not notified")
		_ = msg.Term()
		return
	}
	attempt := uint64(1)
	if md, err := msg.Metadata(); err == nil {
		attempt = md.NumDelivered
	}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.Timeout)
	err := l.n.notify(cctx, &a, msg.Data())
	cancel()
	ev := func(e *zerolog.Event) *zerolog.Event {
		return e.Str("alert_id", a.ID).Str("kind", a.Kind).Str("device_id", a.DeviceID).Uint64("attempt", attempt)
	}
	var perm permanentNotifyError
	switch {
	case err == nil:
		l.m.notify.WithLabelValues(l.n.name(), "sent").Inc()
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		if aerr := msg.DoubleAck(actx); aerr != nil {
			l.log.Warn().Err(aerr).Str("alert_id", a.ID).Msg("ack of a sent notification failed; it may be sent again")
		}
		acancel()
	case errors.As(err, &perm):
		l.m.notify.WithLabelValues(l.n.name(), "failed").Inc()
		ev(l.log.Error()).Err(err).Msg("notification refused by the target; dropped")
		_ = msg.Term()
	case l.cfg.MaxAttempts > 0 && attempt >= uint64(l.cfg.MaxAttempts):
		l.m.notify.WithLabelValues(l.n.name(), "failed").Inc()
		ev(l.log.Error()).Err(err).Msg("notification failed too many times; dropped")
		_ = msg.Term()
	default:
		l.m.notify.WithLabelValues(l.n.name(), "retry").Inc()
		delay := backoff(attempt, l.cfg.Backoff, l.cfg.BackoffMax)
		var ra retryAfterNotifyError
		if errors.As(err, &ra) && ra.after > delay {
			delay = min(ra.after, l.cfg.BackoffMax)
		}
		ev(l.log.Warn()).Err(err).Dur("retry_in", delay).Msg("notification failed; will retry")
		_ = msg.NakWithDelay(delay)
	}
}

// backoff is base·2^(attempt-1) capped at max, with ±20% jitter.
func backoff(attempt uint64, base, max time.Duration) time.Duration {
	d := base
	for i := uint64(1); i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	j := time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
	return j
}
