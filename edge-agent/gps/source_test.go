package gps

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Path = "/dev/ttyUSB0"
	if err := good.Validate(); err != nil {
		t.Fatalf("good config: %v", err)
	}
	gpsd := DefaultConfig()
	gpsd.Kind = KindGPSD
	if err := gpsd.Validate(); err != nil {
		t.Fatalf("default gpsd config: %v", err)
	}
	if gpsd.GPSDAddr != "127.0.0.1:2947" {
		t.Fatalf("default gpsd address %q", gpsd.GPSDAddr)
	}
	for _, c := range []struct {
		field string
		edit  func(*Config)
	}{
		{"gps-kind", func(c *Config) { c.Kind = "serial" }},
		{"gps-path", func(c *Config) { c.Path = "" }},
		{"gps-gpsd-addr", func(c *Config) { c.Kind, c.GPSDAddr = KindGPSD, "localhost" }},
		{"gps-gpsd-addr", func(c *Config) { c.Kind, c.GPSDAddr = KindGPSD, "localhost:0" }},
		{"gps-baud", func(c *Config) { c.Baud = 9601 }},
		{"gps-pace", func(c *Config) { c.Pace = -1 }},
		{"gps-uere", func(c *Config) { c.UERE = 1e6 }},
		{"gps-reconnect-min", func(c *Config) { c.ReconnectMin = 0 }},
		{"gps-reconnect-max", func(c *Config) { c.ReconnectMax = time.Millisecond }},
	} {
		cfg := good
		c.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), "--"+c.field+":") {
			t.Errorf("%s: error %v, want one naming --%s", c.field, err, c.field)
		}
		if _, err := New(cfg, Deps{}); err == nil {
			t.Errorf("%s: New accepted a bad config", c.field)
		}
	}
}

func TestMissingFile(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(t.TempDir(), "absent.nmea")
	src, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(context.Background(), emitFixes(func(wire.Fix) {})); err == nil {
		t.Fatal("Run on a missing file returned nil")
	}
}

// Two sources in one process share the metrics instead of failing.
func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(fixtureDir(), "edge_cases.nmea")
	for range 2 {
		src, err := New(cfg, Deps{Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		if err := src.Run(context.Background(), emitFixes(func(wire.Fix) {})); err != nil {
			t.Fatal(err)
		}
	}
	if got := metric(t, reg, "fleet_agent_gps_fixes_total"); got != 14 {
		t.Fatalf("fixes = %v, want 2 × 7", got)
	}
}

// TestPacedReplay: with Pace the file source spaces fixes by their time
// stamps divided by Pace, and does not wait for backward jumps or beyond
// MaxPaceWait for gaps. The edge-case fixture's fixes are 1, 1, 3, (~9
// months: capped to 5), 1 and 0.5 s apart: 11.5 s of waiting, 0.575 s at
// Pace 20. Only the lower bound is asserted (the machine may be slow).
func TestPacedReplay(t *testing.T) {
	start := time.Now()
	fixes, _, _ := runFile(t, filepath.Join(fixtureDir(), "edge_cases.nmea"), func(c *Config) { c.Pace = 20 })
	if elapsed := time.Since(start); elapsed < 550*time.Millisecond {
		t.Fatalf("paced replay took %v, want at least 575ms", elapsed)
	}
	if len(fixes) != 7 {
		t.Fatalf("%d fixes, want 7", len(fixes))
	}
}

// TestPacedReplayCancel: cancelling a slow replay returns nil promptly,
// having emitted only what was due.
func TestPacedReplayCancel(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Path, cfg.Pace = filepath.Join(fixtureDir(), "edge_cases.nmea"), 0.001
	src, err := New(cfg, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan wire.Fix, 10)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, emitFixes(func(f wire.Fix) { got <- f })) }()
	first := nextFix(t, got)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if first.Time != utc(t, "2024-03-15T12:00:00Z") || len(got) != 0 {
		t.Fatalf("first fix %+v, then %d more", first, len(got))
	}
}

// runDevice starts an NMEA source on a device path.
func runDevice(t *testing.T, path string, baud int) (<-chan wire.Fix, *prometheus.Registry, func()) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Path, cfg.Baud = path, baud
	cfg.ReconnectMin, cfg.ReconnectMax = 5*time.Millisecond, 20*time.Millisecond
	reg := prometheus.NewRegistry()
	src, err := New(cfg, Deps{Registerer: reg, Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan wire.Fix, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, emitFixes(func(f wire.Fix) { ch <- f })) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after cancel")
		}
	}
	t.Cleanup(stop)
	return ch, reg, stop
}

// fixtureLines are the edge-case fixture's lines, for writing to devices.
func fixtureLines(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(fixtureDir(), "edge_cases.nmea"))
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestNamedPipe: writers come and go on a named pipe (as gpsfake-style
// tools do); the source keeps reading across them and gets every fix.
func TestNamedPipe(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "gps.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	fixes, reg, stop := runDevice(t, fifo, 0)
	for round := range 2 {
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0) // blocks until the source has it open
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteString(fixtureLines(t)); err != nil {
			t.Fatal(err)
		}
		w.Close()
		for i := range 7 {
			f := nextFix(t, fixes)
			checkFixInvariants(t, f)
			if i == 0 && f.Time != utc(t, "2024-03-15T12:00:00Z") {
				t.Fatalf("round %d: first fix %+v", round, f)
			}
		}
	}
	stop()
	if got := metric(t, reg, "fleet_agent_gps_reconnects_total"); got != 0 {
		t.Fatalf("reconnects = %v, want 0: a writer leaving is not an end of input", got)
	}
	if got := metric(t, reg, "fleet_agent_gps_fixes_total"); got != 14 {
		t.Fatalf("fixes = %v, want 14", got)
	}
}

// tWriter sends a source's logs to the test log.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// emitFixes adapts a test's callback to source.Emit: it gets each fix.
func emitFixes(f func(wire.Fix)) source.Emit {
	return func(it source.Items) {
		for _, fix := range it.Fixes {
			f(fix)
		}
	}
}
