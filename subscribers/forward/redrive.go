package forward

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// RedriveStreams is the role of the JetStream API Redrive uses.
type RedriveStreams interface {
	Stream(ctx context.Context, name string) (jetstream.Stream, error)
}

// RedriveOptions configures Redrive.
type RedriveOptions struct {
	// Target is the target to deliver to, as the forwarder runs it.
	Target Target
	// Device, when set, re-drives only this device id's messages.
	Device string
	// DryRun lists the messages and sends nothing, deletes nothing.
	DryRun bool
	// DLQStream and DLQPrefix name the dead-letter stream and its subject
	// prefix; defaults DLQ and ubiqo.dlq.
	DLQStream, DLQPrefix string
	// Version goes in the User-Agent.
	Version string
}

// RedriveReport counts what Redrive did.
type RedriveReport struct {
	Found     int // dead-lettered messages of the target (and device)
	Delivered int // delivered and deleted from the DLQ
	Failed    int // still failing: left in the DLQ
	Skipped   int // left in the DLQ because an earlier one of the device failed
}

func (r RedriveReport) String() string {
	return fmt.Sprintf("found %d, delivered %d, failed %d, skipped %d", r.Found, r.Delivered, r.Failed, r.Skipped)
}

// Redrive sends a target's dead-lettered messages to the target again, in
// the order they were dead-lettered (so each device's in its stream order),
// using the target's format, headers and signature. A delivered message is
// deleted from the DLQ; one that fails again (after the target's retries:
// MaxDeliver attempts, 10 when unlimited) stays, and so do the device's later
// ones. Messages dead-lettered after Redrive started are left for the next
// run. It writes one line per message to out.
//
// Redrive talks to the target directly and never republishes to COORDS,
// whose duplicate window would drop the copy and whose other subscribers
// must not see the coordinate twice.
func Redrive(ctx context.Context, js RedriveStreams, opts RedriveOptions, out io.Writer) (RedriveReport, error) {
	var rep RedriveReport
	t, err := opts.Target.withDefaults()
	if err != nil {
		return rep, fmt.Errorf("redrive: %w", err)
	}
	if opts.DLQStream == "" {
		opts.DLQStream = "DLQ"
	}
	if opts.DLQPrefix == "" {
		opts.DLQPrefix = "ubiqo.dlq"
	}
	filter := opts.DLQPrefix + "." + t.Durable() + ".>"
	if opts.Device != "" {
		tok, err := coord.Token(opts.Device)
		if err != nil {
			return rep, fmt.Errorf("redrive: --device: %w", err)
		}
		filter = opts.DLQPrefix + "." + t.Durable() + "." + tok
	}
	s, err := js.Stream(ctx, opts.DLQStream)
	if err != nil {
		return rep, fmt.Errorf("redrive: stream %s: %w", opts.DLQStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return rep, fmt.Errorf("redrive: stream %s: %w", opts.DLQStream, err)
	}
	last := info.State.LastSeq
	cl, err := newClient(t, opts.Version)
	if err != nil {
		return rep, err
	}
	defer cl.close()
	attempts := t.MaxDeliver
	if attempts <= 0 {
		attempts = 10
	}

	failedDevices := map[string]bool{}
	for seq := uint64(1); seq <= last; {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		raw, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return rep, fmt.Errorf("redrive: read %s after seq %d: %w", opts.DLQStream, seq, err)
		}
		seq = raw.Sequence + 1
		if raw.Sequence > last {
			break
		}
		rep.Found++
		m, err := dlqMsg(raw)
		line := fmt.Sprintf("seq=%d subject=%s", raw.Sequence, raw.Subject)
		if err != nil {
			rep.Failed++
			fmt.Fprintf(out, "unreadable %s: %v\n", line, err)
			continue
		}
		line += fmt.Sprintf(" device=%q ts=%s", m.Coord.DeviceID, m.Coord.TS.Format(time.RFC3339))
		if opts.DryRun {
			fmt.Fprintf(out, "would send %s error=%q\n", line, raw.Header.Get(subscribers.HeaderError))
			continue
		}
		if failedDevices[raw.Subject] {
			rep.Skipped++
			fmt.Fprintf(out, "skipped %s: an earlier coordinate of the device failed\n", line)
			continue
		}
		res, n, err := deliverWithRetries(ctx, cl, []*subscribers.Msg{m}, attempts, t)
		switch {
		case err != nil:
			rep.Failed++
			failedDevices[raw.Subject] = true
			fmt.Fprintf(out, "failed %s: %v\n", line, err)
		case res.outcome() == delivered:
			if err := s.DeleteMsg(ctx, raw.Sequence); err != nil {
				return rep, fmt.Errorf("redrive: delivered seq %d but could not delete it from %s (it would be sent again): %w", raw.Sequence, opts.DLQStream, err)
			}
			rep.Delivered++
			fmt.Fprintf(out, "delivered %s (%d attempts, HTTP %d)\n", line, n, res.status)
		default:
			rep.Failed++
			failedDevices[raw.Subject] = true
			fmt.Fprintf(out, "failed %s after %d attempts: %s\n", line, n, res.describe())
		}
	}
	return rep, nil
}

// dlqMsg rebuilds the message a DLQ copy holds.
func dlqMsg(raw *jetstream.RawStreamMsg) (*subscribers.Msg, error) {
	m := &subscribers.Msg{Data: raw.Data, Header: raw.Header, Subject: raw.Header.Get(subscribers.HeaderOriginalSubject)}
	if err := json.Unmarshal(raw.Data, &m.Coord); err != nil {
		return nil, fmt.Errorf("body is not a canonical coordinate: %w", err)
	}
	// The copy's own Nats-Msg-Id is the runtime's; the original one is kept
	// aside, else the coordinate's deterministic id is what the bridge used.
	m.MsgID = raw.Header.Get(subscribers.HeaderOriginalMsgID)
	if m.MsgID == "" {
		m.MsgID = m.Coord.MsgID()
	}
	m.Timestamp = raw.Time
	return m, nil
}

// deliverWithRetries sends msgs until delivered, permanently refused, or
// attempts used up, honouring Retry-After and the target's back-off. It
// returns the last result and the attempts made; err is set when no request
// could be made (encoding) or ctx ended.
func deliverWithRetries(ctx context.Context, cl *client, msgs []*subscribers.Msg, attempts int, t Target) (result, int, error) {
	req, err := cl.build(msgs)
	if err != nil {
		return result{}, 0, err
	}
	var res result
	for n := 1; ; n++ {
		res = cl.send(ctx, req)
		if res.outcome() != retryable || n >= attempts {
			return res, n, nil
		}
		delay := res.retryAfter
		if delay == 0 {
			delay = backoff(n, t.BackoffMin, t.BackoffMax)
		}
		tm := time.NewTimer(delay)
		select {
		case <-tm.C:
		case <-ctx.Done():
			tm.Stop()
			return res, n, ctx.Err()
		}
	}
}

// redactURL hides URL credentials and query values for logs.
func redactURL(s string) string {
	i := strings.IndexAny(s, "?#")
	if i >= 0 {
		s = s[:i] + "?…"
	}
	if at := strings.LastIndex(s, "@"); at >= 0 {
		if scheme := strings.Index(s, "://"); scheme >= 0 && scheme < at {
			s = s[:scheme+3] + "…" + s[at:]
		}
	}
	return s
}
