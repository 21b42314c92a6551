// Command embedded runs the whole fleet telemetry pipeline in one process,
// with nothing to install: `make run`.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/fleetpipe/fleetpipe/compose/embedded/stack"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
)

func main() {
	var cfg stack.Config
	cli.Main(cli.Program{
		Name:      "embedded",
		EnvPrefix: "FLEET_STACK",
		Summary:   "Runs the whole pipeline in one process: an in-process MQTT broker, Kafka-protocol cluster\nand S3 endpoint, a simulated fleet, the bridge, the Parquet sink and live-location with its\ndashboard. Parquet files land as plain files under --data-dir.",
	}, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		mqttconn.UseLogger(logger)
		if cfg.Foreground {
			defer takeForeground()()
		}
		return stack.Run(ctx, cfg, logger, os.Stdout)
	})
}
