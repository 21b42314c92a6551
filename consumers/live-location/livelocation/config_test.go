package livelocation

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
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

func TestConfigFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(configDir(), "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no config files in %s: %v", configDir(), err)
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(name, func(t *testing.T) {
			_, err := parse(t, "--config", file)
			switch {
			case strings.HasSuffix(name, ".good.yaml"):
				if err != nil {
					t.Fatalf("good config rejected: %v", err)
				}
			case strings.HasSuffix(name, ".bad.yaml"):
				want := wantedFlag(t, file)
				if err == nil {
					t.Fatalf("bad config accepted; want an error naming --%s", want)
				}
				if !strings.Contains(err.Error(), "--"+want+":") && !strings.Contains(err.Error(), `"`+want+`"`) {
					t.Fatalf("error %q does not name --%s", err, want)
				}
			default:
				t.Fatalf("name neither *.good.yaml nor *.bad.yaml")
			}
		})
	}
}

// wantedFlag reads the "# want: <flag>" first line of a bad config file.
func wantedFlag(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	want, ok := strings.CutPrefix(sc.Text(), "# want: ")
	if !ok || want == "" {
		t.Fatalf("first line %q is not # want: <flag>", sc.Text())
	}
	return strings.TrimSpace(want)
}

func TestFullConfigFile(t *testing.T) {
	cfg, err := parse(t, "--config", filepath.Join(configDir(), "full.good.yaml"), "--stale-after", "3m")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Lookback != 15*time.Minute || cfg.StatusSignal != "ride_status" || cfg.LocationPartitions != 12 ||
		len(cfg.Kafka.Brokers) != 2 || cfg.StaleAfter != 3*time.Minute /* the flag wins over the file */ {
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
