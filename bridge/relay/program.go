package relay

import "github.com/fleetpipe/fleetpipe/internal/cli"

// Program is the bridge binary's name, environment prefix and help summary.
var Program = cli.Program{
	Name:      "bridge",
	EnvPrefix: "FLEET_BRIDGE",
	Summary: "Relays vehicles' telemetry batches from MQTT (shared subscription on fleet/v1/+/telemetry)\n" +
		"to Kafka, keyed by vehicle ID; acknowledges MQTT and the vehicle only after Kafka holds\n" +
		"each batch, and sends invalid payloads to the dead-letter topic.",
}
