package bridge

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Many requests over overlapping device sets, spooling or not, some of
// whose waits end early: no deadlock, no lost grant, no leaked map entry,
// and a spooler never holds a device together with another request of it.
func TestDeviceOrderWithTimeouts(t *testing.T) {
	o := newDeviceOrder()
	var mu sync.Mutex
	holders := map[string][2]int{}
	var wg sync.WaitGroup
	var timeouts, entries int
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 400; i++ {
				var ids []string
				for range 1 + rand.IntN(4) {
					ids = append(ids, fmt.Sprint("d", rand.IntN(5)))
				}
				devs := devicesOfStrings(ids)
				spool := rand.IntN(3) == 0
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(400))*time.Microsecond)
				_, err := o.enter(ctx, time.Minute, devs, spool)
				cancel()
				if err != nil {
					mu.Lock()
					timeouts++
					mu.Unlock()
					continue
				}
				mu.Lock()
				entries++
				for _, d := range devs {
					h := holders[d]
					if spool && (h[0] > 0 || h[1] > 0) || !spool && h[1] > 0 {
						t.Errorf("device %s: %v held while a request (spool %v) entered", d, h, spool)
					}
					if spool {
						h[1]++
					} else {
						h[0]++
					}
					holders[d] = h
				}
				mu.Unlock()
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				mu.Lock()
				for _, d := range devs {
					h := holders[d]
					if spool {
						h[1]--
					} else {
						h[0]--
					}
					holders[d] = h
				}
				mu.Unlock()
				o.leave(devs, spool)
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("requests still waiting after 60s")
	}
	t.Logf("%d entered, %d timed out", entries, timeouts)
	for i := range o.shards {
		o.shards[i].mu.Lock()
		for d, tn := range o.shards[i].devs {
			t.Errorf("device %s left behind: %+v", d, *tn)
		}
		o.shards[i].mu.Unlock()
	}
	// Nothing is held: every device must be free for a spooler at once.
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		if _, err := o.enter(ctx, time.Minute, []string{fmt.Sprint("d", i)}, true); err != nil {
			t.Errorf("d%d not free after every request left: %v", i, err)
		}
		cancel()
	}
}
