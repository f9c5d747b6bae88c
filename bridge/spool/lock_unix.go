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
