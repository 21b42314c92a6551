//go:build !unix

package spool

import (
	"os"
	"path/filepath"
)

// lockDir only creates dir/LOCK where flock(2) is missing: the agent runs
// on Linux; this keeps the package building elsewhere.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o644)
}

func unlockDir(f *os.File) error { return f.Close() }
