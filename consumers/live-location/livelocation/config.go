package livelocation

import (
	"flag"
	"math"
	"net"
	"strconv"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// Program describes the live-location binary to the cli package.
var Program = cli.Program{
	Name:      "live-location",
	EnvPrefix: "FLEET_LIVE_LOCATION",
	Summary: "live-location consumes every partition of the telemetry topic (no consumer group: each\n" +
		"replica holds the whole fleet), keeps each vehicle's latest position and status, answers\n" +
		"nearby queries over HTTP, streams changes as Server-Sent Events, serves the fleet dashboard\n" +
		"and publishes positions to the log-compacted location topic it bootstraps from.",
}

// Config is the live-location configuration. Each field's flag is named in
// its comment.
//
// Zero values: New fills every zero field with its default (the flag's
// default) — except LocationTopic, where "" means "no location topic" (no
// publishing, no bootstrap), and Kafka.Brokers, which must be set. So a
// struct literal with just Kafka.Brokers and Listen is a working
// configuration; start from DefaultConfig() to get the location topic too.
type Config struct {
	Kafka kafkaio.Config // --kafka-*; ClientID defaults to "live-location"

	Listen              string        // --listen: HTTP address of the API, dashboard, /metrics, /healthz, /readyz; default ":8080"
	Topic               string        // --topic: telemetry topic; default "fleet.telemetry.v1"
	CatalogTopic        string        // --catalog-topic: log-compacted topic of signal catalogs; default "fleet.catalog.v1"
	LocationTopic       string        // --location-topic: log-compacted position topic; "" disables (DefaultConfig: "fleet.location.v1")
	LocationPartitions  int           // --location-partitions: partitions when creating the location topic; -1 (default): the broker's default
	LocationReplication int           // --location-replication: replication when creating it; -1 (default): the broker's default
	Lookback            time.Duration // --lookback: start consuming telemetry at now minus this; default 10m
	StaleAfter          time.Duration // --stale-after: vehicles without a newer fix drop out of nearby; default 2m
	PublishInterval     time.Duration // --publish-interval: at most one position per vehicle per interval to the location topic; default 1s
	StatusSignal        string        // --status-signal: string signal holding the vehicle status; default "status"
	StreamHeartbeat     time.Duration // --stream-heartbeat: heartbeat comment interval on idle event streams; default 15s
	MaxClockSkew        time.Duration // --max-clock-skew: fixes and statuses later than now plus this are refused; default 5m
}

// Defaults.
const (
	DefaultListen          = ":8080"
	DefaultLookback        = 10 * time.Minute
	DefaultPublishInterval = time.Second
	DefaultStreamHeartbeat = 15 * time.Second
	DefaultClientID        = "live-location"
)

// DefaultConfig returns the configuration the flags default to, location
// topic included.
func DefaultConfig() Config {
	return Config{
		Kafka:               kafkaio.Config{Brokers: cli.StringList{"127.0.0.1:9092"}, ClientID: DefaultClientID},
		Listen:              DefaultListen,
		Topic:               topics.KafkaTelemetry,
		CatalogTopic:        topics.KafkaCatalog,
		LocationTopic:       topics.KafkaLocation,
		LocationPartitions:  -1,
		LocationReplication: -1,
		Lookback:            DefaultLookback,
		StaleAfter:          fleetstate.DefaultStaleAfter,
		PublishInterval:     DefaultPublishInterval,
		StatusSignal:        fleetstate.DefaultStatusSignal,
		StreamHeartbeat:     DefaultStreamHeartbeat,
		MaxClockSkew:        fleetstate.DefaultMaxClockSkew,
	}
}

// withDefaults fills zero fields (see Config).
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.Kafka.ClientID == "" {
		c.Kafka.ClientID = d.Kafka.ClientID
	}
	if c.Listen == "" {
		c.Listen = d.Listen
	}
	if c.Topic == "" {
		c.Topic = d.Topic
	}
	if c.CatalogTopic == "" {
		c.CatalogTopic = d.CatalogTopic
	}
	if c.LocationPartitions == 0 {
		c.LocationPartitions = -1
	}
	if c.LocationReplication == 0 {
		c.LocationReplication = -1
	}
	if c.Lookback == 0 {
		c.Lookback = d.Lookback
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = d.StaleAfter
	}
	if c.PublishInterval == 0 {
		c.PublishInterval = d.PublishInterval
	}
	if c.StatusSignal == "" {
		c.StatusSignal = d.StatusSignal
	}
	if c.StreamHeartbeat == 0 {
		c.StreamHeartbeat = d.StreamHeartbeat
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = d.MaxClockSkew
	}
	return c
}

// RegisterFlags declares the flags, with DefaultConfig's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	c.Kafka.RegisterFlags(fs, DefaultClientID)
	fs.StringVar(&c.Listen, "listen", d.Listen, "HTTP address for the API, the dashboard, /metrics, /healthz and /readyz")
	fs.StringVar(&c.Topic, "topic", d.Topic, "Kafka topic of telemetry batches")
	fs.StringVar(&c.CatalogTopic, "catalog-topic", d.CatalogTopic, "log-compacted Kafka topic of the signal catalogs batches may refer to")
	fs.StringVar(&c.LocationTopic, "location-topic", d.LocationTopic, "log-compacted Kafka topic of latest positions to publish to and bootstrap from (empty: disabled)")
	fs.IntVar(&c.LocationPartitions, "location-partitions", d.LocationPartitions, "partitions when creating --location-topic (-1: the broker's default)")
	fs.IntVar(&c.LocationReplication, "location-replication", d.LocationReplication, "replication factor when creating --location-topic (-1: the broker's default)")
	fs.DurationVar(&c.Lookback, "lookback", d.Lookback, "on start, consume telemetry from now minus this")
	fs.DurationVar(&c.StaleAfter, "stale-after", d.StaleAfter, "vehicles whose newest fix is older than this drop out of nearby queries")
	fs.DurationVar(&c.PublishInterval, "publish-interval", d.PublishInterval, "publish each vehicle's position to --location-topic at most once per this interval")
	fs.StringVar(&c.StatusSignal, "status-signal", d.StatusSignal, "name of the string signal holding the vehicle status (available, busy, offline, ...)")
	fs.DurationVar(&c.StreamHeartbeat, "stream-heartbeat", d.StreamHeartbeat, "heartbeat interval of idle Server-Sent Event streams")
	fs.DurationVar(&c.MaxClockSkew, "max-clock-skew", d.MaxClockSkew, "refuse fixes and statuses stamped later than now plus this")
}

// Validate names the flag of the first bad setting.
func (c Config) Validate() error {
	if err := c.Kafka.Validate(); err != nil {
		return err
	}
	_, port, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return cli.FieldError("listen", "%q: want host:port, e.g. :8080", c.Listen)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return cli.FieldError("listen", "%q: port %q is not a number from 0 to 65535", c.Listen, port)
	}
	if c.Topic == "" {
		return cli.FieldError("topic", "must not be empty")
	}
	if c.CatalogTopic == "" || c.CatalogTopic == c.Topic || c.CatalogTopic == c.LocationTopic {
		return cli.FieldError("catalog-topic", "must be set and differ from --topic and --location-topic")
	}
	if c.LocationTopic == c.Topic {
		return cli.FieldError("location-topic", "must differ from --topic (%q)", c.Topic)
	}
	if c.LocationPartitions == 0 || c.LocationPartitions < -1 || c.LocationPartitions > math.MaxInt32 {
		return cli.FieldError("location-partitions", "%d: want -1 or a positive count", c.LocationPartitions)
	}
	if c.LocationReplication == 0 || c.LocationReplication < -1 || c.LocationReplication > math.MaxInt16 {
		return cli.FieldError("location-replication", "%d: want -1 or a positive count", c.LocationReplication)
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"lookback", c.Lookback},
		{"stale-after", c.StaleAfter},
		{"publish-interval", c.PublishInterval},
		{"stream-heartbeat", c.StreamHeartbeat},
		{"max-clock-skew", c.MaxClockSkew},
	} {
		if d.v <= 0 {
			return cli.FieldError(d.flag, "%v: must be positive", d.v)
		}
	}
	if c.StatusSignal == "" {
		return cli.FieldError("status-signal", "must not be empty")
	}
	return nil
}
