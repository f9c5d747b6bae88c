// Command forward measures the forwarder: coordinates per second delivered
// from COORDS to a local keep-alive HTTP sink, with each device's order
// checked at the sink.
//
// It starts an in-process JetStream server (file storage in a temporary
// directory, as in production), preloads -messages coordinates spread over
// -devices devices (interleaved, as a fleet sends them), starts an HTTP sink
// on loopback and one forwarder target pointing at it, and times the
// delivery of the backlog. Everything stays on 127.0.0.1 and stops by itself.
//
//	go run ./bench/forward [-messages 200000] [-devices 1000] [-concurrency 32] [-format canonical|batch]
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers"
	"github.com/ubiqo-bridge/ubiqo-bridge/subscribers/forward"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench forward:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("forward", flag.ContinueOnError)
	messages := fs.Int("messages", 200_000, "coordinates to preload and forward")
	devices := fs.Int("devices", 1000, "devices they are spread over")
	concurrency := fs.Int("concurrency", 32, "requests in flight to the sink")
	format := fs.String("format", forward.FormatCanonical, "canonical or batch")
	batchSize := fs.Int("batch-size", 100, "coordinates per request with -format batch")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the forwarding phase to this file")
	traceFile := fs.String("trace", "", "write an execution trace of the first 3s of forwarding to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()

	dir, err := os.MkdirTemp("", "bench-forward-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	env, err := streamtest.StartLoadEnv(ctx, dir, 4096, log)
	if err != nil {
		return err
	}
	defer env.Close()
	js := env.JS

	fmt.Fprintf(out, "preloading %d coordinates over %d devices...\n", *messages, *devices)
	t0 := time.Now()
	if err := preload(ctx, js, *messages, *devices); err != nil {
		return err
	}
	fmt.Fprintf(out, "preloaded in %v\n", time.Since(t0).Round(time.Millisecond))

	sk := newSink(*devices)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: sk, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	svc, err := forward.New(js, forward.Options{
		Targets: []forward.Target{{
			Name: "bench", URL: "http://" + ln.Addr().String() + "/ubiqo",
			Format: *format, BatchSize: *batchSize, Concurrency: *concurrency,
			Timeout: 10 * time.Second, MaxDeliver: -1,
		}},
		Runtime: subscribers.Config{},
		Version: "bench",
	}, log)
	if err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		time.AfterFunc(3*time.Second, trace.Stop)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- svc.Run(runCtx) }()

	cpuStart := cpuTime()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	nextReport := start.Add(time.Second)
	for sk.count.Load() < int64(*messages) {
		select {
		case now := <-poll.C:
			if now.After(nextReport) {
				fmt.Fprintf(out, "  %5.1fs  %d delivered, %s\n", now.Sub(start).Seconds(), sk.count.Load(), gauges(svc))
				nextReport = nextReport.Add(time.Second)
			}
		case err := <-done:
			stop()
			return fmt.Errorf("forwarder stopped early: %v", err)
		case <-ctx.Done():
			stop()
			return fmt.Errorf("only %d of %d delivered after %v", sk.count.Load(), *messages, *timeout)
		}
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpuStart
	stop()
	if err := <-done; err != nil {
		return fmt.Errorf("forwarder stop: %w", err)
	}

	lat := sk.latencies()
	fmt.Fprintf(out, "\nforwarded %d coordinates (%d devices, format %s, concurrency %d) in %v\n",
		*messages, *devices, *format, *concurrency, elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "throughput: %.0f coordinates/s, %.0f requests/s\n",
		float64(*messages)/elapsed.Seconds(), float64(sk.requests.Load())/elapsed.Seconds())
	fmt.Fprintf(out, "sink handler time per request: p50 %v p99 %v\n", lat(0.50), lat(0.99))
	fmt.Fprintf(out, "process CPU: %.1fs over %.1fs wall on %d CPUs (server, forwarder and sink in one process)\n",
		cpu.Seconds(), elapsed.Seconds(), runtime.NumCPU())
	fmt.Fprintf(out, "per-device order: %d violations, %d duplicates\n", sk.violations.Load(), sk.duplicates.Load())
	if v := sk.violations.Load(); v > 0 {
		return fmt.Errorf("%d order violations", v)
	}
	return nil
}

// preload publishes coordinate i of every device, for i = 0.. (interleaved).
func preload(ctx context.Context, js jetstream.JetStream, messages, devices int) error {
	base := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	subjects := make([]string, devices)
	for d := range devices {
		subjects[d] = fmt.Sprintf("ubiqo.coords.unit-%04d", d)
	}
	for n := range messages {
		d, i := n%devices, n/devices
		c := coord.Coord{V: coord.Version, DeviceID: fmt.Sprintf("unit-%04d", d),
			TS:         base.Add(time.Duration(i) * time.Second),
			ReceivedAt: base.Add(time.Duration(i)*time.Second + time.Second),
			Lat:        19.4 + float64(i%1000)*1e-4, Lon: -99.1,
			Raw: json.RawMessage(fmt.Sprintf(`{"imei":"unit-%04d","lat":"19.4","lng":"-99.1","fecha":"%d"}`, d, i)),
		}
		m := nats.NewMsg(subjects[d])
		m.Data = c.AppendJSON(nil)
		m.Header.Set(jetstream.MsgIDHeader, c.MsgID())
		if _, err := js.PublishMsgAsync(m); err != nil {
			return err
		}
		if n%2000 == 1999 { // keep the acks in view: a window, not a flood
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				return errors.New("preload acks did not come")
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return errors.New("preload acks did not come")
	}
}

// sink is the target: it checks each device's order by ts.
type sink struct {
	count, requests        atomic.Int64
	violations, duplicates atomic.Int64

	mu   sync.Mutex
	last map[string]time.Time
	durs []time.Duration
}

func newSink(devices int) *sink {
	return &sink{last: make(map[string]time.Time, devices)}
}

type item struct {
	DeviceID string    `json:"device_id"`
	TS       time.Time `json:"ts"`
}

func (s *sink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	t0 := time.Now()
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	var items []item
	if len(body) > 0 && body[0] == '[' {
		err = json.Unmarshal(body, &items)
	} else {
		var it item
		err = json.Unmarshal(body, &it)
		items = []item{it}
	}
	if err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	s.mu.Lock()
	for _, it := range items {
		prev, seen := s.last[it.DeviceID]
		switch {
		case !seen || it.TS.After(prev):
			s.last[it.DeviceID] = it.TS
			s.count.Add(1)
		case it.TS.Equal(prev):
			s.duplicates.Add(1)
		default:
			s.violations.Add(1)
		}
	}
	s.durs = append(s.durs, time.Since(t0))
	s.mu.Unlock()
	s.requests.Add(1)
	w.WriteHeader(http.StatusNoContent)
}

func (s *sink) latencies() func(q float64) time.Duration {
	s.mu.Lock()
	d := slices.Clone(s.durs)
	s.mu.Unlock()
	slices.Sort(d)
	return func(q float64) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, int(q*float64(len(d))))]
	}
}

// cpuTime is the CPU time this process used so far (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gauges reads the forwarder's held messages and the consumer's backlog.
func gauges(svc *forward.Service) string {
	fams, err := svc.Gatherer().Gather()
	if err != nil {
		return err.Error()
	}
	v := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.Metric {
			if m.Gauge != nil {
				v[f.GetName()] += m.Gauge.GetValue()
			}
		}
	}
	return fmt.Sprintf("held %.0f, unsettled %.0f, stream pending %.0f",
		v["ubiqo_forward_held_messages"], v["ubiqo_subscriber_unsettled_messages"], v["ubiqo_subscriber_pending_messages"])
}
