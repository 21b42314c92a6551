package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// slackChild is set when this test binary runs as the child of
// TestTimerSlackReachesEveryThread ("slack") or TestCPUsPinEveryThread
// ("cpus").
const slackChild = "FLEET_TEST_PROCESS_CHILD"

// slackChildMain applies the slack (re-executing this binary) or pins the
// CPUs, and prints what threads the runtime starts afterwards have.
func slackChildMain() {
	switch os.Getenv(slackChild) {
	case "cpus":
		cpusChildMain()
		return
	case "hup":
		hupChildMain()
		return
	}
	if err := ApplyTimerSlack(20*time.Millisecond, slog.New(slog.DiscardHandler)); err != nil {
		childFail(err)
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
	childReport("slack", out)
}

// childFail ends a child process with err.
func childFail(err error) {
	os.Stdout.WriteString("error: " + err.Error() + "\n")
	os.Exit(1)
}

// childReport ends a child process with its one line: prefix, then fields.
func childReport(prefix string, fields []string) {
	os.Stdout.WriteString(prefix + " " + strings.Join(fields, " ") + "\n")
	os.Exit(0)
}

// runChild runs this test binary as a child of the given kind and returns
// the fields of the line it reports after prefix.
func runChild(t *testing.T, kind, prefix string) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), slackChild+"="+kind)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	line := strings.TrimSpace(string(out))
	rest, ok := strings.CutPrefix(line, prefix+" ")
	if !ok {
		t.Fatalf("child printed %q", line)
	}
	return strings.Fields(rest)
}

// TestTimerSlackReachesEveryThread: after ApplyTimerSlack, threads the Go
// runtime starts have the slack, the monitor thread included (it starts
// before main, hence the re-exec).
func TestTimerSlackReachesEveryThread(t *testing.T) {
	fields := runChild(t, "slack", "slack")
	for _, s := range fields {
		if s != "20ms" {
			t.Errorf("a thread's timer slack is %s, want 20ms (all: %v)", s, fields)
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

// cpusChildMain pins the process with --cpus auto, starts threads, and
// prints every thread's allowed CPUs.
func cpusChildMain() {
	if err := ApplyCPUs("auto", 1, slog.New(slog.DiscardHandler)); err != nil {
		childFail(err)
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			time.Sleep(10 * time.Millisecond) // hold the thread while others start
		})
	}
	wg.Wait()
	tasks, _ := os.ReadDir("/proc/self/task")
	var out []string
	for _, task := range tasks {
		data, err := os.ReadFile("/proc/self/task/" + task.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				out = append(out, strings.TrimSpace(v))
			}
		}
	}
	childReport("cpus", out)
}

// TestCPUsPinEveryThread: --cpus auto keeps every thread of a one-core
// agent on one CPU, the last it may use, threads started later included.
func TestCPUsPinEveryThread(t *testing.T) {
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		t.Fatal(err)
	}
	if allowed.Count() < 2 {
		t.Skip("the test process may use one CPU only: nothing to pin")
	}
	last := 0
	for c := range 1024 {
		if allowed.IsSet(c) {
			last = c
		}
	}
	fields := runChild(t, "cpus", "cpus")
	if len(fields) < 2 {
		t.Fatalf("the child reported %d threads: %v", len(fields), fields)
	}
	for _, f := range fields {
		if f != strconv.Itoa(last) {
			t.Errorf("a thread may run on CPUs %s, want only %d (all: %v)", f, last, fields)
		}
	}
}
