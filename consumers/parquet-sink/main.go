// Command parquet-sink writes the telemetry topic to Parquet files on S3,
// every reading exactly once.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

func main() {
	var cfg sink.Config
	cli.Main(sink.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		s, err := sink.New(ctx, cfg, sink.Deps{Logger: logger, Registerer: reg, Gatherer: reg, OwnProcess: true})
		if err != nil {
			return err
		}
		return s.Run(ctx)
	})
}
