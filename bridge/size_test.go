package bridge_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"github.com/nats-io/nats.go"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// smallPayloadServer is a JetStream server whose max_payload (64 KiB) is
// far below http.max_body_bytes, as an external NATS with its 1 MiB default
// is below what a 1 MiB body becomes once raw and attrs are in the message.
func smallPayloadServer(t *testing.T) *streamtest.Server {
	return streamtest.RunWith(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
}

// bigItem is a coordinate of device whose message is well over 64 KiB.
func bigItem(device string, i int) string {
	return fmt.Sprintf(`{"device_id":%q,"lat":19.4,"lon":-99.1,"ts":%d,"note":%q}`,
		device, 1740830400+i, strings.Repeat("x", 80<<10))
}

func smallItem(device string, i int) string {
	return fmt.Sprintf(`{"device_id":%q,"lat":19.4,"lon":-99.1,"ts":%d}`, device, 1740830400+i)
}

// A coordinate too large for the server's max_payload is rejected with its
// index and never spooled: a spooled one would never leave the spool and
// would hold up every later coordinate of its device (with tokens off,
// anyone could so stop any device). The valid coordinates beside it are
// stored, and the device's next coordinate is answered 200 at once.
func TestCoordinateTooLargeForNATSIsRejected(t *testing.T) {
	e := newEnvOn(t, smallPayloadServer(t), nil)
	sp, err := spool.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	srv := e.newServer(t, sp, nil)
	base, stop := runServer(t, srv)
	defer stop()

	code, body := postTo(t, base, "["+smallItem("dev-a", 0)+","+bigItem("dev-a", 1)+","+smallItem("dev-b", 2)+"]")
	if code != 200 || body["accepted"] != float64(2) {
		t.Fatalf("mixed batch: %d %v, want 200 with 2 accepted", code, body)
	}
	rej, _ := body["rejected"].([]any)
	if len(rej) != 1 {
		t.Fatalf("rejected %v, want the big item", body["rejected"])
	}
	r0 := rej[0].(map[string]any)
	if r0["index"] != float64(1) || !strings.Contains(r0["error"].(string), "max_payload") {
		t.Errorf("rejection %v, want index 1 naming max_payload", r0)
	}

	code, body = postTo(t, base, bigItem("dev-a", 3))
	if code != 413 || !strings.Contains(fmt.Sprint(body), "max_payload") {
		t.Errorf("a single big coordinate: %d %v, want 413 naming max_payload", code, body)
	}
	if !sp.Empty() {
		t.Fatal("a coordinate too large went to the spool")
	}
	code, body = postTo(t, base, smallItem("dev-a", 4))
	if code != 200 || body["accepted"] != float64(1) {
		t.Errorf("dev-a's next coordinate: %d %v, want 200", code, body)
	}
	waitStreamMsgs(t, e.stream, 3)
}

// A record already in the spool that the server refuses for its size (the
// limit shrank, or the stream has a max_msg_size) is set aside with its
// body, and the records behind it, of the same device, are replayed.
func TestSpoolSetsAsideWhatTheServerRefusesForItsSize(t *testing.T) {
	e := newEnvOn(t, smallPayloadServer(t), nil)
	dir := t.TempDir()
	sp, err := spool.Open(dir, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	dec, err := coord.NewDecoder(coord.Options{MaxItems: 10})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := dec.Decode("application/json", []byte("["+smallItem("dev-a", 0)+","+bigItem("dev-a", 1)+","+smallItem("dev-a", 2)+"]"), nil, time.Now())
	if err != nil || len(batch.Coords) != 3 {
		t.Fatalf("decode: %v %+v", err, batch.Rejected)
	}
	pub, err := bridge.NewPublisher(e.nc, "ubiqo.coords", 16, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	recs := pub.Records(batch.Coords)
	pub.Close()
	if err := sp.Append(recs); err != nil {
		t.Fatal(err)
	}

	srv := e.newServer(t, sp, nil)
	base, stop := runServer(t, srv)
	defer stop()
	waitStreamMsgs(t, e.stream, 2)
	deadline := time.Now().Add(10 * time.Second)
	for !sp.Empty() {
		if time.Now().After(deadline) {
			t.Fatal("the spool did not drain past the record too large")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f, err := os.Open(sp.AsidePath())
	if err != nil {
		t.Fatalf("no set-aside file: %v", err)
	}
	defer f.Close()
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("set-aside line: %v", err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 1 {
		t.Fatalf("set aside %d records, want 1", len(lines))
	}
	got := lines[0]
	data, _ := got["data"].(map[string]any)
	if got["msg_id"] != recs[1].MsgID || got["device"] != "dev-a" || got["subject"] != recs[1].Subject ||
		data == nil || data["device_id"] != "dev-a" || !strings.Contains(fmt.Sprint(got["reason"]), "too large") {
		t.Errorf("set-aside record: msg_id %v device %v subject %v reason %v", got["msg_id"], got["device"], got["subject"], got["reason"])
	}
	code, body := postTo(t, base, smallItem("dev-a", 5))
	if code != 200 {
		t.Errorf("dev-a after the replay: %d %v, want 200", code, body)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(m), "ubiqo_bridge_spool_set_aside_total 1") {
		t.Error("metrics lack ubiqo_bridge_spool_set_aside_total 1")
	}
}

// A stream with a max_msg_size (one the operator manages) refuses a big
// coordinate in its ack: that coordinate is rejected with its index, the
// others of the request are stored, and nothing is spooled.
func TestCoordinateOverStreamMaxMsgSizeIsRejected(t *testing.T) {
	e := newEnv(t, nil)
	info, err := e.stream.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cfg := info.Config
	cfg.MaxMsgSize = 16 << 10
	if _, err := e.js.UpdateStream(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	srv := e.newServer(t, sp, func(o *bridge.Options) { o.ManageStream = false })
	base, stop := runServer(t, srv)
	defer stop()

	code, body := postTo(t, base, "["+bigItem("dev-c", 0)+","+smallItem("dev-c", 1)+"]")
	if code != 200 || body["accepted"] != float64(1) {
		t.Fatalf("batch with one item over max_msg_size: %d %v, want 200 with 1 accepted", code, body)
	}
	rej, _ := body["rejected"].([]any)
	if len(rej) != 1 || rej[0].(map[string]any)["index"] != float64(0) {
		t.Fatalf("rejected %v, want index 0", body["rejected"])
	}
	if !sp.Empty() {
		t.Fatal("the refused coordinate went to the spool")
	}
	code, body = postTo(t, base, bigItem("dev-c", 2))
	if code != 413 {
		t.Errorf("a single coordinate over max_msg_size: %d %v, want 413", code, body)
	}
	waitStreamMsgs(t, e.stream, 1)
}

// A bridge that has not reached NATS since it started does not know the
// server's max_payload yet: nats-server's default (1 MiB) holds meanwhile,
// so a coordinate too large for it is rejected (413) rather than spooled
// with a 202 that could never be stored.
func TestOversizeRefusedBeforeTheFirstConnect(t *testing.T) {
	nc, err := nats.Connect(fmt.Sprintf("nats://127.0.0.1:%d", streamtest.FreePort(t)),
		nats.RetryOnFailedConnect(true), nats.MaxReconnects(-1), nats.ReconnectWait(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	srv, _, sp := spoolingBridge(t, nc, bridge.Options{
		Addr: "127.0.0.1:0", MaxBodyBytes: 4 << 20, MaxBatch: 10, PublishTimeout: time.Second,
		Stream: streamtest.Coords(), AccessLog: "none",
	})
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	post := func(body string) (int, string) {
		resp, err := http.Post(hs.URL+"/webhook/ubiqo", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	big := `{"device_id":"d","lat":1,"lon":2,"ts":1772359200,"note":"` + strings.Repeat("x", 600<<10) + `"}`
	if code, body := post(big); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("a coordinate over 1 MiB as a message: %d %.200s, want 413", code, body)
	}
	if code, body := post(`{"device_id":"d","lat":1,"lon":2,"ts":1772359201}`); code != http.StatusAccepted {
		t.Fatalf("a small coordinate: %d %s, want 202 (spooled)", code, body)
	}
	if recs, _ := sp.Stats(); recs != 1 {
		t.Fatalf("spool holds %d records, want 1", recs)
	}
}
