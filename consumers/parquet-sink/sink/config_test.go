package sink_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/cli/clitest"
)

// program is how main.go runs the sink.
var program = cli.Program{Name: "parquet-sink", EnvPrefix: "FLEET_SINK"}

var configDir = filepath.Join("..", "..", "..", "testdata", "config", "parquet-sink")

func parseConfig(args ...string) (sink.Config, error) {
	var cfg sink.Config
	_, err := cli.Parse(program, &cfg, args, io.Discard)
	return cfg, err
}

// TestConfigFiles parses every testdata/config/parquet-sink file as
// `parquet-sink --config FILE` does.
func TestConfigFiles(t *testing.T) {
	t.Parallel()
	clitest.ConfigFiles(t, sink.Program, configDir, func() *sink.Config { return &sink.Config{} }, nil, 2, 6)
}

// TestConfigFileValues checks that every key of full.good.yaml reaches the
// configuration.
func TestConfigFileValues(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig("--config", filepath.Join(configDir, "full.good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]any{
		"brokers": strings.Join(cfg.Kafka.Brokers, ","), "client-id": cfg.Kafka.ClientID,
		"sasl":  cfg.Kafka.SASLMechanism + " " + cfg.Kafka.SASLUser + " " + cfg.Kafka.SASLPassword,
		"topic": cfg.Topic, "group": cfg.Group, "listen": cfg.Listen,
		"s3":         strings.Join([]string{cfg.S3.Endpoint, cfg.S3.Region, cfg.S3.Bucket, cfg.S3.Prefix, cfg.S3.AccessKey, cfg.S3.SecretKey}, " "),
		"path-style": cfg.S3.PathStyle, "max-file-rows": cfg.MaxFileRows, "max-file-bytes": cfg.MaxFileBytes,
		"max-file-age": cfg.MaxFileAge, "row-group-rows": cfg.RowGroupRows, "compression": cfg.Compression,
		"dedup-epochs": cfg.DedupEpochs, "memory-limit-bytes": cfg.MemoryLimit,
	}
	want := map[string]any{
		"brokers": "kafka-1:9092,kafka-2:9092", "client-id": "sink-eu-1",
		"sasl":  "scram-sha-512 fleet-sink not-a-real-password",
		"topic": "fleet.telemetry.v1", "group": "fleet-parquet-sink-eu", "listen": "0.0.0.0:9102",
		"s3":         "http://minio.internal:9000 eu-central-1 fleet-lake telemetry/v1/ fleet fleet-secret",
		"path-style": true, "max-file-rows": 1_000_000, "max-file-bytes": 128 << 20,
		"max-file-age": 150 * time.Second, "row-group-rows": 250_000, "compression": "snappy",
		"dedup-epochs": 4, "memory-limit-bytes": int64(512 << 20),
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
}

// TestConfigDefaults checks the documented defaults: zstd, and the
// telemetry topic.
func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := parseConfig("--config", filepath.Join(configDir, "minimal.good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Compression != "zstd" || cfg.Topic != "fleet.telemetry.v1" || cfg.S3.Bucket == "" || cfg.MaxFileAge != 5*time.Minute {
		t.Errorf("defaults: %+v", cfg)
	}
	if d := sink.DefaultConfig(); d.Compression != cfg.Compression || d.MaxFileRows != cfg.MaxFileRows || d.Group != cfg.Group {
		t.Errorf("DefaultConfig %+v differs from the flag defaults %+v", d, cfg)
	}
}

// TestConfigPrecedence: the file is overridden by the environment, which
// is overridden by flags.
func TestConfigPrecedence(t *testing.T) {
	t.Setenv("FLEET_SINK_MAX_FILE_ROWS", "5000")
	t.Setenv("FLEET_SINK_COMPRESSION", "gzip")
	cfg, err := parseConfig("--config", filepath.Join(configDir, "full.good.yaml"), "--compression", "none")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxFileRows != 5000 || cfg.Compression != "none" || cfg.DedupEpochs != 4 {
		t.Errorf("max-file-rows %d (env wins over file), compression %q (flag wins), dedup-epochs %d (file)",
			cfg.MaxFileRows, cfg.Compression, cfg.DedupEpochs)
	}
}

// TestConfigUnparseableValue: a value of the wrong type stops start-up
// with an error naming the setting.
func TestConfigUnparseableValue(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte("max-file-age: soon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Named as a flag, like every other configuration error.
	if _, err := parseConfig("--config", path); err == nil || !strings.Contains(err.Error(), "--max-file-age") {
		t.Fatalf("err %v, want one naming --max-file-age", err)
	}
}

// TestNewValidates: New refuses a configuration that Validate refuses,
// before binding anything.
func TestNewValidates(t *testing.T) {
	t.Parallel()
	cfg := sink.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.DedupEpochs = 0
	if _, err := sink.New(context.Background(), cfg, sink.Deps{}); err == nil || !strings.Contains(err.Error(), "--dedup-epochs") {
		t.Fatalf("New = %v, want an error naming --dedup-epochs", err)
	}
}
