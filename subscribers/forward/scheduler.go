package forward

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// held is one message the forwarder holds: dispatched by the runtime and not
// yet settled.
type held struct {
	msg *subscribers.Msg
	// settles has one entry per delivery of this stream sequence: the
	// server may redeliver a message the forwarder still holds (an
	// InProgress lost in a reconnect); the copies share the first one's fate.
	settles []subscribers.Settle
	dev     *device
	// finished is set when the message was settled for good (acked, or
	// dead-lettered); a dead-letter copy that failed leaves it false, and
	// the message comes back as new work.
	finished bool
	// taken is how many of settles the runner took to settle; a copy added
	// after that is settled by done.
	taken int
}

func (h *held) seq() uint64 { return h.msg.StreamSeq }

// device is the queue of one device's held messages, in stream order.
type device struct {
	token string
	queue []*held
	// inflight > 0 while queue[:inflight] is out in a unit; the device is
	// then neither ready nor given another unit.
	inflight int
	ready    bool // on the scheduler's ready list
}

// unit is what one request carries: one message, or for the batch format
// the heads of several devices (a device's messages consecutive and in
// order). Its devices stay in flight until the unit is settled, so a retried
// unit keeps its place in every device's order.
type unit struct {
	msgs     []*held
	attempts int // attempts that count against MaxDeliver
	req      request
	built    bool
}

// startGate holds every message back at start while an earlier run's
// unacknowledged messages are still to come back (see the package comment,
// "Per-device order"). Not only the newer ones wait: a redelivery can be
// lost in transit (sent to the stopped run's pull request) and come back
// only after AckWait, after later messages of its device.
type startGate struct {
	active   bool
	last     uint64 // newest stream sequence the earlier run was given; kept after the gate opens
	waiting  int    // of its unacknowledged messages, how many not back yet
	deadline *time.Timer
}

// scheduler orders the held messages of one target: per device, by stream
// sequence, one unit in flight per device, ready devices served in turn.
// Retried units wait on timers, not on workers.
type scheduler struct {
	batch        int
	onOutOfOrder func(*subscribers.Msg)
	onStale      func(*subscribers.Msg)

	mu      sync.Mutex
	devices map[string]*device
	ready   []*device
	due     []*unit // retries whose time came; served before new units
	bySeq   map[uint64]*held
	timers  map[*unit]*time.Timer
	gate    startGate
	closed  bool
	wake    chan struct{} // one token: "look again"

	// settled holds the sequences this run finished, to recognise a stale
	// redelivery: a copy the server sent because an ack came after AckWait
	// (a starved process), arriving after the original was settled. Sending
	// it would repeat a coordinate after its device's later ones. Only the
	// exact sequence tells: a device's highest settled sequence does not,
	// because a delivery can be lost on the way (a connection that breaks
	// with a pull response in it) while the device's next message arrives
	// and is sent; the lost one comes back after AckWait and must be sent,
	// late, not acked unsent.
	settled seqSet
	// doneHigh is each device's highest sequence sent or given up, to count
	// a message that arrives after a newer one of its device went.
	doneHigh map[string]uint64
}

// seqSet is a set of stream sequences that forgets: an entry lives at least
// keep and at most about twice that. A stale copy arrives shortly after its
// original was settled, so keep (a few AckWaits) bounds the memory to the
// messages of that time, one bit each.
type seqSet struct {
	keep      time.Duration
	cur, prev map[uint64]uint64 // seq/64 -> bits
	rotated   time.Time
}

func (s *seqSet) add(seq uint64, now time.Time) {
	if s.cur == nil || now.Sub(s.rotated) >= s.keep {
		s.prev, s.cur, s.rotated = s.cur, make(map[uint64]uint64), now
	}
	s.cur[seq>>6] |= 1 << (seq & 63)
}

func (s *seqSet) has(seq uint64) bool {
	w, b := seq>>6, uint64(1)<<(seq&63)
	return s.cur[w]&b != 0 || s.prev[w]&b != 0
}

// newScheduler returns a scheduler sending units of at most batch messages
// that remembers what it settled for at least keep.
func newScheduler(batch int, keep time.Duration, onOutOfOrder, onStale func(*subscribers.Msg)) *scheduler {
	return &scheduler{
		batch:        max(batch, 1),
		onOutOfOrder: onOutOfOrder,
		onStale:      onStale,
		devices:      make(map[string]*device),
		bySeq:        make(map[uint64]*held),
		timers:       make(map[*unit]*time.Timer),
		wake:         make(chan struct{}, 1),
		settled:      seqSet{keep: keep},
		doneHigh:     make(map[string]uint64),
	}
}

// holdBack activates the start gate: no message is sent until waiting
// messages at or below sequence last were added (so each device's queue
// holds them all, in order), or until maxWait passed.
func (s *scheduler) holdBack(last uint64, waiting int, maxWait time.Duration) {
	if waiting <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gate = startGate{active: true, last: last, waiting: waiting}
	s.gate.deadline = time.AfterFunc(maxWait, func() {
		s.mu.Lock()
		s.openGateLocked()
		s.mu.Unlock()
	})
}

// gateActive reports whether messages are still held back.
func (s *scheduler) gateActive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gate.active
}

func (s *scheduler) openGateLocked() {
	if !s.gate.active {
		return
	}
	s.gate.active = false
	if s.gate.deadline != nil {
		s.gate.deadline.Stop()
	}
	for _, d := range s.devices {
		s.maybeReadyLocked(d)
	}
	s.signal()
}

func (s *scheduler) eligibleLocked(*held) bool { return !s.gate.active }

// add files m in its device's queue. It never blocks on the network. After
// close, m is handed back at once (retry now).
func (s *scheduler) add(m *subscribers.Msg, settle subscribers.Settle) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		settle(errHandBack)
		return
	}
	seq := m.StreamSeq
	if h := s.bySeq[seq]; h != nil {
		h.settles = append(h.settles, settle)
		s.mu.Unlock()
		return
	}
	tok := m.Token()
	if s.settled.has(seq) {
		s.mu.Unlock()
		// Settled before: ack the copy (after an ack that is a no-op, after
		// a DLQ copy and term it only stops the redelivery).
		settle(nil)
		if s.onStale != nil {
			s.onStale(m)
		}
		return
	}
	d := s.devices[tok]
	if d == nil {
		d = &device{token: tok}
		s.devices[tok] = d
	}
	h := &held{msg: m, settles: []subscribers.Settle{settle}, dev: d}
	s.bySeq[seq] = h

	// Insert by stream sequence; the part in flight is fixed.
	pos := len(d.queue)
	for pos > d.inflight && d.queue[pos-1].seq() > seq {
		pos--
	}
	outOfOrder := pos == d.inflight && d.inflight > 0 && d.queue[pos-1].seq() > seq ||
		seq < s.doneHigh[tok]
	d.queue = slices.Insert(d.queue, pos, h)

	if s.gate.active && seq <= s.gate.last {
		s.gate.waiting--
		if s.gate.waiting <= 0 {
			s.openGateLocked()
		}
	}
	s.maybeReadyLocked(d)
	s.mu.Unlock()
	if outOfOrder && s.onOutOfOrder != nil {
		s.onOutOfOrder(m)
	}
}

func (s *scheduler) maybeReadyLocked(d *device) {
	if d.inflight == 0 && !d.ready && len(d.queue) > 0 && s.eligibleLocked(d.queue[0]) {
		d.ready = true
		s.ready = append(s.ready, d)
		s.signal()
	}
}

func (s *scheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// next returns the next unit to send: a retry that is due, else a new unit
// from the ready devices. It waits while there is none and returns nil when
// ctx is done or the scheduler closed.
func (s *scheduler) next(ctx context.Context) *unit {
	for {
		if ctx.Err() != nil {
			return nil
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil
		}
		var u *unit
		if len(s.due) > 0 {
			u = s.due[0]
			s.due[0] = nil
			s.due = s.due[1:]
		} else if len(s.ready) > 0 {
			u = s.formLocked()
		}
		more := len(s.due) > 0 || len(s.ready) > 0
		s.mu.Unlock()
		if more {
			s.signal() // pass the baton to another worker
		}
		if u != nil {
			return u
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *scheduler) formLocked() *unit {
	u := &unit{msgs: make([]*held, 0, min(s.batch, 16))}
	for len(s.ready) > 0 && len(u.msgs) < s.batch {
		d := s.ready[0]
		s.ready[0] = nil
		s.ready = s.ready[1:]
		d.ready = false
		n := 0
		for n < len(d.queue) && len(u.msgs) < s.batch && s.eligibleLocked(d.queue[n]) {
			u.msgs = append(u.msgs, d.queue[n])
			n++
		}
		d.inflight = n
	}
	return u
}

// settlesOf returns the settle functions of h's deliveries so far, for the
// runner to call; a delivery that joins h later is settled by done.
func (s *scheduler) settlesOf(h *held) []subscribers.Settle {
	s.mu.Lock()
	defer s.mu.Unlock()
	h.taken = len(h.settles)
	return h.settles[:h.taken:h.taken]
}

// done removes a settled unit's messages and makes their devices ready for
// their next message. The finished ones are remembered, so that a stale
// copy of one is acked, not sent again. A copy that joined a message while
// its unit was being settled is settled here: acked with a finished
// message, handed back otherwise.
func (s *scheduler) done(u *unit) {
	now := time.Now()
	type late struct {
		settle   subscribers.Settle
		finished bool
	}
	var lates []late
	defer func() {
		for _, l := range lates {
			if l.finished {
				l.settle(nil)
			} else {
				l.settle(errHandBack)
			}
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, h := range u.msgs {
		seq := h.seq()
		delete(s.bySeq, seq)
		for _, st := range h.settles[h.taken:] {
			lates = append(lates, late{st, h.finished})
		}
		d := h.dev
		if h.finished {
			s.settled.add(seq, now)
		}
		if seq > s.doneHigh[d.token] {
			s.doneHigh[d.token] = seq
		}
		if d.inflight == 0 {
			continue // this device was already handled for an earlier message
		}
		clear(d.queue[:d.inflight])
		d.queue = d.queue[d.inflight:]
		d.inflight = 0
		if len(d.queue) == 0 {
			delete(s.devices, d.token)
			continue
		}
		s.maybeReadyLocked(d)
	}
}

// retry sends u again after delay; its devices stay in flight meanwhile.
func (s *scheduler) retry(u *unit, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // close has handed u's messages back
	}
	if delay <= 0 {
		s.due = append(s.due, u)
		s.signal()
		return
	}
	s.timers[u] = time.AfterFunc(delay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if _, ok := s.timers[u]; !ok {
			return
		}
		delete(s.timers, u)
		s.due = append(s.due, u)
		s.signal()
	})
}

// close stops the scheduler and returns every message still held, in stream
// order, for the caller to hand back. Units out with workers must be
// finished before (their messages are returned too, and must not be settled
// twice).
func (s *scheduler) close() []*held {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for u, t := range s.timers {
		t.Stop()
		delete(s.timers, u)
	}
	if s.gate.deadline != nil {
		s.gate.deadline.Stop()
	}
	out := make([]*held, 0, len(s.bySeq))
	for _, h := range s.bySeq {
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b *held) int {
		switch {
		case a.seq() < b.seq():
			return -1
		case a.seq() > b.seq():
			return 1
		}
		return 0
	})
	s.bySeq = map[uint64]*held{}
	s.devices = map[string]*device{}
	s.ready, s.due = nil, nil
	return out
}

// stats returns how many messages are held, and in how many devices.
func (s *scheduler) stats() (msgs, devices int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bySeq), len(s.devices)
}
