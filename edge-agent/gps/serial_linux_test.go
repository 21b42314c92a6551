package gps

import (
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY returns the master side of a new pseudo-terminal and the path of
// its slave, which stands in for a USB receiver's /dev/ttyUSB0.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	rc, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		if ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); ioErr != nil {
			return
		}
		n, ioErr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
	}); err != nil || ioErr != nil {
		t.Skipf("pty setup: %v %v", err, ioErr)
	}
	return m, "/dev/pts/" + itoa(n)
}

// slaveTermios reads the terminal settings of the device the source has
// open (a pty master has its own, unused, settings).
func slaveTermios(path string) (*unix.Termios, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return unix.IoctlGetTermios(fd, unix.TCGETS)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// TestSerialDevice reads NMEA from a terminal device the way a receiver on
// /dev/ttyUSB0 would deliver it: the source sets 9600 baud raw mode, reads
// the fixes as they are written, keeps reopening the device after it goes
// away, and stops when cancelled.
func TestSerialDevice(t *testing.T) {
	master, slave := openPTY(t)
	// Start from a cooked 38400-baud terminal, so the test sees the change.
	fd, err := unix.Open(slave, unix.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err == nil {
		tio.Cflag = tio.Cflag&^(unix.CBAUD|unix.CLOCAL) | unix.B38400
		tio.Lflag |= unix.ICANON
		err = unix.IoctlSetTermios(fd, unix.TCSETS, tio)
	}
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	if tio, err := slaveTermios(slave); err != nil || tio.Cflag&unix.CBAUD != unix.B38400 || tio.Lflag&unix.ICANON == 0 {
		t.Fatalf("could not prepare the terminal: %v %+v", err, tio)
	}

	fixes, reg, stop := runDevice(t, slave, 9600)

	// Wait until the source has the device open and configured.
	deadline := time.Now().Add(10 * time.Second)
	for {
		tio, err := slaveTermios(slave)
		if err != nil {
			t.Fatal(err)
		}
		if tio.Lflag&unix.ICANON == 0 && tio.Cflag&unix.CBAUD == unix.B9600 && tio.Cflag&unix.CLOCAL != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the device was not set to raw 9600 baud: cflag %#o lflag %#o", tio.Cflag, tio.Lflag)
		}
		time.Sleep(5 * time.Millisecond)
	}

	// A receiver writes in bursts, one sentence at a time, with CR LF.
	for _, line := range strings.SplitAfter(fixtureLines(t), "\n") {
		if _, err := master.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	// The device does not end, so the last epoch (RMC+GGA complete) is
	// emitted as soon as its GGA arrives: all 7 fixes.
	for i := range 7 {
		f := nextFix(t, fixes)
		checkFixInvariants(t, f)
		if i == 6 && f.Time != utc(t, "2025-01-01T00:00:00.5Z") {
			t.Fatalf("last fix %+v", f)
		}
	}
	if got := metric(t, reg, "fleet_agent_gps_sentences_total", "result", ResultBadChecksum); got != 1 {
		t.Fatalf("bad checksums = %v, want 1", got)
	}

	// The receiver is unplugged: the read fails and the source keeps
	// trying to reopen the device (here it never comes back) until stopped.
	master.Close()
	deadline = time.Now().Add(10 * time.Second)
	for metric(t, reg, "fleet_agent_gps_reconnects_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the source did not try to reopen the device")
		}
		time.Sleep(5 * time.Millisecond)
	}
	stop()
}
