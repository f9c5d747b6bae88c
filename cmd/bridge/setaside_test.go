package main

import (
	"bytes"
	"context"
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
	srv := streamtest.RunWith(t, func(o *server.Options) { o.MaxPayload = 16 << 10 })
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	st, err := stream.Ensure(ctx, js, streamtest.Coords().StreamConfig())
	if err != nil {
		t.Fatal(err)
	}
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

	var out bytes.Buffer
	if err := run(ctx, append([]string{"set-aside"}, args...), &out, &out); err != nil {
		t.Fatalf("list: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "2 coordinates set aside") || !strings.Contains(out.String(), "msg id id-dev-2") {
		t.Errorf("list output:\n%s", out.String())
	}

	out.Reset()
	err = run(ctx, append([]string{"set-aside", "--publish"}, args...), &out, &out)
	if err == nil || !strings.Contains(out.String(), "1 stored, 0 already in the stream, 1 still set aside") {
		t.Fatalf("publish: %v\n%s", err, out.String())
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
