package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func rec(i int) Record {
	return Record{
		Subject: fmt.Sprintf("ubiqo.coords.dev-%d", i%7),
		MsgID:   fmt.Sprintf("id-%06d", i),
		Device:  fmt.Sprintf("dev-%d", i%7),
		Data:    []byte(fmt.Sprintf(`{"v":1,"n":%d}`, i)),
	}
}

// drain replays everything, committing every batch, and returns the ids in
// replay order.
func drain(t *testing.T, s *Spool, batch int) []string {
	t.Helper()
	var ids []string
	for {
		recs, pos, err := s.Peek(batch)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return ids
		}
		for _, r := range recs {
			ids = append(ids, r.MsgID)
		}
		if err := s.Commit(pos, recs); err != nil {
			t.Fatal(err)
		}
	}
}

func TestAppendReplayInOrderAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	s.segSize = 1024 // force many segments
	for i := 0; i < 300; i += 3 {
		if err := s.Append([]Record{rec(i), rec(i + 1), rec(i + 2)}); err != nil {
			t.Fatal(err)
		}
	}
	if n, b := s.Stats(); n != 300 || b == 0 {
		t.Fatalf("stats %d records %d bytes", n, b)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "seg-*.spool"))
	if len(segs) < 5 {
		t.Fatalf("expected rotation, got %d segments", len(segs))
	}
	// Replay half, then "crash" (close) and reopen: the rest comes back, in
	// order, and nothing replayed twice.
	var first []string
	for len(first) < 150 {
		recs, pos, err := s.Peek(10)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			first = append(first, r.MsgID)
		}
		if err := s.Commit(pos, recs); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	s, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n, _ := s.Stats(); n != 150 {
		t.Fatalf("after reopen %d records pending, want 150", n)
	}
	rest := drain(t, s, 64)
	all := append(first, rest...)
	if len(all) != 300 {
		t.Fatalf("replayed %d, want 300", len(all))
	}
	for i, id := range all {
		if id != fmt.Sprintf("id-%06d", i) {
			t.Fatalf("position %d: %s", i, id)
		}
	}
	if n, b := s.Stats(); n != 0 || b != 0 {
		t.Fatalf("after drain: %d records %d bytes", n, b)
	}
	segs, _ = filepath.Glob(filepath.Join(dir, "seg-*.spool"))
	if len(segs) > 1 {
		t.Fatalf("replayed segments not removed: %v", segs)
	}
}

func TestTornTailCutNotReplayed(t *testing.T) {
	for _, cut := range []int{1, 4, 9, 20} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Append([]Record{rec(0), rec(1)}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			// A crash in the middle of writing the third record.
			third, _ := appendRecord(nil, rec(2))
			path := filepath.Join(dir, "seg-000000001.spool")
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.Write(third[:min(cut, len(third)-1)])
			f.Close()

			s, err = Open(dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if len(s.Repaired) != 1 {
				t.Fatalf("torn tail not reported: %v", s.Repaired)
			}
			// New appends after the repair are replayed too.
			if err := s.Append([]Record{rec(3)}); err != nil {
				t.Fatal(err)
			}
			ids := drain(t, s, 10)
			if fmt.Sprint(ids) != "[id-000000 id-000001 id-000003]" {
				t.Fatalf("replayed %v", ids)
			}
		})
	}
}

func TestCorruptRecordDetected(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 0)
	s.Append([]Record{rec(0), rec(1), rec(2)})
	s.Close()
	path := filepath.Join(dir, "seg-000000001.spool")
	b, _ := os.ReadFile(path)
	one, _ := appendRecord(nil, rec(0))
	b[len(one)+12] ^= 0xFF // flip a byte inside the second record's payload
	os.WriteFile(path, b, 0o640)
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if len(s.Repaired) != 1 || !strings.Contains(s.Repaired[0], "moved to seg-000000001.spool.damaged-") {
		t.Fatalf("repair not reported: %q", s.Repaired)
	}
	// The damaged record is lost; the one behind it is kept.
	ids := drain(t, s, 10)
	if fmt.Sprint(ids) != "[id-000000 id-000002]" {
		t.Fatalf("replayed %v, want the records around the damaged one", ids)
	}
	if kept, _ := filepath.Glob(filepath.Join(dir, "*.damaged-*")); len(kept) != 1 {
		t.Fatalf("damaged bytes not kept for the operator: %v", kept)
	}
}

// Damage in the part of a segment already replayed (before the checkpoint)
// is not read at all: the records not yet replayed are all kept, and new
// ones go after them.
func TestDamageBeforeTheCheckpointIsIgnored(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 0)
	for i := range 10 {
		s.Append([]Record{rec(i)})
	}
	recs, pos, _ := s.Peek(5)
	if err := s.Commit(pos, recs); err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := filepath.Join(dir, "seg-000000001.spool")
	b, _ := os.ReadFile(path)
	b[12] ^= 0xFF // inside record 0, replayed already
	os.WriteFile(path, b, 0o640)

	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Stats(); n != 5 {
		t.Fatalf("spool counts %d records, want the 5 not yet replayed", n)
	}
	s.Append([]Record{rec(10)})
	s.Close()
	s, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ids := drain(t, s, 3); fmt.Sprint(ids) != "[id-000005 id-000006 id-000007 id-000008 id-000009 id-000010]" {
		t.Fatalf("replayed %v", ids)
	}
}

// Damage that appears while the spool is open (the disk; a failed append
// that could not be undone) is skipped to the next sound record and
// reported by Damage; once everything is replayed the counts are right
// again, so the spool is Empty and holds no device.
func TestDamageWhileOpenIsSkippedAndReported(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 0)
	defer s.Close()
	for i := range 6 {
		s.Append([]Record{rec(i)})
	}
	path := filepath.Join(dir, "seg-000000001.spool")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	one, _ := appendRecord(nil, rec(0))
	f.WriteAt([]byte{0xFF, 0xFF}, int64(2*len(one)+10)) // inside record 2
	f.Close()
	ids := drain(t, s, 10)
	if fmt.Sprint(ids) != "[id-000000 id-000001 id-000003 id-000004 id-000005]" {
		t.Fatalf("replayed %v", ids)
	}
	if d := s.Damage(); len(d) != 1 || !strings.Contains(d[0], "bytes skipped") {
		t.Fatalf("damage reported: %q", d)
	}
	if !s.Empty() || s.Holds(rec(2).Device) {
		n, _ := s.Stats()
		t.Fatalf("after replay: Empty %v, %d records counted, holds %s %v", s.Empty(), n, rec(2).Device, s.Holds(rec(2).Device))
	}
}

// Segments removed by hand with the checkpoint left behind: the new segment
// is numbered past the checkpoint, so a restart does not take it for
// replayed and remove it.
func TestCheckpointLeftBehindKeepsNewRecords(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "checkpoint"), []byte("7 100\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	s, _ := Open(dir, 0)
	s.Append([]Record{rec(1), rec(2)})
	s.Close()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ids := drain(t, s, 10); fmt.Sprint(ids) != "[id-000001 id-000002]" {
		t.Fatalf("replayed %v", ids)
	}
}

// A checkpoint that cannot be written: the replay position moves on all
// the same (the records are stored; publishing them again and again would
// pile up copies), and Commit says so with ErrCheckpoint. Once a fixed-width
// checkpoint exists, a full disk can still overwrite it in place.
func TestCheckpointFailureStillMovesOn(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(dir, 0)
	defer s.Close()
	for i := range 4 {
		s.Append([]Record{rec(i)})
	}
	// checkpoint.tmp as a directory: the atomic write fails, and no
	// checkpoint exists yet to overwrite in place.
	if err := os.Mkdir(filepath.Join(dir, "checkpoint.tmp"), 0o750); err != nil {
		t.Fatal(err)
	}
	recs, pos, _ := s.Peek(2)
	if err := s.Commit(pos, recs); !errors.Is(err, ErrCheckpoint) {
		t.Fatalf("Commit = %v, want ErrCheckpoint", err)
	}
	recs, _, _ = s.Peek(2)
	if len(recs) != 2 || recs[0].MsgID != "id-000002" {
		t.Fatalf("after a failed checkpoint Peek returns %v: the same batch again", recs)
	}
	// With a fixed-width checkpoint on disk, the in-place overwrite works.
	os.Remove(filepath.Join(dir, "checkpoint.tmp"))
	recs, pos, _ = s.Peek(1)
	if err := s.Commit(pos, recs); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "checkpoint.tmp"), 0o750)
	recs, pos, _ = s.Peek(1)
	if err := s.Commit(pos, recs); err != nil {
		t.Fatalf("in-place checkpoint: %v", err)
	}
	if seg, off := s.loadCheckpoint(); seg != pos.Seg || off != pos.Off {
		t.Fatalf("checkpoint on disk %d %d, want %d %d", seg, off, pos.Seg, pos.Off)
	}
}

func TestFull(t *testing.T) {
	s, err := Open(t.TempDir(), 200)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Append([]Record{rec(0), rec(1)}); err != nil {
		t.Fatal(err)
	}
	err = s.Append([]Record{rec(2), rec(3), rec(4)})
	if !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	if n, _ := s.Stats(); n != 2 {
		t.Fatalf("a refused append wrote something: %d records", n)
	}
	drain(t, s, 10)
	if err := s.Append([]Record{rec(2), rec(3)}); err != nil {
		t.Fatalf("room after replay: %v", err)
	}
}

// Many concurrent appenders: every record is stored once, each appender's
// records stay together and in its order.
func TestConcurrentAppendGroupCommit(t *testing.T) {
	s, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 16, 50
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func(w int) {
			for i := 0; i < each; i++ {
				r := Record{Subject: "s", MsgID: fmt.Sprintf("w%02d-%03d", w, i), Device: "d", Data: []byte("x")}
				if err := s.Append([]Record{r}); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}(w)
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	ids := drain(t, s, 100)
	if len(ids) != writers*each {
		t.Fatalf("replayed %d, want %d", len(ids), writers*each)
	}
	last := map[string]string{}
	for _, id := range ids {
		w := id[:3]
		if prev, ok := last[w]; ok && prev >= id {
			t.Fatalf("writer %s out of order: %s after %s", w, id, prev)
		}
		last[w] = id
	}
}

func BenchmarkAppendParallel(b *testing.B) {
	s, err := Open(b.TempDir(), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	r := []Record{{Subject: "ubiqo.coords.356938035643809", MsgID: "9750aae1c04938efbeed1e98db80fe01", Device: "356938035643809", Data: make([]byte, 300)}}
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Append(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A set-aside line torn right after a device's own {"time":...} object (the
// end of the record's raw field) holds something that parses as a line but
// is no record: it is a fragment, not a record without subject or id that
// could never be published.
func TestReadAsideTornLineIsNoPhantom(t *testing.T) {
	dir := t.TempDir()
	torn := `{"time":"2026-03-01T00:00:00Z","reason":"too large","subject":"ubiqo.coords.d","msg_id":"m1","device":"d","data":{"v":1,"raw":{"time":"2026-03-01T00:00:00Z","lat":1}`
	if err := os.WriteFile(filepath.Join(dir, AsideFile), []byte(torn+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	recs, bad, err := ReadAside(filepath.Join(dir, AsideFile))
	if err != nil || len(recs) != 0 || len(bad) != 1 {
		t.Fatalf("recs %+v bad %q err %v: want one fragment and no record", recs, bad, err)
	}
}

// The checkpoint carries a checksum: a line whose digits a torn in-place
// write mixed up is not read as a position (which could skip records), and
// a checkpoint from before the checksum still reads.
func TestCheckpointChecksum(t *testing.T) {
	dir := t.TempDir()
	s := &Spool{dir: dir}
	if err := writeCheckpoint(dir, Position{3, 4567}); err != nil {
		t.Fatal(err)
	}
	if seg, off := s.loadCheckpoint(); seg != 3 || off != 4567 {
		t.Fatalf("read back %d %d", seg, off)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "checkpoint"))
	b[30] = '9' // a digit of the offset changed by a torn write
	os.WriteFile(filepath.Join(dir, "checkpoint"), b, 0o640)
	if seg, off := s.loadCheckpoint(); seg != 0 || off != 0 {
		t.Fatalf("a torn checkpoint read as %d %d", seg, off)
	}
	os.WriteFile(filepath.Join(dir, "checkpoint"), []byte("7 100\n"), 0o640)
	if seg, off := s.loadCheckpoint(); seg != 7 || off != 100 {
		t.Fatalf("an old checkpoint read as %d %d", seg, off)
	}
}
