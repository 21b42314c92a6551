package agent

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/capture"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// brakeRules captures the brake, the accelerations and the wheel speeds
// 2 s before and 1 s after each brake press. On the Civic drive: seven
// presses, two of them a second apart in one window, so six windows.
const brakeRules = `rules:
  - name: brake
    when: POWERTRAIN_DATA.BRAKE_PRESSED == 1
    before: 2s
    after: 1s
    signals: ["POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"]
`

// sparseCollect keeps only the car's speed, once a second, in the live
// stream: capture windows must still hold their signals at full rate.
const sparseCollect = `signals:
  - match: CAR_SPEED.CAR_SPEED
    mode: interval
    interval: 1s
`

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCaptureWindowsFromALogReplay replays the Civic drive with a sparse
// live stream and a brake rule, to a broker: the live batches carry no
// marker and one signal; the six windows arrive as marked batches, parts
// 0..n with the last final, holding every reading of their signals at full
// rate between their first and last reading, within the window's bounds,
// and no reading in two windows.
func TestCaptureWindowsFromALogReplay(t *testing.T) {
	dbc, log := testenv.SharedData(t, civicDBC), testenv.SharedData(t, civicLog)
	all := decodeLog(t, dbc, log)
	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := replayConfig(t, broker.URL(), dbc, log, false)
	canOf(cfg).CollectFile = writeFile(t, "collect.yaml", sparseCollect)
	cfg.CaptureRules = writeFile(t, "capture.yaml", brakeRules)
	if err := runAgent(t, context.Background(), cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}
	type win struct {
		trigger  int64
		parts    []uint32
		final    bool
		readings []wire.Reading
	}
	windows := map[uint64]*win{}
	for _, b := range batchesInOrder(got, cfg.VehicleID) {
		if b.Capture == nil {
			for _, r := range b.Readings {
				if r.Signal != "CAR_SPEED.CAR_SPEED" {
					t.Fatalf("live batch %v holds %s, which the collection config leaves out", b.Identity, r.Signal)
				}
			}
			continue
		}
		c := b.Capture
		if c.Rule != "brake" {
			t.Fatalf("batch %v of rule %q", b.Identity, c.Rule)
		}
		w := windows[c.ID]
		if w == nil {
			if c.Part != 0 || c.ID != b.Seq {
				t.Fatalf("window %d first seen at part %d, seq %d: a window's id is its first part's seq", c.ID, c.Part, b.Seq)
			}
			w = &win{trigger: c.TriggerTime}
			windows[c.ID] = w
		}
		w.parts = append(w.parts, c.Part)
		w.final = w.final || c.Final
		w.readings = append(w.readings, b.Readings...)
	}
	if len(windows) != 6 {
		t.Fatalf("%d brake windows, want 6", len(windows))
	}
	selected := func(sig string) bool {
		for _, g := range []string{"POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"} {
			if ok, _ := path.Match(g, sig); ok {
				return true
			}
		}
		return false
	}
	seen := map[string]uint64{}
	for id, w := range windows {
		for i, p := range w.parts {
			if p != uint32(i) {
				t.Fatalf("window %d parts %v", id, w.parts)
			}
		}
		if !w.final {
			t.Errorf("window %d has no final part", id)
		}
		lo, hi := w.readings[0].Time, w.readings[0].Time
		for _, r := range w.readings {
			lo, hi = min(lo, r.Time), max(hi, r.Time)
			if !selected(r.Signal) {
				t.Fatalf("window %d holds %s", id, r.Signal)
			}
			k := fmt.Sprintf("%s@%d", r.Signal, r.Time)
			if other, dup := seen[k]; dup {
				t.Fatalf("reading %s in windows %d and %d", k, other, id)
			}
			seen[k] = id
		}
		if lo < w.trigger-int64(2*time.Second) || hi > w.trigger+int64(3*time.Second) {
			t.Errorf("window %d spans %v..%v around its trigger", id, time.Duration(lo-w.trigger), time.Duration(hi-w.trigger))
		}
		want := 0
		for _, r := range all {
			// Times on the wire are 0.1 ms ticks from the batch's base.
			if selected(r.Signal) && r.Time >= lo && r.Time < hi+100_000 {
				want++
			}
		}
		if len(w.readings) != want {
			t.Errorf("window %d: %d readings, the log has %d of its signals from %v to %v", id, len(w.readings), want, lo, hi)
		}
		if !slices.ContainsFunc(w.readings, func(r wire.Reading) bool { return r.Signal == "KINEMATICS.LONG_ACCEL" }) {
			t.Errorf("window %d lacks KINEMATICS.LONG_ACCEL, a signal the live stream leaves out", id)
		}
	}
}

// TestBadCaptureRulesFailAtStart: a rule that does not compile for the
// vehicle's signals stops the agent at start-up, naming the flag, the rule
// and the field.
func TestBadCaptureRulesFailAtStart(t *testing.T) {
	dbc, log := testenv.SharedData(t, civicDBC), testenv.SharedData(t, civicLog)
	cfg := replayConfig(t, "tcp://127.0.0.1:1", dbc, log, false)
	cfg.CaptureRules = writeFile(t, "capture.yaml", "rules:\n  - {name: x, when: POWERTRAIN_DATA.BRAKE_PRESED == 1, after: 1s}\n")
	reg := prometheus.NewRegistry()
	_, err := New(cfg, Deps{Logger: mqtttest.Logger(t), Registerer: reg, Gatherer: reg})
	if err == nil || !strings.Contains(err.Error(), "--capture-rules") || !strings.Contains(err.Error(), "rules[0].when") ||
		!strings.Contains(err.Error(), "did you mean POWERTRAIN_DATA.BRAKE_PRESSED") {
		t.Fatalf("New = %v", err)
	}
	cfg.CaptureRules = writeFile(t, "capture.yaml", "rules:\n  - {name: x, when: 1 > 0}\n")
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "--capture-rules") || !strings.Contains(err.Error(), "rules[0].after") {
		t.Fatalf("Validate = %v", err)
	}
}

// hupChildMain runs the agent as the edge-agent binary would (owning the
// process) on the rules file the parent names, until SIGTERM.
func hupChildMain() {
	var cfg Config
	args := strings.Fields(os.Getenv("FLEET_TEST_HUP_ARGS"))
	logger, err := cli.Parse(Program, &cfg, args, os.Stderr)
	if err != nil {
		childFail(err)
	}
	os.Exit(cli.RunUntilSignal(logger, func(ctx context.Context, _ *slog.Logger) error {
		reg := prometheus.NewRegistry()
		a, err := New(cfg, Deps{Logger: logger, Registerer: reg, Gatherer: reg, OwnProcess: true})
		if err != nil {
			return err
		}
		return a.Run(ctx)
	}))
}

// TestSIGHUPReloadsCaptureRules: the agent reloads its rules file on
// SIGHUP, keeps the rules in force when the new file is bad, and says so.
func TestSIGHUPReloadsCaptureRules(t *testing.T) {
	dbc := filepath.Join(testenv.RepoRoot(), "testdata", "can", "test.dbc")
	logFile := filepath.Join(testenv.RepoRoot(), "testdata", "can", "test.candump.log")
	rules := writeFile(t, "capture.yaml", "rules:\n  - {name: hot, when: ENGINE.COOLANT_TEMP > 100, after: 1s}\n")
	args := []string{"--source", "can", "--vehicle-id", "hup-0001", "--can-dbc", dbc, "--can-candump", logFile,
		"--capture-rules", rules, "--spool-dir", t.TempDir(), "--mqtt-url", "tcp://127.0.0.1:1", "--listen=",
		"--timer-slack", "0", "--cpus", "none", "--log-format", "json"}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), slackChild+"=hup", "FLEET_TEST_HUP_ARGS="+strings.Join(args, " "))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitLine := func(want ...string) string {
		t.Helper()
		deadline := time.After(waitLimit)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the agent exited before logging %q", want)
				}
				if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(l, w) }) {
					return l
				}
			case <-deadline:
				t.Fatalf("no log line with %q", want)
			}
		}
	}
	waitLine("edge agent starting")
	if err := os.WriteFile(rules, []byte("rules:\n  - {name: hot, when: ENGINE.COOLANTTEMP > 100, after: 1s}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLine("capture rules not reloaded", "did you mean ENGINE.COOLANT_TEMP")
	if err := os.WriteFile(rules, []byte("rules:\n  - {name: hot, when: ENGINE.COOLANT_TEMP > 100, after: 1s}\n  - {name: rev, when: ENGINE.RPM > 6000, after: 1s}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLine("capture rules reloaded", `"rules":2`)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitLine("edge agent stopped")
}

// TestShippedCaptureRules compiles the rule files that ship: the deploy
// example for its DBC, and the ten rules make bench runs on the
// simulator's signals.
func TestShippedCaptureRules(t *testing.T) {
	sim, err := simOf(DefaultConfig()).Signals()
	if err != nil {
		t.Fatal(err)
	}
	d, err := can.LoadDBC(testenv.SharedData(t, civicDBC))
	if err != nil {
		t.Fatal(err)
	}
	for file, signals := range map[string][]wire.SignalSpec{
		filepath.Join("edge-agent", "deploy", "capture.example.yaml"):       d.SignalSpecs(),
		filepath.Join("compose", "loadtest", "agentload", "ten-rules.yaml"): sim,
	} {
		cfg, err := capture.LoadConfig(filepath.Join(testenv.RepoRoot(), file))
		if err != nil {
			t.Fatal(err)
		}
		nop := func(*capture.Batch) (uint64, error) { return 1, nil }
		if _, err := capture.New(cfg, signals, capture.Options{}, capture.Deps{Spool: nop}); err != nil {
			t.Errorf("%s: %v", file, err)
		}
	}
}
