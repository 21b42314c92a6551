package gps

import (
	"os"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Spec is the GPS source kind, --source gps: NMEA 0183 from a file or a
// serial device, or gpsd, configured by the --gps-* flags.
func Spec() source.Spec {
	return source.Spec{Name: "gps", Summary: "NMEA from a file or serial device, or gpsd",
		NewConfig: func() source.Config { c := DefaultConfig(); return &c }}
}

// Input is a finite recording for an NMEA file (a regular file), and live
// for gpsd and devices (a character device, a pipe, or a path not there
// yet: a USB receiver not plugged in).
func (c *Config) Input() source.Input {
	if st, err := os.Stat(c.Path); c.Kind == KindNMEA && err == nil && st.Mode().IsRegular() {
		return source.Input{Clock: source.Recorded, Finite: true}
	}
	return source.Input{Clock: source.Live}
}

// Signals is none: a GPS source emits fixes only.
func (c *Config) Signals() ([]wire.SignalSpec, error) { return nil, nil }

// New builds the source the configuration describes (see New).
func (c *Config) New(deps source.Deps) (source.Source, error) { return New(*c, deps) }
