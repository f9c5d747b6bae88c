package alert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Headers of the messages on ALERTS, besides Nats-Msg-Id (the alert id).
const (
	HeaderDevice    = "Ubiqo-Device"
	HeaderAlertKind = "Ubiqo-Alert-Kind"
	HeaderReplay    = "Ubiqo-Replay"
)

// stateStore is the role of the DEVICES bucket the alerter uses;
// jetstream.KeyValue satisfies it.
type stateStore interface {
	Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error)
	Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error)
	Update(ctx context.Context, key string, value []byte, revision uint64) (uint64, error)
	ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error)
	WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error)
}

// publisher publishes device states (compare-and-set on the DEVICES
// bucket's stream) and alerts without waiting for each ack, so a batch's
// writes are pipelined; jetstream.JetStream satisfies it.
type publisher interface {
	PublishMsgAsync(msg *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
}

// lastAlertGetter reads the newest message of an ALERTS subject (to tell
// whether a pending alert read from KV was published already);
// jetstream.Stream satisfies it.
type lastAlertGetter interface {
	GetLastMsgForSubject(ctx context.Context, subject string) (*jetstream.RawStreamMsg, error)
}

// errConflict is returned when a state write kept losing compare-and-set.
var errConflict = errors.New("device state changed concurrently too many times")

const maxCASAttempts = 16

// entry is the cached state of one device. mu serialises everything done
// to the device in this process (the consume loop and the offline scan);
// across processes the KV compare-and-set does.
type entry struct {
	mu     sync.Mutex
	st     *State
	rev    uint64 // KV revision st was read or written at; 0 = no key yet
	loaded bool   // st mirrors the bucket as of rev (Pending excepted, see processor)
	// verify: st.Pending was read from KV, so it may have been published
	// long ago; check ALERTS before publishing it again.
	verify bool
}

// cache holds every device state this process knows, sharded to keep the
// lookup lock short.
type cache struct {
	seed   maphash.Seed
	shards [64]struct {
		mu sync.Mutex
		m  map[string]*entry
	}
}

func newCache() *cache {
	c := &cache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]*entry)
	}
	return c
}

func (c *cache) get(token string) *entry {
	s := &c.shards[maphash.String(c.seed, token)%uint64(len(c.shards))]
	s.mu.Lock()
	e := s.m[token]
	if e == nil {
		e = &entry{}
		s.m[token] = e
	}
	s.mu.Unlock()
	return e
}

func (c *cache) has(token string) bool {
	s := &c.shards[maphash.String(c.seed, token)%uint64(len(c.shards))]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[token] != nil
}

// tokens returns the tokens in the cache.
func (c *cache) tokens() []string {
	var out []string
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for t := range s.m {
			out = append(out, t)
		}
		s.mu.Unlock()
	}
	return out
}

func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// guard decides, in a replay, whether an alert may be published and
// records what was published; nil in the live alerter.
type guard interface {
	allow(ctx context.Context, a *Alert) (bool, error)
	published(ctx context.Context, a *Alert, duplicate bool) error
}

// processor evaluates fixes against device states and makes the outcome
// durable, a batch of devices at a time, in a fixed order:
//
//  1. lock the devices; load the states not cached (KV get);
//  2. publish any alerts left Pending in a state by an interrupted run
//     (checked against ALERTS first when read from KV);
//  3. evaluate (the rules engine) and encode the new states;
//  4. write every changed state with compare-and-set on the revision it
//     was read at (one pipelined round of publishes to the bucket's
//     stream), the alerts it raised stored in it as Pending (an outbox);
//     the devices that lost to another writer are reloaded and go back
//     to 1;
//  5. publish the alerts to ALERTS (pipelined) with Nats-Msg-Id = alert
//     id, and forget them from the cached state's Pending.
//
// Publishing after the write means an instance that lost the race never
// published alerts from a stale state; Pending means a crash between 4 and
// 5 loses nothing: whoever handles the device next publishes them
// (duplicates are dropped by the stream, and a Pending older than the
// stream's duplicate window is first looked up in ALERTS). The stored
// Pending is cleared by the device's next write, not by an extra one. Only
// after run returns does the consume loop ack the fixes.
type processor struct {
	engine *Engine
	kv     stateStore      // nil: states live in memory only (replay)
	pub    publisher       // nil: alerts are computed, not published
	alerts lastAlertGetter // ALERTS, for verifying Pending read from KV
	// kvStream is the DEVICES bucket's stream, to read the sequence of a
	// deleted key's delete marker (see load).
	kvStream lastAlertGetter
	prefix   string // ALERTS subject prefix
	bucket   string // the DEVICES bucket's subject prefix, $KV.DEVICES.
	timeout  time.Duration
	workers  int // concurrent KV reads
	cache    *cache
	guard    guard
	replay   string // replay durable, written as HeaderReplay; empty live
	log      zerolog.Logger
	m        *metrics
	// warmed: every state stored when the alerter started is in the
	// cache, so a device not in it is new (written with create semantics;
	// if another instance created it meanwhile the write conflicts and
	// the device is reloaded).
	warmed bool

	// onAlert is called for each alert the stream stored for the first
	// time (not a duplicate): the log notifier.
	onAlert func(a *Alert)
}

// job is the work on one device within run.
type job struct {
	token    string
	deviceID string
	// fn changes the state and returns the alerts it raised and whether
	// the state changed; it must depend only on the state it is given: it
	// runs again on a fresher state after a conflict.
	fn func(st *State) ([]Alert, bool)

	e      *entry
	alerts []Alert
	data   []byte // encoded state to write; nil = nothing to write
	err    error
}

// run processes jobs (at most one per device) and sets each job's err when
// its outcome is not durable (the caller retries it later).
func (p *processor) run(ctx context.Context, jobs []*job) {
	sort.Slice(jobs, func(i, k int) bool { return jobs[i].token < jobs[k].token }) // lock order
	for _, j := range jobs {
		j.e = p.cache.get(j.token)
		j.e.mu.Lock()
	}
	defer func() {
		for _, j := range jobs {
			j.e.mu.Unlock()
		}
	}()
	todo := jobs
	for attempt := 1; len(todo) > 0; attempt++ {
		p.loadAll(ctx, todo)
		p.flushPending(ctx, todo)
		p.evaluate(todo)
		todo = p.writeAll(ctx, todo)
		if attempt >= maxCASAttempts {
			for _, j := range todo {
				j.err = fmt.Errorf("device %s: %w", j.token, errConflict)
			}
			break
		}
	}
	p.publishAll(ctx, jobs, func(j *job) []Alert { return j.alerts })
}

func (p *processor) loadAll(ctx context.Context, jobs []*job) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(1, p.workers))
	for _, j := range jobs {
		if j.err != nil || j.e.loaded {
			continue
		}
		if p.kv == nil || (p.warmed && j.e.st == nil) {
			_ = p.load(ctx, j.token, j.deviceID, j.e)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			j.err = p.load(ctx, j.token, j.deviceID, j.e)
		}()
	}
	wg.Wait()
}

// load reads the device's state into e (a new state when there is none).
func (p *processor) load(ctx context.Context, token, deviceID string, e *entry) error {
	if e.loaded {
		return nil
	}
	if p.kv == nil || (p.warmed && e.st == nil) {
		if e.st == nil {
			e.st, e.rev = NewState(deviceID), 0
		}
		e.loaded = true
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	kve, err := p.kv.Get(ctx, token)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// A key deleted or purged (nats kv del DEVICES <token>) ends in a
		// delete marker: the write must expect its sequence, as 0 would
		// never match and the device's fixes would conflict for ever.
		rev, err := p.deletedRev(ctx, token)
		if err != nil {
			return fmt.Errorf("read state of %s: %w", token, err)
		}
		e.st, e.rev = NewState(deviceID), rev
	case err != nil:
		return fmt.Errorf("read state of %s: %w", token, err)
	default:
		e.st, e.rev = p.decode(token, deviceID, kve.Value()), kve.Revision()
	}
	p.m.loads.Inc()
	e.loaded, e.verify = true, len(e.st.Pending) > 0
	return nil
}

// deletedRev is the sequence of the last message on token's key, a delete
// or purge marker when Get found no value; 0 when the key never existed.
func (p *processor) deletedRev(ctx context.Context, token string) (uint64, error) {
	if p.kvStream == nil {
		return 0, nil
	}
	m, err := p.kvStream.GetLastMsgForSubject(ctx, p.bucket+token)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	}
	if op := m.Header.Get("KV-Operation"); op != "DEL" && op != "PURGE" {
		// A value after all: another instance created the key since the
		// Get. Expecting 0 makes the write conflict, and the device is
		// evaluated again on that state rather than overwriting it.
		return 0, nil
	}
	return m.Sequence, nil
}

// decode reads a stored state; an unreadable one is replaced by an empty
// state (logged), which the next write overwrites.
func (p *processor) decode(token, deviceID string, data []byte) *State {
	st := NewState(deviceID)
	if err := json.Unmarshal(data, st); err != nil || (deviceID != "" && st.DeviceID != "" && st.DeviceID != deviceID) {
		p.log.Warn().Err(err).Str("key", token).Msg("unreadable device state in KV; starting the device afresh")
		return NewState(deviceID)
	}
	if st.DeviceID == "" {
		st.DeviceID = deviceID
	}
	return st
}

// flushPending publishes the alerts left Pending in the jobs' states.
func (p *processor) flushPending(ctx context.Context, jobs []*job) {
	var some []*job
	for _, j := range jobs {
		if j.err != nil || len(j.e.st.Pending) == 0 {
			continue
		}
		if j.e.verify && p.alerts != nil {
			kept := j.e.st.Pending[:0]
			pending := j.e.st.Pending
			for k, a := range pending {
				// kept overwrites only entries up to k: pending[k+1:] is intact.
				done, err := p.inAlerts(ctx, &a, pending[k+1:])
				if err != nil {
					j.err = err
					break
				}
				if !done {
					kept = append(kept, a)
				}
			}
			j.e.st.Pending = kept
			if j.err != nil {
				continue
			}
		}
		j.e.verify = false
		some = append(some, j)
	}
	if len(some) > 0 {
		p.publishAll(ctx, some, func(j *job) []Alert { return j.e.st.Pending })
	}
}

// inAlerts reports whether a (read from a stored Pending) is in ALERTS
// already. The newest message on its subject tells: a itself; or an alert
// of later, the Pending entries after a, which were published after it;
// or a strictly later alert (raised after a was flushed). One at the same
// time with another id does not tell: a fix can raise two alerts of a kind
// (nested zones, two overspeed rules) on one subject, and a crash may have
// stored only the first; a is then published again, and the stream's
// Nats-Msg-Id dedupe drops it if it was stored.
func (p *processor) inAlerts(ctx context.Context, a *Alert, later []Alert) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	raw, err := p.alerts.GetLastMsgForSubject(ctx, a.Subject(p.prefix))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up alert %s in ALERTS: %w", a.ID, err)
	}
	id := raw.Header.Get(jetstream.MsgIDHeader)
	if id == a.ID {
		return true, nil
	}
	for i := range later {
		if later[i].ID == id {
			return true, nil
		}
	}
	var last Alert
	if json.Unmarshal(raw.Data, &last) == nil && last.TS.After(a.TS) {
		return true, nil
	}
	return false, nil
}

// evaluate runs the jobs' functions and encodes the changed states, on all
// cores.
func (p *processor) evaluate(jobs []*job) {
	var next sync.WaitGroup
	ch := make(chan *job)
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(jobs)); w++ {
		next.Add(1)
		go func() {
			defer next.Done()
			for j := range ch {
				alerts, changed := j.fn(j.e.st)
				j.alerts, j.data = alerts, nil
				if !changed {
					continue
				}
				j.e.st.Pending = alerts
				if p.kv == nil {
					j.data = []byte{}
					continue
				}
				data, err := json.Marshal(j.e.st)
				if err != nil {
					j.err = fmt.Errorf("encode state of %s: %w", j.token, err)
					continue
				}
				j.data = data
			}
		}()
	}
	for _, j := range jobs {
		if j.err == nil {
			ch <- j
		}
	}
	close(ch)
	next.Wait()
}

// writeAll writes the encoded states with compare-and-set and returns the
// jobs that lost to another writer, reloaded, to be evaluated again.
func (p *processor) writeAll(ctx context.Context, jobs []*job) (conflicts []*job) {
	type pending struct {
		j *job
		f jetstream.PubAckFuture
	}
	var inflight []pending
	for _, j := range jobs {
		if j.err != nil || j.data == nil {
			continue
		}
		if p.kv == nil {
			j.e.rev++
			continue
		}
		msg := nats.NewMsg(p.bucket + j.token)
		msg.Data = j.data
		f, err := p.pub.PublishMsgAsync(msg, jetstream.WithExpectLastSequencePerSubject(j.e.rev))
		if err != nil {
			j.err, j.e.loaded = fmt.Errorf("write state of %s: %w", j.token, err), false
			continue
		}
		inflight = append(inflight, pending{j, f})
	}
	if len(inflight) == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	for _, w := range inflight {
		ack, err := waitAck(wctx, w.f)
		switch {
		case err == nil:
			w.j.e.rev = ack.Sequence
			p.m.writes.Inc()
		case isConflict(err):
			p.m.conflicts.Inc()
			w.j.e.loaded = false
			w.j.alerts = nil
			conflicts = append(conflicts, w.j)
		default:
			w.j.err, w.j.e.loaded = fmt.Errorf("write state of %s: %w", w.j.token, err), false
		}
	}
	return conflicts
}

// publishAll publishes the alerts of the jobs (of), pipelined; a job whose
// alerts all reached ALERTS has them removed from its cached Pending.
func (p *processor) publishAll(ctx context.Context, jobs []*job, of func(j *job) []Alert) {
	type pending struct {
		j *job
		a *Alert
		f jetstream.PubAckFuture
	}
	var inflight []pending
	var done []*job
	for _, j := range jobs {
		alerts := of(j)
		if j.err != nil || len(alerts) == 0 {
			continue
		}
		for i := range alerts {
			a := &alerts[i]
			if p.guard != nil {
				ok, err := p.guard.allow(ctx, a)
				if err != nil {
					j.err = err
					break
				}
				if !ok {
					p.m.alerts.WithLabelValues(a.Kind, "suppressed").Inc()
					continue
				}
			}
			if p.pub == nil {
				p.m.alerts.WithLabelValues(a.Kind, "computed").Inc()
				continue
			}
			f, err := p.pub.PublishMsgAsync(p.alertMsg(a))
			if err != nil {
				j.err = fmt.Errorf("publish alert %s: %w", a.ID, err)
				break
			}
			inflight = append(inflight, pending{j, a, f})
		}
		done = append(done, j)
	}
	wctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	for _, w := range inflight {
		ack, err := waitAck(wctx, w.f)
		if err != nil {
			if w.j.err == nil {
				w.j.err = fmt.Errorf("publish alert %s on %s: %w", w.a.ID, w.a.Subject(p.prefix), err)
			}
			continue
		}
		if ack.Duplicate {
			p.m.alerts.WithLabelValues(w.a.Kind, "duplicate").Inc()
		} else {
			p.m.alerts.WithLabelValues(w.a.Kind, "published").Inc()
			if p.onAlert != nil {
				p.onAlert(w.a)
			}
		}
		if p.guard != nil {
			if err := p.guard.published(ctx, w.a, ack.Duplicate); err != nil && w.j.err == nil {
				w.j.err = err
			}
		}
	}
	for _, j := range done {
		if j.err == nil {
			j.e.st.Pending = nil // the next write stores that
		}
	}
}

func (p *processor) alertMsg(a *Alert) *nats.Msg {
	body, _ := json.Marshal(a) // an Alert always encodes: its details are JSON values
	msg := nats.NewMsg(a.Subject(p.prefix))
	msg.Data = body
	msg.Header.Set(jetstream.MsgIDHeader, a.ID)
	msg.Header.Set("Content-Type", "application/json")
	msg.Header.Set(HeaderDevice, a.DeviceID)
	msg.Header.Set(HeaderAlertKind, a.Kind)
	if p.replay != "" {
		msg.Header.Set(HeaderReplay, p.replay)
	}
	return msg
}

// waitAck waits for an async publish's ack until ctx ends.
func waitAck(ctx context.Context, f jetstream.PubAckFuture) (*jetstream.PubAck, error) {
	select {
	case ack := <-f.Ok():
		return ack, nil
	case err := <-f.Err():
		return nil, err
	case <-ctx.Done():
		return nil, fmt.Errorf("no ack from the server in time (alert.timeout): %w", ctx.Err())
	}
}

// isConflict reports whether err is a lost compare-and-set: the key was
// written by someone else since it was read.
func isConflict(err error) bool {
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var api *jetstream.APIError
	return errors.As(err, &api) && (api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
