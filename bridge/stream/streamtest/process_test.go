package streamtest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A server whose port another process holds exits; waitUp says so with
// errPortTaken, which StartProc and StartCluster retry on other ports.
func TestWaitUpReportsPortTaken(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	p := &Proc{Name: "taken", Port: l.Addr().(*net.TCPAddr).Port, Dir: t.TempDir(), t: t}
	p.conf = filepath.Join(p.Dir, "nats.conf")
	conf := fmt.Sprintf("listen: 127.0.0.1:%d\njetstream { store_dir: %q }\n", p.Port, filepath.Join(p.Dir, "js"))
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p.startNoWait()
	t.Cleanup(p.Kill)
	if err := p.waitUp(20 * time.Second); !errors.Is(err, errPortTaken) {
		t.Fatalf("waitUp on a taken port: %v", err)
	}
}
