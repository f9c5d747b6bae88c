package streamtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// NATSCLIVersion is the natscli release the runbook is written and tested for.
const NATSCLIVersion = "v0.5.0"

var (
	cliOnce sync.Once
	cliPath string
	cliErr  error
)

// InstallNATSCLI installs the `nats` CLI (natscli NATSCLIVersion) from the Go
// module proxy into the user cache once and returns its path. Tests and the
// benchmark use the real binary, as operators do.
func InstallNATSCLI() (string, error) {
	cliOnce.Do(func() {
		cache, err := os.UserCacheDir()
		if err != nil {
			cache = os.TempDir()
		}
		dir := filepath.Join(cache, "ubiqo-bridge-test", "natscli-"+NATSCLIVersion)
		cliPath = filepath.Join(dir, "nats")
		if _, err := os.Stat(cliPath); err == nil {
			return
		}
		cmd := exec.Command("go", "install", "github.com/nats-io/natscli/nats@"+NATSCLIVersion)
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			cliErr = fmt.Errorf("install natscli %s: %v\n%s", NATSCLIVersion, err, out)
		}
	})
	return cliPath, cliErr
}

// NATSCLI is InstallNATSCLI for tests: it fails the test when the CLI cannot
// be installed.
func NATSCLI(t testing.TB) string {
	t.Helper()
	p, err := InstallNATSCLI()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
