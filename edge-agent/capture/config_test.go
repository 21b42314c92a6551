package capture

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func fixtureSignals(t *testing.T) []wire.SignalSpec {
	t.Helper()
	d, err := can.LoadDBC(filepath.Join(testenv.RepoRoot(), "testdata", "can", "test.dbc"))
	if err != nil {
		t.Fatal(err)
	}
	return d.SignalSpecs()
}

// TestConfigFiles loads every testdata/capture file and compiles it for a
// vehicle with the test DBC: good ones are accepted, bad ones fail with
// the error their first line names ("# error: ...").
func TestConfigFiles(t *testing.T) {
	specs := fixtureSignals(t)
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "testdata", "capture", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("%d rule files, %v", len(files), err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			cfg, err := LoadConfig(file)
			if err == nil {
				_, err = New(cfg, specs, Options{}, Deps{Spool: nopSpool})
			}
			if strings.HasSuffix(file, ".good.yaml") {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			data, _ := os.ReadFile(file)
			first, _, _ := strings.Cut(string(data), "\n")
			want, ok := strings.CutPrefix(first, "# error: ")
			if !ok {
				t.Fatal(`a bad rule file's first line is not "# error: ..."`)
			}
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("got %v, want an error containing %q", err, want)
			}
		})
	}
}

// TestReloadKeepsStateOrRules: an unchanged rule keeps its buffer and its
// open window across a reload; a changed one closes its window (final) and
// starts afresh; a bad file changes nothing.
func TestReloadKeepsStateOrRules(t *testing.T) {
	var out collected
	keep := Rule{Name: "keep", When: "ENGINE.SPEED > 100", Before: cliSeconds(5), After: cliSeconds(5)}
	change := Rule{Name: "change", When: "ENGINE.RPM > 5000", Before: cliSeconds(5), After: cliSeconds(5)}
	e, err := New(Config{Rules: []Rule{keep, change}}, testSignals, Options{Batch: testBatch}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	add := func(ms int, rs ...wire.Reading) {
		t.Helper()
		if err := e.Add(at(ms, rs...), 0); err != nil {
			t.Fatal(err)
		}
	}
	add(0, num("ENGINE.SPEED", 50), integer("ENGINE.RPM", 3000))
	add(100, num("ENGINE.SPEED", 120), integer("ENGINE.RPM", 6000)) // both trigger
	keepRule, changeRule := e.rules[0], e.rules[1]
	if keepRule.w == nil || changeRule.w == nil {
		t.Fatal("the rules did not trigger")
	}
	bad := Config{Rules: []Rule{keep, {Name: "change", When: "ENGINE.RPMM > 1", After: cliSeconds(1)}}}
	if err := e.Reload(bad); err == nil || !strings.Contains(err.Error(), "rules[1].when") {
		t.Fatalf("bad reload: %v", err)
	}
	if e.rules[1] != changeRule || changeRule.w == nil {
		t.Fatal("a failed reload changed the rules in force")
	}
	change.When = "ENGINE.RPM > 7000"
	if err := e.Reload(Config{Rules: []Rule{change, keep}}); err != nil {
		t.Fatal(err)
	}
	if e.rules[1] != keepRule || keepRule.w == nil || keepRule.index != 1 {
		t.Error("the unchanged rule lost its state")
	}
	if e.rules[0] == changeRule || e.rules[0].w != nil {
		t.Error("the changed rule kept its old state")
	}
	ws := out.windows(t, "change")
	if len(ws) != 1 || !ws[0].final {
		t.Errorf("the changed rule's open window was not closed final: %+v", ws)
	}
	add(200, num("ENGINE.SPEED", 130), integer("ENGINE.RPM", 8000))
	if e.rules[0].w == nil {
		t.Error("the new rule does not trigger")
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if ws := out.windows(t, "keep"); len(ws) != 1 || len(ws[0].readings) != 6 {
		t.Errorf("the kept rule's window: %+v; want one window of the 6 readings, before and after the reload", ws)
	}
}

// TestUnsampledAndFixesAreCaptured: readings the source's sampling kept
// out of the live stream, and the location fixes, are in the window, and
// a condition reads the fix's fields.
func TestUnsampledAndFixesAreCaptured(t *testing.T) {
	var out collected
	r := Rule{Name: "stop", When: "location.speed < 0.5", Before: cliSeconds(1), After: cliSeconds(1), Signals: []string{"ENGINE.*", Location}}
	e, err := New(Config{Rules: []Rule{r}}, testSignals, Options{Batch: testBatch}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	for i, speed := range []float64{3, 2, 0.2, 0.1, 1, 4} {
		ms := int64(i) * 400 * int64(time.Millisecond)
		it := source.Items{
			Readings:  []wire.Reading{{Signal: "ENGINE.SPEED", Time: t0 + ms, Value: wire.Float(speed * 3.6)}},
			Unsampled: []wire.Reading{{Signal: "ENGINE.RPM", Time: t0 + ms, Value: wire.Int(800)}},
			Fixes:     []wire.Fix{{Time: t0 + ms, Lat: 37.9, Lon: 23.7, Speed: speed, Alt: 10, Heading: 90, Accuracy: 3}},
		}
		if err := e.Add(it, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	var fixes int
	for _, p := range out.parts {
		fixes += len(p.Fixes)
		for _, f := range p.Fixes {
			if f.Lat != 37.9 || f.Accuracy != 3 {
				t.Errorf("fix came back as %+v", f)
			}
		}
	}
	ws := out.windows(t, "stop")
	// Triggered at 800 ms: the window is 0.0 to 1.8 s, the readings at
	// 400 ms steps from 0 to 1.6 s: five of each signal and five fixes.
	if len(ws) != 1 || len(ws[0].readings) != 10 || fixes != 5 {
		t.Fatalf("windows %+v with %d fixes; want one of 10 readings and 5 fixes", ws, fixes)
	}
}

// TestLiveWindowsCloseOnTheWallClock: with a live source, a window
// closes After past its trigger on the wall clock when no reading comes.
func TestLiveWindowsCloseOnTheWallClock(t *testing.T) {
	var out collected
	r := Rule{Name: "live", When: "ENGINE.SPEED > 100", After: cli.Duration(2 * time.Second)}
	e, err := New(Config{Rules: []Rule{r}}, testSignals, Options{Batch: testBatch, Live: true}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	if err := e.Add(at(0, num("ENGINE.SPEED", 120)), wall); err != nil {
		t.Fatal(err)
	}
	if err := e.Add(at(10, num("ENGINE.SPEED", 121)), wall+int64(10*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	next, ok := e.NextExpiry()
	if !ok || next > wall+int64(2*time.Second) {
		t.Fatalf("next expiry %v, %v; want by the window's end", next, ok)
	}
	if err := e.Expire(wall + int64(1500*time.Millisecond)); err != nil { // the part is a second old
		t.Fatal(err)
	}
	if err := e.Expire(wall + int64(2*time.Second)); err != nil { // the window's end
		t.Fatal(err)
	}
	ws := out.windows(t, "live")
	if len(ws) != 1 || !ws[0].final || len(ws[0].readings) != 2 {
		t.Fatalf("windows %+v; want one final window of both readings", ws)
	}
	if _, ok := e.NextExpiry(); ok {
		t.Error("an expiry is pending with no window open")
	}
}

// TestWindowWithoutAfter: a rule with no After sends its pre-trigger
// readings as one window whose last part is final, once.
func TestWindowWithoutAfter(t *testing.T) {
	var out collected
	r := Rule{Name: "snap", When: "ENGINE.SPEED > 100", Before: cliSeconds(1)}
	e, err := New(Config{Rules: []Rule{r}}, testSignals, Options{Batch: testBatch}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range []float64{50, 60, 120, 130, 40} {
		if err := e.Add(at(i*300, num("ENGINE.SPEED", v)), 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	finals := 0
	for _, p := range out.parts {
		if p.Capture.Final {
			finals++
		}
	}
	ws := out.windows(t, "snap")
	// At 600 ms: the readings from -400 ms on, that is at 0, 300 and 600.
	if len(ws) != 1 || finals != 1 || len(ws[0].readings) != 3 {
		t.Fatalf("windows %+v, %d final parts; want one window of 3 readings, one final part", ws, finals)
	}
}
