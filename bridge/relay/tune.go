package relay

import (
	"log/slog"
	"os"
	"runtime"
)

// TuneProcess sets the Go runtime of a process that runs the bridge:
// GOMAXPROCS from MaxProcs, unless the GOMAXPROCS environment variable is
// set, which wins. It returns the GOMAXPROCS in effect.
//
// Why one core by default: a batch crosses several goroutines on its way
// (the MQTT reader, the Kafka producer's, its promise callbacks, the MQTT
// writer), each hand-off a few microseconds of work. With more than one
// core the runtime wakes an idle thread for nearly every hand-off, and on
// the machines we measured the wake-ups and their context switches cost
// more CPU than the work: one core cut the bridge's CPU per message by a
// third at the same load. A replica on one core relays far more than a
// broker sends one subscriber; more replicas (the shared subscription
// spreads the load) scale further than more cores in one.
func TuneProcess(cfg Config, logger *slog.Logger) int {
	if os.Getenv("GOMAXPROCS") != "" || cfg.MaxProcs == 0 {
		return runtime.GOMAXPROCS(0)
	}
	runtime.GOMAXPROCS(cfg.MaxProcs)
	logger.Debug("GOMAXPROCS set", "procs", cfg.MaxProcs)
	return cfg.MaxProcs
}
