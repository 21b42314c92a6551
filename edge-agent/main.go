// Command edge-agent runs on a vehicle's Linux board: it collects readings,
// batches them, and publishes them over MQTT, keeping each batch until the
// cloud acknowledges that Kafka holds it. Today its source is a simulator
// of a whole fleet.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetpipe/fleetpipe/edge-agent/agent"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
)

func main() {
	var cfg agent.Config
	cli.Main(agent.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mqttconn.UseLogger(logger)
		a, err := agent.New(cfg, agent.Deps{Logger: logger, Registerer: reg, Gatherer: reg})
		if err != nil {
			return err
		}
		return a.Run(ctx)
	})
}
