package replay

import (
	"context"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// openParquet opens the Parquet backfill target.
//
// It waits for the Parquet writer that parquet-sink and replay share
// (internal/parquetout): a backfill must be written by the same schema and
// code as the live sink, not by a copy.
func openParquet(context.Context, TargetEnv) (Target, error) {
	return nil, cli.FieldError("to-parquet", "not available yet: it waits for the Parquet writer shared with parquet-sink")
}
