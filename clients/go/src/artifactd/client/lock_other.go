//go:build !unix

package client

import "os"

// lock does nothing where flock(2) is missing: downloads into one path are not kept apart.
func lock(file *os.File) error {
	return nil
}
