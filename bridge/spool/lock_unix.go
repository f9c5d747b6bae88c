//go:build unix

package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// LockAside takes the lock that orders writers of AsideFile in dir: the
// bridge appending to it and `bridge set-aside --publish` moving it away.
// Without it a line appended through a file opened just before the move
// would land in the moved file after it was read, and be deleted with it.
func LockAside(dir string) (unlock func(), err error) {
	unlock, _, err = flock(filepath.Join(dir, asideLockFile), true)
	if err != nil {
		return nil, fmt.Errorf("spool: set-aside lock: %w", err)
	}
	return unlock, nil
}

// lockDir takes dir's spool lock, held while the spool is open: two bridges
// on one spool.dir would each append and replay its segments, and replay
// or drop each other's records.
func lockDir(dir string) (unlock func(), err error) {
	unlock, busy, err := flock(filepath.Join(dir, dirLockFile), false)
	switch {
	case busy:
		return nil, fmt.Errorf("%w: %s is in use by another bridge; give each bridge a spool.dir of its own", ErrLocked, dir)
	case err != nil:
		return nil, fmt.Errorf("spool dir %s: lock: %w", dir, err)
	}
	return unlock, nil
}

// LockPublish takes, without waiting, the lock one `bridge set-aside
// --publish` holds while it runs: a second one would take the first one's
// work file for a leftover and write its records back twice.
func LockPublish(dir string) (unlock func(), err error) {
	unlock, busy, err := flock(filepath.Join(dir, publishLockFile), false)
	switch {
	case busy:
		return nil, fmt.Errorf("another bridge set-aside --publish is running on %s", dir)
	case err != nil:
		return nil, fmt.Errorf("spool: set-aside publish lock: %w", err)
	}
	return unlock, nil
}

// flock takes an exclusive lock on the file at path (created if need be):
// waiting for it, or, when wait is false, reporting busy when another
// process holds it.
func flock(path string, wait bool) (unlock func(), busy bool, err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, false, err
	}
	how := syscall.LOCK_EX
	if !wait {
		how |= syscall.LOCK_NB
	}
	for {
		err = syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, err == syscall.EWOULDBLOCK, err
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, false, nil
}
