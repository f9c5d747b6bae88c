package forward

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
)

// settleLog records how the scheduler settled messages without a runner.
type settleLog struct {
	mu  sync.Mutex
	got map[uint64][]error
}

func (l *settleLog) fn(seq uint64) subscribers.Settle {
	return func(err error) bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.got == nil {
			l.got = map[uint64][]error{}
		}
		l.got[seq] = append(l.got[seq], err)
		return err == nil
	}
}

func msg(device string, seq uint64) *subscribers.Msg {
	return &subscribers.Msg{Subject: "ubiqo.coords." + device, StreamSeq: seq, NumDelivered: 1}
}

func nextSeqs(t *testing.T, s *scheduler) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	u := s.next(ctx)
	if u == nil {
		return nil
	}
	var out []uint64
	for _, h := range u.msgs {
		out = append(out, h.seq())
	}
	return out
}

func TestSchedulerOrdersEachDevice(t *testing.T) {
	var l settleLog
	s := newScheduler(1, time.Minute, nil, nil)
	// A redelivered older message arrives after a newer one: it goes first.
	s.add(msg("a", 5), l.fn(5))
	s.add(msg("a", 3), l.fn(3))
	s.add(msg("b", 4), l.fn(4))
	u1 := s.next(context.Background())
	u2 := s.next(context.Background())
	if u1.msgs[0].seq() != 3 || u2.msgs[0].seq() != 4 {
		t.Fatalf("first units %d, %d; want 3 (a's oldest) and 4 (b)", u1.msgs[0].seq(), u2.msgs[0].seq())
	}
	// a's 5 waits while 3 is out.
	if got := nextSeqs(t, s); got != nil {
		t.Fatalf("got %v while a's previous is in flight", got)
	}
	s.done(u1)
	if got := nextSeqs(t, s); len(got) != 1 || got[0] != 5 {
		t.Fatalf("after 3 is done got %v, want [5]", got)
	}
}

func TestSchedulerAcksStaleRedelivery(t *testing.T) {
	var l settleLog
	stale := 0
	s := newScheduler(1, time.Minute, nil, func(*subscribers.Msg) { stale++ })
	s.add(msg("a", 1), l.fn(1))
	s.add(msg("a", 2), l.fn(2))
	u := s.next(context.Background())
	(&targetRun{sched: s}).settle(u, nil)
	s.done(u) // 1 settled by its runner
	// The server sends 1 again (its ack came late): acked, not queued.
	again := msg("a", 1)
	again.NumDelivered = 2
	s.add(again, l.fn(1))
	if stale != 1 || len(l.got[1]) != 2 || l.got[1][1] != nil { // the original's ack, then the copy's
		t.Fatalf("stale copy: counted %d, settled %v; want acked once", stale, l.got[1])
	}
	if got := nextSeqs(t, s); len(got) != 1 || got[0] != 2 {
		t.Fatalf("next %v, want [2]", got)
	}
	// A copy of a message still held joins it instead.
	s.add(msg("a", 2), l.fn(2))
	if n, _ := s.stats(); n != 1 {
		t.Fatalf("held %d, want 1", n)
	}
}

func TestSchedulerStartGate(t *testing.T) {
	var l settleLog
	s := newScheduler(10, time.Minute, nil, nil)
	s.holdBack(10, 2, time.Minute) // an earlier run left 2 of seq <= 10
	s.add(msg("a", 12), l.fn(12))
	s.add(msg("a", 7), l.fn(7))
	if got := nextSeqs(t, s); got != nil {
		t.Fatalf("sent %v before the earlier run's messages came back", got)
	}
	s.add(msg("a", 4), l.fn(4))
	if got := nextSeqs(t, s); len(got) != 3 || got[0] != 4 || got[1] != 7 || got[2] != 12 {
		t.Fatalf("after the gate opened got %v, want [4 7 12] in one batch", got)
	}

	// The gate opens by itself after its longest wait.
	s = newScheduler(1, time.Minute, nil, nil)
	s.holdBack(10, 5, 30*time.Millisecond)
	s.add(msg("b", 11), l.fn(11))
	time.Sleep(60 * time.Millisecond)
	if got := nextSeqs(t, s); len(got) != 1 || got[0] != 11 {
		t.Fatalf("after the deadline got %v, want [11]", got)
	}
}

func TestSchedulerCloseHandsBackInStreamOrder(t *testing.T) {
	var l settleLog
	s := newScheduler(1, time.Minute, nil, nil)
	for _, seq := range []uint64{9, 2, 5, 7} {
		s.add(msg("d"+string(rune('a'+seq)), seq), l.fn(seq))
	}
	u := s.next(context.Background())
	s.retry(u, time.Hour) // waiting on a timer
	var got []uint64
	for _, h := range s.close() {
		got = append(got, h.seq())
	}
	if len(got) != 4 || got[0] != 2 || got[1] != 5 || got[2] != 7 || got[3] != 9 {
		t.Fatalf("handed back %v, want [2 5 7 9]", got)
	}
	// After close a new message is handed back at once.
	s.add(msg("x", 20), l.fn(20))
	if len(l.got[20]) != 1 || l.got[20][0] == nil {
		t.Fatalf("message after close settled %v, want a retry", l.got[20])
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"3", 3 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"soon", 0},
		{"Sat, 01 Mar 2025 12:00:10 GMT", 10 * time.Second},
		{"Sat, 01 Mar 2025 11:59:00 GMT", 0},
		{"999999", maxRetryAfter},
	} {
		if got := parseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestBackoffGrowsWithJitterWithinBounds(t *testing.T) {
	lo, hi := 10*time.Millisecond, 80*time.Millisecond
	for n := 0; n < 10; n++ {
		base := lo << max(n-1, 0)
		base = min(base, hi)
		for range 50 {
			d := backoff(n, lo, hi)
			if d < base/2 || d > base {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, base/2, base)
			}
		}
	}
}

// A delivery lost on the way (a connection that broke with it in a pull
// response) comes back after AckWait, after its device's next message was
// sent: it is sent late, never acked unsent. The same for a message whose
// dead-letter copy failed: the runtime nak'ed it and it comes back as work.
func TestSchedulerSendsARedeliveryItNeverFinished(t *testing.T) {
	var l settleLog
	late, stale := 0, 0
	s := newScheduler(1, time.Minute, func(*subscribers.Msg) { late++ }, func(*subscribers.Msg) { stale++ })
	// 1 was lost on the way; 2 arrives and is sent.
	s.add(msg("a", 2), l.fn(2))
	u := s.next(context.Background())
	(&targetRun{sched: s}).settle(u, nil)
	s.done(u)
	lost := msg("a", 1)
	lost.NumDelivered = 2
	s.add(lost, l.fn(1))
	if stale != 0 || len(l.got[1]) != 0 {
		t.Fatalf("the lost delivery was taken for a stale copy: stale %d, settled %v", stale, l.got[1])
	}
	if late != 1 {
		t.Fatalf("counted %d out of order, want 1", late)
	}
	u = s.next(context.Background())
	if u == nil || u.msgs[0].seq() != 1 {
		t.Fatalf("next unit %v, want seq 1", u)
	}
	// Its dead-letter copy fails: the runtime nak'ed it (not finished).
	(&targetRun{sched: s}).settle(u, errors.New("DLQ down"))
	s.done(u)
	again := msg("a", 1)
	again.NumDelivered = 3
	s.add(again, l.fn(1))
	if stale != 0 {
		t.Fatalf("a message nak'ed after a failed dead-letter copy was taken for a stale copy")
	}
	if got := nextSeqs(t, s); len(got) != 1 || got[0] != 1 {
		t.Fatalf("next %v, want [1] again", got)
	}
}

func TestSeqSetForgetsAfterTwoKeeps(t *testing.T) {
	s := seqSet{keep: time.Minute}
	t0 := time.Now()
	s.add(5, t0)
	s.add(70, t0.Add(30*time.Second))
	if !s.has(5) || !s.has(70) || s.has(6) || s.has(69) {
		t.Fatal("membership wrong")
	}
	s.add(200, t0.Add(61*time.Second)) // rotates: 5 and 70 kept one more period
	if !s.has(5) || !s.has(70) || !s.has(200) {
		t.Fatal("forgot within keep")
	}
	s.add(300, t0.Add(125*time.Second)) // rotates again
	if s.has(5) || s.has(70) || !s.has(200) || !s.has(300) {
		t.Fatal("kept past two keeps, or forgot a recent one")
	}
}
