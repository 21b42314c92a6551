package livelocation

import (
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/fleetpipe/fleetpipe/internal/gotune"
)

// TuneProcess sets the Go collector of a process that runs the service:
// GOGC from Config.GCPercent and the soft memory limit from
// Config.MemoryLimit, each unless the environment variable of the same
// name is set, which wins. The embedded stack of `make run` does not call
// it: the runtime there is shared with the other services.
//
// Why GOGC 400: the store is a large, long-lived heap of pointers (a
// million vehicles are about 250 MB), and marking it takes a few hundred
// milliseconds of CPU. While the collector marks, it takes up to all the
// cores it finds idle, and HTTP queries queue behind it: measured with
// liveload (1M vehicles, 5,000 nearby queries/s over loopback while
// absorbing 100,000 updates/s, 2 cores), p99 was 71–490 ms at the default
// GOGC of 100 and 30–34 ms at 400, which collects a quarter as often. The
// price is memory: the heap peaks at about (1 + GOGC/100) times the live
// fleet's. The memory limit caps it: the collector runs as often as it must
// to stay under the limit, whatever GOGC says.
func TuneProcess(cfg Config, logger *slog.Logger) {
	cfg = cfg.withDefaults()
	gotune.SetGCPercent(cfg.GCPercent)
	limit := cfg.MemoryLimit
	if limit == 0 {
		limit = cgroupMemoryLimit("/sys/fs/cgroup/memory.max") / 10 * 8
	}
	gotune.SetMemoryLimit(limit)
	logger.Debug("Go runtime tuned", "gogc", gotune.GCPercent(), "memory_limit", debug.SetMemoryLimit(-1))
}

// cgroupMemoryLimit reads a cgroup v2 memory.max file: the limit in bytes,
// or 0 when there is none ("max", no file, unreadable).
func cgroupMemoryLimit(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil || n <= 0 {
		return 0
	}
	return n
}
