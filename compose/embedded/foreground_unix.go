//go:build unix

package main

import (
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/sys/unix"
)

// takeForeground moves the process into a process group of its own and
// makes that group the terminal's foreground group, so that Ctrl-C reaches
// this program alone: under `make run`, make itself would otherwise get the
// SIGINT too and die of it, whatever the program's clean exit. It does
// nothing without a controlling terminal, or when the process is not in the
// terminal's foreground group, or already leads its group (a shell with job
// control started it directly). The returned function hands the terminal
// back to the group it came from.
func takeForeground() (restore func()) {
	noop := func() {}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return noop
	}
	fd := int(tty.Fd())
	prev, err := unix.IoctlGetInt(fd, unix.TIOCGPGRP)
	if err != nil || prev != syscall.Getpgrp() || syscall.Getpgrp() == syscall.Getpid() {
		tty.Close()
		return noop
	}
	// A background group changing the foreground gets SIGTTOU; the change
	// is what is wanted here.
	signal.Ignore(syscall.SIGTTOU)
	if err := syscall.Setpgid(0, 0); err != nil {
		tty.Close()
		return noop
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, syscall.Getpid()); err != nil {
		_ = syscall.Setpgid(0, prev)
		tty.Close()
		return noop
	}
	return func() {
		_ = unix.IoctlSetPointerInt(fd, unix.TIOCSPGRP, prev)
		tty.Close()
	}
}
