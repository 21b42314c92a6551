// Command bridge relays telemetry batches from an MQTT shared subscription to
// Kafka, acknowledging MQTT only after Kafka holds each batch.
package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetpipe/fleetpipe/bridge/relay"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
)

func main() {
	var cfg relay.Config
	cli.Main(relay.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mqttconn.UseLogger(logger)
		relay.TuneProcess(cfg, logger)
		b, err := relay.New(cfg, relay.Deps{Logger: logger, Registerer: reg, Gatherer: reg})
		if err != nil {
			return err
		}
		return b.Run(ctx)
	})
}
