package cli

import (
	"io"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Log lines below warn (the access log above all) are gathered and written
// together, at most logFlushEvery after the first of a batch, or as soon as
// logBufMax bytes wait: one write per line cost the bridge a system call per
// request, 10–30% of its CPU at the default log level. Those writes happen
// off the logging goroutine (a request's), which only appends to a buffer:
// a request never waits for the output, unless the output falls so far
// behind that logBufHard bytes wait. Warnings and errors are written at
// once, after the lines before them, so they are never late and never lost
// with the process.
const (
	logFlushEvery = 100 * time.Millisecond
	logBufMax     = 64 << 10
	logBufHard    = 1 << 20
)

// logWriter is a zerolog.LevelWriter that batches the lines below warn.
type logWriter struct {
	w io.Writer

	mu     sync.Mutex // guards buf, timer, kicked
	buf    []byte
	timer  *time.Timer // the pending flush; nil when none
	kicked bool        // an early flush is on its way

	wmu   sync.Mutex // one write at a time, in the order of the lines
	spare []byte     // the buffer last written, for the next batch; guarded by wmu
}

func newLogWriter(w io.Writer) *logWriter { return &logWriter{w: w} }

func (l *logWriter) Write(p []byte) (int, error) { return l.WriteLevel(zerolog.NoLevel, p) }

func (l *logWriter) WriteLevel(level zerolog.Level, p []byte) (int, error) {
	l.mu.Lock()
	l.buf = append(l.buf, p...)
	n := len(l.buf)
	if level < zerolog.WarnLevel && n < logBufHard {
		if l.timer == nil {
			l.timer = time.AfterFunc(logFlushEvery, l.Flush)
		}
		if n >= logBufMax && !l.kicked {
			l.kicked = true
			l.timer.Reset(0)
		}
		l.mu.Unlock()
		return len(p), nil
	}
	l.mu.Unlock()
	if err := l.flush(); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what waits.
func (l *logWriter) Flush() { _ = l.flush() }

func (l *logWriter) flush() error {
	// The write lock is taken before the lines are: batches are written in
	// the order they were taken.
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	l.kicked = false
	b := l.buf
	l.buf = l.spare[:0]
	l.mu.Unlock()
	if len(b) == 0 {
		l.spare = b
		return nil
	}
	_, err := l.w.Write(b)
	if cap(b) > 4*logBufMax {
		b = nil // don't keep a rare burst's buffer
	}
	l.spare = b[:0]
	return err
}
