package spool

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Position is a place in the spool: a segment and a byte offset in it.
type Position struct {
	Seg int64
	Off int64
}

// Peek returns up to max records from the replay position, oldest first,
// without consuming them, and the position just after the last one. Call
// Commit with that position once they are stored elsewhere.
func (s *Spool) Peek(max int) ([]Record, Position, error) {
	s.mu.Lock()
	pos := Position{s.readSeg, s.readOff}
	wSeg, wOff := s.wSeg, s.wOff
	s.mu.Unlock()

	var out []Record
	for len(out) < max {
		limit := int64(-1) // read to EOF: a finished segment
		if pos.Seg == wSeg {
			limit = wOff // the segment being written: only what Append completed
		}
		if limit >= 0 && pos.Off >= limit {
			break
		}
		recs, next, eof, err := s.readFrom(pos, limit, max-len(out))
		if err != nil {
			return out, pos, err
		}
		out = append(out, recs...)
		pos = next
		if eof && pos.Seg < wSeg {
			pos = Position{s.nextSeg(pos.Seg), 0}
			continue
		}
		if eof || len(recs) == 0 {
			break
		}
	}
	return out, pos, nil
}

func (s *Spool) nextSeg(n int64) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, seg := range s.segs {
		if seg > n {
			return seg
		}
	}
	return n + 1
}

// readFrom reads up to max records of one segment from pos, stopping at
// limit (-1 = end of file). eof reports that the segment has no more.
func (s *Spool) readFrom(pos Position, limit int64, max int) ([]Record, Position, bool, error) {
	f, err := os.Open(s.segPath(pos.Seg))
	if os.IsNotExist(err) {
		return nil, pos, true, nil
	}
	if err != nil {
		return nil, pos, false, fmt.Errorf("spool read: %w", err)
	}
	defer f.Close()
	if _, err := f.Seek(pos.Off, io.SeekStart); err != nil {
		return nil, pos, false, fmt.Errorf("spool read: %w", err)
	}
	var src io.Reader = f
	if limit >= 0 {
		src = io.LimitReader(f, limit-pos.Off)
	}
	r := bufio.NewReaderSize(src, 256<<10)
	var out []Record
	for len(out) < max {
		rec, size, err := readRecord(r)
		if err == io.EOF {
			return out, pos, true, nil
		}
		if err != nil {
			// Cut off at Open, so only a record appended after a failed
			// write can land here: skip the rest of this segment.
			return out, pos, true, nil
		}
		out = append(out, rec)
		pos.Off += size
	}
	return out, pos, false, nil
}

// Commit records that everything before pos, the records Peek returned,
// was replayed: the checkpoint is written durably and finished segments are
// removed.
func (s *Spool) Commit(pos Position, recs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := writeCheckpoint(s.dir, pos); err != nil {
		return err
	}
	var freed int64
	// Bytes freed: the rest of every segment before pos.Seg, plus the part of
	// pos.Seg before pos.Off.
	for len(s.segs) > 0 && s.segs[0] < pos.Seg {
		n := s.segs[0]
		if st, err := os.Stat(s.segPath(n)); err == nil {
			start := int64(0)
			if n == s.readSeg {
				start = s.readOff
			}
			freed += st.Size() - start
		}
		if n != s.wSeg {
			_ = os.Remove(s.segPath(n))
		}
		s.segs = s.segs[1:]
	}
	if pos.Seg == s.readSeg {
		freed += pos.Off - s.readOff
	} else {
		freed += pos.Off
	}
	s.readSeg, s.readOff = pos.Seg, pos.Off
	s.bytes -= freed
	if s.bytes < 0 {
		s.bytes = 0
	}
	s.records -= int64(len(recs))
	if s.records < 0 {
		s.records = 0
	}
	for _, r := range recs {
		if s.devices[r.Device] <= 1 {
			delete(s.devices, r.Device)
		} else {
			s.devices[r.Device]--
		}
	}
	return nil
}

func writeCheckpoint(dir string, pos Position) error {
	tmp := filepath.Join(dir, checkpoint+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	if _, err := fmt.Fprintf(f, "%d %d\n", pos.Seg, pos.Off); err != nil {
		f.Close()
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, checkpoint)); err != nil {
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	return syncDir(dir)
}

func (s *Spool) loadCheckpoint() (int64, int64) {
	b, err := os.ReadFile(filepath.Join(s.dir, checkpoint))
	if err != nil {
		return 0, 0
	}
	parts := strings.Fields(string(b))
	if len(parts) != 2 {
		return 0, 0
	}
	seg, err1 := strconv.ParseInt(parts[0], 10, 64)
	off, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || seg < 0 || off < 0 {
		return 0, 0
	}
	return seg, off
}
