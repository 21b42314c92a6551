package sink

import (
	"flag"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
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

	// A partition's buffered rows are written out when any limit is hit.
	MaxFileRows  int
	MaxFileBytes int           // estimated uncompressed bytes
	MaxFileAge   time.Duration // wall-clock time since the first buffered record
	// RowGroupRows is the Parquet row group size.
	RowGroupRows int
	// Compression of Parquet pages: zstd, snappy, gzip or none.
	Compression string
	// DedupEpochs is how many spool epochs per vehicle the duplicate
	// filter remembers.
	DedupEpochs int
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
	fs.IntVar(&c.MaxFileRows, "max-file-rows", 2_000_000, "write a partition's files at this many buffered rows")
	fs.IntVar(&c.MaxFileBytes, "max-file-bytes", 256<<20, "write a partition's files at this many buffered bytes (estimated, uncompressed)")
	fs.DurationVar(&c.MaxFileAge, "max-file-age", 5*time.Minute, "write a partition's files when its oldest buffered record is this old")
	fs.IntVar(&c.RowGroupRows, "row-group-rows", 500_000, "rows per Parquet row group")
	fs.StringVar(&c.Compression, "compression", "zstd", "Parquet compression: zstd, snappy, gzip or none")
	fs.IntVar(&c.DedupEpochs, "dedup-epochs", 8, "spool epochs per vehicle remembered by the duplicate filter")
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
	case c.MaxFileRows < 1:
		return cli.FieldError("max-file-rows", "must be at least 1")
	case c.MaxFileBytes < 1024:
		return cli.FieldError("max-file-bytes", "%d is below 1024", c.MaxFileBytes)
	case c.MaxFileAge < 100*time.Millisecond:
		return cli.FieldError("max-file-age", "%v is below 100ms", c.MaxFileAge)
	case c.RowGroupRows < 1000:
		return cli.FieldError("row-group-rows", "%d is below 1000", c.RowGroupRows)
	case c.DedupEpochs < 1:
		return cli.FieldError("dedup-epochs", "must be at least 1")
	}
	if _, err := codec(c.Compression); err != nil {
		return cli.FieldError("compression", "%v", err)
	}
	return nil
}
