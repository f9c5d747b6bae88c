package bridge

import (
	"context"
	"errors"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

// deviceOrder keeps a device's coordinates in the order the bridge received
// them when some go to the spool. A request publishing straight to
// JetStream runs beside the device's other requests, as concurrent HTTP
// requests do. But a request about to spool (NATS is away, or the device
// already has coordinates in the spool) must not overtake an earlier one of
// its device still waiting for its ack: that one may end in the spool too,
// after it. So a spooling request waits its turn (FIFO per device) until
// the device's earlier requests have finished, and while it holds its turn,
// later requests of the device wait behind it rather than publish straight
// to the stream ahead of what it spools.
//
// When the NATS connection is lost, the requests holding a device then
// count as spooling ones (see lost): their publishes are given up and will
// spool, so the device's later requests wait behind them, even once the
// connection is back.
//
// The common case, no spooling, costs a map entry per device for the time
// of the request; nothing waits.
type deviceOrder struct {
	seed   maphash.Seed
	shards [64]orderShard
}

type orderShard struct {
	mu   sync.Mutex
	devs map[string]*devTurn
	free []*devTurn // idle states kept for reuse
}

// devTurn is one device's state: requests holding it and requests queued.
type devTurn struct {
	active   int // requests holding the device
	spooling int // of those, requests that will append to the spool (cut included)
	cut      int // of those, direct requests cut off by a lost connection
	queue    []*turnWaiter
}

type turnWaiter struct {
	ch      chan struct{} // closed when the turn is granted
	spool   bool
	granted bool // guarded by the shard's lock
}

func newDeviceOrder() *deviceOrder {
	o := &deviceOrder{seed: maphash.MakeSeed()}
	for i := range o.shards {
		o.shards[i].devs = make(map[string]*devTurn)
	}
	return o
}

func (o *deviceOrder) shard(dev string) *orderShard {
	return &o.shards[maphash.String(o.seed, dev)%uint64(len(o.shards))]
}

// enter takes a turn on every device of devs (sorted, without repeats, so
// that two requests never wait for each other crosswise). spool says the
// request will append to the spool: it then waits for the devices' earlier
// requests. A request that does not spool waits only behind queued or
// spooling ones. On error (ctx ended) it holds nothing.
//
// A wait ends with ctx or after maxWait; the common case, no wait, sets up
// no timer.
//
// It reports whether it had to wait.
func (o *deviceOrder) enter(ctx context.Context, maxWait time.Duration, devs []string, spool bool) (waited bool, err error) {
	for i, dev := range devs {
		w, err := o.enterOne(ctx, maxWait, dev, spool)
		if err != nil {
			o.leave(devs[:i], spool)
			return true, err
		}
		waited = waited || w
	}
	return waited, nil
}

// errTurnTimeout ends a wait for a device's turn that lasted maxWait.
var errTurnTimeout = errors.New("waited too long for the device's earlier requests")

func (o *deviceOrder) enterOne(ctx context.Context, maxWait time.Duration, dev string, spool bool) (waited bool, _ error) {
	sh := o.shard(dev)
	sh.mu.Lock()
	t := sh.devs[dev]
	if t == nil {
		if n := len(sh.free); n > 0 {
			t, sh.free = sh.free[n-1], sh.free[:n-1]
		} else {
			t = &devTurn{}
		}
		sh.devs[dev] = t
	}
	free := len(t.queue) == 0 && (t.active == 0 || !spool && t.spooling == 0)
	if free {
		t.hold(spool)
		sh.mu.Unlock()
		return false, nil
	}
	w := &turnWaiter{ch: make(chan struct{}), spool: spool}
	t.queue = append(t.queue, w)
	sh.mu.Unlock()

	timer := time.NewTimer(maxWait)
	defer timer.Stop()
	err := errTurnTimeout
	select {
	case <-w.ch:
		return true, nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if w.granted {
		// Granted as ctx ended: pass the turn on.
		o.releaseLocked(sh, dev, t, spool)
	} else if i := slices.Index(t.queue, w); i >= 0 {
		t.queue = slices.Delete(t.queue, i, i+1)
		if t.active == 0 && len(t.queue) == 0 {
			sh.forget(dev, t)
		}
	}
	return true, err
}

// forget removes dev's idle state and keeps it for reuse. Lock held.
func (sh *orderShard) forget(dev string, t *devTurn) {
	delete(sh.devs, dev)
	if len(sh.free) < 64 {
		*t = devTurn{queue: t.queue[:0]}
		sh.free = append(sh.free, t)
	}
}

func (t *devTurn) hold(spool bool) {
	t.active++
	if spool {
		t.spooling++
	}
}

// lost counts the direct requests holding a device as spooling ones: the
// NATS connection was lost, so their publishes awaiting an ack are given
// up and spooled. Until they leave, the device's later requests wait behind
// them instead of publishing ahead of what they spool after a reconnect.
// While a device has such requests, no direct request is granted a turn
// beside them, so the next direct requests to leave are these.
func (o *deviceOrder) lost() {
	for i := range o.shards {
		sh := &o.shards[i]
		sh.mu.Lock()
		for _, t := range sh.devs {
			if n := t.active - t.spooling; n > 0 {
				t.cut += n
				t.spooling += n
			}
		}
		sh.mu.Unlock()
	}
}

// leave gives back the turns enter took.
func (o *deviceOrder) leave(devs []string, spool bool) {
	for _, dev := range devs {
		sh := o.shard(dev)
		sh.mu.Lock()
		if t := sh.devs[dev]; t != nil {
			o.releaseLocked(sh, dev, t, spool)
		}
		sh.mu.Unlock()
	}
}

// releaseLocked ends one hold on dev and, once none is left, grants the
// turn to the first queued request: alone, so each queued request finishes
// before the next (a queued request that does not spool lets the
// non-spooling requests queued right behind it go along).
func (o *deviceOrder) releaseLocked(sh *orderShard, dev string, t *devTurn, spool bool) {
	t.active--
	if spool {
		t.spooling--
	} else if t.cut > 0 {
		t.cut--
		t.spooling--
	}
	if t.active > 0 {
		return
	}
	for len(t.queue) > 0 {
		w := t.queue[0]
		if t.active > 0 && (w.spool || t.spooling > 0) {
			break
		}
		t.queue = t.queue[1:]
		t.hold(w.spool)
		w.granted = true
		close(w.ch)
		if w.spool {
			break
		}
	}
	if t.active == 0 && len(t.queue) == 0 {
		sh.forget(dev, t)
	}
}

// devicesOf returns the distinct device ids of recs, sorted, in devs.
func devicesOf(devs []string, recs []spool.Record) []string {
	devs = devs[:0]
	for i := range recs {
		devs = append(devs, recs[i].Device)
	}
	if len(devs) > 1 {
		slices.Sort(devs)
		devs = slices.Compact(devs)
	}
	return devs
}
