// Command bridge is the side-by-side benchmark of `make bench`: on one
// machine, against one JetStream server (file storage), it drives the same
// load at
//
//  1. bare:   a net/http handler that reads the body and answers 200 (the HTTP ceiling);
//  2. naive:  Echo + encoding/json + one synchronous jetstream.Publish per coordinate;
//  3. bridge: ubiqo-bridge (cmd/bridge),
//
// and runs `nats bench js pub async` on the same server, then prints one
// table of throughput, latency, ratios and the bridge's memory, and writes it
// to bench/results.md with the date, machine and commit. Each program runs as
// its own process, so RSS is the program's alone and the load generator
// (bench/load, in this process) is the same for all.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/ubiqo-bridge/ubiqo-bridge/bench/load"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

type options struct {
	duration    time.Duration
	connections int
	rate        float64
	batch       int
	devices     int
	out         string
	natsCLI     string
	keep        bool
}

func main() {
	var o options
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each load run")
	flag.IntVar(&o.connections, "connections", 64, "connections for the closed-loop runs")
	flag.Float64Var(&o.rate, "rate", 5000, "requests per second of the fixed-rate run")
	flag.IntVar(&o.batch, "batch", 100, "coordinates per request in the batch run")
	flag.IntVar(&o.devices, "devices", 10000, "simulated devices")
	flag.StringVar(&o.out, "out", "bench/results.md", "where to write the results table (empty = don't)")
	flag.StringVar(&o.natsCLI, "nats-cli", "", "nats CLI binary for `nats bench` (default: installed into the user cache)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// result is what one program did under the three loads.
type result struct {
	name                 string
	single, fixed, batch load.Summary
	idleRSS, peakRSS     int64 // bytes
}

func run(ctx context.Context, o options) error {
	tmp, err := os.MkdirTemp("", "ubiqo-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(tmp)
	}
	logf("building binaries into %s", tmp)
	if err := gobuild(tmp, "./cmd/bridge", "./bench/bridge/naive", "./bench/bridge/bare", "github.com/nats-io/nats-server/v2"); err != nil {
		return err
	}
	natsCLI := o.natsCLI
	if natsCLI == "" {
		if natsCLI, err = streamtest.InstallNATSCLI(); err != nil {
			return err
		}
	}

	natsPort := freePort()
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	ns, err := start(ctx, tmp, "nats-server", filepath.Join(tmp, "nats-server"), "-a", "127.0.0.1", "-p", strconv.Itoa(natsPort), "-js", "-sd", filepath.Join(tmp, "js"))
	if err != nil {
		return err
	}
	defer ns.stop()
	if err := waitTCP(fmt.Sprintf("127.0.0.1:%d", natsPort), 30*time.Second); err != nil {
		return err
	}
	nc, err := nats.Connect(natsURL)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	// The stream the bridge would create; the naive bridge publishes into it too.
	coords := streamtest.Coords()
	st, err := stream.Ensure(ctx, js, coords.StreamConfig())
	if err != nil {
		return err
	}

	fleet := func() *load.Fleet {
		f, err := load.NewFleet(load.FleetConfig{Devices: o.devices, Seed: 7})
		if err != nil {
			panic(err)
		}
		return f
	}
	programs := []struct {
		name string
		args func(addr string) []string
	}{
		{"bare", func(addr string) []string { return []string{filepath.Join(tmp, "bare"), "-addr", addr} }},
		{"naive", func(addr string) []string {
			return []string{filepath.Join(tmp, "naive"), "-addr", addr, "-nats", natsURL}
		}},
		{"bridge", func(addr string) []string {
			return []string{filepath.Join(tmp, "bridge"), "--http.addr", addr, "--nats.url", natsURL,
				"--spool.dir", filepath.Join(tmp, "spool"), "--log.level", "warn"}
		}},
	}
	var results []result
	for _, p := range programs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		addr := fmt.Sprintf("127.0.0.1:%d", freePort())
		args := p.args(addr)
		proc, err := start(ctx, tmp, p.name, args[0], args[1:]...)
		if err != nil {
			return err
		}
		if err := waitTCP(addr, 30*time.Second); err != nil {
			proc.stop()
			return err
		}
		time.Sleep(2 * time.Second)
		r := result{name: p.name, idleRSS: proc.rss("VmRSS")}
		url := "http://" + addr + "/webhook/ubiqo"
		runs := []struct {
			label string
			cfg   load.Config
			into  *load.Summary
		}{
			{"single POSTs, 64 connections", load.Config{URL: url, Connections: o.connections, Duration: o.duration, Batch: 1}, &r.single},
			{fmt.Sprintf("fixed %.0f req/s", o.rate), load.Config{URL: url, Connections: o.connections, Duration: o.duration, Batch: 1, Rate: o.rate}, &r.fixed},
			{fmt.Sprintf("batches of %d", o.batch), load.Config{URL: url, Connections: 16, Duration: o.duration, Batch: o.batch}, &r.batch},
		}
		for _, run := range runs {
			_ = st.Purge(ctx)
			run.cfg.Fleet = fleet()
			run.cfg.Timeout = 10 * time.Second
			s, err := load.Run(ctx, run.cfg)
			if err != nil {
				proc.stop()
				return fmt.Errorf("%s %s: %w", p.name, run.label, err)
			}
			*run.into = s
			logf("%-6s %-30s %8.0f req/s %9.0f coords/s  p50 %-8v p99 %-8v max %-8v  status %v errors %d",
				p.name, run.label, s.Throughput, s.CoordinatesPerSec, s.Latency.P50, s.Latency.P99, s.Latency.Max, s.Status, s.Errors)
		}
		r.peakRSS = proc.rss("VmHWM")
		proc.stop()
		results = append(results, r)
	}

	_ = st.Purge(ctx)
	natsBench, natsOut, err := runNATSBench(ctx, natsCLI, natsURL, o.batch)
	if err != nil {
		return fmt.Errorf("nats bench: %w\n%s", err, natsOut)
	}
	logf("nats bench js pub async: %.0f msgs/s", natsBench)

	table := render(results, natsBench, o)
	fmt.Println(table)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(table), 0o644); err != nil {
			return err
		}
		logf("wrote %s", o.out)
	}
	return nil
}

func render(rs []result, natsBench float64, o options) string {
	by := map[string]result{}
	for _, r := range rs {
		by[r.name] = r
	}
	bare, naive, br := by["bare"], by["naive"], by["bridge"]
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	ratio := func(a, b float64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f×", a/b)
	}
	mb := func(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# ubiqo-bridge benchmark\n\n")
	fmt.Fprintf(&b, "- date: %s\n- machine: %s, %d CPUs, %s\n- commit: %s\n- load: bench/load in the benchmark process, %d devices, runs of %v; one nats-server (JetStream, file storage) for all\n\n",
		time.Now().UTC().Format(time.RFC3339), cpuModel(), runtime.NumCPU(), runtime.Version(), commit(), o.devices, o.duration)
	fmt.Fprintf(&b, "| measure | bare HTTP | naive bridge | ubiqo-bridge | bridge / naive | bridge / bare |\n|---|---|---|---|---|---|\n")
	row := func(name string, f func(r result) string, ratios ...string) {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |", name, f(bare), f(naive), f(br))
		for _, r := range ratios {
			fmt.Fprintf(&b, " %s |", r)
		}
		for i := len(ratios); i < 2; i++ {
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	row(fmt.Sprintf("single POST, %d conns: requests/s", o.connections), func(r result) string { return fmt.Sprintf("%.0f", r.single.Throughput) },
		ratio(br.single.Throughput, naive.single.Throughput), ratio(br.single.Throughput, bare.single.Throughput))
	row("… p50", func(r result) string { return ms(r.single.Latency.P50) })
	row("… p99", func(r result) string { return ms(r.single.Latency.P99) })
	row(fmt.Sprintf("fixed %.0f req/s: p50", o.rate), func(r result) string { return ms(r.fixed.Latency.P50) })
	row("… p99", func(r result) string { return ms(r.fixed.Latency.P99) }, ratio(float64(br.fixed.Latency.P99), float64(naive.fixed.Latency.P99)))
	row("… max", func(r result) string { return ms(r.fixed.Latency.Max) })
	row("… requests missed (not sent in time)", func(r result) string { return strconv.FormatInt(r.fixed.Missed, 10) })
	row(fmt.Sprintf("batches of %d: coordinates/s", o.batch), func(r result) string { return fmt.Sprintf("%.0f", r.batch.CoordinatesPerSec) },
		ratio(br.batch.CoordinatesPerSec, naive.batch.CoordinatesPerSec), ratio(br.batch.CoordinatesPerSec, bare.batch.CoordinatesPerSec))
	row("non-2xx answers + errors (all runs)", func(r result) string {
		bad := r.single.Errors + r.fixed.Errors + r.batch.Errors
		for _, s := range []load.Summary{r.single, r.fixed, r.batch} {
			for code, n := range s.Status {
				if code < 200 || code > 299 {
					bad += n
				}
			}
		}
		return strconv.FormatInt(bad, 10)
	})
	row("RSS idle", func(r result) string { return mb(r.idleRSS) })
	row("RSS peak", func(r result) string { return mb(r.peakRSS) })
	fmt.Fprintf(&b, "\n`nats bench js pub async` on the same server (%d-byte messages, batch %d): **%.0f msgs/s**; ubiqo-bridge batches of %d reach **%s** of it.\n\n",
		natsBenchSize, o.batch, natsBench, o.batch, ratio(br.batch.CoordinatesPerSec, natsBench))
	fmt.Fprintf(&b, "| target (issue 7) | measured | |\n|---|---|---|\n")
	fmt.Fprintf(&b, "| single POSTs ≥ 1.3× naive | %s | %s |\n", ratio(br.single.Throughput, naive.single.Throughput), verdict(naive.single.Throughput > 0 && br.single.Throughput >= 1.3*naive.single.Throughput))
	fmt.Fprintf(&b, "| single POSTs ≥ 50%% of bare HTTP | %s | %s |\n", ratio(br.single.Throughput, bare.single.Throughput), verdict(bare.single.Throughput > 0 && br.single.Throughput >= 0.5*bare.single.Throughput))
	fmt.Fprintf(&b, "| fixed rate p99 ≤ naive's | %s vs %s | %s |\n", ms(br.fixed.Latency.P99), ms(naive.fixed.Latency.P99), verdict(br.fixed.Latency.P99 <= naive.fixed.Latency.P99))
	fmt.Fprintf(&b, "| fixed rate p99 < 5 ms | %s | %s |\n", ms(br.fixed.Latency.P99), verdict(br.fixed.Latency.P99 < 5*time.Millisecond))
	fmt.Fprintf(&b, "| batches ≥ 80%% of nats bench | %s | %s |\n", ratio(br.batch.CoordinatesPerSec, natsBench), verdict(natsBench > 0 && br.batch.CoordinatesPerSec >= 0.8*natsBench))
	fmt.Fprintf(&b, "| bridge peak RSS ≤ 80 MB | %s | %s |\n", mb(br.peakRSS), verdict(br.peakRSS <= 80<<20))
	fmt.Fprintf(&b, "| bridge idle RSS ≤ 30 MB | %s | %s |\n", mb(br.idleRSS), verdict(br.idleRSS <= 30<<20))
	return b.String()
}

const natsBenchSize = 350 // about a canonical coordinate message

func runNATSBench(ctx context.Context, cli, url string, batch int) (float64, string, error) {
	cmd := exec.CommandContext(ctx, cli, "-s", url, "bench", "js", "pub", "async", "ubiqo.benchsubject",
		"--create", "--purge", "--storage=file", "--msgs=500000", fmt.Sprintf("--size=%dB", natsBenchSize),
		fmt.Sprintf("--batch=%d", max(batch, 100)), "--no-progress", "--stream=benchstream")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return 0, string(out), err
	}
	// e.g. "Pub stats: 312,345 msgs/sec ~ 104.12 MB/sec"
	m := regexp.MustCompile(`stats:\s*([\d,]+)\s*msgs/sec`).FindSubmatch(out)
	if m == nil {
		return 0, string(out), errors.New("no msgs/sec in the output")
	}
	v, _ := strconv.ParseFloat(strings.ReplaceAll(string(m[1]), ",", ""), 64)
	return v, string(out), nil
}

// proc is a child process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func start(ctx context.Context, dir, name, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	logFile, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logFile.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// rss reads a memory field (VmRSS, VmHWM) of the process, in bytes.
func (p *proc) rss(field string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, field+":") {
			fields := strings.Fields(line)
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

func gobuild(dir string, pkgs ...string) error {
	args := append([]string{"build", "-trimpath", "-o", dir + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitTCP(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening after %v", addr, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if _, v, ok := strings.Cut(line, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return runtime.GOARCH
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, _ := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); len(st) > 0 {
		c += " (with uncommitted changes)"
	}
	return c
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}
