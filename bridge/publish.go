package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
)

// ErrNotStored means JetStream did not confirm that every coordinate of a
// request was stored; the caller answers 503 so the sender retries, and the
// message ids make the retry store each coordinate once.
var ErrNotStored = errors.New("not stored by JetStream")

// asyncPublisher is the role of the JetStream API the bridge publishes with.
type asyncPublisher interface {
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// Publisher publishes coordinates to the COORDS stream asynchronously and
// waits for all their acks at once, so a request of n coordinates costs one
// round trip of acks, not n.
type Publisher struct {
	js     asyncPublisher
	prefix string
	stream string
	pool   sync.Pool // *pubBatch
}

// NewPublisher returns a publisher for stream on subjects prefix.<token>.
func NewPublisher(js asyncPublisher, stream, prefix string) *Publisher {
	return &Publisher{js: js, prefix: prefix, stream: stream}
}

// PublishResult counts what JetStream said of a batch.
type PublishResult struct {
	Stored     int // newly stored
	Duplicates int // already in the stream (same Nats-Msg-Id within the window)
}

type pubBatch struct {
	buf     []byte
	futures []jetstream.PubAckFuture
	msgs    []nats.Msg
}

// Publish stores coords and returns once JetStream has acked every one of
// them, or with an error wrapping ErrNotStored (some may have been stored;
// a retry with the same coordinates is deduplicated). It gives up when ctx
// ends.
func (p *Publisher) Publish(ctx context.Context, coords []coord.Coord) (PublishResult, error) {
	var res PublishResult
	if len(coords) == 0 {
		return res, nil
	}
	b, _ := p.pool.Get().(*pubBatch)
	if b == nil {
		b = &pubBatch{}
	}
	// The nats client may still read a message (a retry after "no
	// responders") until its future resolves: recycle only then.
	recycle := true
	defer func() {
		if !recycle {
			return
		}
		clear(b.futures)
		b.futures = b.futures[:0]
		clear(b.msgs)
		b.msgs = b.msgs[:0]
		b.buf = b.buf[:0]
		p.pool.Put(b)
	}()

	// Encode every body into one buffer first: the nats client copies the
	// payload into its write buffer, so the slices may share storage.
	offsets := make([]int, len(coords)+1)
	for i := range coords {
		b.buf = coords[i].AppendJSON(b.buf)
		offsets[i+1] = len(b.buf)
	}
	if cap(b.msgs) < len(coords) {
		b.msgs = make([]nats.Msg, len(coords))
	}
	b.msgs = b.msgs[:len(coords)]

	var firstErr error
	for i := range coords {
		c := &coords[i]
		m := &b.msgs[i]
		m.Subject = p.subject(c.DeviceID)
		m.Data = b.buf[offsets[i]:offsets[i+1]:offsets[i+1]]
		m.Header = nats.Header{
			jetstream.MsgIDHeader:          []string{c.MsgID()},
			jetstream.ExpectedStreamHeader: []string{p.stream},
			"Ubiqo-Device":                 []string{c.DeviceID},
			"Content-Type":                 []string{"application/json"},
		}
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			firstErr = fmt.Errorf("publish %s: %w", m.Subject, err)
			break
		}
		b.futures = append(b.futures, f)
	}

	for _, f := range b.futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				res.Duplicates++
			} else {
				res.Stored++
			}
		case err := <-f.Err():
			if firstErr == nil {
				firstErr = fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
			}
		case <-ctx.Done():
			if firstErr == nil {
				firstErr = fmt.Errorf("waiting for acks: %w", ctx.Err())
			}
			recycle = false
			return res, fmt.Errorf("%w: %w", ErrNotStored, firstErr)
		}
	}
	if firstErr != nil {
		return res, fmt.Errorf("%w: %w", ErrNotStored, firstErr)
	}
	return res, nil
}

func (p *Publisher) subject(id string) string {
	buf := make([]byte, 0, len(p.prefix)+1+len(id)+8)
	buf = append(buf, p.prefix...)
	buf = append(buf, '.')
	buf = coord.AppendToken(buf, id)
	return string(buf)
}
