package spool

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// One failed attempt to start a new segment (here the new segment's path is
// briefly unusable; in production EMFILE, a failed directory fsync, ...)
// must not break the spool: once the cause is gone, appends work again and
// every record appended is there, in order. (It used to close the current
// segment first and then refuse every append until a restart.)
func TestSpoolRecoversAfterAFailedRotation(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.segSize = 256
	for i := 0; i < 3; i++ { // fill segment 1 close to its size
		if err := s.Append([]Record{rec(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for s.wOff+60 <= s.segSize {
		if err := s.Append([]Record{rec(99)}); err != nil {
			t.Fatal(err)
		}
	}
	// The next segment cannot be created once.
	block := s.segPath(s.wSeg + 1)
	if err := os.Mkdir(block, 0o700); err != nil {
		t.Fatal(err)
	}
	err = s.Append([]Record{rec(100)})
	t.Logf("append while the new segment cannot be created: %v", err)
	if err == nil {
		t.Fatal("expected a failure")
	}
	os.Remove(block) // the cause is gone
	for i := 0; i < 3; i++ {
		if err := s.Append([]Record{rec(200 + i)}); err != nil {
			t.Fatalf("append %d after the cause went away: %v", i, err)
		}
	}
	n, _ := s.Stats()
	recs, _, err := s.Peek(int(n) + 10)
	if err != nil || len(recs) != int(n) {
		t.Fatalf("peek: %d records, err %v; the spool counts %d", len(recs), err, n)
	}
	want := rec(200 + 2)
	if last := recs[len(recs)-1]; last.MsgID != want.MsgID {
		t.Fatalf("last record %q, want %q", last.MsgID, want.MsgID)
	}
}

// Two bridges on one spool.dir would replay and drop each other's records:
// the second Open is refused until the first spool is closed.
func TestSpoolDirIsLockedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, 0); !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "spool.dir") {
		t.Fatalf("second Open: %v, want ErrLocked naming spool.dir", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, 0)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}
