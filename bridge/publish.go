package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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

// ErrTooLarge marks a coordinate whose message NATS (max_payload) or the
// stream (max_msg_size) refuses for its size. It can never be stored as it
// is, so it is rejected, never spooled or retried.
var ErrTooLarge = errors.New("coordinate too large to store")

// jsMsgTooLarge is JetStream's error code for a message over the stream's
// max_msg_size.
const jsMsgTooLarge = 10054

// headerOverhead is the size of the encoded headers of a message without
// the values of Nats-Msg-Id and Ubiqo-Device: "NATS/1.0\r\n", a
// "Name: value\r\n" line for each of the three headers, and the blank line.
const headerOverhead = len("NATS/1.0\r\n") +
	len("Nats-Msg-Id: \r\n") + len("Ubiqo-Device: \r\n") +
	len("Content-Type: application/json\r\n") + len("\r\n")

// MessageSize is the size NATS counts against max_payload for r: headers
// and body.
func MessageSize(r *spool.Record) int {
	return headerOverhead + len(r.MsgID) + len(r.Device) + len(r.Data)
}

// errTooManyPending means the ring of publishes awaiting their ack stayed
// full for the whole publish timeout (nats.max_pending).
var errTooManyPending = errors.New("too many publishes awaiting their ack (nats.max_pending)")

// Publisher publishes coordinate messages to the COORDS stream and waits for
// JetStream's acks, a request of n coordinates costing one round trip, not n.
//
// It collects the acks itself rather than through jetstream.PublishMsgAsync,
// whose per-message costs (a timer, a map entry, two channels and a
// reflection-based JSON decode of every ack) were a quarter of the bridge's
// CPU in batch loads: one wildcard subscription receives every ack on
// <inbox>.<id>, an ack is parsed by hand, and publishes awaiting their ack
// sit in a fixed ring indexed by id (nats.max_pending slots), so a publish
// allocates only its reply subject. A request waits on one channel with one
// pooled timer, whatever its number of coordinates.
type Publisher struct {
	nc      *nats.Conn
	prefix  string // subject prefix, e.g. "ubiqo.coords"
	inbox   string // "_INBOX.<nuid>." — acks arrive on inbox+<id in base 36>
	timeout time.Duration
	sub     *nats.Subscription
	status  chan nats.Status // the connection's losses; see watch
	onLost  func()           // guarded by mu; see OnConnectionLost
	pool    sync.Pool        // *pubBatch

	mu       sync.Mutex
	ring     []pending // len is a power of two
	mask     uint64
	next     uint64        // id of the next publish; ids start at 1, 0 marks a free slot
	awaiting atomic.Int64  // occupied slots
	space    chan struct{} // closed (and replaced) when a slot frees while someone waits
	wait     int           // publishers waiting for a free slot
	late     atomic.Int64  // acks that arrived after their publish gave up
	cut      atomic.Int64  // publishes given up when the connection was lost
}

// pending is a publish awaiting its ack.
type pending struct {
	id  uint64
	b   *pubBatch
	idx int // index of the message in b
}

// Ack outcomes, per message of a batch.
const (
	ackWaiting uint8 = iota
	ackStored
	ackDuplicate
	ackFailed
	ackTooLarge // refused for its size: never retried
)

// pubBatch is one Publish call's state; pooled.
type pubBatch struct {
	msg   nats.Msg
	ids   []uint64
	acks  []uint8
	left  int           // acks still awaited; guarded by Publisher.mu
	err   error         // first failure; guarded by Publisher.mu
	done  chan struct{} // gets one value when left reaches 0
	timer *time.Timer
}

// NewPublisher returns a publisher on subjects prefix.<token> that keeps at
// most maxPending publishes awaiting their ack and waits at most timeout for
// an ack. It subscribes to its ack inbox on nc; Close unsubscribes.
func NewPublisher(nc *nats.Conn, prefix string, maxPending int, timeout time.Duration) (*Publisher, error) {
	size := 1
	for size < maxPending {
		size <<= 1
	}
	p := &Publisher{
		nc:      nc,
		prefix:  prefix,
		inbox:   nc.NewInbox() + ".",
		timeout: timeout,
		ring:    make([]pending, size),
		mask:    uint64(size - 1),
		next:    1,
		space:   make(chan struct{}),
	}
	sub, err := nc.Subscribe(p.inbox+"*", p.onAck)
	if err != nil {
		return nil, fmt.Errorf("subscribe to the ack inbox: %w", err)
	}
	// Acks are small and must never be dropped as a slow consumer: the
	// ring already bounds how many can be outstanding.
	_ = sub.SetPendingLimits(-1, -1)
	p.sub = sub
	p.status = nc.StatusChanged(nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	go p.watch()
	return p, nil
}

// watch gives up every publish awaiting its ack as soon as the connection
// is lost. The acks of those messages will never arrive: the messages were
// lost with the connection, or stored with their ack lost. Waiting for the
// publish timeout would only delay their spooling (their ids make the
// replay of those that were stored a duplicate), and a device's newer
// coordinates, published after the reconnect, could meanwhile be stored
// ahead of them.
func (p *Publisher) watch() {
	for st := range p.status {
		p.mu.Lock()
		lost := p.onLost
		p.mu.Unlock()
		if lost != nil {
			lost()
		}
		p.failPending(fmt.Errorf("the NATS connection was lost (%s) before JetStream's ack", strings.ToLower(st.String())))
		if st == nats.CLOSED {
			return // for good; nats.go does not close its listeners
		}
	}
}

// OnConnectionLost sets f to be called when the connection is lost, before
// the publishes awaiting their ack are given up.
func (p *Publisher) OnConnectionLost(f func()) {
	p.mu.Lock()
	p.onLost = f
	p.mu.Unlock()
}

// failPending gives up every publish awaiting its ack.
func (p *Publisher) failPending(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.awaiting.Load() == 0 {
		return
	}
	for i := range p.ring {
		slot := p.ring[i]
		if slot.id == 0 {
			continue
		}
		b := slot.b
		p.mark(b, slot.idx, ackFailed)
		p.cut.Add(1)
		if b.err == nil {
			b.err = err
		}
		if b.left == 0 {
			b.signal()
		}
	}
	p.freed()
}

// Close stops receiving acks; publishes still waiting fail at their timeout.
func (p *Publisher) Close() error {
	p.nc.RemoveStatusListener(p.status)
	return p.sub.Unsubscribe()
}

// LateAcks counts acks that arrived after their publish had given up.
func (p *Publisher) LateAcks() int64 { return p.late.Load() }

// CutOff counts the publishes given up awaiting their ack because the
// connection was lost.
func (p *Publisher) CutOff() int64 { return p.cut.Load() }

// Pending is the number of publishes awaiting their ack.
func (p *Publisher) Pending() int64 { return p.awaiting.Load() }

// PublishResult counts what JetStream said of a batch.
type PublishResult struct {
	Stored     int   // newly stored
	Duplicates int   // already in the stream (same Nats-Msg-Id within the window)
	Failed     []int // indexes of the messages without an ack
	// TooLarge are the indexes of the messages refused for their size
	// (ErrTooLarge): retrying cannot store them.
	TooLarge []int
}

// Records encodes coords as the messages to publish (or spool). The bodies
// share one buffer.
func (p *Publisher) Records(coords []coord.Coord) []spool.Record {
	size := 0
	for i := range coords {
		// The canonical fields, plus raw and the attrs repeating its unmapped
		// fields: enough that a typical batch never regrows the buffer.
		size += 320 + 2*len(coords[i].Raw)
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
// with an error wrapping ErrNotStored and the result's Failed list. A batch
// larger than half of nats.max_pending goes in parts; after a part with a
// failure, the later parts are not sent (they are Failed too), so that
// nothing overtakes what failed. It gives
// up waiting at the publish timeout or when ctx ends.
func (p *Publisher) Publish(ctx context.Context, recs []spool.Record) (PublishResult, error) {
	// A batch takes its ring slots all at once; one larger than half the
	// ring goes in parts.
	chunk := max(len(p.ring)/2, 1)
	if len(recs) <= chunk {
		return p.publish(ctx, recs)
	}
	var res PublishResult
	var firstErr error
	for off := 0; off < len(recs); off += chunk {
		r, err := p.publish(ctx, recs[off:min(off+chunk, len(recs))])
		res.Stored += r.Stored
		res.Duplicates += r.Duplicates
		for _, i := range r.Failed {
			res.Failed = append(res.Failed, off+i)
		}
		for _, i := range r.TooLarge {
			res.TooLarge = append(res.TooLarge, off+i)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
		if len(r.Failed) > 0 {
			// This part's failures go to the spool (or back to the
			// sender): a later part stored now would overtake them and
			// break their devices' order. The rest fails unsent.
			for i := off + chunk; i < len(recs); i++ {
				res.Failed = append(res.Failed, i)
			}
			break
		}
	}
	return res, firstErr
}

func (p *Publisher) publish(ctx context.Context, recs []spool.Record) (PublishResult, error) {
	var res PublishResult
	if len(recs) == 0 {
		return res, nil
	}
	b := p.getBatch(len(recs))
	defer p.putBatch(b)
	if b.timer == nil {
		b.timer = time.NewTimer(p.timeout)
	} else {
		b.timer.Reset(p.timeout)
	}
	defer b.timer.Stop()

	// Take a ring slot for every message before publishing any, so an ack
	// racing the publish loop below always finds its slot. A batch never
	// holds slots while it waits for more, so waiting publishers cannot
	// block one another: every occupied slot is a published message that
	// will be acked or given up by its own publisher.
	p.mu.Lock()
	b.left, b.err = 0, nil
	for !p.fits(len(recs)) {
		p.wait++
		space := p.space
		p.mu.Unlock()
		var err error
		select {
		case <-space:
		case <-b.timer.C:
			err = errTooManyPending
		case <-ctx.Done():
			err = ctx.Err()
		}
		p.mu.Lock()
		if err != nil {
			p.failFrom(b, 0, err)
			return p.finish(b, recs, &res)
		}
	}
	for i := range recs {
		id := p.next
		p.next++
		p.ring[id&p.mask] = pending{id: id, b: b, idx: i}
		b.ids[i] = id
	}
	b.left = len(recs)
	p.awaiting.Add(int64(len(recs)))
	p.mu.Unlock()

	m := &b.msg
	var reply [64]byte
	for i := range recs {
		r := &recs[i]
		m.Subject = r.Subject
		m.Reply = string(strconv.AppendUint(append(reply[:0], p.inbox...), b.ids[i], 36))
		m.Data = r.Data
		m.Header[jetstream.MsgIDHeader][0] = r.MsgID
		m.Header[headerDevice][0] = r.Device
		if err := p.nc.PublishMsg(m); err != nil {
			p.mu.Lock()
			if errors.Is(err, nats.ErrMaxPayload) {
				// This one can never go; the others still can.
				p.settle(b, i, ackTooLarge, fmt.Errorf("publish %s: %w: %w", r.Subject, ErrTooLarge, err))
				p.mu.Unlock()
				continue
			}
			p.failFrom(b, i, fmt.Errorf("publish %s: %w", r.Subject, err))
			p.mu.Unlock()
			break
		}
	}
	m.Data = nil

	select {
	case <-b.done:
	case <-b.timer.C:
		p.mu.Lock()
		p.failFrom(b, 0, errors.New("no ack from JetStream within nats.publish_timeout"))
		p.mu.Unlock()
	case <-ctx.Done():
		p.mu.Lock()
		p.failFrom(b, 0, fmt.Errorf("waiting for acks: %w", ctx.Err()))
		p.mu.Unlock()
	}
	p.mu.Lock()
	return p.finish(b, recs, &res)
}

// fits reports whether the n slots from the next id on are free. Lock held.
func (p *Publisher) fits(n int) bool {
	for id := p.next; id < p.next+uint64(n); id++ {
		if p.ring[id&p.mask].id != 0 {
			return false
		}
	}
	return true
}

// settle records the outcome of message i of b if it still waits, freeing
// its slot. Lock held.
func (p *Publisher) settle(b *pubBatch, i int, outcome uint8, err error) {
	p.mark(b, i, outcome)
	if err != nil && b.err == nil {
		b.err = err
	}
	if b.left == 0 {
		b.signal()
	}
	p.freed()
}

// mark sets the outcome of message i of b if it still waits and frees its
// slot, so a late ack is ignored. Lock held.
func (p *Publisher) mark(b *pubBatch, i int, outcome uint8) {
	if b.acks[i] != ackWaiting {
		return
	}
	b.acks[i] = outcome
	if id := b.ids[i]; id != 0 {
		if slot := &p.ring[id&p.mask]; slot.id == id {
			*slot = pending{}
			b.left--
			p.awaiting.Add(-1)
		}
	}
}

// failFrom gives up on the messages of b from index i on that are still
// waiting. Lock held.
func (p *Publisher) failFrom(b *pubBatch, i int, err error) {
	for j := i; j < len(b.ids); j++ {
		p.mark(b, j, ackFailed)
	}
	if b.err == nil {
		b.err = err
	}
	if b.left == 0 {
		b.signal()
	}
	p.freed()
}

// signal tells the waiting Publish that no ack is awaited any more.
func (b *pubBatch) signal() {
	select {
	case b.done <- struct{}{}:
	default:
	}
}

// finish turns b's outcomes into res; called with the lock held, releases it.
func (p *Publisher) finish(b *pubBatch, recs []spool.Record, res *PublishResult) (PublishResult, error) {
	err := b.err
	p.mu.Unlock()
	// A value sent just before the timeout won would stay in the pooled
	// channel.
	select {
	case <-b.done:
	default:
	}
	for i := range recs {
		switch b.acks[i] {
		case ackStored:
			res.Stored++
		case ackDuplicate:
			res.Duplicates++
		case ackTooLarge:
			res.TooLarge = append(res.TooLarge, i)
		default:
			res.Failed = append(res.Failed, i)
		}
	}
	if len(res.Failed) > 0 || len(res.TooLarge) > 0 {
		if err == nil {
			err = errors.New("no ack")
		}
		return *res, fmt.Errorf("%w: %w", ErrNotStored, err)
	}
	return *res, nil
}

// freed wakes publishers waiting for a ring slot. Lock held.
func (p *Publisher) freed() {
	if p.wait > 0 {
		close(p.space)
		p.space = make(chan struct{})
		p.wait = 0
	}
}

// onAck takes an ack (or a failure) from the stream for one publish.
func (p *Publisher) onAck(m *nats.Msg) {
	id, err := strconv.ParseUint(strings.TrimPrefix(m.Subject, p.inbox), 36, 64)
	if err != nil || id == 0 {
		return
	}
	outcome, ackErr := parseAck(m)
	p.mu.Lock()
	slot := &p.ring[id&p.mask]
	if slot.id != id {
		p.mu.Unlock()
		p.late.Add(1)
		return
	}
	b, idx := slot.b, slot.idx
	*slot = pending{}
	p.awaiting.Add(-1)
	b.acks[idx] = outcome
	if ackErr != nil && b.err == nil {
		b.err = fmt.Errorf("publish %s: %w", m.Subject, ackErr)
	}
	b.left--
	if b.left == 0 {
		b.signal()
	}
	p.freed()
	p.mu.Unlock()
}

// parseAck reads a JetStream publish ack: {"stream":"COORDS","seq":12}
// (with "duplicate":true for a known Nats-Msg-Id), an error
// {"error":{"code":503,"description":"..."}}, or a status message such as
// 503 no responders (no stream takes the subject).
func parseAck(m *nats.Msg) (uint8, error) {
	if len(m.Data) == 0 {
		if st := m.Header.Get("Status"); st != "" {
			if st == "503" {
				return ackFailed, nats.ErrNoResponders
			}
			return ackFailed, fmt.Errorf("status %s %s", st, m.Header.Get("Description"))
		}
		return ackFailed, errors.New("empty ack")
	}
	d := m.Data
	if bytes.HasPrefix(d, []byte(`{"stream":`)) && !bytes.Contains(d, []byte(`"error"`)) {
		if i := bytes.Index(d, []byte(`"duplicate":`)); i >= 0 &&
			bytes.HasPrefix(bytes.TrimLeft(d[i+len(`"duplicate":`):], " "), []byte("true")) {
			return ackDuplicate, nil
		}
		return ackStored, nil
	}
	// Rare: an error, or a shape this parser does not know.
	var ack struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Stream    string `json:"stream"`
		Seq       uint64 `json:"seq"`
		Duplicate bool   `json:"duplicate"`
	}
	if err := json.Unmarshal(d, &ack); err != nil {
		return ackFailed, fmt.Errorf("unreadable ack %q: %w", d, err)
	}
	switch {
	case ack.Error != nil && ack.Error.ErrCode == jsMsgTooLarge:
		return ackTooLarge, fmt.Errorf("%w: JetStream error %d (%d): %s", ErrTooLarge, ack.Error.Code, ack.Error.ErrCode, ack.Error.Description)
	case ack.Error != nil:
		return ackFailed, fmt.Errorf("JetStream error %d (%d): %s", ack.Error.Code, ack.Error.ErrCode, ack.Error.Description)
	case ack.Stream == "" || ack.Seq == 0:
		return ackFailed, fmt.Errorf("ack without stream or sequence: %q", d)
	case ack.Duplicate:
		return ackDuplicate, nil
	}
	return ackStored, nil
}

const headerDevice = "Ubiqo-Device"

func (p *Publisher) getBatch(n int) *pubBatch {
	b, _ := p.pool.Get().(*pubBatch)
	if b == nil {
		b = &pubBatch{done: make(chan struct{}, 1)}
		b.msg.Header = nats.Header{
			jetstream.MsgIDHeader: []string{""},
			headerDevice:          []string{""},
			"Content-Type":        []string{"application/json"},
		}
	}
	if cap(b.ids) < n {
		b.ids = make([]uint64, n)
		b.acks = make([]uint8, n)
	}
	b.ids, b.acks = b.ids[:n], b.acks[:n]
	clear(b.ids)
	clear(b.acks)
	return b
}

func (p *Publisher) putBatch(b *pubBatch) {
	if cap(b.ids) > 4096 {
		return // a rare huge batch: let it go
	}
	p.pool.Put(b)
}

func (p *Publisher) subject(id string) string {
	buf := make([]byte, 0, len(p.prefix)+1+len(id)+8)
	buf = append(buf, p.prefix...)
	buf = append(buf, '.')
	buf = coord.AppendToken(buf, id)
	return string(buf)
}
