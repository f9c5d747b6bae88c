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
	f, err := os.OpenFile(filepath.Join(dir, asideLockFile), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: set-aside lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if err != syscall.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: set-aside lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// lockDir takes dir's spool lock, held while the spool is open: two bridges
// on one spool.dir would each append and replay its segments, and replay
// or drop each other's records.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, dirLockFile), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool dir %s: lock: %w", dir, err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err == syscall.EWOULDBLOCK {
		f.Close()
		return nil, fmt.Errorf("%w: %s is in use by another bridge; give each bridge a spool.dir of its own", ErrLocked, dir)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool dir %s: lock: %w", dir, err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

// LockPublish takes, without waiting, the lock one `bridge set-aside
// --publish` holds while it runs: a second one would take the first one's
// work file for a leftover and write its records back twice.
func LockPublish(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, publishLockFile), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, fmt.Errorf("spool: set-aside publish lock: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err != syscall.EINTR {
			break
		}
	}
	if err == syscall.EWOULDBLOCK {
		f.Close()
		return nil, fmt.Errorf("another bridge set-aside --publish is running on %s", dir)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: set-aside publish lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
