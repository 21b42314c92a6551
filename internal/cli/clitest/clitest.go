// Package clitest checks a binary's configuration files the way the binary
// reads them, for the table tests over testdata/config/{binary}/.
package clitest

import (
	"bufio"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// ConfigFiles parses every dir/*.yaml as `program --config FILE` does:
// each *.good.yaml must be accepted (and pass checkGood, if given), each
// *.bad.yaml rejected with an error naming the flag its first line gives
// as `# want: <flag>`. It fails unless there are at least minGood good and
// minBad bad files.
func ConfigFiles[C cli.Config](t *testing.T, program cli.Program, dir string, newConfig func() C,
	checkGood func(t *testing.T, cfg C), minGood, minBad int) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var good, bad int
	for _, file := range files {
		name := filepath.Base(file)
		switch {
		case strings.HasSuffix(name, ".good.yaml"):
			good++
		case strings.HasSuffix(name, ".bad.yaml"):
			bad++
		}
		t.Run(name, func(t *testing.T) {
			cfg := newConfig()
			_, err := cli.Parse(program, cfg, []string{"--config", file}, io.Discard)
			switch {
			case strings.HasSuffix(name, ".good.yaml"):
				if err != nil {
					t.Fatalf("good config rejected: %v", err)
				}
				if checkGood != nil {
					checkGood(t, cfg)
				}
			case strings.HasSuffix(name, ".bad.yaml"):
				want := WantedFlag(t, file)
				if err == nil {
					t.Fatalf("bad config accepted; want an error naming --%s", want)
				}
				if !strings.Contains(err.Error(), "--"+want) {
					t.Fatalf("error %q does not name --%s", err, want)
				}
			default:
				t.Fatal("name must end in .good.yaml or .bad.yaml")
			}
		})
	}
	if good < minGood || bad < minBad {
		t.Fatalf("%s: %d good and %d bad config files; want at least %d and %d", dir, good, bad, minGood, minBad)
	}
}

// WantedFlag reads the `# want: <flag>` first line of a bad config file.
func WantedFlag(t *testing.T, file string) string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	want, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "# want:")
	if !ok || strings.TrimSpace(want) == "" {
		t.Fatalf("%s: first line %q is not \"# want: <flag>\"", file, sc.Text())
	}
	return strings.TrimSpace(want)
}
