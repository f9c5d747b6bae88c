package streamtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// ServerBinary returns the path of a nats-server binary built from the
// module version this project requires, building it once and caching it
// under the user cache directory. Fault tests run it as a separate process
// so they can kill it with SIGKILL.
func ServerBinary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		version := "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, d := range bi.Deps {
				if d.Path == "github.com/nats-io/nats-server/v2" {
					version = d.Version
				}
			}
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "ubiqo-bridge-test")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "nats-server-"+version)
		if _, err := os.Stat(binPath); err == nil && version != "unknown" {
			return
		}
		tmp := fmt.Sprintf("%s.%d.tmp", binPath, os.Getpid())
		cmd := exec.Command("go", "build", "-o", tmp, "github.com/nats-io/nats-server/v2")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("build nats-server: %v\n%s", err, out)
			return
		}
		binErr = os.Rename(tmp, binPath)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// Proc is a nats-server running as a child process.
type Proc struct {
	Name        string
	Port        int
	ClusterPort int
	Dir         string
	conf        string
	t           testing.TB
	mu          sync.Mutex
	cmd         *exec.Cmd
	exited      chan struct{}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartProc starts a single JetStream server process on a free port with
// storage in the test's temporary directory; it is killed when the test ends.
func StartProc(t testing.TB) *Proc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		p := &Proc{Name: "single", Port: FreePort(t), Dir: t.TempDir(), t: t}
		p.conf = filepath.Join(p.Dir, "nats.conf")
		conf := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\njetstream { store_dir: %q }\n", p.Name, p.Port, filepath.Join(p.Dir, "js"))
		if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		p.startNoWait()
		t.Cleanup(p.Kill)
		err := p.waitUp(30 * time.Second)
		if err == nil {
			return p
		}
		p.Kill()
		if attempt == 3 || !errors.Is(err, errPortTaken) {
			t.Fatal(err)
		}
		t.Logf("streamtest: %v; starting again on another port", err)
	}
}

// StartCluster starts an n-node JetStream cluster of processes on loopback.
// A port FreePort chose can be taken by another process before the server
// binds it (tests of several packages run at once); the cluster is then
// started again on other ports.
func StartCluster(t testing.TB, n int) []*Proc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		procs, err := startCluster(t, n)
		if err == nil {
			return procs
		}
		if attempt == 3 || !errors.Is(err, errPortTaken) {
			t.Fatal(err)
		}
		t.Logf("streamtest: %v; starting the cluster again on other ports", err)
	}
}

// errPortTaken: a server found one of its ports taken.
var errPortTaken = errors.New("a port was taken before the server bound it")

func startCluster(t testing.TB, n int) ([]*Proc, error) {
	t.Helper()
	procs := make([]*Proc, n)
	var routes []string
	for i := range procs {
		procs[i] = &Proc{Name: fmt.Sprintf("n%d", i+1), Port: FreePort(t), ClusterPort: FreePort(t), Dir: t.TempDir(), t: t}
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", procs[i].ClusterPort))
	}
	for _, p := range procs {
		p.conf = filepath.Join(p.Dir, "nats.conf")
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster {
  name: ubiqo-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, p.Name, p.Port, filepath.Join(p.Dir, "js"), p.ClusterPort, strings.Join(routes, ", "))
		if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range procs {
		p.startNoWait()
		t.Cleanup(p.Kill)
	}
	for _, p := range procs {
		if err := p.waitUp(30 * time.Second); err != nil {
			for _, q := range procs {
				q.Kill()
			}
			return nil, err
		}
	}
	return procs, nil
}

// ClusterURL is the comma-separated client URLs of the processes.
func ClusterURL(procs []*Proc) string {
	urls := make([]string, len(procs))
	for i, p := range procs {
		urls[i] = p.URL()
	}
	return strings.Join(urls, ",")
}

// WaitClusterReady waits until the cluster at url has elected a meta leader
// and answers JetStream requests.
func WaitClusterReady(t testing.TB, url string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster not ready: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// URL is the client URL of the process.
func (p *Proc) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", p.Port) }

// Start (re)starts the process with its configuration and storage and waits
// until it accepts connections.
func (p *Proc) Start() {
	p.startNoWait()
	p.waitListening(30 * time.Second)
}

func (p *Proc) startNoWait() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd := exec.Command(ServerBinary(p.t), "-c", p.conf)
	logf, err := os.OpenFile(filepath.Join(p.Dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start nats-server %s: %v", p.Name, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	p.cmd, p.exited = cmd, exited
}

func (p *Proc) waitListening(timeout time.Duration) {
	p.t.Helper()
	if err := p.waitUp(timeout); err != nil {
		p.t.Fatal(err)
	}
}

// waitUp waits until the server accepts connections; it fails early, with
// errPortTaken when that is why, if the process exits.
func (p *Proc) waitUp(timeout time.Duration) error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		nc, err := nats.Connect(p.URL(), nats.Timeout(500*time.Millisecond))
		if err == nil {
			nc.Close()
			return nil
		}
		gone := false
		select {
		case <-exited:
			gone = true
		default:
		}
		if gone || time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(p.Dir, "server.log"))
			if gone && strings.Contains(string(log), "address already in use") {
				return fmt.Errorf("nats-server %s: %w\n%s", p.Name, errPortTaken, tail(log, 500))
			}
			return fmt.Errorf("nats-server %s not accepting connections (exited: %v): %v\n%s", p.Name, gone, err, tail(log, 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill stops the process with SIGKILL, as a crash or an OOM kill would, and
// waits for it to be gone.
func (p *Proc) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Running reports whether the process is up.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
