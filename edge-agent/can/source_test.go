package can

import (
	"context"
	"errors"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ecan "go.einride.tech/can"
	"go.einride.tech/can/pkg/socketcan"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// counterValues reads a counter vector from the registry by label value.
func counterValues(t *testing.T, reg *prometheus.Registry, name string) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v != 0 {
				out[m.GetLabel()[0].GetValue()] = v
			}
		}
	}
	return out
}

func TestSourceFixtureAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	src, err := New(Config{DBC: fixture(fixtureDBC), Candump: fixture(fixtureLog),
		Collect: CollectConfig{Signals: []Rule{{Match: "ENGINE.*"}, {Match: "STEERING.ANGLE", Mode: ModeChange}}}},
		Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var got [][]wire.Reading
	if err := src.Run(context.Background(), emitReadings(func(rs []wire.Reading) { got = append(got, rs) })); err != nil {
		t.Fatal(err)
	}
	// ENGINE twice (7 signals), STEERING.ANGLE once: the second frame
	// repeats it.
	if len(got) != 3 || len(got[0]) != 7 || len(got[1]) != 1 || len(got[2]) != 7 {
		t.Fatalf("emitted %v", got)
	}
	if r := got[1][0]; r != (wire.Reading{Signal: "STEERING.ANGLE", Unit: "deg", Time: 1700000000_000350000, Value: wire.Float(-123.4), Scale: 0.1, Raw: -1234}) {
		t.Errorf("reading %+v", r)
	}
	frames := counterValues(t, reg, "fleet_agent_can_frames_total")
	wantFrames := map[string]float64{"decoded": 9, "dlc_mismatch": 1, "unknown_id": 1, "remote": 1, "can_fd": 1, "error_frame": 1, "bad_line": 2}
	readings := counterValues(t, reg, "fleet_agent_can_readings_total")
	// 34 values: 15 kept, STEERING.ANGLE once dropped as unchanged, the
	// other 18 (STEERING.RATE/STATUS, DIAG, CCVS, SHORT) not selected.
	wantReadings := map[string]float64{"collected": 15, "change": 1, "not_selected": 18}
	for k, v := range wantFrames {
		if frames[k] != v {
			t.Errorf("frames{result=%q} = %v, want %v (all: %v)", k, frames[k], v, frames)
		}
	}
	for k, v := range wantReadings {
		if readings[k] != v {
			t.Errorf("readings{result=%q} = %v, want %v (all: %v)", k, readings[k], v, readings)
		}
	}
	st := src.Stats()
	if st.Decoded != 9 || st.Readings != 15 || st.Dropped[DropNotSelected] != 18 || st.Skipped[ResultBadLine] != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestSourceErrors(t *testing.T) {
	if _, err := New(Config{DBC: "/nonexistent.dbc", Candump: "x"}, Deps{}); err == nil || !strings.Contains(err.Error(), "nonexistent.dbc") {
		t.Errorf("missing DBC: %v", err)
	}
	src, err := New(Config{DBC: fixture(fixtureDBC), Candump: "/nonexistent.log"}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(context.Background(), emitReadings(func([]wire.Reading) {})); err == nil || !strings.Contains(err.Error(), "nonexistent.log") {
		t.Errorf("missing log: %v", err)
	}
	if _, err := DecodeLog(nil, fixture(fixtureDBC), fixture(fixtureLog), fixture("collect/mode_unknown.bad.yaml")); err == nil ||
		!strings.Contains(err.Error(), "signals[0].mode") {
		t.Errorf("bad collect config: %v", err)
	}
}

// TestSourceRealtime replays a log in real time: the first two frames
// 20 ms apart arrive, the third is an hour later, and cancelling the
// context ends Run without it.
func TestSourceRealtime(t *testing.T) {
	log := filepath.Join(t.TempDir(), "slow.log")
	lines := "(100.000000) can0 400#0100\n(100.020000) can0 400#0200\n(3700.000000) can0 400#0300\n"
	if err := os.WriteFile(log, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := New(Config{DBC: fixture(fixtureDBC), Candump: log, Realtime: true}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan wire.Reading, 3)
	done := make(chan error)
	start := time.Now()
	go func() {
		done <- src.Run(ctx, emitReadings(func(rs []wire.Reading) { got <- rs[0] }))
	}()
	for _, want := range []int64{1, 2} {
		r := <-got
		if r.Value.Int != want {
			t.Fatalf("got %+v, want SHORT.VALUE %d", r, want)
		}
	}
	if elapsed := time.Since(start); elapsed < 20*time.Millisecond {
		t.Errorf("second frame after %v: a 20 ms log gap was not paced", elapsed)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 || src.Stats().Decoded != 2 {
		t.Errorf("after cancel: %d more readings, stats %+v", len(got), src.Stats())
	}
}

// TestSourceLiveSocketCANFraming runs the live path over a pipe that
// carries the kernel's 16-byte SocketCAN frames, written with einride's
// transmitter: what is not exercised is only the AF_CAN socket itself (see
// TestSourceLiveVCAN).
func TestSourceLiveSocketCANFraming(t *testing.T) {
	agentEnd, busEnd := net.Pipe()
	src, err := New(Config{DBC: fixture(fixtureDBC), Interface: "can-test"}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	src.dial = func(_ context.Context, iface string) (net.Conn, error) {
		if iface != "can-test" {
			return nil, errors.New("wrong interface " + iface)
		}
		return agentEnd, nil
	}
	checkLive(t, src, func(ctx context.Context, f ecan.Frame) error {
		return socketcan.NewTransmitter(busEnd).TransmitFrame(ctx, f)
	})
	busEnd.Close()
}

// checkLive runs src, sends the fixture's STEERING and extended CCVS frames
// through send, and checks the readings and that cancelling stops Run.
func checkLive(t *testing.T, src *Source, send func(context.Context, ecan.Frame) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan []wire.Reading, 10)
	done := make(chan error, 1)
	before := time.Now().UnixNano()
	go func() { done <- src.Run(ctx, emitReadings(func(rs []wire.Reading) { got <- rs })) }()
	steer, _ := ParseCandumpLine([]byte("(1) can0 200#FB2E3A59"))
	ccvs, _ := ParseCandumpLine([]byte("(1) can0 18FEF100#FF0019200000AC41"))
	unknown, _ := ParseCandumpLine([]byte("(1) can0 7FF#00"))
	for _, f := range []ecan.Frame{steer.Frame, unknown.Frame, ccvs.Frame} {
		if err := send(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	var rs []wire.Reading
	for len(rs) < 6 {
		select {
		case r := <-got:
			rs = append(rs, r...)
		case err := <-done:
			t.Fatalf("Run ended early: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("timed out with readings %v", rs)
		}
	}
	if rs[0].Signal != "STEERING.ANGLE" || rs[0].Value != wire.Float(-123.4) || rs[3].Signal != "CCVS.WHEEL_SPEED" ||
		rs[3].Value != wire.Float(25) || rs[5].Value != wire.Float(21.5) || rs[0].Time < before {
		t.Errorf("readings %+v", rs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	if st := src.Stats(); st.Decoded != 2 || st.Skipped[ResultUnknownID] != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestSourceLiveVCAN reads a real SocketCAN interface: a vcan interface
// (FLEET_TEST_VCAN, default vcan0), created when missing if this process
// may. It is skipped, with the reason, where the kernel has no vcan or no
// AF_CAN (as in containers and sandboxes without the can modules).
func TestSourceLiveVCAN(t *testing.T) {
	iface := os.Getenv("FLEET_TEST_VCAN")
	if iface == "" {
		iface = "vcan0"
	}
	if _, err := net.InterfaceByName(iface); err != nil {
		reason := iface + " does not exist"
		out, err := exec.Command("ip", "link", "add", "dev", iface, "type", "vcan").CombinedOutput()
		if err != nil {
			reason += "; `ip link add dev " + iface + " type vcan`: " + err.Error() + ": " + strings.TrimSpace(string(out))
			if fd, serr := unix.Socket(unix.AF_CAN, unix.SOCK_RAW, unix.CAN_RAW); serr != nil {
				reason += "; socket(AF_CAN): " + serr.Error()
			} else {
				unix.Close(fd)
			}
			t.Skip("SocketCAN test needs a vcan interface: " + reason + " (load the vcan module, or set FLEET_TEST_VCAN)")
		}
		t.Cleanup(func() { _ = exec.Command("ip", "link", "delete", iface).Run() })
		if out, err := exec.Command("ip", "link", "set", "up", iface).CombinedOutput(); err != nil {
			t.Fatalf("ip link set up %s: %v: %s", iface, err, out)
		}
	}
	src, err := New(Config{DBC: fixture(fixtureDBC), Interface: iface}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	bus, err := socketcan.DialContext(context.Background(), "can", iface)
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close()
	tx := socketcan.NewTransmitter(bus)
	// A bus delivers frames to the sockets bound at the time: send once the
	// source's socket is (its dial has returned).
	bound := make(chan struct{})
	dial := src.dial
	src.dial = func(ctx context.Context, iface string) (net.Conn, error) {
		defer close(bound)
		return dial(ctx, iface)
	}
	checkLive(t, src, func(ctx context.Context, f ecan.Frame) error {
		select {
		case <-bound:
		case <-time.After(10 * time.Second):
			return errors.New("the source did not open the interface within 10s")
		}
		return tx.TransmitFrame(ctx, f)
	})
}

// TestRealPairs checks the facts SOURCES.txt states about the real DBC +
// log pairs.
func TestRealPairs(t *testing.T) {
	for _, tc := range []struct {
		name, dbc, log            string
		frames, decoded           uint64
		skipped                   map[FrameResult]uint64
		rangeSignal               string
		min, max                  float64
		speedSignals              []string
		speedMin, speedMax        float64
		firstTime, lastTime       int64
		zeroSignals, constSignals []string
	}{
		{name: "civic", dbc: civicDBC, log: civicLog, frames: 28835, decoded: 16032,
			skipped:     map[FrameResult]uint64{ResultUnknownID: 12803},
			rangeSignal: "STEERING_SENSORS.STEER_ANGLE", min: -273.6, max: 156.5,
			speedSignals: []string{"WHEEL_SPEEDS.WHEEL_SPEED_FL", "WHEEL_SPEEDS.WHEEL_SPEED_FR", "WHEEL_SPEEDS.WHEEL_SPEED_RL",
				"WHEEL_SPEEDS.WHEEL_SPEED_RR", "CAR_SPEED.CAR_SPEED", "ENGINE_DATA.XMISSION_SPEED"},
			speedMin: 9.4, speedMax: 9.6, firstTime: 1674148739_212487000, lastTime: 1674148804_693505000},
		{name: "kona", dbc: konaDBC, log: konaLog, frames: 17173, decoded: 14250,
			skipped:     map[FrameResult]uint64{ResultUnknownID: 638, ResultDLCMismatch: 2285},
			rangeSignal: "SAS11.SAS_Angle", min: -56, max: 26.6,
			speedSignals: []string{"WHL_SPD11.WHL_SPD_FL", "WHL_SPD11.WHL_SPD_FR", "WHL_SPD11.WHL_SPD_RL", "WHL_SPD11.WHL_SPD_RR",
				"CLU11.CF_Clu_Vanz", "LVR12.CF_Lvr_Gear"},
			speedMin: 0, speedMax: 0, firstTime: 1733187989_936605000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, err := New(Config{DBC: testenv.SharedData(t, tc.dbc), Candump: testenv.SharedData(t, tc.log)}, Deps{})
			if err != nil {
				t.Fatal(err)
			}
			lo, hi := map[string]float64{}, map[string]float64{}
			var first, last int64
			if err := src.Run(context.Background(), emitReadings(func(rs []wire.Reading) {
				if first == 0 {
					first = rs[0].Time
				}
				last = rs[0].Time
				for _, r := range rs {
					v := r.Value.Float
					if r.Value.Kind == wire.KindInt {
						v = float64(r.Value.Int)
					}
					if old, ok := lo[r.Signal]; !ok || v < old {
						lo[r.Signal] = v
					}
					if old, ok := hi[r.Signal]; !ok || v > old {
						hi[r.Signal] = v
					}
				}
			})); err != nil {
				t.Fatal(err)
			}
			st := src.Stats()
			t.Logf("%s: %d frames, %d decoded (%.1f%%), %d readings, %.1f per decoded frame, skipped %v", tc.name, st.Frames(), st.Decoded,
				100*float64(st.Decoded)/float64(st.Frames()), st.Readings, float64(st.Readings)/float64(st.Decoded), st.Skipped)
			if st.Frames() != tc.frames || st.Decoded != tc.decoded || !statsEqual(Stats{Skipped: st.Skipped}, Stats{Skipped: tc.skipped}) {
				t.Errorf("frames %d decoded %d skipped %v; want %d, %d, %v", st.Frames(), st.Decoded, st.Skipped, tc.frames, tc.decoded, tc.skipped)
			}
			if lo[tc.rangeSignal] != tc.min || hi[tc.rangeSignal] != tc.max {
				t.Errorf("%s from %v to %v, want %v to %v", tc.rangeSignal, lo[tc.rangeSignal], hi[tc.rangeSignal], tc.min, tc.max)
			}
			top := math.Inf(-1)
			for _, s := range tc.speedSignals {
				if _, ok := hi[s]; !ok {
					t.Errorf("no %s readings", s)
				}
				top = math.Max(top, hi[s])
				if lo[s] != 0 {
					t.Errorf("%s starts at %v, want 0 (parked at key-on)", s, lo[s])
				}
			}
			if top < tc.speedMin || top > tc.speedMax {
				t.Errorf("top speed %v, want %v..%v", top, tc.speedMin, tc.speedMax)
			}
			if first != tc.firstTime || (tc.lastTime != 0 && last != tc.lastTime) {
				t.Errorf("readings from %d to %d", first, last)
			}
		})
	}
}

// emitReadings adapts a test's callback to source.Emit: it gets each
// Items' readings, copied (the source reuses them).
func emitReadings(f func([]wire.Reading)) source.Emit {
	return func(it source.Items) {
		if len(it.Readings) > 0 {
			f(slices.Clone(it.Readings))
		}
	}
}
