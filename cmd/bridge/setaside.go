package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/coord"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/spool"
	"github.com/ubiqo-bridge/ubiqo-bridge/bridge/stream"
	"github.com/ubiqo-bridge/ubiqo-bridge/cmd/internal/cli"
	"github.com/ubiqo-bridge/ubiqo-bridge/config"
)

const setAsideUsage = "usage: bridge set-aside [--publish] [flags]"

// runSetAside lists the coordinates the bridge set aside in
// spool.dir/set-aside.jsonl (spooled ones the server refused for their
// size) and, with --publish, publishes them to the stream once the limit
// allows, with their original headers; those still refused stay in the
// file. It may run beside a live bridge: the file is moved away first, so
// lines the bridge appends meanwhile are kept.
func runSetAside(ctx context.Context, args []string, stdout io.Writer) error {
	publish := false
	rest := args[:0:0]
	for _, a := range args {
		if a == "--publish" {
			publish = true
			continue
		}
		rest = append(rest, a)
	}
	l, err := config.Load(config.Bridge, rest, stdout)
	if err != nil {
		return err
	}
	if len(l.Args) > 0 {
		return errors.New(setAsideUsage)
	}
	cfg := l.Config
	path := filepath.Join(cfg.Spool.Dir, spool.AsideFile)
	if publish {
		if _, err := os.Stat(cfg.Spool.Dir); err == nil {
			unlockPublish, err := spool.LockPublish(cfg.Spool.Dir)
			if err != nil {
				return err
			}
			defer unlockPublish()
		}
	}
	// Files an earlier --publish took and did not finish (killed, or NATS
	// unreachable) hold set-aside records too.
	leftovers, _ := filepath.Glob(path + ".publishing-*")
	sort.Strings(leftovers)
	if !publish {
		var recs []spool.AsideRecord
		var bad []string
		for _, p := range append(leftovers, path) {
			r, b, err := spool.ReadAside(p)
			if err != nil {
				return err
			}
			recs, bad = append(recs, r...), append(bad, b...)
		}
		for _, r := range recs {
			fmt.Fprintf(stdout, "%s  %s  msg id %s  %d bytes  %s\n", r.Time.Format(time.RFC3339), r.Subject, r.MsgID, len(r.Data), r.Reason)
		}
		if len(bad) > 0 {
			fmt.Fprintf(stdout, "%d unreadable fragments (a line torn by a crash); --publish keeps them in %s\n", len(bad), path+unreadableSuffix)
		}
		if len(recs) == 0 {
			fmt.Fprintf(stdout, "nothing set aside in %s\n", path)
			return nil
		}
		fmt.Fprintf(stdout, "%d coordinates set aside in %s; bridge set-aside --publish stores them once the server takes them\n", len(recs), path)
		return nil
	}

	// Take the file, so lines a running bridge appends meanwhile go to a
	// new one.
	work := path + ".publishing-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) && len(leftovers) == 0 {
		fmt.Fprintf(stdout, "nothing set aside in %s\n", path)
		return nil
	}
	unlock, err := spool.LockAside(cfg.Spool.Dir)
	if err != nil {
		return err
	}
	err = os.Rename(path, work)
	unlock()
	works := leftovers
	switch {
	case err == nil:
		works = append(works, work)
	case !errors.Is(err, os.ErrNotExist):
		return err
	}
	if len(works) == 0 {
		fmt.Fprintf(stdout, "nothing set aside in %s\n", path)
		return nil
	}
	var recs []spool.AsideRecord
	var bad []string
	for _, w := range works {
		r, b, err := spool.ReadAside(w)
		if err != nil {
			return err
		}
		recs, bad = append(recs, r...), append(bad, b...)
	}
	work = strings.Join(works, ", ")
	conn := cli.ConnConfig(cfg.NATS, "ubiqo-bridge-set-aside")
	if conn.URL == "" {
		conn.URL = "nats://" + cfg.NATS.Embedded.Listen // a running bridge's embedded server
	}
	nc, err := stream.Connect(conn, zerolog.Nop())
	if err != nil {
		return fmt.Errorf("%w (with no nats.url, the bridge must be running: its embedded server takes the coordinates); %s is kept as %s", err, spool.AsideFile, work)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	var left []spool.AsideRecord
	stored, dup := 0, 0
	for _, r := range recs {
		subject := r.Subject
		if r.Device != "" {
			// stream.subject_prefix may have changed since it was set aside.
			if subj, err := coord.Subject(cfg.Stream.SubjectPrefix, r.Device); err == nil {
				subject = subj
			}
		}
		m := nats.NewMsg(subject)
		m.Data = r.Data
		m.Header.Set(jetstream.MsgIDHeader, r.MsgID)
		m.Header.Set("Ubiqo-Device", r.Device)
		m.Header.Set("Content-Type", "application/json")
		pctx, cancel := context.WithTimeout(ctx, cfg.NATS.PublishTimeout)
		ack, err := js.PublishMsg(pctx, m)
		cancel()
		if err != nil {
			fmt.Fprintf(stdout, "%s  msg id %s: %v\n", r.Subject, r.MsgID, err)
			r.Time, r.Reason = time.Now().UTC(), "bridge set-aside --publish: "+err.Error()
			left = append(left, r)
			continue
		}
		if ack.Duplicate {
			dup++
		} else {
			stored++
		}
	}
	if len(left) > 0 {
		// Back into the file, beside anything appended meanwhile (not
		// through spool.Open: a running bridge owns the spool).
		if err := spool.AppendAside(cfg.Spool.Dir, left); err != nil {
			return fmt.Errorf("%w; the %d not stored are still in %s", err, len(left), work)
		}
	}
	if len(bad) > 0 {
		// Kept before the files they came from go.
		if err := keepUnreadable(path+unreadableSuffix, bad); err != nil {
			return fmt.Errorf("%w; they are still in %s", err, work)
		}
		fmt.Fprintf(stdout, "%d unreadable fragments (a line torn by a crash) kept in %s\n", len(bad), path+unreadableSuffix)
	}
	for _, w := range works {
		if err := os.Remove(w); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "%d stored, %d already in the stream, %d still set aside in %s\n", stored, dup, len(left), path)
	if len(left) > 0 {
		return fmt.Errorf("%d coordinates could not be stored", len(left))
	}
	return nil
}

// unreadableSuffix names the file, beside the set-aside file, that keeps
// what --publish could not read as a record.
const unreadableSuffix = ".unreadable"

func keepUnreadable(path string, bad []string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return err
	}
	for _, b := range bad {
		if _, err := fmt.Fprintln(f, b); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
