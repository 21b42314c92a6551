package replay

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
)

// openParquet opens the Parquet backfill target: it checks that the
// prefix can be written and is not a live parquet-sink's, then (once the
// Parquet writer shared with parquet-sink exists) writes the records as
// parquet-sink's files: the same row schema, Hive layout and object names.
//
// It waits for that shared writer (internal/parquetout): a backfill must be
// written by the same schema and code as the live sink, not by a copy.
func openParquet(ctx context.Context, env TargetEnv) (Target, error) {
	s3, err := env.Config.parquetStore()
	if err != nil {
		return nil, err
	}
	store, err := objstore.New(ctx, s3, objstore.Deps{Logger: env.Logger})
	if err != nil {
		return nil, cli.FieldError("to-parquet", "%v", err)
	}
	if err := checkParquetPrefix(ctx, store, env.Config.AllowLivePrefix); err != nil {
		return nil, err
	}
	return nil, cli.FieldError("to-parquet", "not available yet: it waits for the Parquet writer shared with parquet-sink")
}

// sinkCheckpoints is where a live parquet-sink keeps its checkpoints,
// relative to its prefix.
const sinkCheckpoints = "_sink/checkpoints/"

// checkParquetPrefix fails, naming --to-parquet, when the store's prefix
// cannot be written (a test object is put and deleted), or when a live
// parquet-sink writes there (its checkpoints are there) and allowLive is
// false: a backfill's files would then mix with, and could replace, the
// live sink's.
func checkParquetPrefix(ctx context.Context, store *objstore.Store, allowLive bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	live, err := store.List(ctx, sinkCheckpoints)
	if err != nil {
		return cli.FieldError("to-parquet", "cannot list %s: %v", store.URI(""), err)
	}
	if len(live) > 0 && !allowLive {
		return cli.FieldError("to-parquet", "a live parquet-sink writes under %s (it keeps %s there): write the backfill under another prefix, or pass --allow-live-prefix",
			store.URI(""), live[0].Key)
	}
	probe := fmt.Sprintf("_replay/write-probe-%d", time.Now().UnixNano())
	if err := store.Put(ctx, probe, bytes.NewReader(nil), 0, "text/plain"); err != nil {
		return cli.FieldError("to-parquet", "cannot write under %s: %v", store.URI(""), err)
	}
	if err := store.Delete(ctx, probe); err != nil {
		return cli.FieldError("to-parquet", "cannot delete under %s (a resumed backfill replaces objects): %v", store.URI(""), err)
	}
	return nil
}
