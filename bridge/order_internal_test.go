package bridge

import (
	"context"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

func entered(t *testing.T, o *deviceOrder, devs []string, spool bool) chan error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { _, err := o.enter(context.Background(), time.Minute, devs, spool); ch <- err }()
	return ch
}

func waits(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s did not wait (err %v)", what, err)
	case <-time.After(30 * time.Millisecond):
	}
}

func goes(t *testing.T, ch chan error, what string) {
	t.Helper()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still waits", what)
	}
}

func TestDeviceOrderSpoolerWaitsForEarlierRequests(t *testing.T) {
	o := newDeviceOrder()
	a := []string{"a"}
	// Two requests publishing straight: no wait.
	goes(t, entered(t, o, a, false), "first direct")
	goes(t, entered(t, o, a, false), "second direct")
	// A spooler waits for both; a later direct request waits behind it.
	sp := entered(t, o, a, true)
	waits(t, sp, "spooler behind two directs")
	late := entered(t, o, a, false)
	waits(t, late, "direct behind a queued spooler")
	// Another device is not held up.
	goes(t, entered(t, o, []string{"b"}, true), "other device")
	o.leave(a, false)
	waits(t, sp, "spooler behind one direct")
	o.leave(a, false)
	goes(t, sp, "spooler once the earlier requests left")
	waits(t, late, "direct behind the spooler holding its turn")
	o.leave(a, true)
	goes(t, late, "direct after the spooler")
	o.leave(a, false)
	o.leave([]string{"b"}, true)
	for i := range o.shards {
		if n := len(o.shards[i].devs); n != 0 {
			t.Fatalf("shard %d keeps %d devices after every request left", i, n)
		}
	}
}

func TestDeviceOrderWaitEndsWithContext(t *testing.T) {
	o := newDeviceOrder()
	a := []string{"a"}
	goes(t, entered(t, o, a, false), "direct")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := o.enter(ctx, time.Minute, a, true); err == nil {
		t.Fatal("enter returned without the turn and without an error")
	}
	o.leave(a, false)
	// The abandoned waiter left no trace: the next spooler goes at once.
	goes(t, entered(t, o, a, true), "spooler after an abandoned wait")
}

func devicesOfStrings(ids []string) []string {
	recs := make([]spool.Record, len(ids))
	for i, id := range ids {
		recs[i].Device = id
	}
	return devicesOf(nil, recs)
}

func TestDeviceOrderWaitEndsAfterMaxWait(t *testing.T) {
	o := newDeviceOrder()
	a := []string{"a"}
	goes(t, entered(t, o, a, false), "direct")
	if _, err := o.enter(context.Background(), 20*time.Millisecond, a, true); err != errTurnTimeout {
		t.Fatalf("enter = %v, want errTurnTimeout", err)
	}
	o.leave(a, false)
	goes(t, entered(t, o, a, true), "spooler after a wait that timed out")
}

// The common case, nothing to wait for: one device entered and left.
func BenchmarkDeviceOrderEnterLeave(b *testing.B) {
	o := newDeviceOrder()
	devs := []string{"356938035643809"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := o.enter(ctx, time.Minute, devs, false); err != nil {
			b.Fatal(err)
		}
		o.leave(devs, false)
	}
}

// A lost NATS connection makes the direct requests holding a device count
// as spooling ones: their publishes are given up and spool. A later request
// of the device, even a direct one after the reconnect, waits behind them.
func TestDeviceOrderLostConnectionHoldsLaterRequests(t *testing.T) {
	o := newDeviceOrder()
	a, b := []string{"a"}, []string{"b"}
	goes(t, entered(t, o, a, false), "first direct before the loss")
	goes(t, entered(t, o, a, false), "second direct before the loss")
	goes(t, entered(t, o, b, true), "a spooler of another device before the loss")
	o.lost()
	late := entered(t, o, a, false)
	waits(t, late, "direct after the loss, behind the cut-off requests")
	o.leave(a, false)
	waits(t, late, "direct behind one cut-off request")
	o.leave(a, false)
	goes(t, late, "direct once the cut-off requests left")
	goes(t, entered(t, o, a, false), "direct beside a direct again")
	o.leave(a, false)
	o.leave(a, false)
	o.leave(b, true)
	for i := range o.shards {
		if n := len(o.shards[i].devs); n != 0 {
			t.Fatalf("shard %d still holds %d devices after every request left", i, n)
		}
	}
}
