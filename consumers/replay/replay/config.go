package replay

import (
	"flag"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Program is the replay binary's name, environment prefix and help summary.
var Program = cli.Program{Name: "replay", EnvPrefix: "FLEET_REPLAY", Summary: Summary}

// Summary is the paragraph --help prints.
const Summary = `replay re-reads a slice of the telemetry topic and sends it to a target. It
reads partitions directly: it never joins, or moves the offsets of, a
consumer group, and it reads only what the topic held when it started. The
same slice always gives the same output.

Choose the slice by record time or by offsets (not both):
  replay --from 2025-06-01T08:00:00Z --to 2025-06-01T09:00:00Z
  replay --offsets 3:1200-1500,4:0-          (END exclusive; empty START/END: log start/end)
narrowed with --vehicle ID (that vehicle's partition and records only) and
--signals speed,gear (readings of those signals; "location" keeps the fixes).

Choose one target (default: --to-jsonl -):
  --to-jsonl FILE|-            decoded readings and fixes as JSON lines
  --to-topic NAME              the batches unchanged, keyed and partitioned as the bridge does
  --to-parquet s3://B/PREFIX   a Parquet backfill in parquet-sink's layout

--dry-run prints the plan (partitions, offsets, estimated records and bytes).
--resume NAME keeps the replay's progress in Kafka (--state-topic), so that a
replay stopped or killed at any point continues where it stopped and every
record reaches the target exactly once. Ctrl-C stops cleanly and prints the
command that continues.

  replay reset-group --group G --to-time T [--execute]
moves a stopped consumer group's offsets (see replay reset-group --help).`

// Progress display modes (--progress).
const (
	ProgressAuto  = "auto"  // a bar on a terminal, lines otherwise
	ProgressBar   = "bar"   // always the bar
	ProgressLines = "lines" // periodic log lines
	ProgressNone  = "none"  // only the summary
)

// Config is the replay tool's configuration. Build it through
// RegisterFlags (or cli.Parse), which sets the defaults.
type Config struct {
	Kafka kafkaio.Config
	// S3 is how to reach the store of --to-parquet; its bucket and prefix
	// come from the URL.
	S3 objstore.Config

	Topic        string // --topic
	CatalogTopic string // --catalog-topic

	// Time range: each partition from the first record with a timestamp at
	// or after From to the last one before the first at or after To (Kafka
	// ListOffsets by timestamp). Either may be empty: the log start, the end
	// at start-up.
	From, To string // RFC 3339
	// Offsets is an offset range per partition, "P:START-END,...".
	Offsets string

	// Vehicle restricts the replay to the partition the vehicle's ID hashes
	// to (Kafka's murmur2) and to records keyed by it.
	Vehicle string
	// Signals keeps only readings of these signals (names or path.Match
	// patterns); "location" keeps the fixes. Empty keeps everything.
	Signals cli.StringList

	// Targets: at most one; none means ToJSONL "-".
	ToJSONL   string
	ToTopic   string
	ToParquet string
	// AllowLivePrefix lets --to-parquet write where a live parquet-sink
	// writes.
	AllowLivePrefix bool
	// Parquet shapes --to-parquet's windows and files (parquet-sink's
	// settings).
	Parquet ParquetOptions

	// Resume names the replay whose state is kept in StateTopic.
	Resume     string
	StateTopic string
	// CommitInterval is how often progress is saved (and, for --to-topic,
	// how long a transaction runs).
	CommitInterval time.Duration

	AllowEmpty       bool          // an empty slice is not an error
	DryRun           bool          // print the plan, read nothing
	FailOnBad        bool          // stop at the first record that does not decode
	Progress         string        // auto, bar, lines, none
	ProgressInterval time.Duration // how often progress lines are logged
	Listen           string        // address for /metrics while the replay runs; "" for none
}

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	c.RegisterFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return c
}

// DefaultStateTopic is where --resume keeps replay state.
const DefaultStateTopic = "fleet.replay.state.v1"

// RegisterFlags declares the replay flags, the kafka-* flags and the s3-*
// connection flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.Kafka.RegisterFlags(fs, "fleet-replay")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "telemetry topic to re-read")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", topics.KafkaCatalog, "log-compacted Kafka topic of the signal catalogs batches may refer to")
	fs.StringVar(&c.From, "from", "", "time range start, RFC 3339, inclusive (record timestamps); empty: the log start")
	fs.StringVar(&c.To, "to", "", "time range end, RFC 3339, exclusive; empty: the end of the topic at start-up")
	fs.StringVar(&c.Offsets, "offsets", "", "offset ranges: P:START-END,... (END exclusive; START or END may be empty for the log start or the end at start-up; P alone is the whole partition)")
	fs.StringVar(&c.Vehicle, "vehicle", "", "replay only this vehicle: its partition, and its records in it")
	fs.Var(&c.Signals, "signals", "comma-separated signals to keep (names or patterns like wheel_*); \"location\" keeps the location fixes; empty: everything")
	fs.StringVar(&c.ToJSONL, "to-jsonl", "", "write the decoded readings and fixes as JSON lines to FILE, or - for stdout (the default target)")
	fs.StringVar(&c.ToTopic, "to-topic", "", "re-publish the batches unchanged to this Kafka topic (created with the source's partition count if missing), keyed and partitioned as the bridge does")
	fs.StringVar(&c.ToParquet, "to-parquet", "", "write a Parquet backfill in parquet-sink's layout under s3://BUCKET/PREFIX")
	fs.BoolVar(&c.AllowLivePrefix, "allow-live-prefix", false, "let --to-parquet write under a prefix a live parquet-sink writes to")
	if c.S3.Bucket == "" {
		c.S3.Bucket = "replay-target" // replaced by --to-parquet's bucket
	}
	registerS3Flags(fs, &c.S3)
	c.Parquet.registerFlags(fs)
	fs.StringVar(&c.Resume, "resume", "", "name of this replay: keep its progress in --state-topic, and continue it if it was started before")
	fs.StringVar(&c.StateTopic, "state-topic", DefaultStateTopic, "log-compacted Kafka topic holding the state of --resume replays (created if missing)")
	fs.DurationVar(&c.CommitInterval, "commit-interval", 5*time.Second, "how often progress is saved; for --to-topic, the length of a transaction")
	fs.BoolVar(&c.AllowEmpty, "allow-empty", false, "an empty slice (or a --vehicle with no records in it) is not an error")
	fs.BoolVar(&c.DryRun, "dry-run", false, "print the plan (partitions, offsets, estimated records and bytes) and exit without reading records")
	fs.BoolVar(&c.FailOnBad, "fail-on-bad", false, "stop with an error at the first record that does not decode (default: count, log and skip it)")
	fs.StringVar(&c.Progress, "progress", ProgressAuto, "progress display: auto (a bar on a terminal, log lines otherwise), bar, lines or none")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", 10*time.Second, "how often progress lines are logged (--progress lines)")
	fs.StringVar(&c.Listen, "listen", "", "address to serve /metrics, /healthz and /readyz on while the replay runs, e.g. :9103 (empty: none)")
}

// registerS3Flags declares the connection flags of --to-parquet's store;
// the bucket and prefix come from the URL, not from flags.
func registerS3Flags(fs *flag.FlagSet, c *objstore.Config) {
	if c.Region == "" {
		c.Region = objstore.DefaultRegion
	}
	fs.StringVar(&c.Endpoint, "s3-endpoint", c.Endpoint, "S3 API base URL for --to-parquet, e.g. http://127.0.0.1:9000 for MinIO; empty uses AWS's endpoint for the region")
	fs.StringVar(&c.Region, "s3-region", c.Region, "S3 region of --to-parquet's bucket")
	fs.StringVar(&c.AccessKey, "s3-access-key", c.AccessKey, "S3 access key; empty (with an empty secret key) uses the default AWS credential chain")
	fs.StringVar(&c.SecretKey, "s3-secret-key", c.SecretKey, "S3 secret key; prefer the environment (FLEET_REPLAY_S3_SECRET_KEY) over the command line")
	fs.BoolVar(&c.PathStyle, "s3-path-style", c.PathStyle, "address buckets as ENDPOINT/BUCKET/KEY (MinIO, the embedded endpoint)")
	fs.StringVar(&c.SSE, "s3-sse", c.SSE, "server-side encryption of the backfill's objects: AES256 (SSE-S3), aws:kms (SSE-KMS) or empty (the bucket's default)")
	fs.StringVar(&c.SSEKMSKeyID, "s3-sse-kms-key-id", c.SSEKMSKeyID, "KMS key ID or ARN for --s3-sse aws:kms; empty uses the account's default S3 key")
	if c.MaxAttempts == 0 {
		c.MaxAttempts = objstore.DefaultMaxAttempts
	}
	fs.IntVar(&c.MaxAttempts, "s3-max-attempts", c.MaxAttempts, "tries per S3 request, with exponential backoff and jitter, before giving up")
}

func (c Config) timeMode() bool   { return c.From != "" || c.To != "" }
func (c Config) offsetMode() bool { return c.Offsets != "" }
func (c Config) sliceGiven() bool { return c.timeMode() || c.offsetMode() }

// resumeName is what --resume accepts: it becomes part of a Kafka
// transactional ID and of a record key.
var resumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// Validate names the flag of the first bad setting.
func (c Config) Validate() error {
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	if c.Topic == "" {
		return cli.FieldError("topic", "must not be empty")
	}
	if c.CatalogTopic == "" || c.CatalogTopic == c.Topic {
		return cli.FieldError("catalog-topic", "must be set and differ from --topic")
	}
	switch {
	case c.timeMode() && c.offsetMode():
		flag := "from"
		if c.From == "" {
			flag = "to"
		}
		return cli.FieldError(flag, "a time range cannot be combined with --offsets: choose one")
	case c.timeMode():
		if _, _, err := c.timeRange(); err != nil {
			return err
		}
	case c.offsetMode():
		if _, err := ParseOffsets(c.Offsets); err != nil {
			return cli.FieldError("offsets", "%v", err)
		}
	case c.Resume == "":
		return cli.FieldError("from", "no slice chosen: give a time range (--from/--to) or offset ranges (--offsets P:START-END,...)")
	}
	if c.Vehicle != "" {
		if err := wire.CheckVehicleID(c.Vehicle); err != nil {
			return cli.FieldError("vehicle", "%v", err)
		}
	}
	for _, s := range c.Signals {
		if _, err := path.Match(s, ""); err != nil {
			return cli.FieldError("signals", "%q is not a valid pattern: %v", s, err)
		}
	}
	if err := c.validateTarget(); err != nil {
		return err
	}
	if c.Resume != "" && !resumeName.MatchString(c.Resume) {
		return cli.FieldError("resume", "%q: a name is 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit", c.Resume)
	}
	if c.StateTopic == "" || slices.Contains([]string{c.Topic, c.CatalogTopic, c.ToTopic}, c.StateTopic) {
		return cli.FieldError("state-topic", "must be set and differ from --topic, --catalog-topic and --to-topic")
	}
	if c.CommitInterval < 10*time.Millisecond || c.CommitInterval > 10*time.Minute {
		return cli.FieldError("commit-interval", "%v: want 10ms to 10m", c.CommitInterval)
	}
	switch c.Progress {
	case ProgressAuto, ProgressBar, ProgressLines, ProgressNone:
	default:
		return cli.FieldError("progress", "%q: want auto, bar, lines or none", c.Progress)
	}
	if c.ProgressInterval <= 0 {
		return cli.FieldError("progress-interval", "%v must be positive", c.ProgressInterval)
	}
	return nil
}

// validateTarget checks the --to-* flags: at most one, each well formed.
func (c Config) validateTarget() error {
	var given []string
	for _, t := range []struct{ flag, v string }{{"to-jsonl", c.ToJSONL}, {"to-topic", c.ToTopic}, {"to-parquet", c.ToParquet}} {
		if t.v != "" {
			given = append(given, "--"+t.flag)
		}
	}
	if len(given) > 1 {
		return cli.FieldError(given[1][2:], "only one target at a time: %s", strings.Join(given, " and "))
	}
	if c.ToTopic != "" {
		switch {
		case c.ToTopic == c.Topic:
			return cli.FieldError("to-topic", "%q is the topic being replayed", c.ToTopic)
		case c.ToTopic == c.CatalogTopic:
			return cli.FieldError("to-topic", "%q is the catalog topic", c.ToTopic)
		case len(c.Signals) > 0:
			return cli.FieldError("signals", "--to-topic re-publishes batches unchanged; it cannot drop signals from them")
		}
	}
	if c.ToParquet != "" {
		s3, err := c.parquetStore()
		if err != nil {
			return err
		}
		if err := s3.Validate(); err != nil {
			return err
		}
	}
	if err := c.Parquet.validate(); err != nil {
		return err
	}
	if c.AllowLivePrefix && c.ToParquet == "" {
		return cli.FieldError("allow-live-prefix", "applies to --to-parquet only")
	}
	if err := c.S3.Validate(); err != nil {
		return err
	}
	// (--resume NAME alone continues a replay with its stored target.)
	noTarget := c.ToJSONL == "" && c.ToTopic == "" && c.ToParquet == ""
	if c.Resume != "" && (c.ToJSONL == "-" || noTarget && c.sliceGiven()) {
		return cli.FieldError("resume", "a replay to stdout cannot be rewound after a crash, so it cannot be resumed exactly once: write to a file with --to-jsonl FILE")
	}
	return nil
}

// parquetStore is the store config of --to-parquet: the connection flags
// plus the URL's bucket and prefix.
func (c Config) parquetStore() (objstore.Config, error) {
	s3 := c.S3
	rest, ok := strings.CutPrefix(c.ToParquet, "s3://")
	if !ok {
		return s3, cli.FieldError("to-parquet", "%q is not an s3://BUCKET/PREFIX URL", c.ToParquet)
	}
	s3.Bucket, s3.Prefix, _ = strings.Cut(rest, "/")
	s3.Prefix = strings.TrimSuffix(s3.Prefix, "/")
	if err := s3.Validate(); err != nil {
		return s3, cli.FieldError("to-parquet", "%q: %v", c.ToParquet, strings.TrimPrefix(strings.TrimPrefix(err.Error(), "--s3-bucket: "), "--s3-prefix: "))
	}
	return s3, nil
}

// targetKind returns the registry name and destination of the target.
func (c Config) targetKind() (kind, dest string) {
	switch {
	case c.ToTopic != "":
		return TargetTopic, c.ToTopic
	case c.ToParquet != "":
		return TargetParquet, c.ToParquet
	case c.ToJSONL != "":
		return TargetJSONL, c.ToJSONL
	}
	return TargetJSONL, "-"
}

// timeRange parses --from and --to. A zero time means the flag was empty.
func (c Config) timeRange() (from, to time.Time, err error) {
	if c.From != "" {
		if from, err = time.Parse(time.RFC3339Nano, c.From); err != nil {
			return from, to, cli.FieldError("from", "%q is not an RFC 3339 time (like 2025-06-01T08:00:00Z)", c.From)
		}
	}
	if c.To != "" {
		if to, err = time.Parse(time.RFC3339Nano, c.To); err != nil {
			return from, to, cli.FieldError("to", "%q is not an RFC 3339 time (like 2025-06-01T09:00:00Z)", c.To)
		}
	}
	if c.From != "" && c.To != "" && !from.Before(to) {
		return from, to, cli.FieldError("from", "%s is not before --to %s", c.From, c.To)
	}
	return from, to, nil
}

// describe is the slice in words for the plan and logs.
func (c Config) describe() string {
	s := ""
	if c.timeMode() {
		from, to := c.From, c.To
		if from == "" {
			from = "log start"
		}
		if to == "" {
			to = "end at start-up"
		}
		s = fmt.Sprintf("time range [%s, %s)", from, to)
	} else {
		s = "offsets " + c.Offsets
	}
	if c.Vehicle != "" {
		s += ", vehicle " + c.Vehicle
	}
	if len(c.Signals) > 0 {
		s += ", signals " + c.Signals.String()
	}
	return s
}
