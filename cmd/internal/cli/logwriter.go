package cli

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Log lines below warn (the access log above all) are gathered and written
// together, at most logFlushEvery after the first of a batch or once
// logBufMax bytes wait: one write per line cost the bridge a system call per
// request, 10–30% of its CPU at the default log level. Warnings and errors
// are written at once, after the lines before them, so they are never late
// and never lost with the process.
const (
	logFlushEvery = 100 * time.Millisecond
	logBufMax     = 64 << 10
)

// logWriter is a zerolog.LevelWriter that batches the lines below warn.
type logWriter struct {
	mu    sync.Mutex
	w     io.Writer
	buf   []byte
	timer *time.Timer // the pending flush; nil when none
}

func newLogWriter(w io.Writer) *logWriter { return &logWriter{w: w} }

func (l *logWriter) Write(p []byte) (int, error) { return l.WriteLevel(zerolog.NoLevel, p) }

func (l *logWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	if level < zerolog.WarnLevel && len(l.buf) < logBufMax {
		if l.timer == nil {
			l.timer = time.AfterFunc(logFlushEvery, l.Flush)
		}
		return len(p), nil
	}
	if err := l.flushLocked(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what waits.
func (l *logWriter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.flushLocked()
}

func (l *logWriter) flushLocked() error {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if len(l.buf) == 0 {
		return nil
	}
	_, err := l.w.Write(l.buf)
	if cap(l.buf) > 4*logBufMax {
		l.buf = nil // don't keep a rare burst's buffer
	} else {
		l.buf = l.buf[:0]
	}
	return err
}
