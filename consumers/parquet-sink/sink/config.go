package sink

import (
	"flag"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// Config is the sink's configuration.
type Config struct {
	Kafka kafkaio.Config
	S3    objstore.Config

	Topic string
	// CatalogTopic holds the signal catalogs batches may refer to.
	CatalogTopic string
	Group        string
	// InstanceID, when set, makes this member static (KIP-345): a restarted
	// sink with the same ID takes its partitions back at once instead of
	// waiting for the old session to time out.
	InstanceID string
	// Listen is the address of /metrics, /healthz and /readyz.
	Listen string
	// SessionTimeout and RebalanceTimeout are the group membership's.
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration

	// A partition's window (its files) ends where the first limit says;
	// the limits read only the records, so windows are the same every time
	// the same records are written.
	MaxFileRows  int           // rows in a window's files
	MaxFileBytes int           // Parquet bytes in a window's files
	MaxFileAge   time.Duration // Kafka record time from the window's first record
	// QuietMargin: a caught-up partition's window is written once the wall
	// clock is MaxFileAge + QuietMargin past its first record.
	QuietMargin time.Duration
	// RowGroupRows is the Parquet row group size.
	RowGroupRows int
	// Compression of Parquet pages: zstd, snappy, gzip or none.
	Compression string
	// The duplicate filter: what it forgets (see parquetlog.DedupConfig).
	DedupEpochs      int
	DedupTTL         time.Duration
	DedupMaxVehicles int
	// FlushOnStop writes the open windows where they stand on shutdown
	// instead of leaving their records to be read again. Such a cut is
	// not where a replay of the records would cut, so keep it for demos.
	FlushOnStop bool
	// ShutdownTimeout bounds the final writes and commits on shutdown.
	ShutdownTimeout time.Duration
	// MemoryLimit is the Go runtime's soft memory limit for a process that
	// runs the sink (Deps.OwnProcess): 0 sizes it by the partitions this
	// member writes (MemoryLimitFor), -1 leaves the runtime's default.
	MemoryLimit int64
}

// MemoryLimitFor is the soft memory limit of a sink writing partitions
// partitions with row groups of rowGroupRows rows: 48 MiB for the parts in
// flight and the Kafka client, and 24 MiB per partition per million rows
// of row group (measured: about 25 MB of live heap per partition writing
// 128 MiB objects of random readings with 1M-row row groups). Above the
// live heap, so the collector only runs earlier than GOGC would, not
// without pause; below twice it, where GOGC=100 would let the heap grow.
func MemoryLimitFor(partitions, rowGroupRows int) int64 {
	perPartition := max(int64(24<<20)*int64(rowGroupRows)/1_000_000, 4<<20)
	return 48<<20 + int64(max(partitions, 1))*perPartition
}

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	c.RegisterFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return c
}

// RegisterFlags declares the sink's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.Kafka.RegisterFlags(fs, "fleet-parquet-sink")
	if c.S3.Bucket == "" {
		c.S3.Bucket = "fleet-telemetry"
	}
	c.S3.RegisterFlags(fs, "")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "Kafka topic of telemetry batches")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", topics.KafkaCatalog, "log-compacted Kafka topic of the signal catalogs batches may refer to")
	fs.StringVar(&c.Group, "group", "fleet-parquet-sink", "Kafka consumer group")
	fs.StringVar(&c.InstanceID, "instance-id", "", "static group membership ID, unique per replica and stable across restarts (e.g. the pod name); empty: dynamic membership")
	fs.StringVar(&c.Listen, "listen", ":9102", "address for /metrics, /healthz and /readyz")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", 45*time.Second, "group session timeout: a member not heard from for this long loses its partitions (and is fenced on S3)")
	fs.DurationVar(&c.RebalanceTimeout, "rebalance-timeout", time.Minute, "how long the group waits for members to rejoin in a rebalance")
	fs.IntVar(&c.MaxFileRows, "max-file-rows", 50_000_000, "end a partition's window (its files) at this many rows")
	fs.IntVar(&c.MaxFileBytes, "max-file-bytes", 128<<20, "end a partition's window when its files hold this many bytes of Parquet (whole row groups: files overshoot by up to one)")
	fs.DurationVar(&c.MaxFileAge, "max-file-age", 5*time.Minute, "end a partition's window before a record whose Kafka timestamp is this much later than the window's first record's")
	fs.DurationVar(&c.QuietMargin, "quiet-margin", time.Minute, "how far a record's Kafka timestamp may lag the wall clock; a caught-up partition's window is written once it is --max-file-age plus this old")
	fs.IntVar(&c.RowGroupRows, "row-group-rows", 1_000_000, "rows per Parquet row group")
	fs.StringVar(&c.Compression, "compression", "zstd", "Parquet compression: zstd, snappy, gzip or none")
	fs.IntVar(&c.DedupEpochs, "dedup-epochs", parquetlog.DefaultDedup.MaxEpochs, "spool epochs per vehicle the duplicate filter remembers")
	fs.DurationVar(&c.DedupTTL, "dedup-ttl", time.Duration(parquetlog.DefaultDedup.TTL)*time.Millisecond, "the duplicate filter forgets a vehicle not heard from for this long (Kafka record time)")
	fs.IntVar(&c.DedupMaxVehicles, "dedup-max-vehicles", parquetlog.DefaultDedup.MaxVehicles, "vehicles per partition the duplicate filter remembers at most (the least recently heard from are forgotten first)")
	fs.BoolVar(&c.FlushOnStop, "flush-on-stop", false, "on shutdown, write the open windows where they stand (for demos: such a cut is not where a replay would cut)")
	fs.Int64Var(&c.MemoryLimit, "memory-limit-bytes", 0, "soft memory limit of the Go runtime in bytes (GOMEMLIMIT wins): 0 sizes it by the partitions this member writes (48 MiB + 24 MiB per partition at 1M-row row groups), -1 leaves the runtime's default")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "bound on the final writes and commits at shutdown")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	if err := c.S3.Validate(); err != nil {
		return err
	}
	switch {
	case c.Topic == "":
		return cli.FieldError("topic", "must not be empty")
	case c.CatalogTopic == "" || c.CatalogTopic == c.Topic:
		return cli.FieldError("catalog-topic", "must be set and differ from --topic")
	case c.Group == "":
		return cli.FieldError("group", "must not be empty")
	case c.Listen == "":
		return cli.FieldError("listen", "must not be empty")
	case c.SessionTimeout < time.Second:
		return cli.FieldError("session-timeout", "%v is below 1s", c.SessionTimeout)
	case c.RebalanceTimeout < time.Second:
		return cli.FieldError("rebalance-timeout", "%v is below 1s", c.RebalanceTimeout)
	case c.MaxFileRows < 1:
		return cli.FieldError("max-file-rows", "must be at least 1")
	case c.MaxFileBytes < 1024:
		return cli.FieldError("max-file-bytes", "%d is below 1024", c.MaxFileBytes)
	case c.MaxFileAge < 100*time.Millisecond:
		return cli.FieldError("max-file-age", "%v is below 100ms", c.MaxFileAge)
	case c.QuietMargin < 0:
		return cli.FieldError("quiet-margin", "%v is negative", c.QuietMargin)
	case c.RowGroupRows < 1000:
		return cli.FieldError("row-group-rows", "%d is below 1000", c.RowGroupRows)
	case c.DedupEpochs < 1:
		return cli.FieldError("dedup-epochs", "must be at least 1")
	case c.DedupTTL < time.Minute:
		return cli.FieldError("dedup-ttl", "%v is below a minute: duplicates arrive minutes to days late", c.DedupTTL)
	case c.DedupMaxVehicles < 1:
		return cli.FieldError("dedup-max-vehicles", "must be at least 1")
	case c.MemoryLimit < -1 || (c.MemoryLimit > 0 && c.MemoryLimit < 64<<20):
		return cli.FieldError("memory-limit-bytes", "%d: want 0 (sized by partitions), -1 (none) or at least 64 MiB", c.MemoryLimit)
	case c.ShutdownTimeout < time.Second:
		return cli.FieldError("shutdown-timeout", "%v is below 1s", c.ShutdownTimeout)
	}
	if _, err := parquetout.Codec(c.Compression); err != nil {
		return cli.FieldError("compression", "%v", err)
	}
	return nil
}

// writerConfig is the parquetlog configuration of one partition.
func (c Config) writerConfig(partition int32, start int64) parquetlog.Config {
	files := parquetout.DefaultOptions
	files.Compression = c.Compression
	files.RowGroupRows = c.RowGroupRows
	writer := c.InstanceID
	if writer == "" {
		writer = c.Kafka.ClientID
	}
	return parquetlog.Config{
		Topic: c.Topic, Partition: partition, Writer: writer, Start: start,
		Rules: parquetlog.Rules{MaxRows: int64(c.MaxFileRows), MaxBytes: int64(c.MaxFileBytes), MaxAge: c.MaxFileAge, QuietMargin: c.QuietMargin},
		Dedup: parquetlog.DedupConfig{TTL: c.DedupTTL.Milliseconds(), MaxVehicles: c.DedupMaxVehicles, MaxEpochs: c.DedupEpochs, MaxRanges: parquetlog.DefaultDedup.MaxRanges},
		Files: files,
	}
}
