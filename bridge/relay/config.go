package relay

import (
	"flag"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/topics"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config is the bridge's configuration.
type Config struct {
	MQTT  mqttconn.Config
	Kafka kafkaio.Config

	// ShareGroup is the MQTT shared-subscription group; replicas with the
	// same group split the messages between them.
	ShareGroup string
	// Connections is how many MQTT connections (each its own shared
	// subscriber, client ID suffixed -0, -1, ...) the replica keeps: a
	// connection is one reader and one broker in-flight window.
	Connections int
	// Topic and DLQTopic are the Kafka topics for good and rejected batches.
	Topic    string
	DLQTopic string
	// CatalogTopic is the compacted topic of the signal catalogs vehicles
	// register.
	CatalogTopic string
	// CreateTopics creates missing topics at start with Partitions,
	// Replication (-1: the broker's defaults), MinInsyncReplicas (0: the
	// smaller of 2 and Replication; -1: the broker's default) and the
	// retentions; every created topic takes messages of MaxBatchBytes plus
	// headers.
	CreateTopics      bool
	Partitions        int
	Replication       int
	MinInsyncReplicas int
	Retention         time.Duration
	DLQRetention      time.Duration
	// BridgeID goes in every record's bridge_id header.
	BridgeID string
	// Listen is the address of /metrics, /healthz, /readyz and Go's
	// profiles under /debug/pprof/.
	Listen string

	// MaxBatchBytes bounds an incoming payload; larger ones go to the DLQ,
	// cut to this size.
	MaxBatchBytes int
	// MaxBodyBytes, MaxReadings, MaxReadingsPerByte and MaxBodyRatio bound
	// what checking one batch may cost (wire.Limits).
	MaxBodyBytes       int
	MaxReadings        int
	MaxReadingsPerByte int
	MaxBodyRatio       int
	// RequireChecksum sends batches without an end-to-end checksum (from
	// agents older than the checksum) to the DLQ; off while a fleet
	// upgrades.
	RequireChecksum bool
	// MaxFuture and MaxPast bound a batch's times against the bridge's
	// clock; TimePolicy says what happens to a batch outside them:
	// "header" (produced, with a time_flag header), "dlq" or "ignore".
	MaxFuture  time.Duration
	MaxPast    time.Duration
	TimePolicy string

	// MaxInflight and MaxInflightBytes bound the messages received and not
	// yet settled (in Kafka, in the DLQ, or given up); at the bound the
	// bridge stops reading from MQTT until some settle.
	MaxInflight      int
	MaxInflightBytes int
	// Linger is how long the producer waits to fill a Kafka batch.
	Linger time.Duration
	// ProduceTimeout bounds one produce attempt; a batch that fails
	// retriably is produced again after a backoff, for as long as the
	// bridge runs.
	ProduceTimeout time.Duration
	// CatalogWait bounds the catch-up with the catalog topic for a batch
	// whose catalog the replica has not seen; the batch is then left to
	// the agent to re-send.
	CatalogWait time.Duration
	// AckInterval throttles a vehicle's end-to-end acks: its first news
	// after an interval without an ack goes at once, later news waits
	// until the interval since the last ack has passed, or until
	// AckBatches batches wait. AckQoS is the ack publishes' QoS.
	AckInterval time.Duration
	AckBatches  int
	AckQoS      int
	// DrainTimeout bounds the wait for in-flight produces at shutdown.
	DrainTimeout time.Duration
	// Coalesce is how long each MQTT connection lets reads and writes
	// gather before a syscall (mqttlite.Config.Coalesce; 0: not at all).
	Coalesce time.Duration
	// MaxProcs is the CPU cores the bridge's Go runtime uses at once
	// (GOMAXPROCS; 0: all). See Procs.
	MaxProcs int
}

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	c.RegisterFlags(fs)
	return c
}

// Time policies for batches with implausible timestamps.
const (
	TimeHeader = "header"
	TimeDLQ    = "dlq"
	TimeIgnore = "ignore"
)

// headerRoom is what a record may add to its payload in Kafka: headers and
// the record batch's framing.
const headerRoom = 16 << 10

// RecordLimit is the largest record the bridge produces: a batch of
// MaxBatchBytes and its headers. Topics it creates take it (Kafka's
// max.message.bytes) and its producer's batches never exceed it.
func (c Config) RecordLimit() int { return c.MaxBatchBytes + headerRoom }

// RegisterFlags declares the bridge's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	if host == "" {
		host = "local"
	}
	c.MQTT.RegisterFlags(fs, "tcp://127.0.0.1:1883", "fleet-bridge-"+host)
	c.Kafka.RegisterFlags(fs, "fleet-bridge")
	fs.StringVar(&c.ShareGroup, "share-group", "fleet-bridge", "MQTT shared-subscription group of the bridge replicas")
	fs.IntVar(&c.Connections, "mqtt-connections", 2, "MQTT connections per replica (client IDs get -0, -1, ...)")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "Kafka topic for telemetry batches")
	fs.StringVar(&c.DLQTopic, "dlq-topic", topics.KafkaDLQ, "Kafka topic for rejected payloads")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", topics.KafkaCatalog, "log-compacted Kafka topic for the signal catalogs vehicles register")
	fs.BoolVar(&c.CreateTopics, "create-topics", true, "create missing Kafka topics at start")
	fs.IntVar(&c.Partitions, "partitions", 12, "partitions of topics the bridge creates (-1: broker default)")
	fs.IntVar(&c.Replication, "replication", -1, "replication factor of topics the bridge creates (-1: broker default)")
	fs.IntVar(&c.MinInsyncReplicas, "min-insync-replicas", 0, "min.insync.replicas of topics the bridge creates (0: the smaller of 2 and --replication; -1: broker default)")
	fs.DurationVar(&c.Retention, "retention", 7*24*time.Hour, "retention.ms of the telemetry topic if the bridge creates it")
	fs.DurationVar(&c.DLQRetention, "dlq-retention", 30*24*time.Hour, "retention.ms of the dead-letter topic if the bridge creates it")
	fs.StringVar(&c.BridgeID, "bridge-id", host, "this replica's ID, sent in the bridge_id header")
	fs.StringVar(&c.Listen, "listen", ":9101", "address for /metrics, /healthz, /readyz and /debug/pprof/")
	fs.IntVar(&c.MaxBatchBytes, "max-batch-bytes", 1_000_000, "largest accepted MQTT payload in bytes; larger ones go to the DLQ, cut to this size")
	fs.IntVar(&c.MaxBodyBytes, "max-body-bytes", 1<<20, "largest decompressed batch body in bytes")
	fs.IntVar(&c.MaxReadings, "max-readings", 1_000_000, "most readings and fixes in one batch")
	fs.IntVar(&c.MaxReadingsPerByte, "max-readings-per-byte", 1024, "most readings per payload byte (the densest batches our agents write hold under 900; 0: no limit)")
	fs.IntVar(&c.MaxBodyRatio, "max-body-ratio", 32, "most bytes a compressed body may grow to per compressed byte, past the first 64 KiB (0: no limit)")
	fs.BoolVar(&c.RequireChecksum, "require-checksum", false, "send batches without an end-to-end checksum (agents before it) to the DLQ")
	fs.DurationVar(&c.MaxFuture, "max-future", time.Hour, "a batch with a time further ahead of the bridge's clock is flagged (see --time-policy)")
	fs.DurationVar(&c.MaxPast, "max-past", 90*24*time.Hour, "a batch with a time further behind the bridge's clock is flagged (see --time-policy)")
	fs.StringVar(&c.TimePolicy, "time-policy", TimeHeader, "what happens to flagged batches: header (produced with a time_flag header), dlq, or ignore")
	fs.IntVar(&c.MaxInflight, "max-inflight", 8192, "messages received and not yet in Kafka, at most; past it the bridge stops reading MQTT")
	fs.IntVar(&c.MaxInflightBytes, "max-inflight-bytes", 64<<20, "payload bytes received and not yet in Kafka, at most")
	fs.DurationVar(&c.Linger, "linger", 5*time.Millisecond, "producer linger")
	fs.DurationVar(&c.ProduceTimeout, "produce-timeout", 30*time.Second, "give up one produce attempt after this long and try again (the batch stays in flight)")
	fs.DurationVar(&c.CatalogWait, "catalog-wait", 30*time.Second, "how long a batch may wait for the catalog topic before it is left to the agent to re-send")
	fs.DurationVar(&c.AckInterval, "ack-interval", time.Second, "at most one end-to-end ack per vehicle per interval (the first at once), unless --ack-batches batches wait")
	fs.IntVar(&c.AckBatches, "ack-batches", 32, "send a vehicle's ack as soon as this many of its batches wait (keep it below the agents' --max-inflight)")
	fs.IntVar(&c.AckQoS, "ack-qos", 1, "QoS of the end-to-end ack publishes (0 or 1)")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 15*time.Second, "how long shutdown waits for in-flight batches to reach Kafka")
	fs.DurationVar(&c.Coalesce, "mqtt-coalesce", time.Millisecond, "how long MQTT reads and writes gather before each syscall: less CPU per message at high rates, at most this much latency (0: none)")
	fs.IntVar(&c.MaxProcs, "max-procs", 1, "CPU cores a replica uses at once (0: all); more throughput comes cheaper from more replicas. GOMAXPROCS, if set, wins")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if err := c.MQTT.Validate(); err != nil {
		return err
	}
	if u, err := url.Parse(c.MQTT.URL); err == nil && strings.HasPrefix(u.Scheme, "ws") {
		return cli.FieldError("mqtt-url", "%q: the bridge speaks MQTT over TCP or TLS (tcp://, ssl://), not WebSockets", c.MQTT.URL)
	}
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	switch {
	case c.ShareGroup == "" || strings.ContainsAny(c.ShareGroup, "/+#"):
		return cli.FieldError("share-group", "%q: want a name without / + #", c.ShareGroup)
	case c.Connections < 1 || c.Connections > 64:
		return cli.FieldError("mqtt-connections", "%d: want 1 to 64", c.Connections)
	case c.Topic == "":
		return cli.FieldError("topic", "must not be empty")
	case c.DLQTopic == "":
		return cli.FieldError("dlq-topic", "must not be empty")
	case c.DLQTopic == c.Topic:
		return cli.FieldError("dlq-topic", "must differ from --topic")
	case c.CatalogTopic == "":
		return cli.FieldError("catalog-topic", "must not be empty")
	case c.CatalogTopic == c.Topic || c.CatalogTopic == c.DLQTopic:
		return cli.FieldError("catalog-topic", "must differ from --topic and --dlq-topic")
	case c.Partitions == 0 || c.Partitions < -1:
		return cli.FieldError("partitions", "%d: want a positive count or -1", c.Partitions)
	case c.Replication == 0 || c.Replication < -1 || c.Replication > 32767:
		return cli.FieldError("replication", "%d: want a positive factor or -1", c.Replication)
	case c.MinInsyncReplicas < -1 || (c.Replication > 0 && c.MinInsyncReplicas > c.Replication):
		return cli.FieldError("min-insync-replicas", "%d: want 1 to --replication, 0 or -1", c.MinInsyncReplicas)
	case c.Retention < time.Minute:
		return cli.FieldError("retention", "%v is below 1m", c.Retention)
	case c.DLQRetention < time.Minute:
		return cli.FieldError("dlq-retention", "%v is below 1m", c.DLQRetention)
	case c.BridgeID == "":
		return cli.FieldError("bridge-id", "must not be empty")
	case c.Listen == "":
		return cli.FieldError("listen", "must not be empty")
	case c.MaxBatchBytes < 1024 || c.MaxBatchBytes > 64<<20:
		return cli.FieldError("max-batch-bytes", "%d: want 1024 to 64 MiB", c.MaxBatchBytes)
	case c.MaxBodyBytes < 1024 || c.MaxBodyBytes > wire.DefaultLimits.MaxBodyBytes:
		// The consumers decode with wire's defaults: never accept what they refuse.
		return cli.FieldError("max-body-bytes", "%d: want 1024 to %d", c.MaxBodyBytes, wire.DefaultLimits.MaxBodyBytes)
	case c.MaxReadings < 1 || c.MaxReadings > wire.DefaultLimits.MaxReadings:
		return cli.FieldError("max-readings", "%d: want 1 to %d", c.MaxReadings, wire.DefaultLimits.MaxReadings)
	case c.MaxReadingsPerByte < 0:
		return cli.FieldError("max-readings-per-byte", "must not be negative")
	case c.MaxBodyRatio < 0:
		return cli.FieldError("max-body-ratio", "must not be negative")
	case c.MaxFuture <= 0:
		return cli.FieldError("max-future", "must be positive")
	case c.MaxPast <= 0:
		return cli.FieldError("max-past", "must be positive")
	case c.TimePolicy != TimeHeader && c.TimePolicy != TimeDLQ && c.TimePolicy != TimeIgnore:
		return cli.FieldError("time-policy", "%q: want header, dlq or ignore", c.TimePolicy)
	case c.MaxInflight < 1:
		return cli.FieldError("max-inflight", "must be at least 1")
	case c.MaxInflightBytes < c.MaxBatchBytes:
		return cli.FieldError("max-inflight-bytes", "%d is below --max-batch-bytes (%d)", c.MaxInflightBytes, c.MaxBatchBytes)
	case c.Linger < 0 || c.Linger > time.Second:
		return cli.FieldError("linger", "%v: want 0 to 1s", c.Linger)
	case c.ProduceTimeout < time.Second:
		return cli.FieldError("produce-timeout", "%v is below 1s", c.ProduceTimeout)
	case c.CatalogWait <= 0:
		return cli.FieldError("catalog-wait", "must be positive")
	case c.AckInterval <= 0:
		return cli.FieldError("ack-interval", "must be positive")
	case c.AckBatches < 1:
		return cli.FieldError("ack-batches", "must be at least 1")
	case c.AckQoS != 0 && c.AckQoS != 1:
		return cli.FieldError("ack-qos", "%d: want 0 or 1", c.AckQoS)
	case c.DrainTimeout <= 0:
		return cli.FieldError("drain-timeout", "must be positive")
	case c.Coalesce < 0 || c.Coalesce > 100*time.Millisecond:
		return cli.FieldError("mqtt-coalesce", "%v: want 0 to 100ms", c.Coalesce)
	case c.MaxProcs < 0:
		return cli.FieldError("max-procs", "%d: want 0 (all cores) or a positive count", c.MaxProcs)
	}
	return nil
}

// limits are the wire limits a batch is checked against.
func (c Config) limits() wire.Limits {
	return wire.Limits{MaxBatchBytes: c.MaxBatchBytes, MaxBodyBytes: c.MaxBodyBytes, MaxReadings: c.MaxReadings,
		MaxReadingsPerByte: c.MaxReadingsPerByte, MaxBodyRatio: c.MaxBodyRatio, RequireChecksum: c.RequireChecksum}
}
