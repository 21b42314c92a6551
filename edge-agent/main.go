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
	"runtime"
	"runtime/debug"

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
		a, err := agent.New(cfg, agent.Deps{Logger: logger, Registerer: reg, Gatherer: reg})
		if err != nil {
			return err
		}
		if cfg.CheckConfig {
			fmt.Println("edge-agent: configuration OK")
			return nil
		}
		if err := agent.ApplyTimerSlack(cfg.TimerSlack, logger); err != nil {
			logger.Warn("timer slack not applied", "err", err)
		}
		if limit := cfg.MemoryLimit(); limit > 0 && os.Getenv("GOMEMLIMIT") == "" {
			debug.SetMemoryLimit(limit)
		}
		procs := cfg.Procs()
		if os.Getenv("GOMAXPROCS") == "" {
			runtime.GOMAXPROCS(procs)
		} else {
			procs = runtime.GOMAXPROCS(0)
		}
		if err := agent.ApplyCPUs(cfg.CPUs, procs, logger); err != nil {
			logger.Warn("CPUs not pinned", "err", err)
		}
		return a.Run(ctx)
	})
}
