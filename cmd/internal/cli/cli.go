// Package cli holds what every ubiqo-bridge binary's main shares: the
// signal-cancelled context and exit code, and the zerolog logger built from
// the log.* configuration.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

// RunFunc is a binary's testable entry point.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Main runs run with a context cancelled by SIGINT or SIGTERM and exits: 0 on
// success or when help was shown, 1 with the error printed otherwise. A
// second signal exits at once.
func Main(name string, run RunFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal now kills the process the default way
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if err != nil && !errors.Is(err, config.ErrShown) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// NewLogger returns the logger described by cfg writing to w: JSON lines, or
// human-readable console output, with a timestamp and the binary's name.
// JSON lines below warn are written in batches (see logWriter); call flush
// before the program ends.
func NewLogger(cfg config.Log, name string, w io.Writer) (log zerolog.Logger, flush func()) {
	level, err := zerolog.ParseLevel(strings.ToLower(cfg.Level))
	if err != nil || cfg.Level == "" {
		level = zerolog.InfoLevel
	}
	flush = func() {}
	if cfg.Format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly}
	} else {
		lw := newLogWriter(w)
		w, flush = lw, lw.Flush
	}
	return zerolog.New(w).Level(level).With().Timestamp().Str("service", name).Logger(), flush
}
