// Command simulator sends UBIQO-like GPS webhook traffic: a fleet of devices
// driving around a city (Querétaro by default), each coordinate a JSON POST,
// a batch, or a query-string GET, at a fixed rate or as fast as the
// connections allow. It shows progress on stderr every second and prints a
// summary (requests, answers by status, coordinates accepted, latency) on
// stdout at the end, Ctrl-C included. It is the demo tool of the README and
// the load generator of `make bench` (package bench/load).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/ubiqo-bridge/ubiqo-bridge/bench/load"
	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

func main() { cli.Main("simulator", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	l, err := config.Load(config.Simulator, args, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return fmt.Errorf("unexpected argument %q (see simulator --help; a true/false flag is written --key=false)", l.Args[0])
	}
	s := l.Simulator
	lat, lon := s.CenterLatLon()
	fleet, err := load.NewFleet(load.FleetConfig{
		Devices:        s.Devices,
		CenterLat:      lat,
		CenterLon:      lon,
		RadiusKm:       s.RadiusKm,
		PanicRate:      s.PanicRate,
		SilentFraction: s.SilentFraction,
		SilentFor:      s.SilentFor,
		Seed:           s.Seed,
		Location:       s.Location(),
	})
	if err != nil {
		return err
	}
	pace := "as fast as possible"
	if s.Rate > 0 {
		pace = fmt.Sprintf("%g req/s", s.Rate)
	}
	fmt.Fprintf(stderr, "simulator: %s %s, %d devices, batch %d, %s, %d connections; Ctrl-C stops and prints the summary\n",
		s.Method, config.RedactURL(s.URL), s.Devices, s.Batch, pace, s.Connections)

	line := newProgressLine(stderr)
	sum, err := load.Run(ctx, load.Config{
		URL:         s.URL,
		Token:       s.Token,
		Method:      s.Method,
		Batch:       s.Batch,
		Rate:        s.Rate,
		Connections: s.Connections,
		Duration:    s.Duration,
		Count:       s.Count,
		Timeout:     s.Timeout,
		Fleet:       fleet,
		Progress:    line.show,
	})
	line.end()
	if err != nil {
		return err
	}
	if s.Output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return fmt.Errorf("writing summary: %w", err)
		}
	} else if _, err := io.WriteString(stdout, sum.String()); err != nil {
		return fmt.Errorf("writing summary: %w", err)
	}
	if sum.Sent > 0 && sum.Answered == 0 {
		return errors.New("no request was answered; is the bridge running at simulator.url?")
	}
	if n := sum.Status[401]; n > 0 && n == sum.Answered {
		// Still exit 0 (every request was answered, as documented), but
		// say why nothing was stored.
		fmt.Fprintln(stderr, "simulator: every answer was 401: set simulator.token to one of the bridge's auth.tokens")
	}
	return nil
}

// progressLine writes one line per progress report: rewritten in place on a
// terminal, appended otherwise (a log file, a CI console).
type progressLine struct {
	w        io.Writer
	terminal bool
	shown    bool
}

func newProgressLine(w io.Writer) *progressLine {
	p := &progressLine{w: w}
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.terminal = true
		}
	}
	return p
}

func (p *progressLine) show(pr load.Progress) {
	text := progressText(pr)
	if p.terminal {
		fmt.Fprintf(p.w, "\r\033[K%s", text)
	} else {
		fmt.Fprintln(p.w, text)
	}
	p.shown = true
}

// end finishes a line left open on a terminal.
func (p *progressLine) end() {
	if p.terminal && p.shown {
		fmt.Fprintln(p.w)
	}
}

// progressText is "12s sent 600 answered 598 [200:590 503:8] accepted 590,
// 50.0 req/s, p99 3.1ms".
func progressText(pr load.Progress) string {
	codes := make([]int, 0, len(pr.Status))
	for c := range pr.Status {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var st strings.Builder
	for i, c := range codes {
		if i > 0 {
			st.WriteByte(' ')
		}
		fmt.Fprintf(&st, "%d:%d", c, pr.Status[c])
	}
	text := fmt.Sprintf("%4s sent %d answered %d [%s] accepted %d", pr.Elapsed.Round(time.Second), pr.Sent, pr.Answered, st.String(), pr.Accepted)
	if pr.Spooled > 0 {
		text += fmt.Sprintf(" spooled %d", pr.Spooled)
	}
	if pr.Errors > 0 {
		text += fmt.Sprintf(" errors %d", pr.Errors)
	}
	return text + fmt.Sprintf(", %.1f req/s, p99 %s", pr.Rate, pr.P99.Round(10*time.Microsecond))
}
