// Command replay re-reads a slice of the telemetry topic (a time range or
// offset ranges, optionally one vehicle and some signals) into JSON lines,
// another topic or a Parquet backfill, without touching any consumer group;
// `replay reset-group` moves a stopped group's offsets. See package replay.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/fleetpipe/fleetpipe/consumers/replay/replay"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == replay.ResetGroupCommand {
		replay.ResetGroupMain(os.Args[2:])
		return
	}
	var cfg replay.Config
	cli.Main(replay.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		r, err := replay.New(cfg, replay.Deps{Logger: logger, Stdout: os.Stdout, Stderr: os.Stderr, Args: os.Args[1:]})
		if err != nil {
			return err
		}
		return r.Run(ctx)
	})
}
