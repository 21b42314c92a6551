package livelocation

import (
	"flag"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/pipehealth"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// Program describes the live-location binary to the cli package.
var Program = cli.Program{
	Name:      "live-location",
	EnvPrefix: "FLEET_LIVE_LOCATION",
	Summary: "live-location keeps each vehicle's latest position and status, answers nearby queries\n" +
		"over HTTP, streams changes as Server-Sent Events and serves the fleet dashboard. Replicas\n" +
		"share the telemetry topic in a consumer group: the owner of a vehicle's partition publishes\n" +
		"its changes to the log-compacted location topic (and tombstones it once evicted), and every\n" +
		"replica reads that topic, so each one answers for the whole fleet.",
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

	Listen              string         // --listen: HTTP address of the API, dashboard, /metrics, /healthz, /readyz; default ":8080"
	Topic               string         // --topic: telemetry topic; default "fleet.telemetry.v1"
	Group               string         // --group: consumer group sharing the telemetry topic among replicas; default "live-location"
	CatalogTopic        string         // --catalog-topic: log-compacted topic of signal catalogs; default "fleet.catalog.v1"
	LocationTopic       string         // --location-topic: log-compacted position topic; "" disables (DefaultConfig: "fleet.location.v1")
	LocationPartitions  int            // --location-partitions: partitions when creating the location topic; -1 (default): the broker's default
	LocationReplication int            // --location-replication: replication when creating it; -1 (default): the broker's default
	Lookback            time.Duration  // --lookback: start consuming telemetry at now minus this; default 10m
	StaleAfter          time.Duration  // --stale-after: vehicles without a newer fix drop out of nearby; default 2m
	PublishInterval     time.Duration  // --publish-interval: at most one position per vehicle per interval to the location topic; default 1s
	StatusSignal        string         // --status-signal: string signal holding the vehicle status; default "status"
	StreamHeartbeat     time.Duration  // --stream-heartbeat: heartbeat comment interval on idle event streams; default 15s
	MaxClockSkew        time.Duration  // --max-clock-skew: fixes and statuses later than now plus this are refused; default 5m
	TTL                 time.Duration  // --ttl: vehicles not heard from for this long are evicted (and tombstoned by their owner); default 1h
	SweepInterval       time.Duration  // --sweep-interval: how often stale vehicles are reclassified and expired ones evicted; default 5s
	TrackVehicles       int            // --track-vehicles: vehicles whose recent track and signals are kept; default 10000
	MapTiles            string         // --map-tiles: raster tile URL template for the dashboard, e.g. https://tile.example/{z}/{x}/{y}.png; "" (default): no tiles
	MapAttribution      string         // --map-attribution: attribution shown with --map-tiles
	HealthTargets       cli.StringList // --health-targets: name=URL of other services' /metrics for the dashboard's health panel
	GCPercent           int            // --gc-percent: the binary's GOGC (the GOGC variable wins); default 400; -1 leaves the runtime's 100 (see TuneProcess)
	MemoryLimit         int64          // --memory-limit-bytes: the binary's soft memory limit (GOMEMLIMIT wins); 0 (default): 80% of the cgroup's memory.max when there is one; -1: none
}

// Defaults.
const (
	DefaultListen          = ":8080"
	DefaultLookback        = 10 * time.Minute
	DefaultPublishInterval = time.Second
	DefaultStreamHeartbeat = 15 * time.Second
	DefaultClientID        = "live-location"
	DefaultGroup           = "live-location"
	DefaultSweepInterval   = 5 * time.Second
	// DefaultGCPercent is the binary's GOGC (see TuneProcess).
	DefaultGCPercent = 400
)

// DefaultConfig returns the configuration the flags default to, location
// topic included.
func DefaultConfig() Config {
	return Config{
		Kafka:               kafkaio.Config{Brokers: cli.StringList{"127.0.0.1:9092"}, ClientID: DefaultClientID},
		Listen:              DefaultListen,
		Topic:               topics.KafkaTelemetry,
		Group:               DefaultGroup,
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
		TTL:                 fleetstate.DefaultTTL,
		SweepInterval:       DefaultSweepInterval,
		TrackVehicles:       fleetstate.DefaultTrackVehicles,
		GCPercent:           DefaultGCPercent,
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
	if c.Group == "" {
		c.Group = d.Group
	}
	if c.TTL == 0 {
		c.TTL = d.TTL
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = d.SweepInterval
	}
	if c.TrackVehicles == 0 {
		c.TrackVehicles = d.TrackVehicles
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
	if c.GCPercent == 0 {
		c.GCPercent = d.GCPercent
	}
	return c
}

// RegisterFlags declares the flags, with DefaultConfig's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	c.Kafka.RegisterFlags(fs, DefaultClientID)
	fs.StringVar(&c.Listen, "listen", d.Listen, "HTTP address for the API, the dashboard, /metrics, /healthz and /readyz")
	fs.StringVar(&c.Topic, "topic", d.Topic, "Kafka topic of telemetry batches")
	fs.StringVar(&c.Group, "group", d.Group, "consumer group the replicas share the telemetry topic in (the owner of a partition publishes its vehicles' positions)")
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
	fs.DurationVar(&c.TTL, "ttl", d.TTL, "evict vehicles not heard from for this long (their owner tombstones them in --location-topic); at least --stale-after")
	fs.DurationVar(&c.SweepInterval, "sweep-interval", d.SweepInterval, "how often vehicles are checked for staleness and --ttl")
	fs.IntVar(&c.TrackVehicles, "track-vehicles", d.TrackVehicles, "vehicles whose recent track and latest signals are kept (every vehicle while there is room, then the ones asked for most recently)")
	fs.StringVar(&c.MapTiles, "map-tiles", d.MapTiles, "raster tile URL template ({z}, {x}, {y}) the dashboard draws under the vehicles, for browsers that reach a tile server (empty: none)")
	fs.StringVar(&c.MapAttribution, "map-attribution", d.MapAttribution, "attribution text shown with --map-tiles")
	fs.IntVar(&c.GCPercent, "gc-percent", d.GCPercent, "the Go collector's GOGC for this process (the GOGC variable wins): a higher value collects less often, which keeps query tails short, for more memory (peak heap about (1 + gc-percent/100) times the fleet's); -1: the runtime's 100")
	fs.Int64Var(&c.MemoryLimit, "memory-limit-bytes", d.MemoryLimit, "the Go runtime's soft memory limit for this process (GOMEMLIMIT wins); the collector runs as often as it must to stay under it: 0: 80% of the container's cgroup memory.max when it has one, -1: none")
	fs.Var(&c.HealthTargets, "health-targets", "comma-separated name=URL of other services' Prometheus /metrics, for the dashboard's pipeline health panel (this service is always shown)")
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
	if c.Group == "" {
		return cli.FieldError("group", "must not be empty")
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"ttl", c.TTL}, {"sweep-interval", c.SweepInterval}} {
		if d.v <= 0 {
			return cli.FieldError(d.flag, "%v: must be positive", d.v)
		}
	}
	if c.TTL < c.StaleAfter {
		return cli.FieldError("ttl", "%v is shorter than --stale-after (%v)", c.TTL, c.StaleAfter)
	}
	if c.GCPercent < -1 || (c.GCPercent >= 0 && c.GCPercent < 25) {
		return cli.FieldError("gc-percent", "%d: want -1 (the runtime's default) or at least 25", c.GCPercent)
	}
	if c.MemoryLimit < -1 || (c.MemoryLimit > 0 && c.MemoryLimit < 64<<20) {
		return cli.FieldError("memory-limit-bytes", "%d: want 0 (from the cgroup), -1 (none) or at least 64 MiB", c.MemoryLimit)
	}
	if c.TrackVehicles < 0 {
		return cli.FieldError("track-vehicles", "%d: must not be negative", c.TrackVehicles)
	}
	if c.MapTiles != "" {
		u, err := url.Parse(c.MapTiles)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			!strings.Contains(c.MapTiles, "{z}") || !strings.Contains(c.MapTiles, "{x}") || !strings.Contains(c.MapTiles, "{y}") {
			return cli.FieldError("map-tiles", "%q: want an http(s) URL template with {z}, {x} and {y}", c.MapTiles)
		}
	}
	if _, err := c.healthTargets(); err != nil {
		return err
	}
	return nil
}

// healthTargets parses --health-targets.
func (c Config) healthTargets() ([]pipehealth.Target, error) {
	var out []pipehealth.Target
	for _, t := range c.HealthTargets {
		name, raw, ok := strings.Cut(t, "=")
		u, err := url.Parse(raw)
		if !ok || name == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, cli.FieldError("health-targets", "%q: want name=http://host:port/metrics", t)
		}
		out = append(out, pipehealth.Target{Name: name, URL: raw})
	}
	return out, nil
}
