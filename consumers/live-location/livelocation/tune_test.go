package livelocation

import (
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

// TestTuneProcess: the binary's GOGC and memory limit come from the
// configuration, the cgroup's limit when none is given, and the
// environment variables win. Not parallel: the settings are the process's.
func TestTuneProcess(t *testing.T) {
	gogc, limit := debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetGCPercent(gogc); debug.SetMemoryLimit(limit) })
	reset := func() { debug.SetGCPercent(100); debug.SetMemoryLimit(limit) }
	current := func() (int, int64) {
		g := debug.SetGCPercent(-1)
		debug.SetGCPercent(g)
		return g, debug.SetMemoryLimit(-1)
	}
	log := slog.New(slog.DiscardHandler)
	t.Setenv("GOGC", "")
	t.Setenv("GOMEMLIMIT", "")
	os.Unsetenv("GOGC")
	os.Unsetenv("GOMEMLIMIT")

	reset()
	cfg := DefaultConfig()
	cfg.MemoryLimit = 512 << 20
	TuneProcess(cfg, log)
	if g, l := current(); g != DefaultGCPercent || l != 512<<20 {
		t.Errorf("defaults with a limit: GOGC %d, limit %d; want %d and %d", g, l, DefaultGCPercent, 512<<20)
	}

	reset()
	cfg = DefaultConfig()
	cfg.GCPercent, cfg.MemoryLimit = -1, -1
	TuneProcess(cfg, log)
	if g, l := current(); g != 100 || l != limit {
		t.Errorf("-1 and -1: GOGC %d, limit %d; want the runtime's 100 and %d untouched", g, l, limit)
	}

	reset()
	t.Setenv("GOGC", "150")
	t.Setenv("GOMEMLIMIT", "1GiB")
	cfg = DefaultConfig()
	cfg.MemoryLimit = 512 << 20
	TuneProcess(cfg, log)
	if g, l := current(); g != 100 || l != limit {
		t.Errorf("with GOGC and GOMEMLIMIT set: GOGC %d, limit %d; want both left to the environment", g, l)
	}
}

func TestCgroupMemoryLimit(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		content string
		want    int64
	}{{"max\n", 0}, {"2147483648\n", 2 << 30}, {"", 0}, {"garbage", 0}} {
		p := filepath.Join(dir, "memory.max")
		if err := os.WriteFile(p, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		if got := cgroupMemoryLimit(p); got != c.want {
			t.Errorf("memory.max %q: %d, want %d", c.content, got, c.want)
		}
	}
	if got := cgroupMemoryLimit(filepath.Join(dir, "absent")); got != 0 {
		t.Errorf("no file: %d, want 0", got)
	}
}
