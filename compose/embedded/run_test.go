//go:build linux

package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// openPTY opens a pseudo-terminal: the master to type into and read from,
// and the terminal the program runs on.
func openPTY(t *testing.T) (master, term *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(); s.Close() })
	return m, s
}

// lockedBuffer collects what the terminal shows.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestMakeRunStopsCleanly runs `make run` on a terminal as a user would,
// waits for the dashboard to be ready, then types Ctrl-C: after the clean
// shutdown make exits 0 (the terminal sends SIGINT to its foreground
// process group, which make run hands to the stack).
func TestMakeRunStopsCleanly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the whole stack")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	http0 := testenv.FreeAddr(t)
	kafka := testenv.FreeAddr(t)
	_, kafkaPort, _ := net.SplitHostPort(kafka)
	args := strings.Join([]string{
		"--data-dir", filepath.Join(t.TempDir(), "data"), "--vehicles", "3",
		"--http-addr", http0, "--mqtt-addr", testenv.FreeAddr(t), "--kafka-port", kafkaPort, "--s3-addr", testenv.FreeAddr(t),
		"--agent-admin-addr", testenv.FreeAddr(t), "--bridge-admin-addr", testenv.FreeAddr(t), "--sink-admin-addr", testenv.FreeAddr(t),
	}, " ")
	cmd := exec.Command("make", "--no-print-directory", "run", "ARGS="+args)
	cmd.Dir = testenv.RepoRoot()
	var env []string
	for _, kv := range os.Environ() { // not the jobserver of a make running this test
		if !strings.HasPrefix(kv, "MAKEFLAGS=") && !strings.HasPrefix(kv, "MAKELEVEL=") && !strings.HasPrefix(kv, "MFLAGS=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	master, term := openPTY(t)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = term, term, term
	// A session of its own with the terminal as its controlling terminal,
	// as a login shell would give it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	term.Close()
	out := &lockedBuffer{}
	go func() { _, _ = io.Copy(out, master) }()
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() { done <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			killSession(cmd.Process.Pid)
			<-exited
		}
	})

	deadline := time.Now().Add(3 * time.Minute) // the first build takes a while
	for {
		resp, err := http.Get("http://" + http0 + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case err := <-done:
			t.Fatalf("make run ended early (%v):\n%s", err, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("live-location not ready within 3 minutes:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := master.Write([]byte{0x03}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("make run after Ctrl-C: %v\n%s", err, tail(out.String(), 30))
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("make run still running 90s after Ctrl-C:\n%s", tail(out.String(), 30))
	}
	t.Logf("terminal:\n%s", tail(out.String(), 8))
	if !strings.Contains(out.String(), `msg=stopped component=live-location err=<nil>`) {
		t.Fatalf("no clean stop of live-location logged:\n%s", tail(out.String(), 30))
	}
}

// killSession kills every process of the session sid: make's group and
// the stack's, which took a group of its own.
func killSession(sid int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp session ...
		rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
		fields := strings.Fields(rest)
		if len(fields) > 3 && fields[3] == strconv.Itoa(sid) {
			pid, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Dir(f), "/proc/"), "/"))
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprint(strings.Join(lines, "\n"))
}
