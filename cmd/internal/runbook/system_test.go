package runbook_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// system is the whole of ubiqo-bridge running from built binaries: the
// bridge with its embedded JetStream server, the persister on SQLite, the
// alerter with deploy/alerter/rules.yaml and the forwarder with one target,
// "backup", pointing at sink.
type system struct {
	root    string // repository root
	dir     string // everything the test writes
	bin     string // the built binaries
	natsURL string
	webhook string
	dbPath  string
	env     []string // environment of the runbook's commands
	sink    *sink
	nc      *nats.Conn
	js      jetstream.JetStream
	db      *sql.DB
	procs   []*proc
}

// proc is one running binary of the system.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// buildBinaries builds the four programs into dir.
func buildBinaries(t *testing.T, dir string) {
	t.Helper()
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, b := range []string{"bridge", "persister", "alerter", "forwarder"} {
		args = append(args, "github.com/ubiqo-bridge/ubiqo-bridge/cmd/"+b)
	}
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// startSystem builds the binaries, starts them and waits until every
// subscriber's durable consumer exists.
func startSystem(t *testing.T, natsCLI string) *system {
	t.Helper()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	dir := t.TempDir()
	s := &system{root: root, dir: dir, bin: filepath.Join(dir, "bin"), dbPath: filepath.Join(dir, "coords.db")}
	buildBinaries(t, s.bin)
	t.Cleanup(func() { s.stop(t) })

	s.sink = newSink(dlqDevice)
	t.Cleanup(s.sink.srv.Close)

	httpAddr := fmt.Sprintf("127.0.0.1:%d", streamtest.FreePort(t))
	natsAddr := fmt.Sprintf("127.0.0.1:%d", streamtest.FreePort(t))
	s.natsURL = "nats://" + natsAddr
	s.webhook = "http://" + httpAddr + "/webhook/ubiqo"

	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("the runbook's commands run in bash: ", err)
	}
	base := cleanEnv()
	targets := fmt.Sprintf(`[{"name":"backup","url":%q}]`, s.sink.url())
	s.env = append(base,
		"PATH="+s.bin+string(os.PathListSeparator)+filepath.Dir(natsCLI)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"SHELL="+bash,
		"TERM=dumb",
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), // no nats CLI context of the user's
		"NATS_URL="+s.natsURL,
		"BACKUP_URL="+s.sink.url(),
		// The subscribers' configuration, as an operator's shell or the
		// service's environment file holds it.
		"UBIQO_NATS_URL="+s.natsURL,
		"UBIQO_PERSIST_DSN=file:"+s.dbPath,
		"UBIQO_ALERT_RULES_FILE="+filepath.Join(root, "deploy", "alerter", "rules.yaml"),
		"UBIQO_FORWARD_TARGETS_JSON="+targets,
	)

	// The bridge embeds the server: no UBIQO_NATS_URL for it.
	s.start(t, "bridge", base,
		"--http.addr", httpAddr,
		"--nats.embedded.listen", natsAddr,
		"--nats.embedded.store_dir", filepath.Join(dir, "nats"),
		"--spool.dir", filepath.Join(dir, "spool"),
		"--log.access", "errors")
	s.waitFor(t, "the bridge's /readyz", 60*time.Second, func(context.Context) (bool, error) {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if s.nc, err = nats.Connect(s.natsURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.nc.Close)
	if s.js, err = jetstream.New(s.nc); err != nil {
		t.Fatal(err)
	}

	s.start(t, "persister", s.env)
	s.start(t, "alerter", s.env)
	s.start(t, "forwarder", s.env)
	for _, c := range []string{"persister", "alerter", "forward-backup"} {
		s.waitFor(t, "consumer "+c, 60*time.Second, func(ctx context.Context) (bool, error) {
			_, err := s.js.Consumer(ctx, "COORDS", c)
			return err == nil, nil
		})
	}
	if s.db, err = sql.Open("sqlite", "file:"+s.dbPath+"?mode=ro&_pragma=busy_timeout(5000)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.db.Close() })
	return s
}

// cleanEnv is the test's environment without settings that would point the
// programs or the nats CLI elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "UBIQO_") || strings.HasPrefix(kv, "NATS_") || strings.HasPrefix(kv, "PATH=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func (s *system) start(t *testing.T, name string, env []string, args ...string) {
	t.Helper()
	p := &proc{name: name, log: filepath.Join(s.dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(filepath.Join(s.bin, name), args...)
	p.cmd.Env = env
	p.cmd.Dir = s.dir
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	s.procs = append(s.procs, p)
}

// stop ends the programs, newest first (the bridge, which holds the server,
// last), and shows their logs when the test failed.
func (s *system) stop(t *testing.T) {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if t.Failed() {
		for _, p := range s.procs {
			b, _ := os.ReadFile(p.log)
			t.Logf("--- %s log (last lines):\n%s", p.name, tailLines(string(b), 25))
		}
	}
}

// exited reports a program that stopped on its own.
func (s *system) exited() error {
	for _, p := range s.procs {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		default:
		}
	}
	return nil
}

// waitFor polls cond until it holds, failing the test after timeout or when
// a program of the system died.
func (s *system) waitFor(t *testing.T, what string, timeout time.Duration, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ok, err := cond(ctx)
		cancel()
		if ok {
			return
		}
		if err != nil {
			lastErr = err
		}
		if err := s.exited(); err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after %v (last error: %v)", what, timeout, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fix is one coordinate as a GPS webhook sends it.
type fix map[string]any

// post sends fixes to the webhook in one request and checks that all were
// accepted.
func (s *system) post(t *testing.T, fixes ...fix) {
	t.Helper()
	body, err := json.Marshal(fixes)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(s.webhook, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var ans struct{ Accepted int }
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &ans) != nil || ans.Accepted != len(fixes) {
		t.Fatalf("webhook: HTTP %d %s; want 200 with %d accepted", resp.StatusCode, b, len(fixes))
	}
}

// settled waits until the subscribers have handled coords messages: every
// durable acked them all, the alerter raised alerts alerts, the forwarder
// dead-lettered dlq and the persister stored every one.
func (s *system) settled(t *testing.T, coords, alerts, dlq int) {
	t.Helper()
	for _, c := range []string{"persister", "alerter", "forward-backup"} {
		s.waitFor(t, fmt.Sprintf("consumer %s to ack %d messages", c, coords), 60*time.Second, func(ctx context.Context) (bool, error) {
			info, err := s.consumerInfo(ctx, c)
			if err != nil {
				return false, err
			}
			return info.AckFloor.Stream == uint64(coords) && info.NumPending == 0 && info.NumAckPending == 0, nil
		})
	}
	for name, want := range map[string]int{"ALERTS": alerts, "DLQ": dlq} {
		s.waitFor(t, fmt.Sprintf("%d messages in %s", want, name), 30*time.Second, func(ctx context.Context) (bool, error) {
			n, err := s.streamMsgs(ctx, name)
			return n == uint64(want), err
		})
	}
	s.waitFor(t, fmt.Sprintf("%d rows in the database", coords), 30*time.Second, func(ctx context.Context) (bool, error) {
		n, err := s.rows(ctx)
		return n == coords, err
	})
}

func (s *system) consumerInfo(ctx context.Context, name string) (*jetstream.ConsumerInfo, error) {
	c, err := s.js.Consumer(ctx, "COORDS", name)
	if err != nil {
		return nil, err
	}
	return c.Info(ctx)
}

func (s *system) streamMsgs(ctx context.Context, name string) (uint64, error) {
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// subjectMsgs counts the messages of a stream on one subject (a filter).
func (s *system) subjectMsgs(ctx context.Context, name, subject string) (uint64, error) {
	st, err := s.js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

func (s *system) consumerExists(ctx context.Context, name string) (bool, error) {
	_, err := s.js.Consumer(ctx, "COORDS", name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *system) rows(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM coords`).Scan(&n)
	return n, err
}

// sink is the forwarder's target "backup": it refuses (400) the coordinates
// of one device until accept is called, and keeps what it accepted.
type sink struct {
	srv    *httptest.Server
	refuse string

	mu       sync.Mutex
	accepted bool
	got      []received
}

// received is one coordinate the sink accepted.
type received struct {
	Device string `json:"device_id"`
	TS     string `json:"ts"`
}

func newSink(refuse string) *sink {
	k := &sink{refuse: refuse}
	k.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var c received
		b, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(b, &c); err != nil {
			http.Error(w, `{"error":"not a coordinate"}`, http.StatusBadRequest)
			return
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		if c.Device == k.refuse && !k.accepted {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"error":"unknown unit"}`)
			return
		}
		k.got = append(k.got, c)
	}))
	return k
}

func (k *sink) url() string { return k.srv.URL + "/ubiqo/coords" }

// accept makes the sink take every device from now on: the target is fixed.
func (k *sink) accept() {
	k.mu.Lock()
	k.accepted = true
	k.mu.Unlock()
}

// of returns the fix times the sink accepted for a device, in arrival order.
func (k *sink) of(device string) []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var ts []string
	for _, c := range k.got {
		if c.Device == device {
			ts = append(ts, c.TS)
		}
	}
	return ts
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
