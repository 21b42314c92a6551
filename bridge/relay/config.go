package relay

import (
	"flag"
	"os"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// Config is the bridge's configuration.
type Config struct {
	MQTT  mqttconn.Config
	Kafka kafkaio.Config

	// ShareGroup is the MQTT shared-subscription group; replicas with the
	// same group split the vehicles between them.
	ShareGroup string
	// Topic and DLQTopic are the Kafka topics for good and rejected batches.
	Topic    string
	DLQTopic string
	// CatalogTopic is the compacted topic of the signal catalogs vehicles
	// register.
	CatalogTopic string
	// CreateTopics creates missing topics at start with Partitions and
	// Replication (-1: the broker's defaults).
	CreateTopics bool
	Partitions   int
	Replication  int
	// BridgeID goes in every record's bridge_id header.
	BridgeID string
	// Listen is the address of /metrics, /healthz and /readyz.
	Listen string
	// MaxBatchBytes bounds an incoming payload; larger ones go to the DLQ.
	MaxBatchBytes int
	// Linger is how long the producer waits to fill a Kafka batch.
	Linger time.Duration
	// AckInterval is how often the end-to-end acks to vehicles are sent
	// (acks for one vehicle within the interval are merged into ranges).
	AckInterval time.Duration
	// DrainTimeout bounds the wait for in-flight produces at shutdown.
	DrainTimeout time.Duration
}

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	fs := flag.NewFlagSet("defaults", flag.ContinueOnError)
	c.RegisterFlags(fs)
	return c
}

// RegisterFlags declares the bridge's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	if host == "" {
		host = "local"
	}
	c.MQTT.RegisterFlags(fs, "tcp://127.0.0.1:1883", "fleet-bridge-"+host)
	c.Kafka.RegisterFlags(fs, "fleet-bridge")
	fs.StringVar(&c.ShareGroup, "share-group", "fleet-bridge", "MQTT shared-subscription group of the bridge replicas")
	fs.StringVar(&c.Topic, "topic", topics.KafkaTelemetry, "Kafka topic for telemetry batches")
	fs.StringVar(&c.DLQTopic, "dlq-topic", topics.KafkaDLQ, "Kafka topic for rejected payloads")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", topics.KafkaCatalog, "log-compacted Kafka topic for the signal catalogs vehicles register")
	fs.BoolVar(&c.CreateTopics, "create-topics", true, "create missing Kafka topics at start")
	fs.IntVar(&c.Partitions, "partitions", 12, "partitions of topics the bridge creates (-1: broker default)")
	fs.IntVar(&c.Replication, "replication", -1, "replication factor of topics the bridge creates (-1: broker default)")
	fs.StringVar(&c.BridgeID, "bridge-id", host, "this replica's ID, sent in the bridge_id header")
	fs.StringVar(&c.Listen, "listen", ":9101", "address for /metrics, /healthz and /readyz")
	fs.IntVar(&c.MaxBatchBytes, "max-batch-bytes", 1<<20, "largest accepted MQTT payload in bytes; larger ones go to the DLQ")
	fs.DurationVar(&c.Linger, "linger", 5*time.Millisecond, "producer linger")
	fs.DurationVar(&c.AckInterval, "ack-interval", 100*time.Millisecond, "how often end-to-end acks are published to vehicles")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 15*time.Second, "how long shutdown waits for in-flight batches to reach Kafka")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if err := c.MQTT.Validate(); err != nil {
		return err
	}
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	switch {
	case c.ShareGroup == "":
		return cli.FieldError("share-group", "must not be empty")
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
	case c.BridgeID == "":
		return cli.FieldError("bridge-id", "must not be empty")
	case c.Listen == "":
		return cli.FieldError("listen", "must not be empty")
	case c.MaxBatchBytes < 1024:
		return cli.FieldError("max-batch-bytes", "%d is below 1024", c.MaxBatchBytes)
	case c.Linger < 0 || c.Linger > time.Second:
		return cli.FieldError("linger", "%v: want 0 to 1s", c.Linger)
	case c.AckInterval <= 0:
		return cli.FieldError("ack-interval", "must be positive")
	case c.DrainTimeout <= 0:
		return cli.FieldError("drain-timeout", "must be positive")
	}
	return nil
}
