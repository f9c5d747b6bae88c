package alert

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// Replay (alerter --replay-since T) recomputes the alerts of a time range of
// COORDS without notifying anything twice:
//
//   - It consumes COORDS with a new durable, <durable>-replay-<T as
//     20060102T150405Z>, delivering from T (deliver policy by_start_time), up
//     to the last message the stream held when the replay started; then it
//     deletes that durable and returns. Interrupted, the same command
//     resumes it.
//   - Device state is recomputed from scratch in memory; the live state in
//     DEVICES is not used for evaluation and is not changed, so the live
//     alerter carries on undisturbed. As in the live alerter, the first fix
//     of each device in the range sets its zones silently, and offline is
//     found from gaps between fixes (there is no scan).
//   - Each alert computed is published to ALERTS with its deterministic id
//     (header Ubiqo-Replay: the replay durable) unless the live state of the
//     device records an alert of the same rule and kind at or after the
//     alert's fix time (State.Alerted): that one was alerted, or
//     superseded, by the live alerter and is counted as suppressed. Inside
//     ALERTS' duplicate window (24h) a republished id is dropped by the
//     stream anyway; the Emitted check is what protects older ranges.
//     Published alerts are recorded in the live state's Emitted, so
//     replaying the same range again publishes nothing.
//   - Notifiers are the live alerter's consumers on ALERTS: an alert the
//     replay published for the first time (e.g. from a rule added since) is
//     notified once, by them; suppressed and duplicate ones never reach
//     them.

// ReplayReport summarises a replay.
type ReplayReport struct {
	Durable    string    `json:"durable"`
	Since      time.Time `json:"since"`
	UpToSeq    uint64    `json:"up_to_seq"`
	Fixes      int64     `json:"fixes"`
	Computed   int64     `json:"alerts_computed"`
	Published  int64     `json:"alerts_published"`
	Duplicates int64     `json:"alerts_duplicate"`
	Suppressed int64     `json:"alerts_suppressed"`
}

// ParseSince reads a --replay-since value: an RFC 3339 time, or a duration
// counted back from now (90m, 36h).
func ParseSince(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		if t.After(now) {
			return time.Time{}, fmt.Errorf("replay since %s: in the future", s)
		}
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("replay since %s: the duration must be positive", s)
		}
		return now.Add(-d), nil
	}
	return time.Time{}, fmt.Errorf("replay since %q: want an RFC 3339 time (2025-03-03T08:00:00-06:00) or a duration (90m, 36h)", s)
}

// ReplayDurable is the durable name of a replay from since.
func ReplayDurable(durable string, since time.Time) string {
	return durable + "-replay-" + since.UTC().Format("20060102T150405Z")
}

// Replay runs a replay from since (see above) and returns its report once
// the range is done, or an error; cancelling ctx stops it early (the durable
// is kept, so running it again resumes).
func Replay(ctx context.Context, js JetStream, cfg Config, since time.Time, log zerolog.Logger) (ReplayReport, error) {
	if err := cfg.fill(); err != nil {
		return ReplayReport{}, err
	}
	live := cfg.Consumer.Durable
	rep := ReplayReport{Durable: ReplayDurable(live, since), Since: since.UTC()}
	cfg.Consumer.Durable = rep.Durable
	cfg.Consumer.Description = "ubiqo-bridge alerter replay since " + since.UTC().Format(time.RFC3339)
	cfg.Consumer.DeliverPolicy = jetstream.DeliverByStartTimePolicy
	cfg.Consumer.StartTime = since
	cfg.Consumer.HTTPAddr = ""
	cfg.Notify = NotifyConfig{} // the live alerter's notifiers deliver
	cfg.LogAlerts = true
	a, err := New(js, cfg, log.With().Str("replay", rep.Durable).Logger())
	if err != nil {
		return rep, err
	}
	kv, err := a.setup(ctx)
	if err != nil {
		return rep, err
	}
	streamName := a.rt.Config().Stream
	s, err := js.Stream(ctx, streamName)
	if err != nil {
		return rep, fmt.Errorf("stream %s: %w", streamName, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return rep, fmt.Errorf("stream %s: %w", streamName, err)
	}
	rep.UpToSeq = info.State.LastSeq
	if info.State.Msgs == 0 || info.State.LastTime.Before(since) {
		log.Info().Time("since", since).Msg("replay: no coordinate since then; nothing to do")
		return rep, nil
	}

	g := &replayGuard{kv: kv, timeout: cfg.Timeout, live: make(map[string]*liveState), log: log}
	a.proc.kv = nil // recompute from scratch, in memory
	a.proc.guard = g
	a.proc.replay = rep.Durable

	runCtx, done := context.WithCancel(ctx)
	defer done()
	var fixes, maxSeq atomic.Int64
	handler := func(hctx context.Context, msgs []*subscribers.Msg) []error {
		errs := a.HandleBatch(hctx, msgs)
		fixes.Add(int64(len(msgs)))
		for i, m := range msgs {
			if (errs == nil || errs[i] == nil) && int64(m.StreamSeq) > maxSeq.Load() {
				maxSeq.Store(int64(m.StreamSeq))
			}
		}
		if uint64(maxSeq.Load()) >= rep.UpToSeq {
			done()
		}
		return errs
	}
	// The last message may have been removed (limits, purge): also stop when
	// the consumer has nothing left.
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-runCtx.Done():
				return
			case <-t.C:
				c, err := js.Consumer(runCtx, streamName, rep.Durable)
				if err != nil {
					continue
				}
				ci, err := c.Info(runCtx)
				if err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 {
					done()
					return
				}
			}
		}
	}()
	log.Info().Str("durable", rep.Durable).Time("since", since).Uint64("up_to_seq", rep.UpToSeq).Msg("replay started")
	if err := a.rt.RunBatch(runCtx, subscribers.BatchHandlerFunc(handler)); err != nil {
		return rep, fmt.Errorf("replay: %w", err)
	}
	rep.Fixes = fixes.Load()
	g.report(&rep)
	if ctx.Err() != nil {
		return rep, fmt.Errorf("replay interrupted; run the same command to resume (durable %s): %w", rep.Durable, ctx.Err())
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.Timeout)
	defer cancel()
	if err := js.DeleteConsumer(dctx, streamName, rep.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		log.Warn().Err(err).Str("durable", rep.Durable).Msg("replay done but its durable was not deleted; remove it with nats consumer rm")
	}
	return rep, nil
}

// liveState is the live state of a device as the replay last read it.
type liveState struct {
	st  *State
	rev uint64
}

// replayGuard checks computed alerts against the live device states and
// records what the replay published in them.
type replayGuard struct {
	kv      stateStore
	timeout time.Duration
	log     zerolog.Logger

	mu   sync.Mutex // guards live; each token is used by one goroutine at a time (the processor's device lock)
	live map[string]*liveState

	computed, newAlerts, duplicates, suppressed atomic.Int64
}

func (g *replayGuard) report(r *ReplayReport) {
	r.Computed = g.computed.Load()
	r.Published = g.newAlerts.Load()
	r.Duplicates = g.duplicates.Load()
	r.Suppressed = g.suppressed.Load()
}

func (g *replayGuard) liveState(ctx context.Context, token, deviceID string, reload bool) (*liveState, error) {
	g.mu.Lock()
	ls := g.live[token]
	g.mu.Unlock()
	if ls != nil && !reload {
		return ls, nil
	}
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	ls = &liveState{st: NewState(deviceID)}
	kve, err := g.kv.Get(ctx, token)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil:
		return nil, fmt.Errorf("read live state of %s: %w", token, err)
	default:
		ls.rev = kve.Revision()
		if err := json.Unmarshal(kve.Value(), ls.st); err != nil {
			return nil, fmt.Errorf("live state of %s is unreadable: %w", token, err)
		}
	}
	g.mu.Lock()
	g.live[token] = ls
	g.mu.Unlock()
	return ls, nil
}

func (g *replayGuard) allow(ctx context.Context, a *Alert) (bool, error) {
	g.computed.Add(1)
	tok := string(coord.AppendToken(nil, a.DeviceID))
	ls, err := g.liveState(ctx, tok, a.DeviceID, false)
	if err != nil {
		return false, err
	}
	if ls.st.Alerted(a.Rule, a.Kind, a.TS) || ls.st.ongoing(a) {
		g.suppressed.Add(1)
		return false, nil
	}
	return true, nil
}

// published records a in the live state's Emitted (compare-and-set,
// retried on conflicts with the live alerter).
func (g *replayGuard) published(ctx context.Context, a *Alert, duplicate bool) error {
	if duplicate {
		g.duplicates.Add(1)
	} else {
		g.newAlerts.Add(1)
	}
	tok := string(coord.AppendToken(nil, a.DeviceID))
	for attempt := 0; attempt < maxCASAttempts; attempt++ {
		ls, err := g.liveState(ctx, tok, a.DeviceID, attempt > 0)
		if err != nil {
			return err
		}
		if !ls.st.markEmitted(a.Rule, a.Kind, a.TS) {
			return nil
		}
		data, err := json.Marshal(ls.st)
		if err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, g.timeout)
		var rev uint64
		if ls.rev == 0 {
			rev, err = g.kv.Create(wctx, tok, data)
		} else {
			rev, err = g.kv.Update(wctx, tok, data, ls.rev)
		}
		cancel()
		if isConflict(err) {
			continue
		}
		if err != nil {
			g.mu.Lock()
			delete(g.live, tok)
			g.mu.Unlock()
			return fmt.Errorf("record replayed alert in live state of %s: %w", tok, err)
		}
		ls.rev = rev
		return nil
	}
	return fmt.Errorf("record replayed alert in live state of %s: %w", tok, errConflict)
}
