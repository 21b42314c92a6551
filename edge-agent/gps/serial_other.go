//go:build !linux

package gps

import (
	"errors"
	"fmt"
	"os"
)

var errBaudUnsupported = errors.New("cannot set the serial line speed")

// openDevice opens a serial device for reading. Setting its speed is
// implemented for Linux only (the agent's platform); elsewhere configure
// the port beforehand (stty) and leave Baud at 0.
func openDevice(path string, baud int) (*os.File, error) {
	if baud != 0 {
		return nil, fmt.Errorf("gps: %s: %w: supported on Linux only", path, errBaudUnsupported)
	}
	return os.Open(path)
}
