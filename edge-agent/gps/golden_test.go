package gps

import (
	"bytes"
	"encoding/json"
	"flag"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/gps/")

// fixtureDir is the project's own GPS fixtures and golden outputs.
func fixtureDir() string { return filepath.Join(testenv.RepoRoot(), "testdata", "gps") }

// goldenFix is one fix as a golden line: NaN is null, time is also shown
// readably so a reviewer can check it against the raw sentence.
type goldenFix struct {
	Time     string   `json:"time"`
	TimeNS   int64    `json:"time_ns"`
	Lat      float64  `json:"lat"`
	Lon      float64  `json:"lon"`
	Alt      *float64 `json:"alt"`
	Speed    *float64 `json:"speed"`
	Heading  *float64 `json:"heading"`
	Accuracy *float64 `json:"accuracy"`
}

func optional(v float64) *float64 {
	if math.IsNaN(v) {
		return nil
	}
	return &v
}

// goldenLines renders fixes and the decoder's counts as JSON lines.
func goldenLines(t *testing.T, fixes []wire.Fix, st Stats) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, f := range fixes {
		g := goldenFix{
			Time: time.Unix(0, f.Time).UTC().Format(time.RFC3339Nano), TimeNS: f.Time,
			Lat: f.Lat, Lon: f.Lon,
			Alt: optional(f.Alt), Speed: optional(f.Speed), Heading: optional(f.Heading), Accuracy: optional(f.Accuracy),
		}
		if err := enc.Encode(g); err != nil {
			t.Fatal(err)
		}
	}
	if err := enc.Encode(map[string]any{"stats": st}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkGolden compares got with testdata/gps/name, or rewrites it with -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join(fixtureDir(), name)
	if *update {
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test ./edge-agent/gps -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the decoder's output; if on purpose, check the diff by hand and run with -update\ngot:\n%s", name, got)
	}
}
