package agent

import (
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// slackMarker is set in the environment of the re-executed agent, so that
// a kernel that does not keep the slack across exec cannot loop.
const slackMarker = "FLEET_AGENT_TIMER_SLACK_APPLIED"

// ApplyTimerSlack lets the kernel fire the process's timers up to d late
// (prctl PR_SET_TIMERSLACK; systemd's TimerSlackNSec= does the same), so
// that nearby wake-ups merge and the board sleeps longer: the agent has no
// deadline finer than a millisecond, but the Go runtime's monitor thread
// polls every 20 µs while the agent works, and each of those wake-ups
// costs a board, and much more a virtual machine, far more than the poll.
//
// The slack belongs to each thread and is inherited by the threads it
// starts, and the Go runtime starts its threads before main runs. So when
// the process's slack is below d, ApplyTimerSlack sets it on the current
// thread and executes the agent's binary again with the same arguments:
// exec keeps the slack, and every thread of the new runtime inherits it.
// It returns nil without doing anything when the slack is already at
// least d (a systemd unit with TimerSlackNSec=, or after the re-exec), and
// an error when it cannot re-execute (the agent then runs with the
// kernel's default slack).
func ApplyTimerSlack(d time.Duration, logger *slog.Logger) error {
	if d <= 0 {
		return nil
	}
	runtime.LockOSThread() // the slack set below is this thread's, and exec must run on it
	defer runtime.UnlockOSThread()
	cur, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		return fmt.Errorf("--timer-slack: %w", err)
	}
	if time.Duration(cur) >= d {
		return nil
	}
	if os.Getenv(slackMarker) != "" {
		logger.Warn("the timer slack did not survive exec; running with the kernel's", "slack", time.Duration(cur))
		return nil
	}
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(d), 0, 0, 0); err != nil {
		return fmt.Errorf("--timer-slack: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("--timer-slack: re-exec: %w", err)
	}
	err = syscall.Exec(exe, os.Args, append(os.Environ(), slackMarker+"=1"))
	return fmt.Errorf("--timer-slack: re-exec %s: %w", exe, err)
}
