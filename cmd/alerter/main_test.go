package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/alert"
)

const rulesYAML = `
version: 1
hysteresis_m: 25
rules:
  - name: depot-qro
    title: Depot Querétaro
    type: geofence
    circle: {lat: 20.5888, lon: -100.3899, radius_m: 300}
`

func writeRules(t *testing.T, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

type lockedBuffer = streamtest.Logs

// The whole program against a real JetStream server: alerts reach the
// webhook once, the secret in its URL never reaches the logs, a replay of
// the hour notifies nothing again.
func TestRunLiveThenReplay(t *testing.T) {
	srv := streamtest.Run(t)
	_, js := streamtest.Connect(t, srv)
	var mu sync.Mutex
	var hooks []alert.Alert
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var a alert.Alert
		_ = json.NewDecoder(r.Body).Decode(&a)
		mu.Lock()
		hooks = append(hooks, a)
		mu.Unlock()
	}))
	defer hook.Close()
	delivered := func() int { mu.Lock(); defer mu.Unlock(); return len(hooks) }

	rules := writeRules(t, rulesYAML)
	args := []string{"--nats.url", srv.ClientURL(), "--alert.rules_file", rules,
		"--alert.webhook_url", hook.URL + "/hooks/T0K3N-s3cret", "--consumer.batch_wait=10ms", "--alert.scan_interval=100ms"}
	ctx, cancel := context.WithCancel(context.Background())
	var stderr lockedBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, &stderr) }()
	waitFor(t, "the alerter consumer", func() bool {
		_, err := js.Consumer(context.Background(), "COORDS", "alerter")
		return err == nil
	})

	// UNIT-7 drives north through the depot circle.
	t0 := time.Now().Add(-10 * time.Minute).UTC().Truncate(time.Second)
	for i := 0; i <= 12; i++ {
		ts := t0.Add(time.Duration(i) * 10 * time.Second)
		c := &coord.Coord{V: 1, DeviceID: "UNIT-7", TS: ts, ReceivedAt: ts, Lat: 20.5838 + float64(i)*0.001, Lon: -100.3899}
		m := nats.NewMsg("ubiqo.coords.UNIT-7")
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "two notifications", func() bool { return delivered() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	mu.Lock()
	if hooks[0].Kind != alert.KindEnter || hooks[1].Kind != alert.KindExit || hooks[0].Rule != "depot-qro" {
		t.Errorf("notified %+v", hooks)
	}
	mu.Unlock()
	if logs := stderr.String(); strings.Contains(logs, "T0K3N-s3cret") || !strings.Contains(logs, "UNIT-7 entered Depot Querétaro") {
		t.Errorf("logs leak the webhook secret or lack the alert:\n%s", logs)
	}

	// Replay the hour: a JSON report on stdout, nothing published again.
	var stdout bytes.Buffer
	if err := run(context.Background(), append(args, "--replay-since", "1h"), &stdout, io.Discard); err != nil {
		t.Fatalf("replay: %v", err)
	}
	var rep alert.ReplayReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("replay report %q: %v", stdout.String(), err)
	}
	if rep.Fixes != 13 || rep.Computed != 2 || rep.Suppressed != 2 || rep.Published != 0 || !strings.HasPrefix(rep.Durable, "alerter-replay-") {
		t.Errorf("replay report = %+v", rep)
	}
	if s, err := js.Stream(context.Background(), "ALERTS"); err != nil || s.CachedInfo().State.Msgs != 2 {
		t.Errorf("ALERTS after the replay: %v", err)
	}
	if n := delivered(); n != 2 {
		t.Errorf("webhook got %d, want 2", n)
	}
}

func TestRunRejectsBadConfigNamingTheKey(t *testing.T) {
	good := writeRules(t, rulesYAML)
	bad := writeRules(t, "rules:\n  - {name: speed, type: overspeed, limit_kmh: -5}\n")
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant string
	}{
		{"missing rule file", []string{"--alert.rules_file", "/nonexistent/rules.yaml"}, []string{"alert.rules_file", "no such file"}, ""},
		{"bad rule", []string{"--alert.rules_file", bad}, []string{"alert.rules_file", `rule "speed"`, "limit_kmh"}, ""},
		{"webhook not a URL", []string{"--alert.rules_file", good, "--alert.webhook_url", "ftp://hooks?token=PSST"}, []string{"alert.webhook_url"}, "PSST"},
		{"unknown notify kind", []string{"--alert.rules_file", good, "--alert.notify_kinds", "enter"}, []string{"alert.notify_kinds"}, ""},
		{"scan interval", []string{"--alert.rules_file", good, "--alert.scan_interval", "0s"}, []string{"alert.scan_interval"}, ""},
		{"replay since", []string{"--alert.rules_file", good, "--replay-since", "yesterday"}, []string{"replay since", "RFC 3339"}, ""},
		{"replay since empty", []string{"--replay-since="}, []string{"--replay-since needs a value"}, ""},
		{"a bool flag's value as a separate word", []string{"--alert.rules_file", good, "--alert.log_alerts", "false"}, []string{`unexpected argument "false"`, "--key=false"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), tt.args, io.Discard, io.Discard)
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.notWant != "" && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("error %q echoes the secret", err)
			}
		})
	}
}

func TestHelpAndPrintConfig(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"--help"}, &out, io.Discard); !errors.Is(err, config.ErrShown) {
		t.Fatalf("--help: %v", err)
	}
	for _, want := range []string{"--replay-since", "--alert.rules_file", "UBIQO_ALERT_WEBHOOK_URL", "--alert.scan_interval", "--consumer.durable"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
	out.Reset()
	t.Setenv("UBIQO_ALERT_SLACK_URL", "https://hooks.slack.com/services/T1/B2/sl4ck-s3cret")
	t.Setenv("UBIQO_ALERT_WEBHOOK_URL", "https://ops.example.com/alerts?token=w3bh00k-s3cret")
	if err := run(context.Background(), []string{"--print-config"}, &out, io.Discard); !errors.Is(err, config.ErrShown) {
		t.Fatalf("--print-config: %v", err)
	}
	s := out.String()
	if strings.Contains(s, "s3cret") || !strings.Contains(s, "slack_url: '***'") || !strings.Contains(s, "rules_file: ./alert-rules.yaml") {
		t.Errorf("--print-config:\n%s", s)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// config cannot import the alert package; the kinds it validates
// alert.notify_kinds against must be the alerter's.
func TestConfigKnowsEveryAlertKind(t *testing.T) {
	if strings.Join(config.AlertKinds, ",") != strings.Join(alert.Kinds, ",") {
		t.Errorf("config.AlertKinds = %v, alert.Kinds = %v", config.AlertKinds, alert.Kinds)
	}
}

// Started before NATS, the alerter waits for it (saying so) instead of
// exiting, then runs; stopped while it waits, it exits cleanly.
func TestWaitsForNATSAtStart(t *testing.T) {
	port := streamtest.FreePort(t)
	rules := writeRules(t, rulesYAML)
	args := []string{"--nats.url", fmt.Sprintf("nats://127.0.0.1:%d", port), "--nats.connect_timeout=200ms",
		"--alert.rules_file", rules, "--consumer.batch_wait=10ms"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr lockedBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, io.Discard, &stderr) }()
	waitFor(t, "the waiting warning", func() bool { return strings.Contains(stderr.String(), "waiting for NATS") })
	select {
	case err := <-done:
		t.Fatalf("alerter exited while NATS was down: %v", err)
	default:
	}
	srv := streamtest.RunWith(t, func(o *server.Options) { o.Port = port })
	_, js := streamtest.Connect(t, srv)
	waitFor(t, "the alerter consumer", func() bool {
		_, err := js.Consumer(context.Background(), "COORDS", "alerter")
		return err == nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	// Stopped while waiting: a clean exit.
	ctx2, cancel2 := context.WithCancel(context.Background())
	args[1] = fmt.Sprintf("nats://127.0.0.1:%d", streamtest.FreePort(t))
	var stderr2 lockedBuffer
	go func() { done <- run(ctx2, args, io.Discard, &stderr2) }()
	waitFor(t, "the waiting warning", func() bool { return strings.Contains(stderr2.String(), "waiting for NATS") })
	cancel2()
	if err := <-done; err != nil {
		t.Fatalf("stopped while waiting: %v", err)
	}
}
