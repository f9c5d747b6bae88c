package subscribers

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// outcome is what settle did with a message.
type outcome int

const (
	acked outcome = iota
	retried
	deadLettered
	unsettled // the settlement could not be sent; the server redelivers after AckWait
)

func (o outcome) String() string {
	switch o {
	case acked:
		return "acked"
	case retried:
		return "retried"
	case deadLettered:
		return "dead_lettered"
	default:
		return "unsettled"
	}
}

// settleTimeout bounds the DLQ publish of one message.
const settleTimeout = 5 * time.Second

// settle applies a handler's outcome to m. It is the one place where a
// message is acked, nak'ed or dead-lettered and terminated:
//
//   - nil: Ack.
//   - Permanent, or a retryable error on the MaxDeliver-th delivery: copy to
//     the DLQ, then Term. If the copy fails, NakWithDelay so nothing is lost.
//   - any other error: NakWithDelay(RetryDelay(err) or the back-off step).
//
// Ack and Nak are sent without waiting for the server (a lost ack means a
// redelivery, which every subscriber tolerates); the DLQ copy waits for its
// publish ack, because the Term after it must never come first.
func (r *Runtime) settle(ctx context.Context, m *Msg, herr error) outcome {
	if herr == nil {
		if err := m.raw.Ack(); err != nil {
			r.metrics.settleErrors.WithLabelValues("ack").Inc()
			r.log.Warn().Err(err).Uint64("seq", m.StreamSeq).Msg("ack not sent; the message will be redelivered")
			return unsettled
		}
		r.metrics.acked.Inc()
		return acked
	}

	permanent := IsPermanent(herr)
	exhausted := !permanent && r.cfg.MaxDeliver > 0 && m.NumDelivered >= uint64(r.cfg.MaxDeliver)
	if permanent {
		r.metrics.handlerErrors.WithLabelValues("permanent").Inc()
	} else {
		r.metrics.handlerErrors.WithLabelValues("retryable").Inc()
	}

	if permanent || exhausted {
		reason := herr.Error()
		if exhausted {
			reason = fmt.Sprintf("gave up after %d deliveries: %s", m.NumDelivered, reason)
		}
		dctx, cancel := context.WithTimeout(ctx, settleTimeout)
		err := r.deadLetter(dctx, m, reason, dlqHeader(herr))
		cancel()
		if err != nil {
			r.metrics.settleErrors.WithLabelValues("dead_letter").Inc()
			r.log.Error().Err(err).Uint64("seq", m.StreamSeq).Str("subject", m.Subject).
				Str("error", reason).Msg("dead-letter copy failed; retrying the message later")
			return r.nak(m, r.backoff(m.NumDelivered))
		}
		if err := m.raw.Term(); err != nil {
			// The copy is in the DLQ; a redelivery is copied again under the
			// same Nats-Msg-Id, so the DLQ still holds it once.
			r.metrics.settleErrors.WithLabelValues("term").Inc()
			r.log.Warn().Err(err).Uint64("seq", m.StreamSeq).Msg("term not sent after dead-lettering")
		}
		r.metrics.deadLettered.Inc()
		r.log.Error().Uint64("seq", m.StreamSeq).Str("subject", m.Subject).Str("msg_id", m.MsgID).
			Uint64("attempts", m.NumDelivered).Str("error", reason).Msg("message dead-lettered")
		return deadLettered
	}

	delay, ok := RetryDelay(herr)
	if !ok || delay < 0 {
		delay = r.backoff(m.NumDelivered)
	}
	return r.nak(m, delay)
}

func (r *Runtime) nak(m *Msg, delay time.Duration) outcome {
	if err := m.raw.NakWithDelay(delay); err != nil {
		r.metrics.settleErrors.WithLabelValues("nak").Inc()
		r.log.Warn().Err(err).Uint64("seq", m.StreamSeq).Msg("nak not sent; the message will be redelivered after ack_wait")
		return unsettled
	}
	r.metrics.retried.Inc()
	return retried
}

// backoff is the delay before attempt n+1 after attempt n failed.
func (r *Runtime) backoff(n uint64) time.Duration {
	b := r.cfg.Backoff
	if n == 0 {
		n = 1
	}
	if n > uint64(len(b)) {
		return b[len(b)-1]
	}
	return b[n-1]
}

// deadLetter copies m to <DLQPrefix>.<durable>.<token> and waits for the
// DLQ stream's ack. The copy's Nats-Msg-Id names the consumer and the
// original stream position, so copying again (after a lost Term or a
// crash) stores it once, and two consumers giving up on the same message
// get a copy each.
func (r *Runtime) deadLetter(ctx context.Context, m *Msg, reason string, extra nats.Header) error {
	out := nats.NewMsg(r.cfg.DLQPrefix + "." + r.cfg.Durable + "." + m.token(r.cfg.SubjectPrefix))
	for k, vs := range m.Header {
		switch {
		case k == jetstream.MsgIDHeader:
			out.Header[HeaderOriginalMsgID] = vs
		case strings.HasPrefix(k, "Nats-"):
			// server directives (expected sequence, TTL, ...) of the
			// original publish must not act on the copy
		default:
			out.Header[k] = vs
		}
	}
	out.Header.Set(HeaderError, headerValue(reason))
	out.Header.Set(HeaderAttempts, strconv.FormatUint(m.NumDelivered, 10))
	out.Header.Set(HeaderConsumer, r.cfg.Durable)
	out.Header.Set(HeaderOriginalSubject, m.Subject)
	out.Header.Set(HeaderOriginalSeq, strconv.FormatUint(m.StreamSeq, 10))
	for k, vs := range extra {
		if strings.HasPrefix(k, "Nats-") {
			continue
		}
		for i, v := range vs {
			vs[i] = headerValue(v)
		}
		out.Header[k] = vs
	}
	out.Data = m.Data
	id := r.cfg.Durable + ":" + r.cfg.Stream + ":" + strconv.FormatUint(m.StreamSeq, 10)
	if _, err := r.js.PublishMsg(ctx, out, jetstream.WithMsgID(id), jetstream.WithExpectStream(stream.DLQStream)); err != nil {
		return fmt.Errorf("publish %s: %w", out.Subject, err)
	}
	return nil
}

// DLQHeaderer is implemented by handler errors that describe their failure
// in headers of their own (a forward target's status and answer, say): the
// dead-lettered copy carries them besides Ubiqo-Error and the others.
type DLQHeaderer interface {
	DLQHeader() nats.Header
}

func dlqHeader(err error) nats.Header {
	var h DLQHeaderer
	if errors.As(err, &h) {
		return h.DLQHeader()
	}
	return nil
}

// HeaderOriginalMsgID carries the original Nats-Msg-Id on a dead-lettered
// copy (whose own Nats-Msg-Id names the consumer and stream position).
const HeaderOriginalMsgID = "Ubiqo-Original-Msg-Id"

// headerValue makes s safe as a header value: one line, at most 1 KiB.
func headerValue(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > 1024 {
		s = s[:1021] + "..."
	}
	return s
}

// token returns the device token ending the subject: the subject after
// prefix + "."; for a subject outside the prefix, the token of the decoded
// device id, or "_".
func (m *Msg) token(prefix string) string {
	if prefix == "" {
		prefix = DefaultSubjectPrefix
	}
	if rest, ok := strings.CutPrefix(m.Subject, prefix+"."); ok && rest != "" {
		return rest
	}
	if tok, err := coord.Token(m.Coord.DeviceID); err == nil {
		return tok
	}
	return "_"
}

// errInvalidBody wraps why a body is not a canonical coordinate.
var errInvalidBody = errors.New("body is not a canonical coordinate")

// decode builds the handler's view of a delivered message. The error, when
// not nil, is Permanent: the body can never be handled; m is still usable
// for dead-lettering.
func (r *Runtime) decode(jm jetstream.Msg) (*Msg, error) {
	m := &Msg{
		Data:    jm.Data(),
		Subject: jm.Subject(),
		Header:  jm.Headers(),
		raw:     jm,
		prefix:  r.cfg.SubjectPrefix,
	}
	md, err := jm.Metadata()
	if err != nil {
		return m, fmt.Errorf("message metadata: %w", err)
	}
	m.StreamSeq = md.Sequence.Stream
	m.NumDelivered = md.NumDelivered
	m.Timestamp = md.Timestamp
	if err := decodeCoord(m.Data, &m.Coord); err != nil {
		return m, Permanent(fmt.Errorf("%w: %v", errInvalidBody, err))
	}
	if m.Coord.V != coord.Version {
		return m, Permanent(fmt.Errorf("%w: format version %d, want %d", errInvalidBody, m.Coord.V, coord.Version))
	}
	if err := m.Coord.Validate(); err != nil {
		return m, Permanent(fmt.Errorf("%w: %v", errInvalidBody, err))
	}
	m.MsgID = m.Header.Get(jetstream.MsgIDHeader)
	if m.MsgID == "" {
		m.MsgID = m.Coord.MsgID()
	}
	return m, nil
}
