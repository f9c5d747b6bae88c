package main

import (
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"
)

var (
	persisterOnce sync.Once
	persisterBin  string
	persisterErr  error
)

// persisterBinary builds cmd/persister once for the fault tests.
func persisterBinary(t *testing.T) string {
	t.Helper()
	persisterOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ubiqo-persister-bin-")
		if err != nil {
			persisterErr = err
			return
		}
		persisterBin = filepath.Join(dir, "persister")
		out, err := exec.Command("go", "build", "-o", persisterBin, "github.com/ubiqo-bridge/ubiqo-bridge/cmd/persister").CombinedOutput()
		if err != nil {
			persisterErr = fmt.Errorf("build persister: %v\n%s", err, out)
		}
	})
	if persisterErr != nil {
		t.Fatal(persisterErr)
	}
	return persisterBin
}

// persisterProc is the persister running as its own process on SQLite.
type persisterProc struct {
	cmd    *exec.Cmd
	done   chan struct{}
	dbPath string
	log    string
}

func startPersister(t *testing.T, natsURL string) *persisterProc {
	t.Helper()
	dir := t.TempDir()
	p := &persisterProc{dbPath: filepath.Join(dir, "coords.db"), log: filepath.Join(dir, "persister.log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(persisterBinary(t), "--nats.url", natsURL, "--persist.dsn", "file:"+p.dbPath,
		"--consumer.backoff", "200ms,500ms,1s")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *persisterProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// rows waits until the table holds want distinct ids (or 60 s) and returns
// the row count of every message id.
func (p *persisterProc) rows(t *testing.T, want int) map[string]int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+p.dbPath+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var n int
		err := db.QueryRow(`SELECT count(DISTINCT msg_id) FROM coords`).Scan(&n)
		if err == nil && n >= want {
			break
		}
		exited := false
		select {
		case <-p.done:
			exited = true
		default:
		}
		if exited || time.Now().After(deadline) {
			log, _ := os.ReadFile(p.log)
			t.Fatalf("database holds %d distinct coordinates, want %d (persister exited: %v; err %v)\n%s", n, want, exited, err, tail(log, 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	rs, err := db.Query(`SELECT msg_id, count(*) FROM coords GROUP BY msg_id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]int{}
	for rs.Next() {
		var id string
		var n int
		if err := rs.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		out[id] = n
	}
	return out
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
