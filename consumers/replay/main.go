// Command replay re-reads a slice of the telemetry topic (a time range or an
// offset range, optionally one vehicle) and writes its readings as JSON
// lines on stdout, without touching any consumer group. See package replay.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/fleetpipe/fleetpipe/consumers/replay/replay"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

func main() {
	var cfg replay.Config
	cli.Main(replay.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		r, err := replay.New(cfg, replay.Deps{Logger: logger, Stdout: os.Stdout})
		if err != nil {
			return err
		}
		return r.Run(ctx)
	})
}
