package spool

import (
	"encoding/json"
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
	asideLockFile = "set-aside.lock"
	dirLockFile   = "spool.lock"
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
	var buf []byte
	for _, l := range lines {
		if !json.Valid(l.Data) {
			l.Data, _ = json.Marshal(string(l.Data))
		}
		b, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("spool: set aside: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	unlock, err := LockAside(dir)
	if err != nil {
		return err
	}
	defer unlock()
	path := filepath.Join(dir, AsideFile)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("spool: set aside: %w", err)
	}
	if _, err := f.Write(buf); err != nil {
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
