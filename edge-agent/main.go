// Command edge-agent runs on a vehicle's Linux board: it collects readings
// (CAN with a DBC, GPS, or a simulated fleet), batches them compactly,
// spools them durably and publishes them over MQTT, freeing each batch only
// when the cloud acknowledges that Kafka holds it.
//
//	edge-agent [flags]                      run (see --help)
//	edge-agent --check-config [flags]       validate the configuration and exit
//	edge-agent decode --dbc F --candump F   print what the agent would collect from a log
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/fleetpipe/fleetpipe/edge-agent/agent"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "decode" {
		os.Exit(agent.DecodeMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	var cfg agent.Config
	cli.Main(agent.Program, &cfg, func(ctx context.Context, logger *slog.Logger) error {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		mqttconn.UseLogger(logger)
		a, err := agent.New(cfg, agent.Deps{Logger: logger, Registerer: reg, Gatherer: reg, OwnProcess: true})
		if err != nil || cfg.CheckConfig {
			if err == nil {
				fmt.Println("edge-agent: configuration OK")
			}
			return err
		}
		return a.Run(ctx)
	})
}
