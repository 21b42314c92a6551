// Package stack runs the whole pipeline in one process with nothing to
// install: an in-process MQTT broker (mochi-mqtt), an in-process
// Kafka-protocol cluster (franz-go's kfake), an in-process S3 endpoint that
// writes plain files under DataDir, the simulated fleet, the bridge, the
// Parquet sink and live-location with its dashboard.
//
// Every component talks to the embedded services over the network through
// the same client code it uses in production (paho, franz-go,
// aws-sdk-go-v2); only the addresses differ.
//
// Shutdown goes downstream: the fleet stops and waits briefly for its last
// acks, the bridge drains to Kafka, the sink writes out what it holds, then
// live-location and the services stop.
package stack

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/bridge/relay"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/livelocation"
	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/edge-agent/agent"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/s3local"
	"github.com/fleetpipe/fleetpipe/internal/topics"
)

// Config is the embedded stack's configuration.
type Config struct {
	DataDir     string
	Bucket      string
	MQTTAddr    string
	KafkaPort   int
	S3Addr      string
	HTTPAddr    string // dashboard and live-location API
	AgentAdmin  string
	BridgeAdmin string
	SinkAdmin   string
	Partitions  int

	Vehicles int
	Seed     uint64
	Speedup  float64
	IMUHz    int
	FileAge  time.Duration
	MapTiles string

	Foreground bool // main's business: see --foreground
}

// RegisterFlags declares the stack's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.DataDir, "data-dir", "data", "folder for the S3 objects (Parquet files land under DATA-DIR/s3/BUCKET/)")
	fs.StringVar(&c.Bucket, "bucket", "fleet", "S3 bucket the sink writes to")
	fs.StringVar(&c.MQTTAddr, "mqtt-addr", "127.0.0.1:1883", "address of the embedded MQTT broker")
	fs.IntVar(&c.KafkaPort, "kafka-port", 9092, "port of the embedded Kafka-protocol cluster (on 127.0.0.1)")
	fs.StringVar(&c.S3Addr, "s3-addr", "127.0.0.1:9000", "address of the embedded S3 endpoint")
	fs.StringVar(&c.HTTPAddr, "http-addr", "127.0.0.1:8080", "address of the dashboard and the live-location API")
	fs.StringVar(&c.AgentAdmin, "agent-admin-addr", "127.0.0.1:9100", "address of the simulated fleet's /metrics")
	fs.StringVar(&c.BridgeAdmin, "bridge-admin-addr", "127.0.0.1:9101", "address of the bridge's /metrics")
	fs.StringVar(&c.SinkAdmin, "sink-admin-addr", "127.0.0.1:9102", "address of the sink's /metrics")
	fs.IntVar(&c.Partitions, "partitions", 4, "partitions of the telemetry topic")
	fs.IntVar(&c.Vehicles, "vehicles", 50, "number of simulated vehicles")
	fs.Uint64Var(&c.Seed, "seed", 1, "simulator seed")
	fs.Float64Var(&c.Speedup, "speedup", 1, "simulated seconds per wall-clock second")
	fs.IntVar(&c.IMUHz, "imu-hz", 10, "simulated accelerometer rate in Hz (0: none)")
	fs.DurationVar(&c.FileAge, "file-age", 20*time.Second, "how often the sink writes Parquet files")
	fs.BoolVar(&c.Foreground, "foreground", false, "take the terminal's foreground process group, so that Ctrl-C reaches this program alone (make run sets it: make then exits 0 after a clean stop)")
	fs.StringVar(&c.MapTiles, "map-tiles", "", "raster tile URL template ({z}, {x}, {y}) for the dashboard's map, if your browser reaches a tile server (empty: a plain canvas)")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return cli.FieldError("data-dir", "must not be empty")
	case c.Vehicles < 1:
		return cli.FieldError("vehicles", "must be at least 1")
	case c.KafkaPort < 0 || c.KafkaPort > 65535:
		return cli.FieldError("kafka-port", "%d is not a port", c.KafkaPort)
	case c.Partitions < 1:
		return cli.FieldError("partitions", "must be at least 1")
	case c.Speedup < 0:
		return cli.FieldError("speedup", "must not be negative")
	case c.FileAge < time.Second:
		return cli.FieldError("file-age", "%v is below 1s", c.FileAge)
	}
	for flagName, addr := range map[string]string{"mqtt-addr": c.MQTTAddr, "s3-addr": c.S3Addr, "http-addr": c.HTTPAddr,
		"agent-admin-addr": c.AgentAdmin, "bridge-admin-addr": c.BridgeAdmin, "sink-admin-addr": c.SinkAdmin} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return cli.FieldError(flagName, "%q: want host:port", addr)
		}
	}
	return nil
}

// Run starts everything, prints where to look, and runs until ctx is
// cancelled. out receives the banner.
func Run(ctx context.Context, cfg Config, logger *slog.Logger, out io.Writer) error {
	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServices()
	services, _ := errgroup.WithContext(svcCtx)

	// Infrastructure.
	s3, err := s3local.New(s3local.Config{Dir: filepath.Join(cfg.DataDir, "s3"), Addr: cfg.S3Addr, Buckets: []string{cfg.Bucket}},
		s3local.Deps{Logger: logger.With("component", "s3local")})
	if err != nil {
		return err
	}
	services.Go(func() error { return s3.Run(svcCtx) })
	// The fleet's broker rule, as in production: each vehicle acts only
	// under its own ID; the bridge's account, with a password made for
	// this run, reads them all.
	bridgePassword := rand.Text()
	broker, err := embedmqtt.New(embedmqtt.Config{Addr: cfg.MQTTAddr, FleetACL: true, Services: map[string]string{bridgeUser: bridgePassword}},
		embedmqtt.Deps{Logger: cli.MinLevel(logger, slog.LevelWarn)})
	if err != nil {
		return err
	}
	services.Go(func() error { return broker.Run(svcCtx) })
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(cfg.KafkaPort),
		kfake.SeedTopics(int32(cfg.Partitions), topics.KafkaTelemetry, topics.KafkaDLQ),
		kfake.SeedTopics(1, topics.KafkaLocation, topics.KafkaCatalog))
	if err != nil {
		return fmt.Errorf("embedded kafka: %w", err)
	}
	defer kafka.Close()
	brokers := cli.StringList(kafka.ListenAddrs())

	// live-location and its dashboard.
	lc := livelocation.DefaultConfig()
	lc.Kafka.Brokers = brokers
	lc.Listen = cfg.HTTPAddr
	lc.MapTiles = cfg.MapTiles
	// The dashboard's health panel scrapes the other components.
	lc.HealthTargets = cli.StringList{"edge-agent=http://" + cfg.AgentAdmin + "/metrics",
		"bridge=http://" + cfg.BridgeAdmin + "/metrics", "parquet-sink=http://" + cfg.SinkAdmin + "/metrics"}
	live, err := livelocation.New(lc, livelocation.Deps{Logger: logger, Registerer: prometheus.NewRegistry()})
	if err != nil {
		return err
	}
	liveCtx, stopLive := context.WithCancel(svcCtx)
	defer stopLive()
	liveDone := goRun(func() error { return live.Run(liveCtx) })

	// The Parquet sink, against the embedded S3 endpoint.
	sc := sink.DefaultConfig()
	sc.Kafka.Brokers = brokers
	sc.S3 = objstore.Config{Endpoint: s3.URL(), Bucket: cfg.Bucket, AccessKey: "embedded", SecretKey: "embedded", PathStyle: true, Region: objstore.DefaultRegion}
	sc.Listen = cfg.SinkAdmin
	sc.MaxFileAge = cfg.FileAge
	// One process, one clock: a quiet partition is written as soon as its
	// window is --file-age old, and Ctrl-C writes what the sink holds.
	sc.QuietMargin = time.Second
	sc.FlushOnStop = true
	sc.ShutdownTimeout = 10 * time.Second
	sinkReg := prometheus.NewRegistry()
	pq, err := sink.New(ctx, sc, sink.Deps{Logger: logger.With("component", "parquet-sink"), Registerer: sinkReg, Gatherer: sinkReg})
	if err != nil {
		return err
	}
	sinkCtx, stopSink := context.WithCancel(svcCtx)
	defer stopSink()
	sinkDone := goRun(func() error { return pq.Run(sinkCtx) })

	// The bridge.
	bc := relay.DefaultConfig()
	bc.MQTT.URL = broker.URL()
	bc.MQTT.ClientID = "fleet-bridge-embedded"
	bc.MQTT.Username, bc.MQTT.Password = bridgeUser, bridgePassword
	bc.Kafka.Brokers = brokers
	bc.Listen = cfg.BridgeAdmin
	bc.BridgeID = "embedded"
	bc.CreateTopics = false // seeded above
	bridgeReg := prometheus.NewRegistry()
	br, err := relay.New(bc, relay.Deps{Logger: logger.With("component", "bridge"), Registerer: bridgeReg, Gatherer: bridgeReg})
	if err != nil {
		return err
	}
	bridgeCtx, stopBridge := context.WithCancel(svcCtx)
	defer stopBridge()
	bridgeDone := goRun(func() error { return br.Run(bridgeCtx) })

	// The simulated fleet.
	ac := agent.DefaultConfig()
	ac.MQTT.URL = broker.URL()
	simCfg := ac.Source("sim").(*sim.SourceConfig)
	simCfg.NumVehicles, simCfg.Seed, simCfg.Speedup, simCfg.IMUHz = cfg.Vehicles, cfg.Seed, cfg.Speedup, cfg.IMUHz
	ac.Listen = cfg.AgentAdmin
	ac.Spool.Dir = filepath.Join(cfg.DataDir, "spool")
	agentReg := prometheus.NewRegistry()
	fleet, err := agent.New(ac, agent.Deps{Logger: logger.With("component", "edge-agent"), Registerer: agentReg, Gatherer: agentReg})
	if err != nil {
		return err
	}
	agentDone := goRun(func() error { return fleet.Run(ctx) })

	printBanner(out, cfg, live.URL(), broker.URL(), brokers.String(), s3.URL(), br.AdminURL(), pq.AdminURL())

	// Wait for a signal (or a component failing), then stop downstream.
	var first error
	select {
	case <-ctx.Done():
	case first = <-agentDone:
		agentDone = nil
	case first = <-bridgeDone:
		bridgeDone = nil
	case first = <-sinkDone:
		sinkDone = nil
	case first = <-liveDone:
		liveDone = nil
	}
	errs := []error{first}
	wait := func(ch <-chan error, stop func()) {
		if stop != nil {
			stop()
		}
		if ch != nil {
			errs = append(errs, <-ch)
		}
	}
	wait(agentDone, nil) // the agent watches ctx itself
	wait(bridgeDone, stopBridge)
	wait(sinkDone, stopSink)
	wait(liveDone, stopLive)
	stopServices()
	errs = append(errs, services.Wait())
	var out2 []error
	for _, e := range errs {
		if e != nil && !errors.Is(e, context.Canceled) {
			out2 = append(out2, e)
		}
	}
	return errors.Join(out2...)
}

func goRun(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func printBanner(out io.Writer, cfg Config, liveURL, mqttURL, kafka, s3URL, bridgeAdmin, sinkAdmin string) {
	files := filepath.ToSlash(filepath.Join(cfg.DataDir, "s3", cfg.Bucket))
	if !filepath.IsAbs(files) {
		files = "./" + files
	}
	fmt.Fprintf(out, `
Fleet telemetry pipeline — embedded stack (%d simulated vehicles)

  dashboard   %s/
  nearby      %s/v1/vehicles/nearby?lat=37.9838&lon=23.7275&radius_m=2000
  MQTT        %s
  Kafka       %s
  S3          %s  (objects are plain files under %s/)
  metrics     agent http://%s/metrics  bridge %s/metrics  sink %s/metrics  live %s/metrics

Parquet files appear within %s. Query them with DuckDB:
  duckdb -c "SELECT signal, count(*) AS n, min(ts), max(ts) FROM read_parquet('%s/readings/**/*.parquet', hive_partitioning=true) GROUP BY signal ORDER BY n DESC"

Press Ctrl-C to stop (what is buffered is written out first).

`, cfg.Vehicles, liveURL, liveURL, mqttURL, kafka, s3URL, files, cfg.AgentAdmin, bridgeAdmin, sinkAdmin, liveURL,
		strconv.Itoa(int(cfg.FileAge.Seconds()))+"s", files)
}

// bridgeUser is the bridge's MQTT account on the embedded broker.
const bridgeUser = "fleet-bridge"
