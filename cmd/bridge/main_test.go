package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

type syncBuffer = streamtest.Logs

func freeAddr(t *testing.T) string { return streamtest.FreeAddr(t) }

// TestRunEndToEnd starts the whole program through run, with its embedded
// JetStream server, posts a coordinate, reads it back from the stream as a
// subscriber would, and stops the program by cancelling its context.
func TestRunEndToEnd(t *testing.T) {
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	const token = "e2e-Secret-Token"
	t.Setenv("UBIQO_AUTH_TOKENS", token)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--http.addr", httpAddr,
			"--nats.embedded.listen", natsAddr,
			"--nats.embedded.store_dir", t.TempDir(),
			"--spool.dir", t.TempDir(),
		}, &stdout, &stderr)
	}()
	base := "http://" + httpAddr
	waitReady(t, base, done)

	req, _ := http.NewRequest("POST", base+"/webhook/ubiqo", strings.NewReader(`{"device_id":"unit 7/α","lat":20.5888,"lon":-100.3899,"timestamp":"2026-03-01T12:00:00Z","speed":61}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"accepted":1`) {
		t.Fatalf("POST: %d %s", resp.StatusCode, body)
	}

	// A subscriber on the embedded server sees the message on the device's subject.
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(context.Background(), "COORDS")
	if err != nil {
		t.Fatal(err)
	}
	var subj bytes.Buffer
	if err := run(context.Background(), []string{"token", "unit 7/α"}, &subj, io.Discard); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(subj.String()); got != "ubiqo.coords.unit=207=2F=CE=B1" {
		t.Fatalf("bridge token printed %q", got)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), strings.TrimSpace(subj.String()))
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(m.Data, &c); err != nil {
		t.Fatal(err)
	}
	if c["device_id"] != "unit 7/α" || c["speed_kmh"] != float64(61) || c["ts"] != "2026-03-01T12:00:00Z" {
		t.Fatalf("stored body %s", m.Data)
	}
	nc.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	logs := stderr.String()
	if strings.Contains(logs, token) {
		t.Fatal("the token reached the logs")
	}
	for _, want := range []string{"bridge listening", "embedded JetStream server running", `"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func waitReady(t *testing.T, base string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-done:
			t.Fatalf("run exited early: %v", err)
		default:
		}
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("bridge never ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestRunEmbeddedPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = run(context.Background(), []string{"--http.addr", freeAddr(t), "--nats.embedded.listen", l.Addr().String(), "--nats.embedded.store_dir", t.TempDir(), "--spool.dir", t.TempDir()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), "nats.url") {
		t.Fatalf("want a port-taken error that names nats.url, got %v", err)
	}
}

func TestRunBadConfigNamesKey(t *testing.T) {
	err := run(context.Background(), []string{"--http.max_batch=0"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "http.max_batch") {
		t.Fatalf("got %v", err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--version"}, &out, io.Discard); !errors.Is(err, config.ErrShown) || !strings.HasPrefix(out.String(), "bridge ") {
		t.Fatalf("--version: %v %q", err, out.String())
	}
}

func TestPlaceholderTokens(t *testing.T) {
	for tok, want := range map[string]bool{"change-me": true, " CHANGEME ": true, "secret": true, "k3Qz-8vA1-0aL": false, "": false} {
		if got := placeholderToken(tok); got != want {
			t.Errorf("placeholderToken(%q) = %v, want %v", tok, got, want)
		}
	}
}
