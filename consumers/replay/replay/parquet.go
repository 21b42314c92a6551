package replay

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
)

// ParquetOptions shape a --to-parquet backfill's windows and files. They
// are parquet-sink's settings, with its flag names and defaults: a backfill
// of a range the sink wrote, with the sink's settings, gives the sink's
// rows (and, for a range that starts where the sink started, its object
// names).
type ParquetOptions struct {
	MaxFileRows      int           `json:"max_file_rows"`
	MaxFileBytes     int           `json:"max_file_bytes"`
	MaxFileAge       time.Duration `json:"max_file_age"`
	RowGroupRows     int           `json:"row_group_rows"`
	Compression      string        `json:"compression"`
	DedupEpochs      int           `json:"dedup_epochs"`
	DedupTTL         time.Duration `json:"dedup_ttl"`
	DedupMaxVehicles int           `json:"dedup_max_vehicles"`
}

func (o *ParquetOptions) registerFlags(fs *flag.FlagSet) {
	fs.IntVar(&o.MaxFileRows, "max-file-rows", 50_000_000, "--to-parquet: end a partition's window (its files) at this many rows (as parquet-sink's flag)")
	fs.IntVar(&o.MaxFileBytes, "max-file-bytes", 128<<20, "--to-parquet: end a partition's window when its files hold this many bytes of Parquet (as parquet-sink's flag)")
	fs.DurationVar(&o.MaxFileAge, "max-file-age", 5*time.Minute, "--to-parquet: end a partition's window before a record whose Kafka timestamp is this much later than the window's first record's (as parquet-sink's flag)")
	fs.IntVar(&o.RowGroupRows, "row-group-rows", 1_000_000, "--to-parquet: rows per Parquet row group")
	fs.StringVar(&o.Compression, "compression", "zstd", "--to-parquet: Parquet compression: zstd, snappy, gzip or none")
	fs.IntVar(&o.DedupEpochs, "dedup-epochs", parquetlog.DefaultDedup.MaxEpochs, "--to-parquet: spool epochs per vehicle the duplicate filter remembers")
	fs.DurationVar(&o.DedupTTL, "dedup-ttl", time.Duration(parquetlog.DefaultDedup.TTL)*time.Millisecond, "--to-parquet: the duplicate filter forgets a vehicle not heard from for this long (Kafka record time)")
	fs.IntVar(&o.DedupMaxVehicles, "dedup-max-vehicles", parquetlog.DefaultDedup.MaxVehicles, "--to-parquet: vehicles per partition the duplicate filter remembers at most")
}

// validate names the flag of the first bad option.
func (o ParquetOptions) validate() error {
	switch {
	case o.MaxFileRows < 1:
		return cli.FieldError("max-file-rows", "must be at least 1")
	case o.MaxFileBytes < 1024:
		return cli.FieldError("max-file-bytes", "%d is below 1024", o.MaxFileBytes)
	case o.MaxFileAge < 100*time.Millisecond:
		return cli.FieldError("max-file-age", "%v is below 100ms", o.MaxFileAge)
	case o.RowGroupRows < 1000:
		return cli.FieldError("row-group-rows", "%d is below 1000", o.RowGroupRows)
	case o.DedupEpochs < 1:
		return cli.FieldError("dedup-epochs", "must be at least 1")
	case o.DedupTTL < time.Minute:
		return cli.FieldError("dedup-ttl", "%v is below a minute: duplicates arrive minutes to days late", o.DedupTTL)
	case o.DedupMaxVehicles < 1:
		return cli.FieldError("dedup-max-vehicles", "must be at least 1")
	}
	if _, err := parquetout.Codec(o.Compression); err != nil {
		return cli.FieldError("compression", "%v", err)
	}
	return nil
}

// parquetBackfill writes the records as parquet-sink does, through the
// same code (internal/parquetlog, internal/parquetout): the same row
// schema, Hive layout, windows and object names. Each range of the plan is
// written by its own parquetlog.Writer, which keeps its checkpoint and
// duplicate filter under the target prefix in _replay/ (never in the
// sink's _sink/), and its last window is cut at the range's end.
//
// Exactly once: a window's files and the checkpoint that says they are
// written commit together (see parquetlog), and the checkpoint is the
// durable progress. The backfill of a range is identified by its topic,
// partition and first offset: a replay that opens a range whose backfill
// exists in the prefix continues it from its checkpoint (a range already
// written is skipped), so a resumed replay, or the same command run again,
// rewrites exactly the interrupted window and nothing twice. A range that
// overlaps another one's backfill in the prefix is refused: its rows would
// be written twice (see rangeManifest).
//
// --vehicle leaves the other vehicles' records out (their offsets are
// gaps in the windows) and --signals drops readings from each batch before
// its rows are made: such a backfill is not comparable with the live
// sink's files, only with itself.
type parquetBackfill struct {
	store   *objstore.Store
	plan    Plan
	cfg     Config
	logger  *slog.Logger
	metrics *parquetlog.Metrics
	writer  string // names this process in checkpoints

	// The range being written (w nil: none).
	i       int
	w       *parquetlog.Writer
	durable int64 // the range's output is committed up to here
	planned int64 // the largest end any replay of the range planned
}

// statePrefix is where the backfill keeps its state, relative to the
// target prefix.
const statePrefix = "_replay"

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
	host, _ := os.Hostname()
	writer := "replay@" + host
	if env.Config.Resume != "" {
		writer = "replay " + env.Config.Resume + "@" + host
	}
	return &parquetBackfill{
		store: store, plan: env.Plan, cfg: env.Config, logger: env.Logger, writer: writer,
		metrics: parquetlog.NewMetrics(env.Registerer, "fleet_replay_parquet"),
	}, nil
}

// writerConfig is the parquetlog configuration of range rg.
func (p *parquetBackfill) writerConfig(rg Range) parquetlog.Config {
	o := p.cfg.Parquet
	files := parquetout.DefaultOptions
	files.Compression, files.RowGroupRows = o.Compression, o.RowGroupRows
	return parquetlog.Config{
		Topic: p.plan.Topic, Partition: rg.Partition, Writer: p.writer,
		// The first record given opens the first window, as in the sink.
		Start:       -1,
		StatePrefix: rangeDir(p.plan.Topic, rg.Partition, rg.Start),
		Rules: parquetlog.Rules{
			MaxRows: int64(o.MaxFileRows), MaxBytes: int64(o.MaxFileBytes), MaxAge: o.MaxFileAge,
			// No quiet flush: a range's last window is cut at its end.
			QuietMargin: 0,
		},
		Dedup: parquetlog.DedupConfig{TTL: o.DedupTTL.Milliseconds(), MaxVehicles: o.DedupMaxVehicles,
			MaxEpochs: o.DedupEpochs, MaxRanges: parquetlog.DefaultDedup.MaxRanges},
		Files: files,
	}
}

// OpenRange claims range i's backfill in the prefix (creating it, or
// continuing an earlier replay's) and returns where to read from: its
// checkpoint's next offset when that is past from.
func (p *parquetBackfill) OpenRange(ctx context.Context, i int, from int64) (int64, error) {
	p.release()
	rg := p.plan.Ranges[i]
	m := p.manifest(rg)
	earlier, err := p.checkRanges(ctx, m)
	if err != nil {
		return 0, err
	}
	w, err := parquetlog.Claim(ctx, p.writerConfig(rg), parquetlog.Deps{Store: p.store, Logger: p.logger, Metrics: p.metrics})
	if err != nil {
		return 0, p.explain(rg, err)
	}
	next := w.Next()
	if next >= rg.End {
		w.Abandon(ctx)
		p.logger.Info("partition already written into this prefix by an earlier replay of the range; skipping it",
			"partition", rg.Partition, "start", rg.Start, "end", rg.End, "written_up_to", next)
		return rg.End, nil
	}
	if earlier != nil {
		m.End = max(m.End, earlier.End)
	}
	if earlier == nil || earlier.End < m.End || earlier.Replay != m.Replay {
		if err := p.putManifest(ctx, m); err != nil {
			w.Abandon(ctx)
			return 0, err
		}
	}
	if next > from {
		p.logger.Info("continuing the partition's backfill from its checkpoint", "partition", rg.Partition, "start", rg.Start, "from", next)
	}
	p.i, p.w, p.durable, p.planned = i, w, max(from, next), m.End
	return max(from, next), nil
}

// Write adds the record to the range's open window; the windows are
// committed (files, then checkpoint) where the rules say.
func (p *parquetBackfill) Write(ctx context.Context, rec Record) error {
	if p.w == nil || rec.Partition != p.plan.Ranges[p.i].Partition {
		return fmt.Errorf("replay: a record of partition %d reached the Parquet backfill outside its range", rec.Partition)
	}
	// A window's commit runs to its end even when the replay is being
	// stopped: only the S3 retries bound it.
	err := p.w.Add(context.WithoutCancel(ctx), parquetlog.Record{Offset: rec.Offset, Timestamp: rec.Timestamp, Batch: rec.Batch, Invalid: rec.Invalid})
	if err != nil {
		return p.explain(p.plan.Ranges[p.i], err)
	}
	p.durable = max(p.durable, p.w.Committed())
	return nil
}

// Commit reports the range's committed windows as durable. At the range's
// end it cuts the open window there first; elsewhere the open window is
// left open (cutting it would change the files), to be written again from
// the checkpoint by whoever continues.
func (p *parquetBackfill) Commit(ctx context.Context, pos Position, rangeEnd bool, save SaveFunc) error {
	if p.w == nil {
		return save(ctx, pos, nil)
	}
	rg := p.plan.Ranges[p.i]
	if !rangeEnd {
		return save(ctx, Position{Range: p.i, Offset: p.durable}, nil)
	}
	if err := p.w.Cut(context.WithoutCancel(ctx), "end"); err != nil {
		return p.explain(rg, err)
	}
	if first, _, open := p.w.Open(); open {
		// Cut leaves a window the claimed checkpoint pinned: an earlier
		// replay of this range, with a later end, was interrupted while
		// writing it.
		return cli.FieldError("to-parquet", "an earlier replay of %s partition %d from offset %d into %s was interrupted writing a window from offset %d that reaches past this range's end %d: finish that replay (its range ends at %d: --offsets %d:%d-%d)",
			p.plan.Topic, rg.Partition, rg.Start, p.store.URI(""), first, rg.End, p.planned, rg.Partition, rg.Start, p.planned)
	}
	p.release()
	return save(ctx, pos, nil)
}

// Close drops the open window (its uploads are aborted; nothing of it is
// visible): a resumed replay writes it again from the checkpoint.
func (p *parquetBackfill) Close() error {
	p.release()
	return nil
}

func (p *parquetBackfill) release() {
	if p.w != nil {
		p.w.Abandon(context.Background())
		p.w = nil
	}
}

// explain turns the writer's errors into ones an operator can act on.
func (p *parquetBackfill) explain(rg Range, err error) error {
	switch {
	case errors.Is(err, parquetlog.ErrConflict):
		return cli.FieldError("to-parquet", "partition %d: %v (with --allow-live-prefix: the live sink wrote a window starting at the same offset; backfill only ranges the sink did not write)", rg.Partition, err)
	case errors.Is(err, parquetlog.ErrFenced):
		return cli.FieldError("to-parquet", "partition %d: another replay took over this range's backfill in %s (are two replays of the same range running?): %v", rg.Partition, p.store.URI(""), err)
	}
	return fmt.Errorf("--to-parquet: partition %d: %w", rg.Partition, err)
}

// sinkCheckpoints is where a live parquet-sink keeps its checkpoints,
// relative to its prefix.
const sinkCheckpoints = "_sink/checkpoints/"

// checkParquetPrefix fails, naming --to-parquet, when the store's prefix
// cannot be written (a test object is put, read and deleted), or when a
// live parquet-sink writes there (its checkpoints are there) and allowLive
// is false: a backfill's files would then mix with the live sink's.
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
	if err := store.CheckWritable(ctx, fmt.Sprintf("%s/write-probe-%d", statePrefix, time.Now().UnixNano())); err != nil {
		return cli.FieldError("to-parquet", "%v", err)
	}
	return nil
}
