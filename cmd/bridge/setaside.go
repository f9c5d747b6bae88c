package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
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
	if !publish {
		recs, err := readAside(path)
		if err != nil {
			return err
		}
		for _, r := range recs {
			fmt.Fprintf(stdout, "%s  %s  msg id %s  %d bytes  %s\n", r.Time.Format(time.RFC3339), r.Subject, r.MsgID, len(r.Data), r.Reason)
		}
		fmt.Fprintf(stdout, "%d coordinates set aside in %s; bridge set-aside --publish stores them once the server takes them\n", len(recs), path)
		return nil
	}

	// Take the file, so lines a running bridge appends meanwhile go to a
	// new one.
	work := path + ".publishing-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stdout, "nothing set aside in %s\n", path)
		return nil
	}
	unlock, err := spool.LockAside(cfg.Spool.Dir)
	if err != nil {
		return err
	}
	err = os.Rename(path, work)
	unlock()
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "nothing set aside in %s\n", path)
			return nil
		}
		return err
	}
	recs, err := readAside(work)
	if err != nil {
		return err
	}
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
	if err := os.Remove(work); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%d stored, %d already in the stream, %d still set aside in %s\n", stored, dup, len(left), path)
	if len(left) > 0 {
		return fmt.Errorf("%d coordinates could not be stored", len(left))
	}
	return nil
}

func readAside(path string) ([]spool.AsideRecord, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []spool.AsideRecord
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r spool.AsideRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s line %d: %w", path, n, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}
