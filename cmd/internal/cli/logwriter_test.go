package cli

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

// countingWriter records every Write it gets.
type countingWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	writes int
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes++
	return c.buf.Write(p)
}

func (c *countingWriter) get() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String(), c.writes
}

// Info lines are written together, a warning at once and after them, and
// nothing waits longer than the flush interval.
func TestLogLinesBatchedWarningsAtOnce(t *testing.T) {
	out := &countingWriter{}
	log, flush := NewLogger(config.Log{Level: "info", Format: "json"}, "test", out)
	defer flush()
	for i := range 100 {
		log.Info().Int("i", i).Msg("request")
	}
	if s, n := out.get(); n != 0 || s != "" {
		t.Fatalf("info lines written at once: %d writes", n)
	}
	log.Warn().Msg("trouble")
	s, n := out.get()
	if n != 1 {
		t.Fatalf("%d writes for 100 info lines and a warning, want 1", n)
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 101 || !strings.Contains(lines[0], `"i":0`) || !strings.Contains(lines[100], "trouble") {
		t.Fatalf("lines out of order or missing: %d lines, first %q last %q", len(lines), lines[0], lines[len(lines)-1])
	}

	log.Info().Msg("later")
	deadline := time.Now().Add(5 * time.Second)
	for {
		if s, _ := out.get(); strings.Contains(s, "later") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("an info line never reached the output")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A burst is written in parts as the buffer fills, well before the
	// flush interval, not held whole.
	_, before := out.get()
	pad := strings.Repeat("x", 1000)
	for range 200 {
		log.Info().Str("pad", pad).Msg("burst")
	}
	deadline = time.Now().Add(logFlushEvery / 2)
	for {
		if _, n := out.get(); n > before {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("200 KB of info lines all held back")
		}
		time.Sleep(time.Millisecond)
	}
	flush()
	s, _ = out.get()
	if c := strings.Count(s, `"burst"`); c != 200 {
		t.Errorf("%d burst lines after flush, want 200", c)
	}
}

// The console format, for people at a terminal, is written line by line.
func TestConsoleLogNotBatched(t *testing.T) {
	out := &countingWriter{}
	log, flush := NewLogger(config.Log{Level: "info", Format: "console"}, "test", out)
	defer flush()
	log.Info().Msg("hello")
	if s, _ := out.get(); !strings.Contains(s, "hello") {
		t.Fatalf("console line not written at once: %q", s)
	}
}

// stuckWriter's writes block until release is closed.
type stuckWriter struct {
	countingWriter
	started chan struct{} // gets a value when a write begins
	release chan struct{}
}

func (s *stuckWriter) Write(p []byte) (int, error) {
	select {
	case s.started <- struct{}{}:
	default:
	}
	<-s.release
	return s.countingWriter.Write(p)
}

// A request logs without waiting for the output: while a batch is being
// written to a stalled output, info lines are still taken, up to a hard
// limit, and none is lost or reordered.
func TestLoggingDoesNotWaitForTheOutput(t *testing.T) {
	out := &stuckWriter{started: make(chan struct{}, 1), release: make(chan struct{})}
	log, flush := NewLogger(config.Log{Level: "info", Format: "json"}, "test", out)
	pad := strings.Repeat("x", 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The first 100 KB start a flush, which stalls; 500 KB more stay
		// under logBufHard.
		for i := range 600 {
			log.Info().Int("i", i).Str("pad", pad).Msg("line")
		}
	}()
	select {
	case <-out.started:
	case <-time.After(5 * time.Second):
		close(out.release)
		t.Fatal("no write began after 100 KB of lines")
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		close(out.release)
		t.Fatal("logging waited for a stalled output")
	}
	close(out.release)
	flush()
	s, _ := out.get()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) != 600 {
		t.Fatalf("%d lines written, want 600", len(lines))
	}
	for j, line := range lines {
		if !strings.Contains(line, fmt.Sprintf(`"i":%d,`, j)) {
			t.Fatalf("line %d is %.40q: lines out of order", j, line)
		}
	}
}
