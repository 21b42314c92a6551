package can

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestCollectConfigFiles checks every testdata/can/collect/*.yaml: good
// files load and bind to the fixture DBC; bad ones fail with the error
// their first line names ("# error: ...").
func TestCollectConfigFiles(t *testing.T) {
	dec := loadFixtureDBC(t)
	files, err := filepath.Glob(filepath.Join(fixtureDir(), "collect", "*.yaml"))
	if err != nil || len(files) < 10 {
		t.Fatalf("%d config files, %v", len(files), err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			cfg, err := LoadCollectConfig(file)
			if err == nil {
				_, err = newCollector(cfg, dec)
			}
			if strings.HasSuffix(file, ".good.yaml") {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			first, _, _ := strings.Cut(readFile(t, file), "\n")
			wantErr, ok := strings.CutPrefix(first, "# error: ")
			if !ok {
				t.Fatalf("bad config file without a first line \"# error: ...\"")
			}
			if err == nil || !strings.Contains(err.Error(), wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, wantErr)
			}
		})
	}
}

func readFile(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestCollectExample binds the shipped example config to the Civic DBC it
// was written for and runs it over the Civic log.
func TestCollectExample(t *testing.T) {
	cfg, err := LoadCollectConfig(fixture("collect.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{DBC: testenv.SharedData(t, civicDBC), Candump: testenv.SharedData(t, civicLog), Collect: cfg}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	times := map[string][]int64{}
	values := map[string][]float64{}
	if err := src.Run(context.Background(), emitReadings(func(rs []wire.Reading) {
		for _, r := range rs {
			times[r.Signal] = append(times[r.Signal], r.Time)
			values[r.Signal] = append(values[r.Signal], r.Value.Float)
		}
	})); err != nil {
		t.Fatal(err)
	}
	st := src.Stats()
	if st.Decoded != 16032 || st.Values() != 100207 {
		t.Errorf("decoded %d frames with %d values, want 16032 and 100207 as without a config", st.Decoded, st.Values())
	}
	// Each kept value obeys its rule. (The log is bursty, so counts are
	// not simply duration/interval.)
	fl := len(times["WHEEL_SPEEDS.WHEEL_SPEED_FL"])
	for _, w := range []string{"FL", "FR", "RL", "RR"} {
		ts := times["WHEEL_SPEEDS.WHEEL_SPEED_"+w]
		if len(ts) != fl || fl == 0 {
			t.Errorf("WHEEL_SPEED_%s: %d readings, FL %d", w, len(ts), fl)
		}
		for i := 1; i < len(ts); i++ {
			if ts[i]-ts[i-1] < 100e6 {
				t.Fatalf("WHEEL_SPEED_%s readings %d ns apart", w, ts[i]-ts[i-1])
			}
		}
	}
	ts, vs := times["CAR_SPEED.CAR_SPEED"], values["CAR_SPEED.CAR_SPEED"]
	for i := 1; i < len(ts); i++ {
		if !(math.Abs(vs[i]-vs[i-1]) > 0.5 || ts[i]-ts[i-1] >= 1e9) {
			t.Fatalf("CAR_SPEED kept %v after %v only %d ns later", vs[i], vs[i-1], ts[i]-ts[i-1])
		}
	}
	for _, s := range []string{"STEERING_SENSORS.STEER_ANGLE", "ENGINE_DATA.XMISSION_SPEED", "ENGINE_DATA.ENGINE_RPM", "KINEMATICS.LAT_ACCEL"} {
		if len(times[s]) == 0 {
			t.Errorf("no %s readings", s)
		}
	}
	if len(times["GEARBOX.GEAR"]) != 0 {
		t.Error("the Type R is a manual: no GEARBOX frames expected")
	}
	t.Logf("example config keeps %d of %d values (%.1f%%): %v", st.Readings, st.Values(),
		100*float64(st.Readings)/float64(st.Values()), st.Dropped)
}

// engineLog writes a candump log of 21 ENGINE frames 10 ms apart: RPM raw
// values rpm[i], THROTTLE raw i, COOLANT raw 100, COUNTER i.
func engineLog(t *testing.T, rpm []int) string {
	t.Helper()
	var b strings.Builder
	for i, r := range rpm {
		fmt.Fprintf(&b, "(1700000000.%06d) can0 100#%02X%02X%02X%02X0000%02X00\n", i*10000, r&0xFF, r>>8, 100, i, i)
	}
	name := filepath.Join(t.TempDir(), "engine.log")
	if err := os.WriteFile(name, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return name
}

// TestCollectModes runs every mode over synthetic frames and checks which
// frames each signal is kept from.
func TestCollectModes(t *testing.T) {
	rpm := []int{0, 0, 0, 4, 4, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 9, 40}
	cfg, err := LoadCollectConfig(fixture("collect/all_modes.good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	src, err := newSource(Config{Candump: engineLog(t, rpm), Collect: cfg}, loadFixtureDBC(t), Deps{})
	if err != nil {
		t.Fatal(err)
	}
	kept := map[string][]int{} // signal -> frame indices
	if err := src.Run(context.Background(), emitReadings(func(rs []wire.Reading) {
		for _, r := range rs {
			i := int((r.Time - 1700000000e9) / 10e6)
			kept[r.Signal] = append(kept[r.Signal], i)
		}
	})); err != nil {
		t.Fatal(err)
	}
	all := make([]int, 21)
	for i := range all {
		all[i] = i
	}
	for signal, want := range map[string][]int{
		// change + 100 ms heartbeat: first, the changes at 3 and 5, the
		// heartbeat 100 ms after frame 5, the changes at 19 and 20.
		"ENGINE.RPM": {0, 3, 5, 15, 19, 20},
		// interval 50 ms.
		"ENGINE.COOLANT_TEMP": {0, 5, 10, 15, 20},
		// deadband 1.0 on 0.4*i: a step of 3 frames moves 1.2 > 1.0.
		"ENGINE.THROTTLE": {0, 3, 6, 9, 12, 15, 18},
		"ENGINE.COUNTER":  all,
	} {
		if !slices.Equal(kept[signal], want) {
			t.Errorf("%s kept at frames %v, want %v", signal, kept[signal], want)
		}
	}
	if len(kept) != 4 {
		t.Errorf("kept signals %v: TORQUE, GEAR and ENGINE_ON match no rule", kept)
	}
	st := src.Stats()
	wantDropped := map[DropReason]uint64{DropChange: 15, DropInterval: 16, DropDeadband: 14, DropNotSelected: 63}
	if st.Readings != 6+5+7+21 || len(st.Dropped) != 4 {
		t.Errorf("stats %+v", st)
	}
	for r, n := range wantDropped {
		if st.Dropped[r] != n {
			t.Errorf("dropped %s: %d, want %d", r, st.Dropped[r], n)
		}
	}
}

// TestCollectDeadbandHeartbeatAndClockJumps drives the collector directly.
func TestCollectDeadbandHeartbeatAndClockJumps(t *testing.T) {
	dec := loadFixtureDBC(t)
	var rpm *Signal
	for _, s := range dec.Signals() {
		if s.FullName == "ENGINE.RPM" {
			rpm = s
		}
	}
	for _, tc := range []struct {
		rule  Rule
		steps []struct {
			ms   int64
			phys float64
		}
		want string // k = kept, - = dropped
	}{
		{Rule{Match: "ENGINE.RPM", Mode: ModeDeadband, Deadband: 10, Heartbeat: Duration(time.Second)},
			[]struct {
				ms   int64
				phys float64
			}{{0, 100}, {100, 105}, {200, 110}, {300, 110.25}, {400, 89}, {1300, 89}, {1400, 95}, {2400, 95}},
			// 5 and 10 are not MORE than 10 away; the heartbeat keeps 95.
			"k--kk-kk"},
		{Rule{Match: "ENGINE.RPM", Mode: ModeInterval, Interval: Duration(100 * time.Millisecond)},
			[]struct {
				ms   int64
				phys float64
			}{{1000, 1}, {1050, 1}, {1100, 1}, {500, 1}, {550, 1}, {600, 1}},
			"k-kk-k"}, // the clock stepping back to 500 restarts the rule
		{Rule{Match: "ENGINE.RPM", Mode: ModeChange},
			[]struct {
				ms   int64
				phys float64
			}{{0, 1}, {10, 1}, {20, 2}, {30, 2}, {40, 1}, {5, 1}},
			"k-k-kk"},
	} {
		col, err := newCollector(CollectConfig{Signals: []Rule{tc.rule}}, dec)
		if err != nil {
			t.Fatal(err)
		}
		var got strings.Builder
		for _, st := range tc.steps {
			v := Decoded{Signal: rpm, Raw: int64(st.phys * 4), Physical: st.phys}
			if ok, _ := col.keep(v, st.ms*1e6); ok {
				got.WriteByte('k')
			} else {
				got.WriteByte('-')
			}
		}
		if got.String() != tc.want {
			t.Errorf("%s: kept %s, want %s", tc.rule.Mode, got.String(), tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Candump: "x"}, "dbc: required"},
		{Config{DBC: "x"}, "candump: set candump (a log file) or interface (SocketCAN)"},
		{Config{DBC: "x", Candump: "y", Interface: "can0"}, "interface: set only one of candump and interface"},
		{Config{DBC: "x", Interface: "can0", Realtime: true}, "realtime: only for candump replay"},
		{Config{DBC: "x", Candump: "y", Collect: CollectConfig{Signals: []Rule{{Match: "*"}, {Match: "A.B", Mode: ModeDeadband}}}},
			"collect.signals[1].deadband: must be positive"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.want)
		}
	}
	// New reports a rule that matches nothing in the DBC, with the field.
	_, err := New(Config{DBC: fixture(fixtureDBC), Candump: fixture(fixtureLog),
		Collect: CollectConfig{Signals: []Rule{{Match: "ENGINE.*"}, {Match: "WHEEL_SPEEDS.*"}}}}, Deps{})
	if err == nil || !strings.Contains(err.Error(), `collect.signals[1].match: "WHEEL_SPEEDS.*" matches no signal`) {
		t.Errorf("got %v", err)
	}
}

// The example config's comment block documents every mode; keep it honest.
func TestCollectExampleDocumentsModes(t *testing.T) {
	f, err := os.Open(fixture("collect.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var doc strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "#") {
			doc.WriteString(sc.Text())
		}
	}
	for _, m := range []Mode{ModeEvery, ModeInterval, ModeChange, ModeDeadband, "heartbeat"} {
		if !strings.Contains(doc.String(), string(m)) {
			t.Errorf("collect.example.yaml does not document %s", m)
		}
	}
}
