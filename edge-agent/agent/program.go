package agent

import "github.com/fleetpipe/fleetpipe/internal/cli"

// Program is the edge-agent binary's name, environment prefix and help summary.
var Program = cli.Program{
	Name:      "edge-agent",
	EnvPrefix: "FLEET_AGENT",
	Summary: "Collects vehicle readings, batches them compactly and publishes them over MQTT QoS 1,\n" +
		"keeping each batch until the cloud acknowledges that Kafka holds it.",
}
