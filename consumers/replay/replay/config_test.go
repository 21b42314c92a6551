package replay

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// TestConfigFiles parses every testdata/config/replay file as `replay
// --config FILE` would: *.good.yaml must be accepted, *.bad.yaml rejected
// with an error naming the flag on its first line (`# want: <flag>`).
func TestConfigFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "testdata", "config", "replay", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var good, bad int
	for _, path := range files {
		t.Run(filepath.Base(path), func(t *testing.T) {
			var cfg Config
			_, err := cli.Parse(program, &cfg, []string{"--config", path}, &bytes.Buffer{})
			switch {
			case strings.HasSuffix(path, ".good.yaml"):
				good++
				if err != nil {
					t.Fatal(err)
				}
			case strings.HasSuffix(path, ".bad.yaml"):
				bad++
				want := wantFlag(t, path)
				if err == nil || !strings.Contains(err.Error(), "--"+want+":") {
					t.Fatalf("err %v, want one naming --%s", err, want)
				}
			default:
				t.Fatal("name must end in .good.yaml or .bad.yaml")
			}
		})
	}
	if good == 0 || bad == 0 {
		t.Fatalf("%d good and %d bad files", good, bad)
	}
}

func TestConfigFileValues(t *testing.T) {
	var cfg Config
	path := filepath.Join("..", "..", "..", "testdata", "config", "replay", "offset-range.good.yaml")
	if _, err := cli.Parse(program, &cfg, []string{"--config", path, "--end-offset", "1400"}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if cfg.Partition != 3 || cfg.StartOffset != 1200 || cfg.EndOffset != 1400 || !cfg.FailOnBad || cfg.Target != TargetStdout {
		t.Fatalf("config %+v (flags must override the file)", cfg)
	}
}

func wantFlag(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	want, ok := strings.CutPrefix(sc.Text(), "# want: ")
	if !ok || want == "" {
		t.Fatalf("first line %q is not `# want: <flag-name>`", sc.Text())
	}
	return strings.TrimSpace(want)
}
