package alert

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// racyKV is the real DEVICES bucket; right after the first Get that finds no
// value, another alerter instance (sharing the durable) creates the key, as
// it may at any moment.
type racyKV struct {
	jetstream.KeyValue
	other func()
	done  bool
}

func (k *racyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := k.KeyValue.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) && !k.done {
		k.done = true
		k.other()
	}
	return e, err
}

// Get finds no state, then another instance writes one: the key's last
// message is that value, not a delete marker, so the write must conflict and
// the device be evaluated again on the other instance's state, never
// overwrite it with a state evaluated from scratch.
func TestDeletedRevNeverOverwritesAConcurrentCreate(t *testing.T) {
	h := newHarness(t, "rules:"+depotRule)
	ctx := context.Background()
	a, err := New(h.js, h.config(), zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	kv, err := a.setup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	theirs := NewState("U1")
	theirs.Seen = t0.Add(100e9)
	theirs.Last = &Fix{TS: theirs.Seen, Lat: 20.59, Lon: -100.39}
	theirs.Zones = []string{"depot"}
	data, _ := json.Marshal(theirs)
	a.proc.kv = &racyKV{KeyValue: kv, other: func() {
		if _, err := kv.Create(ctx, "U1", data); err != nil {
			t.Errorf("other instance: %v", err)
		}
	}}

	var sawTheirs []bool
	j := &job{token: "U1", deviceID: "U1", fn: func(st *State) ([]Alert, bool) {
		sawTheirs = append(sawTheirs, st.Last != nil && st.Last.Lat == 20.59)
		return a.engine.Apply(nil, st, fix("U1", 5, 20.50, -100.10))
	}}
	a.proc.run(ctx, []*job{j})
	if j.err != nil {
		t.Fatal(j.err)
	}
	st := h.state("U1")
	t.Logf("evaluations saw the other instance's state: %v; stored last fix %+v, zones %v", sawTheirs, st.Last, st.Zones)
	if !sawTheirs[len(sawTheirs)-1] || st.Last == nil || st.Last.Lat != 20.59 {
		t.Fatalf("the other instance's state was overwritten by one evaluated without it (lost update)")
	}
}
