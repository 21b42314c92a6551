package gps

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// errBaudUnsupported means the line speed cannot be set on this platform or
// device; retrying does not help.
var errBaudUnsupported = errors.New("cannot set the serial line speed")

var termiosSpeed = map[int]uint32{
	4800: unix.B4800, 9600: unix.B9600, 19200: unix.B19200, 38400: unix.B38400, 57600: unix.B57600,
	115200: unix.B115200, 230400: unix.B230400, 460800: unix.B460800, 921600: unix.B921600,
}

// openDevice opens a serial device (or named pipe) for reading and, when
// baud is not 0, puts it in raw 8N1 mode at that speed. O_NONBLOCK keeps
// open from waiting for a modem's carrier or a pipe's writer, and lets Go's
// poller wait for data instead, so closing the file ends a pending read.
// O_NOCTTY keeps the device from becoming the agent's controlling terminal.
// A named pipe is opened read-write: holding a write end ourselves, a
// writer that goes away (or is not there yet) is not an end of input.
func openDevice(path string, baud int) (*os.File, error) {
	mode := os.O_RDONLY
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
		mode = os.O_RDWR
	}
	f, err := os.OpenFile(path, mode|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if baud != 0 {
		if err := setBaud(f, baud); err != nil {
			f.Close()
			return nil, fmt.Errorf("gps: %s: %w", path, err)
		}
	}
	return f, nil
}

// setBaud is cfmakeraw plus cfsetspeed, through the file's raw descriptor
// (f.Fd would switch the file to blocking mode and break Close unblocking a
// read).
func setBaud(f *os.File, baud int) error {
	speed, ok := termiosSpeed[baud]
	if !ok {
		return fmt.Errorf("%w: %d baud", errBaudUnsupported, baud)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			ioErr = fmt.Errorf("%w: not a terminal: %v", errBaudUnsupported, err)
			return
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CSTOPB | unix.CBAUD
		t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | speed
		t.Ispeed, t.Ospeed = speed, speed
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(int(fd), unix.TCSETS, t); err != nil {
			ioErr = fmt.Errorf("setting %d baud: %w", baud, err)
		}
	})
	if err != nil {
		return err
	}
	return ioErr
}
