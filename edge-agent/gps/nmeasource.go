package gps

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// NMEASource reads NMEA 0183 from Config.Path: a log file, or a serial
// device (any character device or named pipe), decoding it with a Decoder.
//
// A file is read once to its end (paced by Config.Pace, waits capped at
// MaxPaceWait) and Run returns nil. A device is read until ctx is cancelled;
// when it fails or goes away (a USB receiver unplugged) it is reopened with
// jittered backoff, counted in fleet_agent_gps_reconnects_total. With
// Config.Baud set, the device is put in raw mode at that speed (Linux).
type NMEASource struct {
	cfg Config
	m   *Metrics
	log *slog.Logger
	dec *Decoder // of the current Run, for Stats
}

// Stats returns the decoder counts of the current or last Run. It must not
// be called concurrently with Run.
func (s *NMEASource) Stats() Stats {
	if s.dec == nil {
		return NewDecoder(DecoderOptions{}).Stats()
	}
	return s.dec.Stats()
}

// Run reads fixes until ctx is cancelled or, for a file, its end, emitting
// each as one Items.
func (s *NMEASource) Run(ctx context.Context, out source.Emit) error {
	emit := fixEmitter(out)
	s.dec = NewDecoder(DecoderOptions{UERE: s.cfg.uere(), Metrics: s.m})
	st, err := os.Stat(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("gps: %w", err)
	}
	if st.Mode()&(os.ModeCharDevice|os.ModeNamedPipe) == 0 {
		return s.runFile(ctx, emit)
	}
	return s.runDevice(ctx, emit)
}

func (s *NMEASource) runFile(ctx context.Context, emit func(wire.Fix)) error {
	f, err := os.Open(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("gps: %w", err)
	}
	defer f.Close()
	p := pacer{pace: s.cfg.Pace}
	err = s.read(ctx, f, emit, &p)
	if ctx.Err() != nil {
		return nil
	}
	if errors.Is(err, io.EOF) {
		return s.flush(ctx, emit, &p)
	}
	return fmt.Errorf("gps: reading %s: %w", s.cfg.Path, err)
}

func (s *NMEASource) runDevice(ctx context.Context, emit func(wire.Fix)) error {
	bo := backoff{min: s.cfg.ReconnectMin, max: s.cfg.ReconnectMax}
	p := pacer{} // a device paces itself
	for first := true; ; first = false {
		if !first {
			s.m.reconnect()
			if !sleep(ctx, bo.next()) {
				return nil
			}
		}
		f, err := openDevice(s.cfg.Path, s.cfg.Baud)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errBaudUnsupported) {
				return err
			}
			s.log.Warn("gps device open failed; retrying", "path", s.cfg.Path, "err", err)
			continue
		}
		s.log.Info("gps device open", "path", s.cfg.Path, "baud", s.cfg.Baud)
		opened := time.Now()
		stop := context.AfterFunc(ctx, func() { f.Close() }) // unblocks a read
		err = s.read(ctx, f, emit, &p)
		stop()
		f.Close()
		_ = s.flush(ctx, emit, &p)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(opened) > 10*s.cfg.ReconnectMax {
			bo.reset() // it worked for a good while: start over quickly
		}
		s.log.Warn("gps device read ended; reopening", "path", s.cfg.Path, "err", err)
	}
}

// read feeds lines to the decoder until the reader fails (io.EOF at the end
// of a file) or ctx is cancelled.
func (s *NMEASource) read(ctx context.Context, r io.Reader, emit func(wire.Fix), p *pacer) error {
	lr := newLineReader(r, MaxLineBytes)
	var fixes []wire.Fix
	collect := func(f wire.Fix) { fixes = append(fixes, f) }
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		line, err := lr.next()
		switch {
		case errors.Is(err, errLineTooLong):
			s.dec.malformed()
			continue
		case err != nil:
			return err
		}
		s.dec.Feed(line, collect)
		for _, f := range fixes {
			if !p.wait(ctx, f.Time) {
				return ctx.Err()
			}
			emit(f)
		}
		fixes = fixes[:0]
	}
}

func (s *NMEASource) flush(ctx context.Context, emit func(wire.Fix), p *pacer) error {
	var fixes []wire.Fix
	s.dec.Flush(func(f wire.Fix) { fixes = append(fixes, f) })
	for _, f := range fixes {
		if !p.wait(ctx, f.Time) {
			return nil
		}
		emit(f)
	}
	return nil
}

// pacer spaces fixes as far apart in wall time as their fix times are,
// divided by pace. Backward jumps are not waited for and gaps are capped at
// MaxPaceWait.
type pacer struct {
	pace float64
	last int64
	have bool
}

func (p *pacer) wait(ctx context.Context, t int64) bool {
	if p.pace <= 0 {
		return true
	}
	ok := true
	if p.have && t > p.last {
		d := min(time.Duration(t-p.last), MaxPaceWait)
		ok = sleep(ctx, time.Duration(float64(d)/p.pace))
	}
	p.last, p.have = t, true
	return ok
}
