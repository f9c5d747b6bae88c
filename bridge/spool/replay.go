package spool

import (
	"bufio"
	"fmt"
	"hash/crc32"
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
			// Open moved damage out of the way, so only damage since (the
			// disk, or a failed append that could not be undone) lands
			// here: skip to the next sound record, and say so.
			end := limit
			if end < 0 {
				st, serr := f.Stat()
				if serr != nil {
					return out, pos, false, fmt.Errorf("spool read: %w", serr)
				}
				end = st.Size()
			}
			n := end - pos.Off
			if n < 0 {
				n = 0
			}
			rest := make([]byte, n)
			if _, rerr := f.ReadAt(rest, pos.Off); rerr != nil && rerr != io.EOF {
				return out, pos, false, fmt.Errorf("spool read: %w", rerr)
			}
			next := resync(rest)
			if next < 0 {
				next = len(rest)
			}
			s.noteDamage(fmt.Sprintf("%s: %v at offset %d; %d bytes skipped", filepath.Base(s.segPath(pos.Seg)), err, pos.Off, next))
			pos.Off += int64(next)
			if next == len(rest) {
				return out, pos, true, nil
			}
			if _, err := f.Seek(pos.Off, io.SeekStart); err != nil {
				return out, pos, false, fmt.Errorf("spool read: %w", err)
			}
			src = f
			if limit >= 0 {
				src = io.LimitReader(f, limit-pos.Off)
			}
			r.Reset(src)
			continue
		}
		out = append(out, rec)
		pos.Off += size
	}
	return out, pos, false, nil
}

// noteDamage records damage found while reading, once per place, for
// Damage to report.
func (s *Spool) noteDamage(d string) {
	s.damageMu.Lock()
	defer s.damageMu.Unlock()
	if s.damageSeen == nil {
		s.damageSeen = map[string]bool{}
	}
	if !s.damageSeen[d] {
		s.damageSeen[d] = true
		s.damage = append(s.damage, d)
	}
}

// Damage returns the damage readers found and skipped since the last call:
// bytes that were not sound records, whose records are lost.
func (s *Spool) Damage() []string {
	s.damageMu.Lock()
	defer s.damageMu.Unlock()
	d := s.damage
	s.damage = nil
	return d
}

// Dir is the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// Commit records that everything before pos, the records Peek returned,
// was replayed: the checkpoint is written durably and finished segments are
// removed.
//
// When the checkpoint cannot be written (a full disk), the replay position
// moves on all the same and the error wraps ErrCheckpoint: the records are
// stored, and publishing them again and again would only pile up copies
// once the duplicate window has passed. Only a restart before a later
// checkpoint is saved replays them again (duplicates within the window).
func (s *Spool) Commit(pos Position, recs []Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	cpErr := writeCheckpoint(s.dir, pos)
	if cpErr != nil {
		cpErr = fmt.Errorf("%w: %w", ErrCheckpoint, cpErr)
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
	if pos.Seg == s.wSeg && pos.Off >= s.wOff {
		// Everything written is replayed: counts that disagree (records
		// lost to damage on disk, skipped by readFrom) are put right.
		s.records, s.bytes = 0, 0
		clear(s.devices)
	}
	return cpErr
}

// checkpointText is the checkpoint's content: fixed width, so that it can
// be overwritten in place, which needs no new disk block, when a full disk
// refuses the new file the atomic rename needs.
// A checksum of the two numbers ends the line, so that an in-place write
// torn by a crash (old and new digits mixed) is not read as a position.
func checkpointText(pos Position) []byte {
	nums := fmt.Appendf(nil, "%020d %020d", pos.Seg, pos.Off)
	return fmt.Appendf(nums, " %08x\n", crc32.Checksum(nums, castagnoli))
}

func writeCheckpoint(dir string, pos Position) error {
	err := writeCheckpointAtomic(dir, pos)
	if err == nil {
		return nil
	}
	// In place: a crash in the middle of this write leaves a checkpoint
	// whose checksum fails, and replay starts over (duplicates, no loss).
	f, ferr := os.OpenFile(filepath.Join(dir, checkpoint), os.O_WRONLY, 0)
	if ferr != nil {
		return err
	}
	defer f.Close()
	st, ferr := f.Stat()
	text := checkpointText(pos)
	if ferr != nil || st.Size() != int64(len(text)) {
		return err
	}
	if _, ferr := f.WriteAt(text, 0); ferr != nil {
		return err
	}
	if ferr := f.Sync(); ferr != nil {
		return err
	}
	return nil
}

func writeCheckpointAtomic(dir string, pos Position) error {
	tmp := filepath.Join(dir, checkpoint+".tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("spool checkpoint: %w", err)
	}
	if _, err := f.Write(checkpointText(pos)); err != nil {
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
	switch len(parts) {
	case 2: // before the checksum was written
	case 3:
		nums := b[:strings.LastIndexByte(strings.TrimRight(string(b), "\n"), ' ')]
		sum, err := strconv.ParseUint(parts[2], 16, 32)
		if err != nil || uint32(sum) != crc32.Checksum(nums, castagnoli) {
			return 0, 0 // torn: replay from the start (duplicates, no loss)
		}
	default:
		return 0, 0
	}
	seg, err1 := strconv.ParseInt(parts[0], 10, 64)
	off, err2 := strconv.ParseInt(parts[1], 10, 64)
	if err1 != nil || err2 != nil || seg < 0 || off < 0 {
		return 0, 0
	}
	return seg, off
}
