package agent

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// ApplyCPUs keeps the process's threads on the CPUs spec names (see
// Config.CPUs); procs is how many cores the agent works on. Pinned to one
// CPU, the agent's few threads (the worker, the network poller, the
// runtime's monitor) wake up where the others just ran, instead of each
// waking an idle core: on the 2-core CI machine that is a quarter of the
// agent's CPU time at 1,000 readings/s. systemd's CPUAffinity= does the
// same for the whole service.
//
// Affinity belongs to each thread and threads inherit it, so ApplyCPUs
// sets it on every thread the process has (twice, for a thread started
// during the first pass by one not yet pinned); the runtime's later
// threads inherit it.
func ApplyCPUs(spec string, procs int, logger *slog.Logger) error {
	if spec == "none" {
		return nil
	}
	var allowed unix.CPUSet
	if err := unix.SchedGetaffinity(0, &allowed); err != nil {
		return fmt.Errorf("--cpus: %w", err)
	}
	var set unix.CPUSet
	switch spec {
	case "auto":
		if procs != 1 || allowed.Count() < 2 {
			return nil
		}
		last := -1
		for c := range 1024 {
			if allowed.IsSet(c) {
				last = c
			}
		}
		set.Set(last)
	default:
		cpus, err := parseCPUList(spec)
		if err != nil {
			return fmt.Errorf("--cpus: %w", err)
		}
		for _, c := range cpus {
			if !allowed.IsSet(c) {
				return fmt.Errorf("--cpus: CPU %d is not one the process may use", c)
			}
			set.Set(c)
		}
	}
	for range 2 {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("--cpus: %w", err)
		}
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil {
				return fmt.Errorf("--cpus: thread %d: %w", tid, err)
			}
		}
	}
	logger.Debug("pinned to CPUs", "cpus", spec, "count", set.Count())
	return nil
}
