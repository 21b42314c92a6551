// Command live-location keeps every vehicle's latest position from the
// telemetry topic and serves nearby queries, a live event stream and the
// fleet dashboard. See package livelocation.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/livelocation"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

func main() {
	var cfg livelocation.Config
	cli.Main(livelocation.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		livelocation.TuneProcess(cfg, logger)
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		svc, err := livelocation.New(cfg, livelocation.Deps{Logger: logger, Registerer: reg, Gatherer: reg})
		if err != nil {
			return err
		}
		return svc.Run(ctx)
	})
}
