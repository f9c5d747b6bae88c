package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bench/load"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

// fakeBridge answers like the bridge: 401 without the token, 200
// {"accepted":n,"duplicates":0,"rejected":[]} with n the items of the body.
type fakeBridge struct {
	mu       sync.Mutex
	requests int
	coords   int
	devices  map[string]bool
}

func (b *fakeBridge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	if r.Header.Get("Authorization") != "Bearer tok-123" {
		w.WriteHeader(http.StatusUnauthorized)
		io.WriteString(w, `{"error":"unauthorized"}`)
		return
	}
	var items []map[string]any
	body, _ := io.ReadAll(r.Body)
	if len(body) == 0 { // GET: the query is the coordinate
		one := map[string]any{}
		for k, v := range r.URL.Query() {
			one[k] = v[0]
		}
		items = append(items, one)
	} else if err := json.Unmarshal(body, &items); err != nil {
		var one map[string]any
		if err := json.Unmarshal(body, &one); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"malformed"}`)
			return
		}
		items = append(items, one)
	}
	b.mu.Lock()
	b.requests++
	b.coords += len(items)
	for _, it := range items {
		for _, k := range []string{"imei", "dispositivo", "deviceId", "device_id", "uniqueId"} {
			if id, ok := it[k]; ok {
				b.devices[fmt.Sprint(id)] = true
			}
		}
	}
	b.mu.Unlock()
	fmt.Fprintf(w, `{"accepted":%d,"duplicates":0,"rejected":[]}`, len(items))
}

func TestRunEndToEnd(t *testing.T) {
	b := &fakeBridge{devices: map[string]bool{}}
	srv := httptest.NewServer(b)
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{
		"--simulator.url=" + srv.URL + "/webhook/ubiqo", "--simulator.token=tok-123",
		"--simulator.devices=20", "--simulator.rate=100", "--simulator.duration=1200ms",
		"--simulator.batch=3", "--simulator.connections=4", "--simulator.output=json",
	}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	var s load.Summary
	if err := json.Unmarshal(stdout.Bytes(), &s); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, stdout.String())
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.Sent < 90 || s.Sent > 150 || s.Status[200] != int64(b.requests) || s.Sent != s.Answered {
		t.Errorf("sent %d, status %v; the server saw %d requests", s.Sent, s.Status, b.requests)
	}
	if s.Accepted != int64(b.coords) || s.Accepted != 3*s.Sent {
		t.Errorf("accepted %d, the server saw %d coordinates in %d requests", s.Accepted, b.coords, s.Sent)
	}
	if len(b.devices) != 20 {
		t.Errorf("the server saw %d devices, want 20", len(b.devices))
	}
	if !strings.Contains(stderr.String(), " sent ") || !strings.Contains(stderr.String(), "p99") {
		t.Errorf("no progress line on stderr:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String()+stdout.String(), "tok-123") {
		t.Error("the token is shown")
	}
}

// Interrupted (Ctrl-C cancels the context), run prints the summary and
// succeeds.
func TestRunInterrupted(t *testing.T) {
	b := &fakeBridge{devices: map[string]bool{}}
	srv := httptest.NewServer(b)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := run(ctx, []string{"--simulator.url=" + srv.URL, "--simulator.token=tok-123", "--simulator.method=get"}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	out := stdout.String()
	for _, want := range []string{"(interrupted)", "GET " + srv.URL, "status       200: ", "latency      p50"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestRunNothingAnswers(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var stdout, stderr bytes.Buffer
	err = run(context.Background(), []string{"--simulator.url=http://" + addr + "/webhook/ubiqo", "--simulator.count=5"}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no request was answered") {
		t.Fatalf("run against a closed port: %v", err)
	}
	if !strings.Contains(stdout.String(), "connection refused: 5") {
		t.Errorf("summary:\n%s", stdout.String())
	}
}

func TestConfigKeys(t *testing.T) {
	l, err := config.Load(config.Simulator, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s := l.Simulator
	lat, lon := s.CenterLatLon()
	if s.URL != "http://127.0.0.1:8080/webhook/ubiqo" || s.Devices != 200 || s.Rate != 50 || s.Batch != 1 ||
		s.Method != "POST" || s.Duration != 0 || s.Count != 0 || s.PanicRate != 0.001 || s.SilentFraction != 0.05 ||
		s.Seed != 1 || lat != 20.5888 || lon != -100.3899 || s.RadiusKm != 8 || s.Output != "text" || s.Location().String() != "UTC" {
		t.Errorf("defaults: %+v", s)
	}

	t.Setenv("UBIQO_SIMULATOR_RATE", "2500.5")
	t.Setenv("UBIQO_SIMULATOR_TOKEN", "from-env")
	l, err = config.Load(config.Simulator, []string{"--simulator.method=get", "--simulator.panic_rate=0.02",
		"--simulator.duration=90s", "--simulator.center=19.4326,-99.1332", "--simulator.timezone=America/Mexico_City"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	s = l.Simulator
	if s.Rate != 2500.5 || s.Token != "from-env" || s.Method != "GET" || s.PanicRate != 0.02 || s.Duration != 90*time.Second {
		t.Errorf("env and flags: %+v", s)
	}
	if lat, _ := s.CenterLatLon(); lat != 19.4326 || s.Location().String() != "America/Mexico_City" {
		t.Errorf("center %v, zone %v", lat, s.Location())
	}

	var out bytes.Buffer
	if _, err := config.Load(config.Simulator, []string{"--print-config"}, &out); !errors.Is(err, config.ErrShown) {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "from-env") || !strings.Contains(out.String(), "token: '***'") {
		t.Errorf("--print-config does not mask simulator.token:\n%s", out.String())
	}
	out.Reset()
	if _, err := config.Load(config.Simulator, []string{"--help"}, &out); !errors.Is(err, config.ErrShown) ||
		!strings.Contains(out.String(), "--simulator.rate") || !strings.Contains(out.String(), "UBIQO_SIMULATOR_PANIC_RATE") {
		t.Errorf("--help: %v\n%s", err, out.String())
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		args []string
		key  string
	}{
		{[]string{"--simulator.url=ftp://x"}, "simulator.url"},
		{[]string{"--simulator.method=PUT"}, "simulator.method"},
		{[]string{"--simulator.method=GET", "--simulator.batch=10"}, "simulator.batch"},
		{[]string{"--simulator.rate=fast"}, "simulator.rate"},
		{[]string{"--simulator.rate=-5"}, "simulator.rate"},
		{[]string{"--simulator.devices=0"}, "simulator.devices"},
		{[]string{"--simulator.panic_rate=1.5"}, "simulator.panic_rate"},
		{[]string{"--simulator.silent_fraction=1"}, "simulator.silent_fraction"},
		{[]string{"--simulator.center=Querétaro"}, "simulator.center"},
		{[]string{"--simulator.timezone=Mars/Olympus"}, "simulator.timezone"},
		{[]string{"--simulator.output=xml"}, "simulator.output"},
	} {
		_, err := config.Load(config.Simulator, tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%v: error %v does not name %s", tc.args, err, tc.key)
		}
	}
}

// Every answer a 401 (no simulator.token, or the wrong one): the run still
// ends 0, as every request was answered, but says what to set.
func TestRunEveryAnswer401SaysWhy(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"error":"missing or invalid token"}`, http.StatusUnauthorized)
	}))
	defer srv.Close()
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"--simulator.url=" + srv.URL, "--simulator.count=3"}, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v", err)
	}
	if !strings.Contains(stderr.String(), "every answer was 401: set simulator.token") {
		t.Fatalf("stderr:\n%s", stderr.String())
	}
}
