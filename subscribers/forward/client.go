package forward

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

const (
	// maxAnswer is how much of a target's answer is read and kept (for the
	// DLQ and logs); the rest is drained up to maxDrain so the connection
	// can be reused, then the connection is dropped.
	maxAnswer = 64 << 10
	maxDrain  = 1 << 20
	// maxRetryAfter caps a target's Retry-After.
	maxRetryAfter = time.Hour
	// HeaderMsgID carries the coordinate's message id (Nats-Msg-Id) on every
	// request, signed or not, so a receiver can dedupe redeliveries.
	HeaderMsgID = "Ubiqo-Msg-Id"
	// HeaderDevice carries the device id on requests of one coordinate.
	HeaderDevice = "Ubiqo-Device"
)

// outcome is what a request's result means for its messages.
type outcome int

const (
	delivered outcome = iota // 2xx
	retryable                // 408, 429, 5xx, network, timeout
	permanent                // any other answer
)

// request is the part of an HTTP request that stays the same across the
// attempts of one unit: built once, signed at each attempt.
type request struct {
	id          string
	body        []byte
	contentType string
	device      string // one coordinate: its device id
	n           int    // coordinates in the body
}

// result is the answer to one attempt.
type result struct {
	status     int    // 0 when no answer
	answer     []byte // at most maxAnswer bytes
	err        error  // transport error or timeout
	retryAfter time.Duration
	latency    time.Duration
}

func (r result) outcome() outcome {
	switch {
	case r.err != nil:
		return retryable
	case r.status >= 200 && r.status < 300:
		return delivered
	case r.status == http.StatusRequestTimeout, r.status == http.StatusTooManyRequests, r.status >= 500:
		return retryable
	default:
		return permanent
	}
}

// reason is a short, bounded label for metrics: http_<code>, timeout or network.
func (r result) reason() string {
	if r.err != nil {
		var ne net.Error
		if errors.Is(r.err, context.DeadlineExceeded) || (errors.As(r.err, &ne) && ne.Timeout()) {
			return "timeout"
		}
		return "network"
	}
	return "http_" + strconv.Itoa(r.status)
}

// describe is the result for a log line or the DLQ error: status and the
// start of the answer on one line, or the transport error.
func (r result) describe() string {
	if r.err != nil {
		return r.err.Error()
	}
	s := fmt.Sprintf("HTTP %d %s", r.status, http.StatusText(r.status))
	if a := oneLine(r.answer, 256); a != "" {
		s += ": " + a
	}
	return s
}

// client sends requests to one target.
type client struct {
	t         Target
	hc        *http.Client
	signer    *signer
	userAgent string
	now       func() time.Time
}

// newClient returns the client of t (defaults filled): its own transport,
// keeping up to Concurrency idle connections to the target, and no redirect
// following (a POST must not silently become a GET; a 3xx is permanent).
func newClient(t Target, version string) (*client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = max(100, t.Concurrency)
	tr.MaxIdleConnsPerHost = t.Concurrency
	tr.MaxConnsPerHost = t.Concurrency
	tr.IdleConnTimeout = 90 * time.Second
	tr.ResponseHeaderTimeout = t.Timeout
	c := &client{
		t: t,
		hc: &http.Client{
			Transport: tr,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		userAgent: "ubiqo-forwarder/" + version,
		now:       time.Now,
	}
	if t.SigningSecret != "" {
		s, err := newSigner(t.SigningSecret)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", t.Name, err)
		}
		c.signer = s
	}
	return c, nil
}

// close drops the idle connections.
func (c *client) close() { c.hc.CloseIdleConnections() }

// errEncode marks a message the target's format cannot express (raw
// format, no raw item): permanent without a request.
var errEncode = errors.New("cannot encode for the target")

// build returns the request for msgs (one, or a batch in order).
func (c *client) build(msgs []*subscribers.Msg) (request, error) {
	if len(msgs) == 0 {
		return request{}, errors.New("forward: empty unit")
	}
	if c.t.Format == FormatBatch {
		size := 2
		for _, m := range msgs {
			size += len(m.Data) + 1
		}
		body := make([]byte, 0, size)
		body = append(body, '[')
		for i, m := range msgs {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(body, m.Data...)
		}
		body = append(body, ']')
		return request{id: batchID(msgs), body: body, contentType: "application/json", n: len(msgs)}, nil
	}
	m := msgs[0]
	r := request{id: m.MsgID, device: m.Coord.DeviceID, n: 1}
	if r.id == "" {
		r.id = "seq-" + strconv.FormatUint(m.StreamSeq, 10)
	}
	switch c.t.Format {
	case FormatRaw:
		raw := bytes.TrimSpace(m.Coord.Raw)
		if len(raw) == 0 {
			return r, fmt.Errorf("%w: the message has no raw item (format raw)", errEncode)
		}
		if c.t.RawForm {
			form, err := formEncode(raw)
			if err != nil {
				return r, fmt.Errorf("%w: raw item as a form: %v", errEncode, err)
			}
			r.body, r.contentType = form, "application/x-www-form-urlencoded"
		} else {
			r.body, r.contentType = raw, "application/json"
		}
	default:
		r.body, r.contentType = m.Data, "application/json"
	}
	return r, nil
}

// batchID is the webhook-id of a batch: a hash of its message ids, so a
// retried batch carries the same id.
func batchID(msgs []*subscribers.Msg) string {
	h := sha256.New()
	for _, m := range msgs {
		h.Write([]byte(m.MsgID))
		h.Write([]byte{0})
	}
	return "batch_" + hex.EncodeToString(h.Sum(nil)[:16])
}

// formEncode writes the top-level fields of a JSON object as a form, in
// their order: strings as they are, other scalars as their JSON text, null
// as empty, objects and arrays as compact JSON text.
func formEncode(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var b strings.Builder
	for dec.More() {
		kt, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := kt.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		var val string
		switch {
		case len(v) > 0 && v[0] == '"':
			if err := json.Unmarshal(v, &val); err != nil {
				return nil, err
			}
		case string(v) == "null":
		default:
			var cb bytes.Buffer
			if err := json.Compact(&cb, v); err != nil {
				return nil, err
			}
			val = cb.String()
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(url.QueryEscape(key))
		b.WriteByte('=')
		b.WriteString(url.QueryEscape(val))
	}
	return []byte(b.String()), nil
}

// send makes one attempt. ctx bounds it besides the target's Timeout. The
// answer is read up to maxAnswer and drained up to maxDrain, so the
// connection goes back to the pool.
func (c *client) send(ctx context.Context, r request) result {
	ctx, cancel := context.WithTimeout(ctx, c.t.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, c.t.Method, c.t.URL, bytes.NewReader(r.body))
	if err != nil {
		return result{err: err}
	}
	for k, v := range c.t.Headers {
		req.Header.Set(k, v)
	}
	if req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	req.Header.Set("User-Agent", c.userAgent)
	req.Header.Set(HeaderMsgID, r.id)
	if r.device != "" {
		req.Header.Set(HeaderDevice, headerSafe(r.device))
	}
	if c.signer != nil {
		c.signer.sign(req.Header, r.id, c.now(), r.body)
	}
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return result{err: scrubURL(err), latency: time.Since(start)}
	}
	// The status decides; an answer cut short (timeout, reset) changes
	// nothing but the connection's reuse.
	answer, rerr := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if rerr == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	}
	resp.Body.Close()
	res := result{status: resp.StatusCode, answer: answer, latency: time.Since(start)}
	if res.status == http.StatusTooManyRequests || res.status == http.StatusServiceUnavailable {
		res.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return res
}

// parseRetryAfter reads a Retry-After value, delay-seconds or an HTTP date,
// capped at maxRetryAfter; 0 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}

// scrubURL removes the URL (which may carry credentials in its query or
// userinfo) from a transport error; the target name says where it went.
func scrubURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

// oneLine returns b as one line of at most n bytes (valid UTF-8, control
// characters replaced), for headers and logs.
func oneLine(b []byte, n int) string {
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// headerSafe makes a device id fit in a header value.
func headerSafe(s string) string {
	if strings.ContainsAny(s, "\r\n\x00") {
		return oneLine([]byte(s), 256)
	}
	return s
}
