package can

import (
	"flag"
	"fmt"
	"os"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Spec is the CAN source kind, --source can: a DBC-decoded SocketCAN
// interface or candump log, configured by the --can-* flags.
func Spec() source.Spec {
	return source.Spec{Name: "can", Summary: "a DBC-decoded SocketCAN interface or candump log",
		NewConfig: func() source.Config { return &SourceConfig{} }}
}

// SourceConfig is the CAN source kind's flags: Config, with the collection
// config as a file.
type SourceConfig struct {
	Config
	// CollectFile is the YAML collection config (empty: keep every signal).
	CollectFile string

	dec *Decoder // loaded once by Signals or New
}

// RegisterFlags declares the --can-* flags.
func (c *SourceConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.DBC, "can-dbc", "", "DBC file decoding the CAN bus")
	fs.StringVar(&c.Interface, "can-interface", "", "live SocketCAN interface, e.g. can0")
	fs.StringVar(&c.Candump, "can-candump", "", "candump -L log to replay instead of a live interface")
	fs.BoolVar(&c.Realtime, "can-realtime", true, "replay --can-candump at the log's pace (false: as fast as possible); batches follow the log's clock either way")
	fs.StringVar(&c.CollectFile, "can-collect", "", "YAML collection config: which signals to keep and how (empty: every decoded signal of every frame)")
}

// Validate checks the flags and that the files they name exist.
func (c *SourceConfig) Validate() error {
	switch {
	case c.DBC == "":
		return cli.FieldError("can-dbc", "must be set with --source can")
	case (c.Interface == "") == (c.Candump == ""):
		return cli.FieldError("can-interface", "set exactly one of --can-interface and --can-candump")
	}
	for _, f := range []struct{ flag, path string }{{"can-dbc", c.DBC}, {"can-candump", c.Candump}, {"can-collect", c.CollectFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return cli.FieldError(f.flag, "%v", err)
		}
	}
	return nil
}

// Input is a live interface (the board's clock) or a finite recording.
func (c *SourceConfig) Input() source.Input {
	if c.Interface != "" {
		return source.Input{Clock: source.Live}
	}
	return source.Input{Clock: source.Recorded, Finite: true}
}

func (c *SourceConfig) decoder() (*Decoder, error) {
	if c.dec == nil {
		d, err := LoadDBC(c.DBC)
		if err != nil {
			return nil, fmt.Errorf("--can-dbc: %w", err)
		}
		c.dec = d
	}
	return c.dec, nil
}

// Signals is every signal of the DBC.
func (c *SourceConfig) Signals() ([]wire.SignalSpec, error) {
	d, err := c.decoder()
	if err != nil {
		return nil, err
	}
	return d.SignalSpecs(), nil
}

// New loads the DBC and the collection config and builds the source.
func (c *SourceConfig) New(deps source.Deps) (source.Source, error) {
	d, err := c.decoder()
	if err != nil {
		return nil, err
	}
	cfg := c.Config
	if cfg.Interface != "" {
		cfg.Realtime = false // pacing is for replays; the flag defaults to true
	}
	if c.CollectFile != "" {
		cc, err := LoadCollectConfig(c.CollectFile)
		if err != nil {
			return nil, fmt.Errorf("--can-collect: %w", err)
		}
		cfg.Collect = cc
	}
	src, err := newSource(cfg, d, deps)
	if err != nil {
		return nil, fmt.Errorf("--can-collect: %w", err)
	}
	return src, nil
}
