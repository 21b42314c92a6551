package replay

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/cli/clitest"
)

// TestConfigFiles parses every testdata/config/replay file as
// `replay --config FILE` does.
func TestConfigFiles(t *testing.T) {
	clitest.ConfigFiles(t, program, filepath.Join("..", "..", "..", "testdata", "config", "replay"),
		func() *Config { return &Config{} }, nil, 1, 3)
}

func TestConfigFileValues(t *testing.T) {
	var cfg Config
	path := filepath.Join("..", "..", "..", "testdata", "config", "replay", "offset-range.good.yaml")
	if _, err := cli.Parse(program, &cfg, []string{"--config", path, "--offsets", "3:1200-1400"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if kind, dest := cfg.targetKind(); cfg.Offsets != "3:1200-1400" || !cfg.FailOnBad || kind != TargetJSONL || dest != "-" {
		t.Fatalf("config %+v (flags must override the file)", cfg)
	}
}
