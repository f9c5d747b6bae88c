// Package spool is the bridge's local write-ahead spool: when JetStream cannot
// store coordinates, they are appended here, fsync'd, and replayed later in
// the order they arrived, with their original message ids, so a coordinate
// answered 202 is never lost by a NATS outage or a bridge restart.
//
// On disk the spool is a directory of segment files (seg-<n>.spool) and a
// checkpoint. A segment is a sequence of records:
//
//	u32 length of payload | u32 CRC-32C of payload | payload
//	payload = u16 len + subject | u16 len + msg id | u16 len + device id | data
//
// A record whose length runs past the end of the file or whose checksum does
// not match, with no sound record after it, is a torn write (a crash
// mid-append): it is cut off at open, never replayed. One with sound records
// after it is damage: at open its bytes are moved to a file of their own and
// the records behind it kept; found while reading, it is skipped and
// reported (Damage). Only the part of a segment not yet replayed is checked.
package spool

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Record is one spooled coordinate message.
type Record struct {
	Subject string
	MsgID   string
	Device  string
	Data    []byte
}

// ErrFull is returned by Append when the spool would exceed its size limit.
var ErrFull = errors.New("spool full")

// ErrLocked is returned by Open when another process has the spool dir open.
var ErrLocked = errors.New("spool dir locked")

// ErrCheckpoint is wrapped by Commit's error when the replay position could
// not be saved; the position moved on all the same.
var ErrCheckpoint = errors.New("spool checkpoint not saved")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("spool closed")

const (
	headerLen          = 8
	maxRecord          = 16 << 20
	defaultSegmentSize = 64 << 20
	segPrefix          = "seg-"
	segSuffix          = ".spool"
	checkpoint         = "checkpoint"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Spool is safe for concurrent use: many appenders, one replayer.
type Spool struct {
	dir      string
	maxBytes int64
	segSize  int64  // rotate segments past this size
	unlock   func() // releases the spool dir's lock (lockDir)

	asideMu sync.Mutex // serialises SetAside

	damageMu   sync.Mutex
	damage     []string        // found by readers, not yet reported (Damage)
	damageSeen map[string]bool // reported once per place

	mu          sync.Mutex
	cond        *sync.Cond // signalled when records are appended
	closed      bool
	segs        []int64 // segment numbers, oldest first
	w           *os.File
	wSeg        int64
	wOff        int64
	bytes       int64            // bytes on disk not yet replayed
	records     int64            // records not yet replayed
	devices     map[string]int   // records not yet replayed, by device id
	queue       []*pendingAppend // appends waiting for the next group commit
	queuedBytes int64
	flushing    bool
	mustRotate  bool  // a failed write left bytes in the write segment
	readSeg     int64 // checkpoint: next record to replay
	readOff     int64
	Repaired    []string // what Open cut off, for the caller to log
}

// Open opens (creating if needed) the spool in dir, limited to maxBytes of
// unreplayed data. Torn records at the end of segments are cut off and
// reported in Repaired.
func Open(dir string, maxBytes int64) (*Spool, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("spool dir %s: %w", dir, err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{dir: dir, maxBytes: maxBytes, segSize: defaultSegmentSize, unlock: unlock}
	s.cond = sync.NewCond(&s.mu)
	ok := false
	defer func() {
		if !ok {
			unlock()
		}
	}()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool dir %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, segPrefix) && strings.HasSuffix(name, segSuffix+".tmp") {
			_ = os.Remove(filepath.Join(dir, name)) // a rewrite (cutOut) a crash cut short
			continue
		}
		if !strings.HasPrefix(name, segPrefix) || !strings.HasSuffix(name, segSuffix) {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(name, segPrefix), segSuffix), 10, 64)
		if err != nil {
			continue
		}
		s.segs = append(s.segs, n)
	}
	sort.Slice(s.segs, func(i, j int) bool { return s.segs[i] < s.segs[j] })
	s.readSeg, s.readOff = s.loadCheckpoint()
	// Drop segments wholly before the checkpoint (replayed, not yet removed).
	for len(s.segs) > 0 && s.segs[0] < s.readSeg {
		_ = os.Remove(s.segPath(s.segs[0]))
		s.segs = s.segs[1:]
	}
	if len(s.segs) == 0 || s.readSeg < s.segs[0] {
		s.readOff = 0
		if len(s.segs) > 0 {
			s.readSeg = s.segs[0]
		}
	}
	for _, n := range s.segs {
		from := int64(0)
		if n == s.readSeg {
			from = s.readOff
		}
		good, _, err := s.scan(n, from)
		if err != nil {
			return nil, err
		}
		if good > from {
			s.bytes += good - from
		} else if n == s.readSeg && s.readOff > good {
			s.readOff = good // a checkpoint past the segment's end
		}
	}
	s.devices = map[string]int{}
	s.countPending()
	if len(s.segs) == 0 {
		// Numbered past the checkpoint, so that a checkpoint left behind
		// (segments removed by hand) never marks the new one as replayed.
		first := max(s.readSeg+1, 1)
		s.segs = []int64{first}
		s.readSeg, s.readOff = first, 0
	}
	s.wSeg = s.segs[len(s.segs)-1]
	w, err := os.OpenFile(s.segPath(s.wSeg), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	st, err := w.Stat()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.w, s.wOff = w, st.Size()
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *Spool) segPath(n int64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s%09d%s", segPrefix, n, segSuffix))
}

// scan validates segment n from offset from on (what lies before the
// checkpoint was replayed already and is not read), and returns the length
// of its valid data and its record count from there. A bad record followed
// by good ones is damage: the damaged bytes are moved to a file of their
// own (seg-<n>.spool.damaged-<offset>-<time>) and the segment rewritten
// without them, so the records behind them are kept. A bad record with
// nothing sound behind it is a torn tail (a crash mid-append): it is cut
// off.
func (s *Spool) scan(n, from int64) (int64, int64, error) {
	path := s.segPath(n)
	var recs int64
	for {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return 0, 0, fmt.Errorf("spool: %w", err)
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("spool: %w", err)
		}
		size := st.Size()
		off := min(from, size)
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("spool: %w", err)
		}
		r := bufio.NewReaderSize(f, 1<<20)
		var bad error
		for {
			_, n, err := readRecord(r)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				bad = err
				break
			}
			off += n
			recs++
		}
		if bad == nil {
			f.Close()
			return off, recs, nil
		}
		rest := make([]byte, size-off)
		_, rerr := f.ReadAt(rest, off)
		f.Close()
		if rerr != nil {
			return 0, 0, fmt.Errorf("spool: read %s: %w", path, rerr)
		}
		// Sound records behind a bad one are kept, also in the segment
		// being written when the bridge stopped: there they may be pages
		// of a last write that a power loss kept without the one before
		// (never acknowledged: a retry stores them once), but they may as
		// well be acknowledged records behind damage, which must not be
		// lost.
		next := resync(rest)
		if next < 0 {
			// A torn tail.
			s.Repaired = append(s.Repaired, fmt.Sprintf("%s: %v at offset %d; cut %d bytes", filepath.Base(path), bad, off, size-off))
			if err := truncateSync(path, off); err != nil {
				return 0, 0, err
			}
			return off, recs, nil
		}
		// Damage with good records behind it.
		keep := filepath.Join(s.dir, fmt.Sprintf("%s.damaged-%d-%d", filepath.Base(path), off, time.Now().UnixNano()))
		if err := writeFileSync(keep, rest[:next]); err != nil {
			return 0, 0, fmt.Errorf("spool: keep the damaged bytes of %s: %w", path, err)
		}
		if err := cutOut(path, off, int64(next)); err != nil {
			return 0, 0, err
		}
		s.Repaired = append(s.Repaired, fmt.Sprintf("%s: %v at offset %d; %d damaged bytes moved to %s, the records behind them kept",
			filepath.Base(path), bad, off, next, filepath.Base(keep)))
		from = off // scan on from there: what followed the damage
	}
}

// resync returns the offset of the first record in b after its start that
// is sound and is followed by another sound record or by the end of b, or
// -1. The second condition keeps most of what a damaged record's data
// happens to hold from being taken for a record. A whole encoded record
// inside a record's data, at its very end, would still pass: the bridge's
// bodies are JSON, which holds no 0x00 byte, while every record header
// starts with one.
func resync(b []byte) int {
	for i := 1; i+headerLen <= len(b); i++ {
		n := soundAt(b, i)
		if n == 0 {
			continue
		}
		if end := i + n; end == len(b) || soundAt(b, end) > 0 {
			return i
		}
	}
	return -1
}

// soundAt returns the size of the sound record at b[i:], or 0.
func soundAt(b []byte, i int) int {
	if i+headerLen > len(b) {
		return 0
	}
	size := int(binary.BigEndian.Uint32(b[i:]))
	if size < 6 || size > maxRecord || i+headerLen+size > len(b) {
		return 0
	}
	payload := b[i+headerLen : i+headerLen+size]
	if _, err := decodePayload(payload); err != nil { // cheaper than the checksum
		return 0
	}
	if crc32.Checksum(payload, castagnoli) != binary.BigEndian.Uint32(b[i+4:]) {
		return 0
	}
	return headerLen + size
}

func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func truncateSync(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("spool: truncate torn tail of %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return nil
}

// cutOut rewrites the file at path without the n bytes at off: a copy,
// fsync'd, renamed over it.
func cutOut(path string, off, n int64) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o640)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	_, err = f.Write(b[:off])
	if err == nil {
		_, err = f.Write(b[off+n:])
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("spool: rewrite %s without its damaged bytes: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

var errTorn = errors.New("torn or corrupt record")

// readRecord reads one record; io.EOF at a clean end, errTorn otherwise.
func readRecord(r *bufio.Reader) (Record, int64, error) {
	var hdr [headerLen]byte
	n, err := io.ReadFull(r, hdr[:])
	if err == io.EOF {
		return Record{}, 0, io.EOF
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("%w: short header (%d bytes)", errTorn, n)
	}
	size := binary.BigEndian.Uint32(hdr[0:4])
	sum := binary.BigEndian.Uint32(hdr[4:8])
	if size == 0 || size > maxRecord {
		return Record{}, 0, fmt.Errorf("%w: bad length %d", errTorn, size)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(r, payload); err != nil {
		return Record{}, 0, fmt.Errorf("%w: short payload", errTorn)
	}
	if crc32.Checksum(payload, castagnoli) != sum {
		return Record{}, 0, fmt.Errorf("%w: checksum mismatch", errTorn)
	}
	rec, err := decodePayload(payload)
	if err != nil {
		return Record{}, 0, fmt.Errorf("%w: %v", errTorn, err)
	}
	return rec, int64(headerLen) + int64(size), nil
}

func decodePayload(p []byte) (Record, error) {
	var fields [3]string
	for i := range fields {
		if len(p) < 2 {
			return Record{}, errors.New("truncated field")
		}
		n := int(binary.BigEndian.Uint16(p))
		p = p[2:]
		if len(p) < n {
			return Record{}, errors.New("truncated field")
		}
		fields[i] = string(p[:n])
		p = p[n:]
	}
	return Record{Subject: fields[0], MsgID: fields[1], Device: fields[2], Data: p}, nil
}

func appendRecord(dst []byte, r Record) ([]byte, error) {
	for _, f := range []string{r.Subject, r.MsgID, r.Device} {
		if len(f) > 0xFFFF {
			return dst, errors.New("spool: field longer than 64 KiB")
		}
	}
	size := 6 + len(r.Subject) + len(r.MsgID) + len(r.Device) + len(r.Data)
	if size > maxRecord {
		return dst, errors.New("spool: record larger than 16 MiB")
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(size))
	dst = binary.BigEndian.AppendUint32(dst, 0) // checksum, filled below
	p := len(dst)
	for _, f := range []string{r.Subject, r.MsgID, r.Device} {
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(f)))
		dst = append(dst, f...)
	}
	dst = append(dst, r.Data...)
	binary.BigEndian.PutUint32(dst[start+4:], crc32.Checksum(dst[p:], castagnoli))
	return dst, nil
}

// Append writes recs and fsyncs before returning: when it returns nil the
// records survive a crash. It fails with ErrFull, writing nothing, when the
// unreplayed data would exceed the limit.
//
// Concurrent appends are committed together (group commit): one goroutine
// writes and fsyncs everything queued so far while the others wait, so the
// spool takes many requests per fsync.
func (s *Spool) Append(recs []Record) error {
	if len(recs) == 0 {
		return nil
	}
	var buf []byte
	var err error
	for _, r := range recs {
		if buf, err = appendRecord(buf, r); err != nil {
			return err
		}
	}
	p := &pendingAppend{buf: buf, records: recs, done: make(chan error, 1)}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.maxBytes > 0 && s.bytes+s.queuedBytes+int64(len(buf)) > s.maxBytes {
		used := s.bytes + s.queuedBytes
		s.mu.Unlock()
		return fmt.Errorf("%w: %d of %d bytes used", ErrFull, used, s.maxBytes)
	}
	s.queue = append(s.queue, p)
	s.queuedBytes += int64(len(buf))
	leader := !s.flushing
	s.flushing = true
	s.mu.Unlock()
	if leader {
		s.flush()
	}
	return <-p.done
}

type pendingAppend struct {
	buf     []byte
	records []Record
	done    chan error
}

// flush writes and fsyncs queued appends until the queue is empty. Only one
// goroutine flushes at a time (s.flushing), so the file has one writer.
func (s *Spool) flush() {
	for {
		s.mu.Lock()
		group := s.queue
		s.queue = nil
		if len(group) == 0 || s.closed {
			s.flushing = false
			s.mu.Unlock()
			for _, p := range group {
				p.done <- ErrClosed
			}
			return
		}
		size := 0
		for _, p := range group {
			size += len(p.buf)
		}
		var err error
		if s.wOff > 0 && (s.wOff+int64(size) > s.segSize || s.mustRotate) {
			err = s.rotate()
		}
		w, off := s.w, s.wOff
		s.mu.Unlock()

		if err == nil {
			err = writeAll(w, group, off)
		}

		s.mu.Lock()
		for _, p := range group {
			s.queuedBytes -= int64(len(p.buf))
			if err == nil {
				s.records += int64(len(p.records))
				for _, r := range p.records {
					s.devices[r.Device]++
				}
			}
		}
		if err == nil {
			s.wOff += int64(size)
			s.bytes += int64(size)
			s.cond.Broadcast()
		} else if st, serr := w.Stat(); serr == nil && st.Size() != off {
			// The failed write left bytes that could not be cut off.
			// The file is opened for appending, so the next write lands
			// after them: wOff follows the file, readers skip the bytes
			// as damage, and the next group goes to a new segment.
			s.wOff = st.Size()
			s.mustRotate = true
		}
		s.mu.Unlock()
		for _, p := range group {
			p.done <- err
		}
	}
}

// writeAll appends the group's records at off and fsyncs. On failure it
// cuts the file back to off, so a partial write never sits in front of
// later records.
func writeAll(w *os.File, group []*pendingAppend, off int64) error {
	bufs := make(net.Buffers, len(group))
	for i, p := range group {
		bufs[i] = p.buf
	}
	_, err := bufs.WriteTo(w)
	if err == nil {
		if err = w.Sync(); err != nil {
			err = fmt.Errorf("spool fsync: %w", err)
		}
	} else {
		err = fmt.Errorf("spool write: %w", err)
	}
	if err != nil {
		_ = w.Truncate(off)
	}
	return err
}

// rotate starts the next segment. The current one stays open for writing
// until the next is created and its directory entry synced, so a rotation
// that fails (disk full, a directory in the way) leaves the spool as it was
// and the next append tries again.
func (s *Spool) rotate() error {
	next := s.wSeg + 1
	w, err := os.OpenFile(s.segPath(next), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("spool: new segment: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		w.Close()
		_ = os.Remove(s.segPath(next))
		return err
	}
	// Every record of the old segment was fsynced when written: a failed
	// close loses nothing.
	_ = s.w.Close()
	s.w, s.wSeg, s.wOff = w, next, 0
	s.segs = append(s.segs, next)
	s.mustRotate = false
	return nil
}

// Stats reports the unreplayed records and bytes.
func (s *Spool) Stats() (records, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.records, s.bytes
}

// Holds reports whether records of device wait in the spool. While they do,
// the device's new coordinates must queue behind them to keep its order.
func (s *Spool) Holds(device string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.devices[device] > 0
}

// countPending counts the unreplayed records, in total and by device.
func (s *Spool) countPending() {
	pos := Position{s.readSeg, s.readOff}
	for _, n := range s.segs {
		if n < pos.Seg {
			continue
		}
		if n > pos.Seg {
			pos = Position{n, 0}
		}
		for {
			recs, next, eof, err := s.readFrom(pos, -1, 4096)
			for _, r := range recs {
				s.records++
				s.devices[r.Device]++
			}
			pos = next
			if eof || err != nil || len(recs) == 0 {
				break
			}
		}
	}
}

// Empty reports whether every record has been replayed.
func (s *Spool) Empty() bool {
	r, _ := s.Stats()
	return r == 0
}

// Close closes the spool; unreplayed records stay on disk for the next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.cond.Broadcast()
	err := s.w.Close()
	s.unlock()
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("spool: fsync dir: %w", err)
	}
	return nil
}
