package bridge

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

// ErrNotStored means JetStream did not confirm that every message was
// stored; the result says which were not. Some may have been stored all the
// same (an ack lost in a disconnect): their message ids make a retry or a
// spool replay store each one once.
var ErrNotStored = errors.New("not stored by JetStream")

// asyncPublisher is the role of the JetStream API the bridge publishes with.
type asyncPublisher interface {
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// Publisher publishes coordinate messages to the COORDS stream
// asynchronously and waits for all their acks at once, so a request of n
// coordinates costs one round trip of acks, not n, and no goroutine per
// message.
type Publisher struct {
	js     asyncPublisher
	prefix string
	pool   sync.Pool // *pubBatch
}

// NewPublisher returns a publisher on subjects prefix.<token>.
func NewPublisher(js asyncPublisher, prefix string) *Publisher {
	return &Publisher{js: js, prefix: prefix}
}

// PublishResult counts what JetStream said of a batch.
type PublishResult struct {
	Stored     int   // newly stored
	Duplicates int   // already in the stream (same Nats-Msg-Id within the window)
	Failed     []int // indexes of the messages without an ack
}

type pubBatch struct {
	futures []jetstream.PubAckFuture
	msgs    []nats.Msg
}

// Records encodes coords as the messages to publish (or spool). The bodies
// share one buffer.
func (p *Publisher) Records(coords []coord.Coord) []spool.Record {
	size := 0
	for i := range coords {
		size += 256 + len(coords[i].Raw)
	}
	buf := make([]byte, 0, size)
	ends := make([]int, len(coords))
	for i := range coords {
		buf = coords[i].AppendJSON(buf)
		ends[i] = len(buf)
	}
	recs := make([]spool.Record, len(coords))
	start := 0
	for i := range coords {
		c := &coords[i]
		recs[i] = spool.Record{
			Subject: p.subject(c.DeviceID),
			MsgID:   c.MsgID(),
			Device:  c.DeviceID,
			Data:    buf[start:ends[i]:ends[i]],
		}
		start = ends[i]
	}
	return recs
}

// Publish stores recs and returns once JetStream has acked every one, or
// with an error wrapping ErrNotStored and the result's Failed list. It
// gives up waiting when ctx ends.
func (p *Publisher) Publish(ctx context.Context, recs []spool.Record) (PublishResult, error) {
	var res PublishResult
	if len(recs) == 0 {
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
		p.pool.Put(b)
	}()
	if cap(b.msgs) < len(recs) {
		b.msgs = make([]nats.Msg, len(recs))
	}
	b.msgs = b.msgs[:len(recs)]

	var firstErr error
	sent := 0
	for i := range recs {
		r := &recs[i]
		m := &b.msgs[i]
		m.Subject = r.Subject
		m.Data = r.Data
		m.Header = nats.Header{
			jetstream.MsgIDHeader: []string{r.MsgID},
			"Ubiqo-Device":        []string{r.Device},
			"Content-Type":        []string{"application/json"},
		}
		f, err := p.js.PublishMsgAsync(m)
		if err != nil {
			firstErr = fmt.Errorf("publish %s: %w", m.Subject, err)
			break
		}
		b.futures = append(b.futures, f)
		sent++
	}
	for i := sent; i < len(recs); i++ {
		res.Failed = append(res.Failed, i)
	}

	for i, f := range b.futures {
		select {
		case ack := <-f.Ok():
			if ack.Duplicate {
				res.Duplicates++
			} else {
				res.Stored++
			}
		case err := <-f.Err():
			res.Failed = append(res.Failed, i)
			if firstErr == nil {
				firstErr = fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
			}
		case <-ctx.Done():
			recycle = false
			for j := i; j < len(b.futures); j++ {
				res.Failed = append(res.Failed, j)
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("waiting for acks: %w", ctx.Err())
			}
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
