//go:build unix

package client

import (
	"errors"
	"os"
	"syscall"
)

// lock takes an exclusive lock on file without waiting; errLocked when another holds it.
func lock(file *os.File) error {
	err := syscall.Flock(int(file.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return errLocked
	}
	return err
}
