package forward

import (
	"context"
	"sync"
	"testing"
	"time"
)

// A copy of a held message (the server redelivered it: an InProgress lost in
// a reconnect) can join it while its unit is being settled, after settle
// walked the message's settles. done settles such a copy; left unsettled,
// it would hold one of MaxAckPending runtime slots for good.
func TestSchedulerSettlesACopyThatArrivesDuringSettle(t *testing.T) {
	s := newScheduler(10, time.Minute, nil, nil) // batch format: one unit, two devices
	r := &targetRun{sched: s}
	var mu sync.Mutex
	var copySettled []error
	copyMsg := msg("a", 1)
	copyMsg.NumDelivered = 2
	s.add(msg("a", 1), func(err error) bool { return err == nil })
	first := true
	s.add(msg("b", 2), func(err error) bool {
		if first { // 2's ack frees a runtime slot: the waiting copy of 1 comes in
			first = false
			s.add(copyMsg, func(err error) bool {
				mu.Lock()
				defer mu.Unlock()
				copySettled = append(copySettled, err)
				return err == nil
			})
		}
		return err == nil
	})
	u := s.next(context.Background())
	if len(u.msgs) != 2 {
		t.Fatalf("unit of %d", len(u.msgs))
	}
	r.settle(u, nil) // delivered
	s.done(u)
	if msgs, _ := s.stats(); msgs != 0 {
		t.Fatalf("scheduler still holds %d", msgs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(copySettled) != 1 {
		t.Fatalf("the copy of seq 1 that arrived while its unit was being settled was settled %d times, want 1 (acked)", len(copySettled))
	}
}
