package livelocation

import (
	"io"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/cli/clitest"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

func configDir() string {
	return filepath.Join(testenv.RepoRoot(), "testdata", "config", "live-location")
}

func parse(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	var cfg Config
	_, err := cli.Parse(Program, &cfg, args, io.Discard)
	return cfg, err
}

// TestConfigFiles parses every testdata/config/live-location file as
// `live-location --config FILE` does.
func TestConfigFiles(t *testing.T) {
	clitest.ConfigFiles(t, Program, configDir(), func() *Config { return &Config{} }, nil, 1, 3)
}

func TestFullConfigFile(t *testing.T) {
	cfg, err := parse(t, "--config", filepath.Join(configDir(), "full.good.yaml"), "--stale-after", "3m")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Lookback != 15*time.Minute || cfg.StatusSignal != "ride_status" || cfg.LocationPartitions != 12 ||
		len(cfg.Kafka.Brokers) != 2 || cfg.StaleAfter != 3*time.Minute /* the flag wins over the file */ ||
		cfg.Group != "live-location-eu" || cfg.TTL != 2*time.Hour || cfg.TrackVehicles != 5000 || len(cfg.HealthTargets) != 2 ||
		cfg.MapTiles != "https://tiles.example.com/{z}/{x}/{y}.png" || cfg.GCPercent != 200 || cfg.MemoryLimit != 2<<30 {
		t.Fatalf("parsed %+v", cfg)
	}
	cfg, err = parse(t, "--config", filepath.Join(configDir(), "no-location-topic.good.yaml"))
	if err != nil || cfg.LocationTopic != "" {
		t.Fatalf("location topic %q, err %v; want it disabled", cfg.LocationTopic, err)
	}
}

func TestFlagDefaultsAreDefaultConfig(t *testing.T) {
	cfg, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultConfig(); !reflect.DeepEqual(cfg, want) {
		t.Fatalf("flag defaults\n%+v\nDefaultConfig\n%+v", cfg, want)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestZeroConfigTakesDefaults(t *testing.T) {
	got := Config{Kafka: DefaultConfig().Kafka}.withDefaults()
	want := DefaultConfig()
	want.LocationTopic = "" // the one field whose zero value means "off"
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("zero config with defaults\n%+v\nwant\n%+v", got, want)
	}
	if err := got.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{}).withDefaults().Validate(); err == nil || !strings.Contains(err.Error(), "--kafka-brokers") {
		t.Fatalf("no brokers: %v", err)
	}
}
