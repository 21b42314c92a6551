package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
)

// DecodeMain is `edge-agent decode`: it prints, as JSON lines, exactly the
// readings the agent would collect from a candump log with a DBC and an
// optional collection config, so a DBC and a config can be checked on a
// laptop before they ship to cars. It returns the exit code.
func DecodeMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("edge-agent decode", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dbc := fs.String("dbc", "", "DBC file (required)")
	log := fs.String("candump", "", "candump -L log file (required)")
	cfg := fs.String("config", "", "YAML collection config (default: every decoded signal of every frame)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: edge-agent decode --dbc FILE --candump FILE [--config FILE]\n\n"+
			"Prints the readings the agent would collect from the log as JSON lines\n"+
			"(signal, value, raw, unit, ts from the log), and a summary on stderr.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	switch {
	case *dbc == "":
		fmt.Fprintln(stderr, "edge-agent decode: --dbc: must be set")
		return 2
	case *log == "":
		fmt.Fprintln(stderr, "edge-agent decode: --candump: must be set")
		return 2
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "edge-agent decode: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	st, err := can.DecodeLog(stdout, *dbc, *log, *cfg)
	if err != nil {
		fmt.Fprintf(stderr, "edge-agent decode: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "edge-agent decode: %+v\n", st)
	return 0
}
