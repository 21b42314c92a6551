package relay

import (
	"log/slog"
	"runtime/debug"

	"github.com/fleetpipe/fleetpipe/internal/gotune"
)

// gcPercent is the bridge's GOGC: its live heap is small (a few MB at tens
// of thousands of messages a second) and its allocation rate high, so the
// default of 100 collects some twenty times a second; 400 cuts the
// collector's share of the CPU by three quarters for a heap of tens of MB,
// and MemoryLimit caps it.
const gcPercent = 400

// MemoryLimit is the Go runtime's soft memory limit for the bridge: room
// for twice the payloads in flight and the checks' working memory. The
// collector runs as often as it must to stay under it, whatever GOGC.
func (c Config) MemoryLimit() int64 { return 2*int64(c.MaxInflightBytes) + 128<<20 }

// TuneProcess sets the Go runtime of a process that runs the bridge:
// GOMAXPROCS from MaxProcs, GOGC and the soft memory limit, each unless
// the environment variable of the same name is set, which wins. It
// returns the GOMAXPROCS in effect.
//
// Why one core by default: a batch crosses several goroutines on its way
// (the MQTT reader, the Kafka producer's, its promise callbacks, the MQTT
// writer), each hand-off a few microseconds of work. With more than one
// core the runtime wakes an idle thread for nearly every hand-off, and on
// the machines we measured the wake-ups and their context switches cost
// more CPU than the work: one core cut the bridge's CPU per message by a
// fifth at the same load. A replica on one core relays far more than a
// broker sends one subscriber; more replicas (the shared subscription
// spreads the load) scale further than more cores in one.
func TuneProcess(cfg Config, logger *slog.Logger) int {
	gotune.SetGCPercent(gcPercent)
	gotune.SetMemoryLimit(cfg.MemoryLimit())
	procs := gotune.SetMaxProcs(cfg.MaxProcs)
	logger.Debug("Go runtime tuned", "procs", procs, "memory_limit", debug.SetMemoryLimit(-1))
	return procs
}
