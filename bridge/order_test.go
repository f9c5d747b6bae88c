package bridge_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
)

// A coordinate whose publish is waiting for its ack when NATS goes away is
// spooled only at the publish timeout. A later coordinate of the same
// device, which finds NATS away, must be spooled after it, not at once
// ahead of it (README: a device's coordinates reach the stream in the order
// the bridge received them).
func TestSpoolKeepsPerDeviceOrderAcrossDisconnect(t *testing.T) {
	e := newEnv(t, nil)
	dir := t.TempDir()
	sp, err := spool.Open(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	srv := e.newServer(t, sp, nil) // PublishTimeout 2s
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	// Make the first publish wait for an ack that never comes: the stream
	// is gone and a plain subscriber takes the subject (so no "no responders").
	if err := e.js.DeleteStream(context.Background(), "COORDS"); err != nil {
		t.Fatal(err)
	}
	other, err := nats.Connect(e.nats.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan struct{}, 1)
	if _, err := other.Subscribe("ubiqo.coords.>", func(*nats.Msg) { got <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	other.Flush()

	first := `{"device_id":"truck-1","lat":19.1,"lon":-99.1,"ts":"2026-03-01T11:00:00Z"}`
	second := `{"device_id":"truck-1","lat":19.2,"lon":-99.2,"ts":"2026-03-01T11:00:05Z"}`
	done := make(chan int, 1)
	go func() {
		code, _ := postTo(t, hs.URL, first)
		done <- code
	}()
	<-got // the first coordinate is published and awaits its ack
	other.Close()
	e.nats.Stop() // NATS goes away
	for e.nc.IsConnected() {
		time.Sleep(5 * time.Millisecond)
	}
	code2, _ := postTo(t, hs.URL, second) // arrives later: waits for the first, then spooled
	code1 := <-done                       // spooled at its publish timeout
	t.Logf("first answered %d, second answered %d", code1, code2)
	if code1 != 202 || code2 != 202 {
		t.Fatalf("codes %d %d", code1, code2)
	}

	recs, _, err := sp.Peek(10)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, r := range recs {
		var c coord.Coord
		_ = json.Unmarshal(r.Data, &c)
		order = append(order, c.TS.Format("15:04:05"))
	}
	t.Logf("spool replay order for truck-1: %v", order)

	// Let the bridge replay it for real and read the stream.
	e.nats = e.nats.Restart(t)
	for !e.nc.IsConnected() {
		time.Sleep(5 * time.Millisecond)
	}
	srv2 := e.newServer(t, sp, nil)
	if err := srv2.EnsureStream(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, stop := runServer(t, srv2)
	defer stop()
	st, _ := e.js.Stream(context.Background(), "COORDS")
	waitStreamMsgs(t, st, 2)
	var stream []string
	for _, c := range streamCoords(t, st, 2) {
		stream = append(stream, c.TS.Format("15:04:05"))
	}
	t.Logf("stream order for truck-1: %v", stream)
	if len(stream) != 2 || stream[0] != "11:00:00" {
		t.Fatalf("truck-1 reached the stream as %v; the bridge received 11:00:00 first (README: per-device order)", stream)
	}
}
