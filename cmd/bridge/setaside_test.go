package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// bridge set-aside lists what was set aside; --publish stores what the
// server takes now, with the original message id and headers, and keeps
// the rest in the file.
func TestSetAsideListAndPublish(t *testing.T) {
	srv, st := coordsServer(t, func(o *server.Options) { o.MaxPayload = 16 << 10 })
	ctx := context.Background()
	dir := t.TempDir()
	mk := func(dev, body string) spool.AsideRecord {
		subj, err := coord.Subject("ubiqo.coords", dev)
		if err != nil {
			t.Fatal(err)
		}
		return spool.AsideRecord{Time: time.Now().UTC(), Reason: "too large", Subject: subj, MsgID: "id-" + dev, Device: dev, Data: []byte(body)}
	}
	small := mk("dev-1", `{"v":1,"device_id":"dev-1","lat":1,"lon":2}`)
	big := mk("dev-2", `{"v":1,"device_id":"dev-2","pad":"`+strings.Repeat("x", 20<<10)+`"}`)
	if err := spool.AppendAside(dir, []spool.AsideRecord{small, big}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--spool.dir", dir, "--nats.url", srv.ClientURL()}

	out, err := setAside(ctx, args, false)
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if !strings.Contains(out, "2 coordinates set aside") || !strings.Contains(out, "msg id id-dev-2") {
		t.Errorf("list output:\n%s", out)
	}

	out, err = setAside(ctx, args, true)
	if err == nil || !strings.Contains(out, "1 stored, 0 already in the stream, 1 still set aside") {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	m, err := st.GetLastMsgForSubject(ctx, small.Subject)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) != "id-dev-1" || m.Header.Get("Ubiqo-Device") != "dev-1" || string(m.Data) != string(small.Data) {
		t.Errorf("stored message: headers %v body %s", m.Header, m.Data)
	}
	left, err := os.ReadFile(filepath.Join(dir, spool.AsideFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(left), "\n") != 1 || !strings.Contains(string(left), "id-dev-2") || !strings.Contains(string(left), "maximum payload") {
		t.Errorf("set-aside file after publish:\n%.300s", left)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, spool.AsideFile+".publishing-*")); len(matches) != 0 {
		t.Errorf("work file left behind: %v", matches)
	}
}

// A bridge appending to the set-aside file while `set-aside --publish` runs
// beside it: the CLI moves the file away only between two appends (they
// share LockAside), so a line is either in what the CLI read and published,
// or in the new file; never written into the moved file after it was read.
func TestSetAsidePublishWaitsForAnAppendInProgress(t *testing.T) {
	srv, st := coordsServer(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	line := func(dev string) []byte {
		subj, _ := coord.Subject("ubiqo.coords", dev)
		b, _ := json.Marshal(spool.AsideRecord{Time: time.Now().UTC(), Reason: "too large", Subject: subj, MsgID: "id-" + dev, Device: dev,
			Data: json.RawMessage(`{"v":1,"device_id":"` + dev + `","lat":1,"lon":2}`)})
		return append(b, '\n')
	}
	// The bridge is in the middle of an append: lock held, first line written.
	unlock, err := spool.LockAside(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, spool.AsideFile), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(line("dev-1"))
	done := make(chan error, 1)
	var out bytes.Buffer
	go func() {
		done <- run(ctx, []string{"set-aside", "--publish", "--spool.dir", dir, "--nats.url", srv.ClientURL()}, &out, &out)
	}()
	select {
	case err := <-done:
		t.Fatalf("set-aside --publish ran during an append: %v\n%s", err, out.String())
	case <-time.After(200 * time.Millisecond):
	}
	f.Write(line("dev-2")) // the append's next line
	f.Close()
	unlock()
	if err := <-done; err != nil {
		t.Fatalf("set-aside --publish: %v\n%s", err, out.String())
	}
	for _, dev := range []string{"dev-1", "dev-2"} {
		if _, err := st.GetLastMsgForSubject(ctx, "ubiqo.coords."+dev); err != nil {
			t.Errorf("%s not stored by set-aside --publish: %v (output %s)", dev, err, out.String())
		}
	}
}

func TestSetAsidePublishWithoutSpoolDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "never-created")
	var out bytes.Buffer
	err := run(context.Background(), []string{"set-aside", "--publish", "--spool.dir", dir, "--nats.url", "nats://127.0.0.1:1"}, &out, &out)
	if err != nil || !strings.Contains(out.String(), "nothing set aside") {
		t.Fatalf("err %v, output %q; want \"nothing set aside\" and no error", err, out.String())
	}
}

// A bridge killed in the middle of setting a record aside leaves a torn
// line; an earlier --publish killed (or without NATS) leaves its work file.
// Neither hides records: the next append starts on a line of its own, a
// sound record glued to a torn one is read, --publish picks up the leftover
// work file, and the unreadable fragment is kept for the operator.
func TestSetAsideSurvivesTornLinesAndLeftovers(t *testing.T) {
	srv, st := coordsServer(t, nil)
	ctx := context.Background()
	dir := t.TempDir()
	mk := func(dev string) spool.AsideRecord {
		subj, _ := coord.Subject("ubiqo.coords", dev)
		return spool.AsideRecord{Time: time.Now().UTC(), Reason: "too large", Subject: subj, MsgID: "id-" + dev, Device: dev,
			Data: []byte(`{"v":1,"device_id":"` + dev + `","lat":1,"lon":2,"note":"<&>"}`)}
	}
	path := filepath.Join(dir, spool.AsideFile)
	// A line torn by a crash, glued (as an older bridge would have) to a
	// sound record; then a sound record appended now.
	torn := `{"time":"2026-03-01T00:00:00Z","reason":"too large","subj`
	glued := marshalRaw(t, mk("dev-a"))
	if err := os.WriteFile(path, []byte(torn+string(glued)+"\n"+torn), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := spool.AppendAside(dir, []spool.AsideRecord{mk("dev-b")}); err != nil {
		t.Fatal(err)
	}
	// A work file an earlier --publish left behind.
	left := marshalRaw(t, mk("dev-c"))
	if err := os.WriteFile(path+".publishing-1", append(left, '\n'), 0o640); err != nil {
		t.Fatal(err)
	}
	args := []string{"--spool.dir", dir, "--nats.url", srv.ClientURL()}
	out, err := setAside(ctx, args, false)
	if err != nil || !strings.Contains(out, "3 coordinates set aside") || !strings.Contains(out, "2 unreadable fragments") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if out, err = setAside(ctx, args, true); err != nil || !strings.Contains(out, "3 stored") {
		t.Fatalf("publish: %v\n%s", err, out)
	}
	for _, dev := range []string{"dev-a", "dev-b", "dev-c"} {
		subj, _ := coord.Subject("ubiqo.coords", dev)
		m, err := st.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			t.Fatalf("%s not stored: %v", dev, err)
		}
		if !strings.Contains(string(m.Data), `"note":"<&>"`) {
			t.Errorf("%s stored as %s: the body's bytes changed", dev, m.Data)
		}
	}
	kept, err := os.ReadFile(path + ".unreadable")
	if err != nil || strings.Count(string(kept), torn) != 2 {
		t.Fatalf("unreadable fragments not kept: %v %q", err, kept)
	}
	if matches, _ := filepath.Glob(path + ".publishing-*"); len(matches) != 0 {
		t.Errorf("work files left behind: %v", matches)
	}
}

// marshalRaw is json.Marshal without HTML escaping, as the bridge writes
// set-aside lines.
func marshalRaw(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// setAside runs `bridge set-aside` (with --publish when publish) and
// returns what it printed.
func setAside(ctx context.Context, args []string, publish bool) (string, error) {
	cmd := []string{"set-aside"}
	if publish {
		cmd = append(cmd, "--publish")
	}
	var out bytes.Buffer
	err := run(ctx, append(cmd, args...), &out, &out)
	return out.String(), err
}

// Two `set-aside --publish` at once: the second stops at once, rather than
// take the first one's work file for a leftover and write records back
// twice.
func TestSetAsidePublishRunsOnce(t *testing.T) {
	dir := t.TempDir()
	if err := spool.AppendAside(dir, []spool.AsideRecord{{Time: time.Now().UTC(), Reason: "too large",
		Subject: "ubiqo.coords.d", MsgID: "m", Device: "d", Data: []byte(`{"v":1}`)}}); err != nil {
		t.Fatal(err)
	}
	unlock, err := spool.LockPublish(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	out, err := setAside(context.Background(), []string{"--spool.dir", dir, "--nats.url", "nats://127.0.0.1:1"}, true)
	if err == nil || !strings.Contains(err.Error(), "another bridge set-aside --publish is running") {
		t.Fatalf("second --publish: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, spool.AsideFile)); err != nil {
		t.Fatalf("the set-aside file was moved: %v", err)
	}
}

// coordsServer starts a JetStream server (mod changes its options) with the
// COORDS stream.
func coordsServer(t *testing.T, mod func(*server.Options)) (*streamtest.Server, jetstream.Stream) {
	t.Helper()
	srv := streamtest.RunWith(t, mod)
	_, js := streamtest.Connect(t, srv)
	st, err := stream.Ensure(context.Background(), js, streamtest.Coords().StreamConfig())
	if err != nil {
		t.Fatal(err)
	}
	return srv, st
}
