package sink

import "github.com/fleetpipe/fleetpipe/internal/cli"

// Program is the parquet-sink binary's name, environment prefix and help summary.
var Program = cli.Program{
	Name:      "parquet-sink",
	EnvPrefix: "FLEET_SINK",
	Summary: "Consumes fleet.telemetry.v1 and writes every reading, exactly once, to Parquet on S3:\n" +
		"{prefix}/readings/ and {prefix}/locations/, partitioned by date= and hour= (UTC).",
}
