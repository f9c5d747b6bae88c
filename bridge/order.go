package bridge

import (
	"context"
	"hash/maphash"
	"slices"
	"sync"

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
// The common case, no spooling, costs a map entry per device for the time
// of the request; nothing waits.
type deviceOrder struct {
	seed   maphash.Seed
	shards [64]orderShard
}

type orderShard struct {
	mu   sync.Mutex
	devs map[string]*devTurn
}

// devTurn is one device's state: requests holding it and requests queued.
type devTurn struct {
	active   int // requests holding the device
	spooling int // of those, requests that will append to the spool
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
func (o *deviceOrder) enter(ctx context.Context, devs []string, spool bool) error {
	for i, dev := range devs {
		if err := o.enterOne(ctx, dev, spool); err != nil {
			o.leave(devs[:i], spool)
			return err
		}
	}
	return nil
}

func (o *deviceOrder) enterOne(ctx context.Context, dev string, spool bool) error {
	sh := o.shard(dev)
	sh.mu.Lock()
	t := sh.devs[dev]
	if t == nil {
		t = &devTurn{}
		sh.devs[dev] = t
	}
	free := len(t.queue) == 0 && (t.active == 0 || !spool && t.spooling == 0)
	if free {
		t.hold(spool)
		sh.mu.Unlock()
		return nil
	}
	w := &turnWaiter{ch: make(chan struct{}), spool: spool}
	t.queue = append(t.queue, w)
	sh.mu.Unlock()

	select {
	case <-w.ch:
		return nil
	case <-ctx.Done():
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if w.granted {
		// Granted as ctx ended: pass the turn on.
		o.releaseLocked(sh, dev, t, spool)
	} else if i := slices.Index(t.queue, w); i >= 0 {
		t.queue = slices.Delete(t.queue, i, i+1)
		if t.active == 0 && len(t.queue) == 0 {
			delete(sh.devs, dev)
		}
	}
	return ctx.Err()
}

func (t *devTurn) hold(spool bool) {
	t.active++
	if spool {
		t.spooling++
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
		delete(sh.devs, dev)
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
