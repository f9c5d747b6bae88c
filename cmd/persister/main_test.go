package main

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

type syncBuffer = streamtest.Logs

func freeAddr(t *testing.T) string { return streamtest.FreeAddr(t) }

func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestRunStoresCoordinates starts the program through run against a real
// JetStream server with the COORDS stream (as the bridge creates it), waits
// for /readyz, publishes coordinates and reads them back from the SQLite
// file, then stops it by cancelling its context.
func TestRunStoresCoordinates(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	ctx := context.Background()
	coords := streamtest.Coords()
	if _, err := stream.Ensure(ctx, js, coords.StreamConfig()); err != nil {
		t.Fatal(err)
	}
	dbPath := filepath.Join(t.TempDir(), "data", "coords.db")
	httpAddr := freeAddr(t)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, []string{"--nats.url", srv.ClientURL(), "--persist.dsn", "file:" + dbPath,
			"--http.addr", httpAddr, "--http.pprof", "--consumer.batch_wait", "20ms"}, &stdout, &stderr)
	}()
	base := "http://" + httpAddr
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, body, err := get(base + "/readyz")
		if err == nil && code == 200 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %d %s %v\n%s", code, body, err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// run ensured the DLQ stream.
	if _, err := js.Stream(ctx, stream.DLQStream); err != nil {
		t.Errorf("DLQ stream: %v", err)
	}

	const n = 50
	for i := range n {
		c := coord.Coord{V: coord.Version, DeviceID: "unit 7/α", Lat: 20.5 + float64(i)/1000, Lon: -100.3,
			TS: time.Date(2026, 3, 1, 12, 0, i, 0, time.UTC), ReceivedAt: time.Date(2026, 3, 1, 12, 1, 0, 0, time.UTC)}
		subj, err := coord.Subject("ubiqo.coords", c.DeviceID)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(subj)
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	db, err := sql.Open("sqlite", "file:"+dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var rows int
	for deadline := time.Now().Add(15 * time.Second); ; {
		_ = db.QueryRow(`SELECT count(*) FROM coords WHERE device_id = 'unit 7/α'`).Scan(&rows)
		if rows == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if rows != n {
		t.Fatalf("rows = %d, want %d", rows, n)
	}
	if code, body, _ := get(base + "/debug/pprof/heap?debug=1"); code != 200 || !strings.Contains(body, "heap profile") {
		t.Errorf("--http.pprof: heap profile = %d %.200s", code, body)
	}
	if code, _, _ := get(base + "/debug/pprof/cmdline"); code != 404 {
		t.Errorf("/debug/pprof/cmdline = %d, want 404 (flags may hold secrets)", code)
	}
	_, metrics, _ := get(base + "/metrics")
	for _, want := range []string{`ubiqo_persist_rows_total{result="inserted"} 50`,
		`ubiqo_subscriber_messages_total{consumer="persister",outcome="acked"} 50`, `ubiqo_persist_db_up 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	t.Logf("stored %d rows; stopped cleanly", rows)
}

// TestRunNeverLogsTheDSNPassword points the persister at a PostgreSQL that
// is not there, with a password in the DSN: it must start (not ready), log
// where it writes with the password masked, and never print the password.
func TestRunNeverLogsTheDSNPassword(t *testing.T) {
	srv := streamtest.Run(t)
	const secret = "hunter2-Very-Secret"
	dsn := "postgres://ubiqo:" + secret + "@" + freeAddr(t) + "/coords?sslmode=disable"
	httpAddr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var stdout, stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--nats.url", srv.ClientURL(), "--persist.driver", "postgres",
			"--persist.dsn", dsn, "--http.addr", httpAddr}, &stdout, &stderr)
	}()
	var body string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var code int
		var err error
		code, body, err = get("http://" + httpAddr + "/readyz")
		if err == nil && code == 503 && strings.Contains(body, "database") {
			break
		}
	}
	if !strings.Contains(body, `"database"`) {
		t.Errorf("/readyz does not name the database: %s", body)
	}
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("run: %v", err)
	}
	logs := stderr.String() + stdout.String()
	if strings.Contains(logs, secret) || strings.Contains(body, secret) {
		t.Fatalf("the DSN password appears in the output:\n%s", logs)
	}
	t.Logf("readyz: %s", body)
	if !strings.Contains(logs, "ubiqo:***@") {
		t.Errorf("the masked DSN is not logged:\n%s", logs)
	}
}

func TestRunConfigErrors(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"--help"}, &out, io.Discard)
	if !errors.Is(err, config.ErrShown) || !strings.Contains(out.String(), "--consumer.batch_size") || !strings.Contains(out.String(), "--persist.dsn") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
	err = run(context.Background(), []string{"--consumer.max_deliver=0", "--persist.driver=mysql"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "consumer.max_deliver") || !strings.Contains(err.Error(), "persist.driver") {
		t.Errorf("bad config: %v", err)
	}
}
