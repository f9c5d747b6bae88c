package persist_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream/streamtest"
)

// persisterBin is cmd/persister, built once by TestMain.
var persisterBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "persister-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	persisterBin = filepath.Join(dir, "persister")
	build := exec.Command("go", "build", "-o", persisterBin, "github.com/ubiqo-bridge/ubiqo-bridge/cmd/persister")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cmd/persister:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a running cmd/persister.
type process struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
}

func startPersister(t *testing.T, j *js, d *database, extraEnv ...string) *process {
	t.Helper()
	cmd := exec.Command(persisterBin)
	cmd.Env = append(os.Environ(),
		"UBIQO_NATS_URL="+j.srv.ClientURL(),
		"UBIQO_PERSIST_DRIVER="+d.cfg.Driver,
		"UBIQO_PERSIST_DSN="+d.cfg.DSN,
		"UBIQO_CONSUMER_ACK_WAIT=2s",
		"UBIQO_PERSIST_WRITE_TIMEOUT=1s",
		"UBIQO_CONSUMER_BATCH_SIZE=200",
		"UBIQO_CONSUMER_BACKOFF=100ms,200ms",
		"UBIQO_LOG_LEVEL=warn",
	)
	cmd.Env = append(cmd.Env, extraEnv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, stderr: &stderr}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			_ = p.cmd.Wait()
		}
	})
	return p
}

func (p *process) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

// TestKilledPersisterLosesAndDuplicatesNothing runs cmd/persister as a
// process, SIGKILLs it twice while it is writing (transactions open,
// commits not yet acked), restarts it, and checks every coordinate is stored
// exactly once; the last run stops on SIGTERM and exits 0.
func TestKilledPersisterLosesAndDuplicatesNothing(t *testing.T) {
	for _, driver := range databases(t) {
		t.Run(driver, func(t *testing.T) {
			d := newDatabase(t, driver)
			j := newJS(t, time.Minute)
			const n, devices = 30000, 500
			cs := make([]coord.Coord, n)
			for i := range cs {
				cs[i] = fleetCoord(i, devices)
			}
			j.publishAll(t, cs, true)

			var at []int64
			for round := 1; round <= 2; round++ {
				p := startPersister(t, j, d)
				floor := max(int64(0), d.count(t))
				eventually(t, 30*time.Second, "rows being written", func() bool { return d.count(t) >= floor+3000 })
				p.kill(t)
				c := d.count(t)
				at = append(at, c)
				if c >= n {
					t.Fatalf("round %d: the persister finished (%d rows) before it was killed; the test proves nothing", round, c)
				}
			}
			addr := freeAddr(t)
			p := startPersister(t, j, d, "UBIQO_HTTP_ADDR="+addr)
			eventually(t, 60*time.Second, "every coordinate stored", func() bool { return d.count(t) >= n })
			eventually(t, 20*time.Second, "every message acked", func() bool {
				info, err := consumerInfo(j, "persister")
				return err == nil && info.NumAckPending == 0 && info.NumPending == 0
			})
			metrics := scrape(t, "http://"+addr+"/metrics")
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := p.cmd.Wait(); err != nil {
				t.Errorf("persister exit after SIGTERM: %v\n%s", err, p.stderr)
			}
			rows := d.count(t)
			distinct := d.query(t, "SELECT count(DISTINCT msg_id) FROM coords")
			t.Logf("%s: %d coordinates; killed with %d and %d rows stored; after restart rows %d, distinct %d; last run: %s, %s",
				driver, n, at[0], at[1], rows, distinct, metricLine(metrics, `ubiqo_persist_rows_total{result="duplicate"}`),
				metricLine(metrics, `ubiqo_subscriber_redelivered_total`))
			if rows != n || distinct != n {
				t.Fatalf("rows %d, distinct %d, want %d", rows, distinct, n)
			}
			// Every coordinate published is there, not just as many.
			var missing int
			for i := 0; i < n; i += 997 {
				q := fmt.Sprintf("SELECT count(*) FROM coords WHERE msg_id = '%s'", cs[i].MsgID())
				if d.query(t, q) != 1 {
					missing++
				}
			}
			if missing > 0 {
				t.Errorf("%d sampled coordinates missing", missing)
			}
		})
	}
}

func freeAddr(t *testing.T) string { return streamtest.FreeAddr(t) }

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricLine returns the exposition line that starts with name.
func metricLine(body, name string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name) {
			return l
		}
	}
	return name + " (absent)"
}
