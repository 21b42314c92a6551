package replay

import (
	"flag"
	"fmt"
	"math"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Program is the replay binary's name, environment prefix and help summary.
var Program = cli.Program{Name: "replay", EnvPrefix: "FLEET_REPLAY", Summary: Summary}

// Summary is the paragraph --help prints.
const Summary = `replay re-reads a slice of the telemetry topic and writes every reading and
location fix in it as JSON lines on stdout. It reads partitions directly and
never joins, or moves the offsets of, a consumer group; it reads only what the
topic held when it started and never waits for new data. The same slice always
gives byte-identical output.

Choose the slice by record time or by offsets (not both):
  replay --from 2025-06-01T08:00:00Z --to 2025-06-01T09:00:00Z
  replay --partition 3 --start-offset 1200 --end-offset 1500
and add --vehicle ID to read only that vehicle's partition and records.
--dry-run prints the plan (partitions, offsets, record counts) and reads nothing.`

// Unset is the value of an integer flag that was not given.
const Unset = -1

// Targets that --target names; only TargetStdout is implemented so far.
const (
	TargetStdout  = "stdout"
	TargetParquet = "parquet"
	TargetKafka   = "kafka"
)

// Config is the replay tool's configuration. RegisterFlags sets the
// defaults; build a Config through it (or cli.Parse) rather than from a
// literal, because the integer flags use Unset (-1), not 0, for "not given".
type Config struct {
	Kafka kafkaio.Config

	Topic        string // --topic
	CatalogTopic string // --catalog-topic
	Target       string // --target: where the records go; only "stdout" for now

	// Time range: records whose Kafka timestamp (create or log-append time,
	// millisecond resolution) is at or after From and before To. Either may
	// be empty: From then means the log start, To the high watermark seen
	// at start-up.
	From, To string // RFC 3339

	// Offset range on one partition, End exclusive. Unset start means the
	// log start, unset end the high watermark seen at start-up.
	Partition   int
	StartOffset int64
	EndOffset   int64

	// Vehicle restricts the replay to the partition the vehicle's ID hashes
	// to (Kafka's murmur2) and to records keyed by it.
	Vehicle string

	DryRun           bool          // print the plan, read nothing
	FailOnBad        bool          // stop at the first record that does not decode
	ProgressInterval time.Duration // how often progress is logged; 0: only per partition and at the end
	Listen           string        // --listen: address for /metrics while the replay runs; "" for none
}

// RegisterFlags declares the replay flags and the kafka-* flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.Kafka.RegisterFlags(fs, "fleet-replay")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "telemetry topic to re-read")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", topics.KafkaCatalog, "log-compacted Kafka topic of the signal catalogs batches may refer to")
	fs.StringVar(&c.Target, "target", TargetStdout, "where to write the replayed readings: stdout (JSON lines); parquet and kafka are not implemented yet")
	fs.StringVar(&c.From, "from", "", "time range start, RFC 3339, inclusive (record timestamps); empty: the log start")
	fs.StringVar(&c.To, "to", "", "time range end, RFC 3339, exclusive; empty: the end of the topic at start-up")
	fs.IntVar(&c.Partition, "partition", Unset, "offset range: the partition to read (with --start-offset/--end-offset)")
	fs.Int64Var(&c.StartOffset, "start-offset", Unset, "offset range: first offset, inclusive; -1: the partition's log start")
	fs.Int64Var(&c.EndOffset, "end-offset", Unset, "offset range: end offset, exclusive; -1: the partition's high watermark at start-up")
	fs.StringVar(&c.Vehicle, "vehicle", "", "replay only this vehicle: its partition, and its records in it")
	fs.BoolVar(&c.DryRun, "dry-run", false, "print the plan (partitions, offsets, record counts) and exit without reading records")
	fs.BoolVar(&c.FailOnBad, "fail-on-bad", false, "stop with an error at the first record that does not decode (default: count, log and skip it)")
	fs.StringVar(&c.Listen, "listen", "", "address to serve /metrics, /healthz and /readyz on while the replay runs, e.g. :9103 (empty: none)")
	fs.DurationVar(&c.ProgressInterval, "progress-interval", 10*time.Second, "log progress on stderr this often; 0: only per partition and at the end")
}

func (c Config) timeMode() bool { return c.From != "" || c.To != "" }

func (c Config) offsetMode() bool {
	return c.Partition != Unset || c.StartOffset != Unset || c.EndOffset != Unset
}

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
	switch c.Target {
	case TargetStdout:
	case TargetParquet, TargetKafka:
		return cli.FieldError("target", "%q is not implemented yet; the only target so far is stdout", c.Target)
	default:
		return cli.FieldError("target", "unknown target %q: want stdout (parquet and kafka are not implemented yet)", c.Target)
	}
	switch {
	case c.timeMode() && c.offsetMode():
		flag := "from"
		if c.From == "" {
			flag = "to"
		}
		return cli.FieldError(flag, "a time range cannot be combined with --partition/--start-offset/--end-offset: choose one")
	case c.timeMode():
		if _, _, err := c.timeRange(); err != nil {
			return err
		}
	case c.offsetMode():
		if err := c.checkOffsets(); err != nil {
			return err
		}
	default:
		return cli.FieldError("from", "no slice chosen: give a time range (--from/--to) or an offset range (--partition with --start-offset/--end-offset)")
	}
	if c.Vehicle != "" {
		if err := wire.CheckVehicleID(c.Vehicle); err != nil {
			return cli.FieldError("vehicle", "%v", err)
		}
	}
	if c.ProgressInterval < 0 {
		return cli.FieldError("progress-interval", "%v is negative", c.ProgressInterval)
	}
	return nil
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

func (c Config) checkOffsets() error {
	if c.Partition == Unset && c.Vehicle == "" {
		return cli.FieldError("partition", "an offset range needs --partition (or --vehicle, which picks the vehicle's partition)")
	}
	if c.Partition < Unset || c.Partition > math.MaxInt32 {
		return cli.FieldError("partition", "%d is not a partition number", c.Partition)
	}
	if c.StartOffset < Unset {
		return cli.FieldError("start-offset", "%d is negative", c.StartOffset)
	}
	if c.EndOffset < Unset {
		return cli.FieldError("end-offset", "%d is negative", c.EndOffset)
	}
	if c.StartOffset != Unset && c.EndOffset != Unset && c.EndOffset <= c.StartOffset {
		return cli.FieldError("end-offset", "%d must be greater than --start-offset %d (the end is exclusive)", c.EndOffset, c.StartOffset)
	}
	return nil
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
		s = "offset range"
	}
	if c.Vehicle != "" {
		s += ", vehicle " + c.Vehicle
	}
	return s
}
