package agent

import "github.com/fleetpipe/fleetpipe/internal/gotune"

// tuneProcess applies the runtime settings of a process the agent owns
// (Deps.OwnProcess): the timer slack (which may re-execute the binary, so
// it comes first), the Go runtime's soft memory limit and GOMAXPROCS
// (unless GOMEMLIMIT or GOMAXPROCS is set in the environment, which wins)
// and the CPUs the threads run on. None of them is fatal: the agent runs
// untuned, with a warning.
func (a *Agent) tuneProcess() {
	if err := ApplyTimerSlack(a.cfg.TimerSlack, a.logger); err != nil {
		a.logger.Warn("timer slack not applied", "err", err)
	}
	gotune.SetMemoryLimit(a.cfg.MemoryLimit())
	procs := gotune.SetMaxProcs(a.cfg.Procs())
	if err := ApplyCPUs(a.cfg.CPUs, procs, a.logger); err != nil {
		a.logger.Warn("CPUs not pinned", "err", err)
	}
}
