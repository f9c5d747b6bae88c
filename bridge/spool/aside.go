package spool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// AsideFile is the file, in the spool directory, that keeps the records set
// aside: spooled coordinates the server can never store as they are (too
// large for its max_payload or the stream's max_msg_size), one JSON object
// per line, so they leave the replay without being lost.
const AsideFile = "set-aside.jsonl"

// asideLockFile is the lock file of LockAside; dirLockFile the one an open
// spool holds.
const (
	asideLockFile   = "set-aside.lock"
	publishLockFile = "set-aside-publish.lock"
	dirLockFile     = "spool.lock"
)

// AsideRecord is one line of AsideFile. Data is the message body (canonical
// JSON) as it would have been published.
type AsideRecord struct {
	Time    time.Time       `json:"time"`
	Reason  string          `json:"reason"`
	Subject string          `json:"subject"`
	MsgID   string          `json:"msg_id"`
	Device  string          `json:"device"`
	Data    json.RawMessage `json:"data"`
}

// SetAside appends recs to AsideFile with the reason and syncs it. The
// caller then commits them like replayed records.
func (s *Spool) SetAside(recs []Record, reason string) error {
	s.asideMu.Lock()
	defer s.asideMu.Unlock()
	lines := make([]AsideRecord, len(recs))
	now := time.Now().UTC()
	for i, r := range recs {
		lines[i] = AsideRecord{Time: now, Reason: reason, Subject: r.Subject, MsgID: r.MsgID, Device: r.Device, Data: r.Data}
	}
	return AppendAside(s.dir, lines)
}

// AppendAside appends lines to AsideFile in dir and syncs it. Each line is
// one write to a file opened for appending, so a bridge setting records
// aside meanwhile does not interleave with it.
func AppendAside(dir string, lines []AsideRecord) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // the body's bytes as they are: no \u003c for <
	for _, l := range lines {
		if !json.Valid(l.Data) {
			l.Data, _ = json.Marshal(string(l.Data))
		}
		if err := enc.Encode(l); err != nil { // one line, with its newline
			return fmt.Errorf("spool: set aside: %w", err)
		}
	}
	unlock, err := LockAside(dir)
	if err != nil {
		return err
	}
	defer unlock()
	path := filepath.Join(dir, AsideFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("spool: set aside: %w", err)
	}
	out := buf.Bytes()
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		// A line torn by a crash has no newline: start on a line of our
		// own rather than glue onto it.
		var last [1]byte
		if _, err := f.ReadAt(last[:], st.Size()-1); err == nil && last[0] != '\n' {
			out = append([]byte{'\n'}, out...)
		}
	}
	if _, err := f.Write(out); err != nil {
		f.Close()
		return fmt.Errorf("spool: set aside: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("spool: set aside: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("spool: set aside: %w", err)
	}
	return nil
}

// AsidePath is the path of AsideFile for this spool.
func (s *Spool) AsidePath() string { return filepath.Join(s.dir, AsideFile) }

// ReadAside reads a set-aside file: its records, and the text of what is not
// one (a line torn by a crash, or one glued to it), which it keeps out of
// the records. A torn line glued to a sound one gives back the sound one.
func ReadAside(path string) (recs []AsideRecord, bad []string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r AsideRecord
		if json.Unmarshal(line, &r) == nil && r.complete() {
			recs = append(recs, r)
			continue
		}
		// A torn line with a sound one glued after it: the sound one
		// starts at a later {"time":.
		found := false
		for i := 1; i < len(line); i++ {
			j := bytes.Index(line[i:], []byte(`{"time":`))
			if j < 0 {
				break
			}
			i += j
			if r = (AsideRecord{}); json.Unmarshal(line[i:], &r) == nil && r.complete() {
				bad = append(bad, string(line[:i]))
				recs = append(recs, r)
				found = true
				break
			}
		}
		if !found {
			bad = append(bad, string(line))
		}
	}
	return recs, bad, sc.Err()
}

// complete reports whether r has what publishing it needs: a line that
// parses without them is a fragment (a device's own {"time":...} object in
// a torn line), not a record.
func (r *AsideRecord) complete() bool {
	return r.Subject != "" && r.MsgID != "" && len(r.Data) > 0
}
