//go:build !unix

package spool

// LockAside orders writers of AsideFile on unix systems; elsewhere
// `bridge set-aside --publish` should run while the bridge is stopped.
func LockAside(dir string) (unlock func(), err error) { return func() {}, nil }

// lockDir guards a spool dir on unix systems only.
func lockDir(dir string) (unlock func(), err error) { return func() {}, nil }

// LockPublish guards `bridge set-aside --publish` on unix systems only.
func LockPublish(dir string) (unlock func(), err error) { return func() {}, nil }
