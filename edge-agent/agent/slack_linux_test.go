package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slackChild is set when this test binary runs as the child of
// TestTimerSlackReachesEveryThread.
const slackChild = "FLEET_TEST_TIMER_SLACK_CHILD"

// slackChildMain applies the slack (re-executing this binary) and prints
// the slack of threads the runtime starts afterwards.
func slackChildMain() {
	if err := ApplyTimerSlack(20*time.Millisecond, slog.New(slog.DiscardHandler)); err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var out []string
	for range 4 {
		wg.Go(func() {
			runtime.LockOSThread() // a thread of its own, started by the runtime
			defer runtime.UnlockOSThread()
			s, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				out = append(out, "error")
				return
			}
			out = append(out, time.Duration(s).String())
		})
	}
	wg.Wait()
	os.Stdout.WriteString("slack " + strings.Join(out, " ") + "\n")
	os.Exit(0)
}

// TestTimerSlackReachesEveryThread: after ApplyTimerSlack, threads the Go
// runtime starts have the slack, the monitor thread included (it starts
// before main, hence the re-exec).
func TestTimerSlackReachesEveryThread(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), slackChild+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	line := strings.TrimSpace(string(out))
	if !strings.HasPrefix(line, "slack ") {
		t.Fatalf("child printed %q", line)
	}
	for _, s := range strings.Fields(strings.TrimPrefix(line, "slack ")) {
		if s != "20ms" {
			t.Errorf("a thread's timer slack is %s, want 20ms (all: %s)", s, line)
		}
	}
}

// TestTimerSlackZeroLeavesTheKernelsDefault: --timer-slack 0 changes
// nothing and does not re-execute.
func TestTimerSlackZeroLeavesTheKernelsDefault(t *testing.T) {
	before, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyTimerSlack(0, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	after, _ := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0)
	if after != before {
		t.Errorf("slack %d -> %d", before, after)
	}
}
