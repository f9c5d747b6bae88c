package alert

import (
	"context"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
)

// An operator resets a device's state with `nats kv del DEVICES <token>`.
// The key then ends in a delete marker: Get says "not found", and a write
// expecting last sequence 0 was refused every time, so the device's fixes
// were never acked again. The write now expects the marker's sequence.
func TestDeletedDeviceKeyIsWrittenAgain(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	ctx := context.Background()
	cfg := h.config()
	cfg.Consumer.Backoff = []time.Duration{100 * time.Millisecond}
	h.start(cfg)
	h.publish(fix("U1", 0, 20.50, -100.39))
	h.consumed("alerter")

	kv, err := h.js.KeyValue(ctx, stream.DevicesBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "U1"); err != nil {
		t.Fatal(err)
	}
	h.publish(fix("U1", 10, 20.59, -100.39))
	h.consumed("alerter") // fails after 10s if the fix is never acked
	e, err := kv.Get(ctx, "U1")
	if err != nil {
		t.Fatalf("the device's state was not written again: %v", err)
	}
	if st := h.state("U1"); st.Last == nil || st.Last.Lat != 20.59 {
		t.Fatalf("state after the reset %s, want the new fix", e.Value())
	}
}
