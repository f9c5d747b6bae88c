package subscribers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// admit decodes a delivered message. A body that is no canonical coordinate
// is dead-lettered at once and nil returned; so is a message without
// JetStream metadata (it cannot be settled at all, so it is only logged).
func (r *Runtime) admit(ctx context.Context, jm jetstream.Msg) *Msg {
	m, err := r.decode(jm)
	if m.NumDelivered > 1 {
		r.metrics.redelivered.Inc()
	}
	if err == nil {
		return m
	}
	if m.NumDelivered == 0 {
		r.log.Error().Err(err).Str("subject", m.Subject).Msg("message without JetStream metadata ignored")
		return nil
	}
	r.settle(ctx, m, err)
	return nil
}

// batchLoop feeds a BatchHandler.
type batchLoop struct{ h BatchHandler }

// fetchSize: two batches per request; the channel to the loop and the batch
// queue to the workers keep the next ones on their way.
func (batchLoop) fetchSize(c *Config) int { return min(2*c.BatchSize, c.MaxAckPending) }

func (batchLoop) wait(context.Context) bool { return true } // consume settles each batch before it returns

// consume collects batches and hands them to the goroutines that run the
// handler and settle (one, or BatchConcurrency), so that decoding the next
// batch overlaps the handler's write of the previous one. At most one batch
// per worker waits between them.
func (l batchLoop) consume(ctx context.Context, r *Runtime, in <-chan jetstream.Msg) {
	workers := 1
	if c, ok := l.h.(ConcurrentBatchHandler); ok {
		workers = max(1, c.BatchConcurrency())
	}
	batches := make(chan []*Msg, workers)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range batches {
				if ctx.Err() != nil {
					continue // past the drain deadline: leave it to redelivery
				}
				l.handle(ctx, r, batch)
			}
		}()
	}
	l.collect(ctx, r, in, batches)
	close(batches)
	wg.Wait()
}

// collect reads in and sends batches of up to BatchSize messages: a batch
// goes when it is full, BatchWait after its first message, or when in closes.
func (l batchLoop) collect(ctx context.Context, r *Runtime, in <-chan jetstream.Msg, batches chan<- []*Msg) {
	size := r.cfg.BatchSize
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		batch := make([]*Msg, 0, size)
		// Wait as long as it takes for the first message of a batch.
		select {
		case jm, ok := <-in:
			if !ok {
				return
			}
			if m := r.admit(ctx, jm); m != nil {
				batch = append(batch, m)
			}
		case <-ctx.Done():
			return
		}
		if len(batch) == 0 {
			continue
		}
		// Then at most BatchWait for the rest.
		timer.Reset(r.cfg.BatchWait)
		closed := false
	fill:
		for len(batch) < size {
			select {
			case jm, ok := <-in:
				if !ok {
					closed = true
					break fill
				}
				if m := r.admit(ctx, jm); m != nil {
					batch = append(batch, m)
				}
			case <-timer.C:
				break fill
			case <-ctx.Done():
				timer.Stop()
				return // past the drain deadline: the server redelivers
			}
		}
		timer.Stop()
		if len(batch) > 0 {
			select {
			case batches <- batch:
			case <-ctx.Done():
				return
			}
		}
		if closed {
			return
		}
	}
}

// handle runs one batch through the handler and settles every message.
func (l batchLoop) handle(ctx context.Context, r *Runtime, batch []*Msg) {
	start := time.Now()
	r.metrics.unsettled.Add(float64(len(batch)))
	defer r.metrics.unsettled.Sub(float64(len(batch)))

	results := l.h.HandleBatch(ctx, batch)
	if results != nil && len(results) != len(batch) {
		err := fmt.Errorf("handler returned %d outcomes for a batch of %d", len(results), len(batch))
		r.log.Error().Err(err).Msg("batch handler bug; retrying the whole batch")
		results = All(batch, err)
	}
	var counts [unsettled + 1]int
	var firstErr error
	for i, m := range batch {
		var err error
		if results != nil {
			err = results[i]
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
		counts[r.settle(ctx, m, err)]++
	}
	elapsed := time.Since(start)
	r.metrics.batchSeconds.Observe(elapsed.Seconds())
	r.metrics.batchSize.Observe(float64(len(batch)))
	if firstErr != nil {
		// One line per batch, not per message: a database outage fails
		// every batch the same way.
		r.log.Warn().Err(firstErr).Int("messages", len(batch)).Int("acked", counts[acked]).
			Int("retried", counts[retried]).Int("dead_lettered", counts[deadLettered]).
			Uint64("first_seq", batch[0].StreamSeq).Uint64("delivery", batch[0].NumDelivered).
			Dur("retry_in", r.backoff(batch[0].NumDelivered)).Msg("batch failed")
		return
	}
	r.log.Debug().Int("messages", len(batch)).Dur("took", elapsed).Msg("batch done")
}

// asyncLoop feeds an AsyncHandler and tracks the messages it has not
// settled yet.
type asyncLoop struct {
	h AsyncHandler

	slots chan struct{} // one per unsettled message, MaxAckPending in all

	mu       sync.Mutex
	inflight map[*Msg]time.Time // unsettled, with when the server last heard of them

	stopKeepAlive context.CancelFunc
	keepAliveDone chan struct{}
}

func (l *asyncLoop) fetchSize(c *Config) int { return c.BatchSize }

func (l *asyncLoop) consume(ctx context.Context, r *Runtime, in <-chan jetstream.Msg) {
	l.slots = make(chan struct{}, r.cfg.MaxAckPending)
	l.inflight = make(map[*Msg]time.Time)
	kctx, cancel := context.WithCancel(ctx)
	l.stopKeepAlive = cancel
	l.keepAliveDone = make(chan struct{})
	go func() {
		defer close(l.keepAliveDone)
		l.keepAlive(kctx, r)
	}()
	for {
		var jm jetstream.Msg
		select {
		case m, ok := <-in:
			if !ok {
				return
			}
			jm = m
		case <-ctx.Done():
			return
		}
		m := r.admit(ctx, jm)
		if m == nil {
			continue
		}
		select {
		case l.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		l.dispatch(ctx, r, m)
	}
}

func (l *asyncLoop) dispatch(ctx context.Context, r *Runtime, m *Msg) {
	start := time.Now()
	l.mu.Lock()
	l.inflight[m] = start
	l.mu.Unlock()
	r.metrics.unsettled.Inc()
	var once sync.Once
	var finished bool
	l.h.HandleAsync(ctx, m, func(err error) bool {
		first := false
		once.Do(func() {
			first = true
			out := r.settle(ctx, m, err)
			finished = out == acked || out == deadLettered || (out == unsettled && err == nil)
		})
		if !first {
			return finished
		}
		l.mu.Lock()
		delete(l.inflight, m)
		l.mu.Unlock()
		r.metrics.unsettled.Dec()
		r.metrics.batchSeconds.Observe(time.Since(start).Seconds())
		<-l.slots
		return finished
	})
}

// keepAlive sends InProgress for messages held longer than a third of
// AckWait, so a handler that holds a device's later messages behind an
// earlier one does not get them redelivered meanwhile.
func (l *asyncLoop) keepAlive(ctx context.Context, r *Runtime) {
	period := max(r.cfg.AckWait/3, 100*time.Millisecond)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			var due []*Msg
			l.mu.Lock()
			for m, seen := range l.inflight {
				if now.Sub(seen) >= period {
					due = append(due, m)
					l.inflight[m] = now
				}
			}
			l.mu.Unlock()
			for _, m := range due {
				if err := m.InProgress(); err != nil {
					r.log.Debug().Err(err).Msg("keep-alive")
				}
			}
		}
	}
}

// wait blocks until every dispatched message is settled or ctx is done.
func (l *asyncLoop) wait(ctx context.Context) bool {
	defer func() {
		l.stopKeepAlive()
		<-l.keepAliveDone
	}()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		if len(l.slots) == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return len(l.slots) == 0
		case <-t.C:
		}
	}
}
