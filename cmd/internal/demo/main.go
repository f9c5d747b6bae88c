// Command demo runs the whole of ubiqo-bridge on one machine (`make demo`):
// the bridge with its embedded JetStream server, the persister on SQLite, the
// alerter with the example rule file, the forwarder to a local sink, and the
// simulator feeding 200 devices. It prints a live one-line status and, on
// Ctrl-C (or after -duration), stops everything and prints a summary.
//
// Everything lives under -dir (default ./data/demo); every program logs to
// its own file there.
package main

import (
	"bufio"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"
)

type options struct {
	dir      string
	devices  int
	rate     float64
	duration time.Duration
	rules    string
	httpPort int
	natsPort int
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "./data/demo", "working directory (data, logs, binaries)")
	flag.IntVar(&o.devices, "devices", 200, "simulated devices")
	flag.Float64Var(&o.rate, "rate", 50, "requests per second from the simulator")
	flag.DurationVar(&o.duration, "duration", 0, "stop after this long (0 = until Ctrl-C)")
	flag.StringVar(&o.rules, "rules", "deploy/alerter/rules.yaml", "alerter rule file")
	flag.IntVar(&o.httpPort, "http-port", 8080, "bridge port (0 = any free one)")
	flag.IntVar(&o.natsPort, "nats-port", 0, "embedded NATS port (0 = 4222 if free, else any free one)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	say("building the binaries into %s", bin)
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/bridge", "./cmd/persister", "./cmd/alerter", "./cmd/forwarder", "./cmd/simulator")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	rules, err := filepath.Abs(o.rules)
	if err != nil {
		return err
	}

	natsPort := o.natsPort
	if natsPort == 0 {
		natsPort = 4222
		if !portFree(natsPort) {
			natsPort = freePort()
		}
	}
	httpPort := o.httpPort
	if httpPort == 0 || !portFree(httpPort) {
		httpPort = freePort()
	}
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	webhook := fmt.Sprintf("http://127.0.0.1:%d/webhook/ubiqo", httpPort)
	const token = "demo-token"

	// The forwarder's secondary server: a local sink that counts.
	var forwarded atomic.Int64
	sink := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		forwarded.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})}
	sinkLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = sink.Serve(sinkLn) }()
	defer sink.Close()

	env := []string{"UBIQO_LOG_FORMAT=console", "UBIQO_NATS_URL=" + natsURL}
	procs := &group{dir: dir}
	defer procs.stopAll()

	if err := procs.start("bridge", filepath.Join(bin, "bridge"), []string{"UBIQO_LOG_FORMAT=console", "UBIQO_AUTH_TOKENS=" + token},
		"--http.addr", fmt.Sprintf("127.0.0.1:%d", httpPort),
		"--nats.embedded.listen", fmt.Sprintf("127.0.0.1:%d", natsPort),
		"--nats.embedded.store_dir", filepath.Join(dir, "nats"),
		"--spool.dir", filepath.Join(dir, "spool"),
		"--log.access", "errors"); err != nil {
		return err
	}
	if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", httpPort), 60*time.Second); err != nil {
		return fmt.Errorf("bridge: %w (see %s)", err, procs.logOf("bridge"))
	}
	say("bridge ready: %s (token %s), embedded JetStream at %s", webhook, token, natsURL)

	dbPath := filepath.Join(dir, "coords.db")
	if err := procs.start("persister", filepath.Join(bin, "persister"), env, "--persist.dsn", "file:"+dbPath); err != nil {
		return err
	}
	if err := procs.start("alerter", filepath.Join(bin, "alerter"), env, "--alert.rules_file", rules); err != nil {
		return err
	}
	targets := fmt.Sprintf(`[{"name":"sink","url":"http://%s/ingest","format":"canonical"}]`, sinkLn.Addr())
	if err := procs.start("forwarder", filepath.Join(bin, "forwarder"), append(env, "UBIQO_FORWARD_TARGETS_JSON="+targets)); err != nil {
		return err
	}
	simCtx, stopSim := context.WithCancel(context.Background())
	defer stopSim()
	if err := procs.startCtx(simCtx, "simulator", filepath.Join(bin, "simulator"), []string{"UBIQO_LOG_FORMAT=console"},
		"--simulator.url", webhook, "--simulator.token", token,
		"--simulator.devices", strconv.Itoa(o.devices), "--simulator.rate", strconv.FormatFloat(o.rate, 'f', -1, 64)); err != nil {
		return err
	}
	say("persister (SQLite %s), alerter (%s), forwarder (to %s) and simulator (%d devices, %.0f req/s) running; logs in %s",
		dbPath, o.rules, sinkLn.Addr(), o.devices, o.rate, dir)
	say("Ctrl-C stops the demo and prints a summary")

	nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	db, err := sql.Open("sqlite", "file:"+dbPath+"?mode=ro&_pragma=busy_timeout(2000)")
	if err != nil {
		return err
	}
	defer db.Close()

	st := func() status {
		return status{
			in:        metricSum(fmt.Sprintf("http://127.0.0.1:%d/metrics", httpPort), `ubiqo_bridge_coordinates_total{result="accepted"}`),
			rows:      countRows(db),
			alerts:    streamMsgs(js, "ALERTS"),
			forwarded: forwarded.Load(),
			dlq:       streamMsgs(js, "DLQ"),
		}
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			s := st()
			fmt.Fprintf(os.Stderr, "\r%s  coordinates in %d · rows stored %d · alerts %d · forwarded %d · dead-lettered %d   ",
				time.Since(start).Round(time.Second), s.in, s.rows, s.alerts, s.forwarded, s.dlq)
		}
		if err := procs.failed(); err != nil {
			fmt.Fprintln(os.Stderr)
			return err
		}
	}
	fmt.Fprintln(os.Stderr)
	say("stopping the simulator; letting the subscribers catch up")
	stopSim()
	procs.wait("simulator", 15*time.Second)
	// Catch up: until the counts stop moving (or 20 s).
	prev := st()
	for i := 0; i < 20; i++ {
		time.Sleep(time.Second)
		cur := st()
		if cur == prev && cur.rows >= cur.in {
			break
		}
		prev = cur
	}
	final := st()
	procs.stopAll()
	fmt.Printf("\nubiqo-bridge demo summary (%s)\n", time.Since(start).Round(time.Second))
	fmt.Printf("  coordinates in (accepted by the bridge)  %d\n", final.in)
	fmt.Printf("  rows stored by the persister (SQLite)    %d\n", final.rows)
	fmt.Printf("  alerts raised (stream ALERTS)            %d\n", final.alerts)
	fmt.Printf("  forwarded to the sink                    %d\n", final.forwarded)
	fmt.Printf("  dead-lettered (stream DLQ)               %d\n", final.dlq)
	fmt.Printf("  data and logs                            %s\n", dir)
	fmt.Printf("  simulator summary                        %s\n", procs.logOf("simulator"))
	return nil
}

type status struct{ in, rows, alerts, forwarded, dlq int64 }

// group owns the demo's child processes.
type group struct {
	dir   string
	procs []*child
}

type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func (g *group) logOf(name string) string { return filepath.Join(g.dir, name+".log") }

func (g *group) start(name, bin string, env []string, args ...string) error {
	return g.startCtx(context.Background(), name, bin, env, args...)
}

func (g *group) startCtx(ctx context.Context, name, bin string, env []string, args ...string) error {
	logf, err := os.Create(g.logOf(name))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(os.Interrupt)
		case <-c.done:
		}
	}()
	g.procs = append(g.procs, c)
	return nil
}

// failed reports a child that exited on its own.
func (g *group) failed() error {
	for _, c := range g.procs {
		select {
		case <-c.done:
			if c.name == "simulator" && c.err == nil {
				continue
			}
			return fmt.Errorf("%s exited (%v); see %s", c.name, c.err, g.logOf(c.name))
		default:
		}
	}
	return nil
}

func (g *group) wait(name string, timeout time.Duration) {
	for _, c := range g.procs {
		if c.name == name {
			select {
			case <-c.done:
			case <-time.After(timeout):
			}
		}
	}
}

// stopAll sends SIGTERM to every child, newest first (the bridge, which
// holds the embedded server, last), and waits.
func (g *group) stopAll() {
	for i := len(g.procs) - 1; i >= 0; i-- {
		c := g.procs[i]
		select {
		case <-c.done:
			continue
		default:
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v", url, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// metricSum reads one sample of a Prometheus text exposition.
func metricSum(url, series string) int64 {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, series+" ") {
			v, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			return int64(v)
		}
	}
	return 0
}

func countRows(db *sql.DB) int64 {
	var n int64
	if err := db.QueryRow(`SELECT count(*) FROM coords`).Scan(&n); err != nil {
		return 0
	}
	return n
}

func streamMsgs(js jetstream.JetStream, name string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	s, err := js.Stream(ctx, name)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return int64(info.State.Msgs)
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func say(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "demo: "+format+"\n", a...)
}
