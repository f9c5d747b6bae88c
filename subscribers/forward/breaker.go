package forward

import (
	"context"
	"sync"
	"time"
)

// breakerState is the state of a circuit breaker; the values are those of
// the ubiqo_forward_breaker_state gauge.
type breakerState int

const (
	breakerClosed   breakerState = 0
	breakerHalfOpen breakerState = 1
	breakerOpen     breakerState = 2
)

func (s breakerState) String() string {
	switch s {
	case breakerClosed:
		return "closed"
	case breakerHalfOpen:
		return "half-open"
	default:
		return "open"
	}
}

// breaker is a circuit breaker for one target. Closed, every request goes;
// after threshold consecutive failures it opens and no request goes; after
// cooldown exactly one request (the probe) goes while the others wait, and
// its result closes the breaker or opens it again.
//
// Waiting is the point: an open breaker holds the messages back, it never
// fails them, so an outage costs no attempts and drops nothing.
type breaker struct {
	threshold int // <= 0: never opens
	cooldown  time.Duration
	onChange  func(from, to breakerState)

	mu       sync.Mutex
	state    breakerState
	failures int
	openedAt time.Time
	probing  bool
	changed  chan struct{} // closed and replaced at every state change
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(from, to breakerState)) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, onChange: onChange, changed: make(chan struct{})}
}

// acquire waits until a request may go. probe is true for the single
// half-open probe: the caller must then call record (or release) exactly
// once. closed reports whether the breaker was closed, i.e. whether a
// failure of this request counts against the message's attempts.
func (b *breaker) acquire(ctx context.Context) (probe, closed bool, err error) {
	if b.threshold <= 0 {
		return false, true, nil
	}
	for {
		b.mu.Lock()
		var wait time.Duration
		switch b.state {
		case breakerClosed:
			b.mu.Unlock()
			return false, true, nil
		case breakerOpen:
			wait = time.Until(b.openedAt.Add(b.cooldown))
			if wait <= 0 {
				b.setLocked(breakerHalfOpen)
				b.probing = true
				b.mu.Unlock()
				return true, false, nil
			}
		case breakerHalfOpen:
			if !b.probing {
				b.probing = true
				b.mu.Unlock()
				return true, false, nil
			}
			wait = time.Hour
		}
		ch := b.changed
		b.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-ch:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return false, false, ctx.Err()
		}
		t.Stop()
	}
}

// record reports the result of a request that acquire let through: ok is
// false for a retryable failure (the target is unwell), true otherwise.
func (b *breaker) record(probe, ok bool) {
	if b.threshold <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
		if ok {
			b.failures = 0
			b.setLocked(breakerClosed)
		} else {
			b.openedAt = time.Now()
			b.setLocked(breakerOpen)
		}
		return
	}
	if b.state != breakerClosed {
		return // a request that started before the breaker opened
	}
	if ok {
		b.failures = 0
		return
	}
	b.failures++
	if b.failures >= b.threshold {
		b.openedAt = time.Now()
		b.setLocked(breakerOpen)
	}
}

// release gives back a probe that was not sent (shutdown).
func (b *breaker) release(probe bool) {
	if !probe || b.threshold <= 0 {
		return
	}
	b.mu.Lock()
	b.probing = false
	b.wakeLocked()
	b.mu.Unlock()
}

// State returns the current state.
func (b *breaker) State() breakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state
}

func (b *breaker) setLocked(s breakerState) {
	from := b.state
	b.state = s
	b.wakeLocked()
	if from != s && b.onChange != nil {
		b.onChange(from, s)
	}
}

func (b *breaker) wakeLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}
