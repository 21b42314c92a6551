package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/capture"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// captureRules are the capture rules in force, and the collectors to hand
// a reload to.
type captureRules struct {
	mu       sync.Mutex
	cfg      capture.Config
	vehicles []chan capture.Config // one per running collector, holding at most the latest reload
}

// register gives a collector the rules in force and the channel its
// reloads come on.
func (r *captureRules) register() (capture.Config, <-chan capture.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := make(chan capture.Config, 1)
	r.vehicles = append(r.vehicles, ch)
	return r.cfg, ch
}

// loadCaptureRules reads --capture-rules and compiles it for the
// vehicles' signals, so that a bad rule fails here: at start-up, or on a
// reload that then changes nothing. The error names the flag, the rule
// and the field.
func (a *Agent) loadCaptureRules() (capture.Config, error) {
	cfg, err := capture.LoadConfig(a.cfg.CaptureRules)
	if err != nil {
		return capture.Config{}, fmt.Errorf("--capture-rules: %w", err)
	}
	nop := func(*capture.Batch) (uint64, error) { return 0, nil }
	if _, err := capture.New(cfg, a.signals, capture.Options{}, capture.Deps{Spool: nop}); err != nil {
		return capture.Config{}, fmt.Errorf("--capture-rules %s: %w", a.cfg.CaptureRules, err)
	}
	return cfg, nil
}

// ReloadCapture reads --capture-rules again and, when every rule compiles,
// puts them in force on every vehicle: rules that did not change keep
// their buffers and open windows, the open windows of the others close.
// On an error the rules in force stay and the error says why. SIGHUP calls
// it; it is safe to call from any goroutine.
func (a *Agent) ReloadCapture() error {
	if a.capture == nil {
		return errors.New("no --capture-rules to reload")
	}
	cfg, err := a.loadCaptureRules()
	a.captureM.Reloaded(err == nil)
	if err != nil {
		return err
	}
	a.capture.mu.Lock()
	defer a.capture.mu.Unlock()
	a.capture.cfg = cfg
	for _, ch := range a.capture.vehicles {
		select {
		case <-ch: // a reload not yet taken: this one replaces it
		default:
		}
		ch <- cfg
	}
	return nil
}

// reloadOnHangup reloads the capture rules on every SIGHUP until stop is
// called, logging the outcome (without --capture-rules a SIGHUP only says
// so: it does not end the agent).
func (a *Agent) reloadOnHangup() (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-hup:
				if a.capture == nil {
					a.logger.Info("SIGHUP: no --capture-rules to reload")
					continue
				}
				if err := a.ReloadCapture(); err != nil {
					a.logger.Error("capture rules not reloaded; the rules in force stay", "err", err)
					continue
				}
				a.capture.mu.Lock()
				n := len(a.capture.cfg.Rules)
				a.capture.mu.Unlock()
				a.logger.Info("capture rules reloaded", "file", a.cfg.CaptureRules, "rules", n)
			}
		}
	})
	return func() { signal.Stop(hup); close(done); wg.Wait() }
}

// newCaptureEngine is the collector's capture engine for the rules in
// force, or nil without --capture-rules.
func (c *collector) newCaptureEngine() error {
	if c.a.capture == nil {
		return nil
	}
	cfg, reloads := c.a.capture.register()
	e, err := capture.New(cfg, c.a.signals,
		capture.Options{Batch: c.a.batcherConfig(), Live: c.live},
		capture.Deps{Logger: c.a.logger.With("vehicle", c.v.id), Metrics: c.a.captureM, Spool: c.spoolCapture})
	if err != nil {
		return fmt.Errorf("--capture-rules: %w", err)
	}
	c.capture, c.reloads = e, reloads
	return nil
}

// spoolCapture spools one part of a capture window: high-priority rules'
// parts in the spool's capture class (sent before any backlog, dropped
// last), normal ones with the bulk signals.
func (c *collector) spoolCapture(b *capture.Batch) (uint64, error) {
	class := spool.Capture
	if b.Priority == capture.Normal {
		class = spool.Bulk
	}
	return c.spool(b.Readings, b.Fixes, class, &b.Capture)
}

// emptyBase is the base time of a batch without readings (a window's
// final marker): its trigger time, or now.
func emptyBase(cp *wire.Capture) int64 {
	if cp != nil && cp.TriggerTime != 0 {
		return cp.TriggerTime
	}
	return time.Now().UnixNano()
}
