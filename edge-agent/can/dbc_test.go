package can

import (
	"bytes"
	"flag"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ecan "go.einride.tech/can"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/can golden files")

func fixtureDir() string { return filepath.Join(testenv.RepoRoot(), "testdata", "can") }

func fixture(name string) string { return filepath.Join(fixtureDir(), name) }

// The shared recordings (../shared/data, see SOURCES.txt).
const (
	civicDBC   = "honda_civic_hatchback_ex_2017_can_generated.dbc"
	civicLog   = "civic_typer_2019_turnonanddrive.candump.log"
	konaDBC    = "hyundai_kia_generic.dbc"
	konaLog    = "hyundai_kona_turnonlog.candump.log"
	teslaDBC   = "tesla_can.dbc"
	toyotaDBC  = "toyota_nodsu_pt_generated.dbc"
	fixtureDBC = "test.dbc"
	fixtureLog = "test.candump.log"
)

func loadFixtureDBC(t testing.TB) *Decoder {
	t.Helper()
	d, err := LoadDBC(fixture(fixtureDBC))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestParseSharedDBCs parses the four real opendbc files. Their counts are
// the BO_/SG_ statements in each file, less what no frame can carry.
func TestParseSharedDBCs(t *testing.T) {
	for _, tc := range []struct {
		file               string
		messages, signals  int
		multiplexed        int // messages with a multiplexer switch
		warnings           int
		warningMentions    string
		message, signal    string // one signal to look at
		factor, offset     float64
		bigEndian, signed_ bool
	}{
		// 45 BO_, 363 SG_: LKAS_HUD_A/B (IDs 13274/13275, 38 signals) are
		// not valid 11-bit IDs; two CM_ lines lack their signal name.
		{civicDBC, 43, 325, 0, 4, "13274", "STEERING_SENSORS", "STEER_ANGLE", -0.1, 0, true, true},
		// Two CM_ lines lack the BO_ keyword.
		{konaDBC, 146, 1323, 2, 2, "CM_ 145", "SAS11", "SAS_Angle", 0.1, 0, false, true},
		{teslaDBC, 44, 572, 2, 0, "", "DI_torque2", "DI_vehicleSpeed", 0.05, -25, false, false},
		// One VAL_ lacks its ';'.
		{toyotaDBC, 57, 357, 0, 1, "VAL_ 865", "STEER_ANGLE_SENSOR", "STEER_ANGLE", 1.5, 0, true, true},
	} {
		t.Run(tc.file, func(t *testing.T) {
			d, err := LoadDBC(testenv.SharedData(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			mux := 0
			for _, m := range d.Messages() {
				if m.mux != nil {
					mux++
				}
			}
			if len(d.Messages()) != tc.messages || len(d.Signals()) != tc.signals || mux != tc.multiplexed {
				t.Errorf("%d messages, %d signals, %d multiplexed; want %d, %d, %d",
					len(d.Messages()), len(d.Signals()), mux, tc.messages, tc.signals, tc.multiplexed)
			}
			if len(d.Warnings()) != tc.warnings || (tc.warnings > 0 && !strings.Contains(strings.Join(d.Warnings(), "\n"), tc.warningMentions)) {
				t.Errorf("warnings %q: want %d mentioning %q", d.Warnings(), tc.warnings, tc.warningMentions)
			}
			var s *Signal
			for _, x := range d.Signals() {
				if x.FullName == tc.message+"."+tc.signal {
					s = x
				}
			}
			if s == nil {
				t.Fatalf("no signal %s.%s", tc.message, tc.signal)
			}
			if s.Factor != tc.factor || s.Offset != tc.offset || s.BigEndian != tc.bigEndian || s.Signed != tc.signed_ {
				t.Errorf("%s: %+v", s.FullName, *s)
			}
		})
	}
}

func TestParseDBCErrors(t *testing.T) {
	head := "VERSION \"\"\nBS_:\nBU_: A\n"
	for _, tc := range []struct{ dbc, want string }{
		{"BO_ 1 M: 2 A\n SG_ S : 8|9@1+ (1,0) [0|0] \"\" A\n", "bits 8..16 (Intel) outside the 2-byte message"},
		{"BO_ 1 M: 2 A\n SG_ S : 15|10@0+ (1,0) [0|0] \"\" A\n", "(Motorola) run past the 2-byte message"},
		{"BO_ 1 M: 2 A\n SG_ S : 16|1@1+ (1,0) [0|0] \"\" A\n", "start bit 16 outside"},
		{"BO_ 1 M: 8 A\n SG_ S : 0|0@1+ (1,0) [0|0] \"\" A\n", "want 1..64 bits"},
		{"BO_ 1 M: 8 A\n SG_ S : 0|8@1+ (1,0) [0|0] \"\" A\n SG_ S : 8|8@1+ (1,0) [0|0] \"\" A\n", "M.S: defined twice"},
		{"BO_ 1 M: 8 A\n SG_ S m1 : 0|8@1+ (1,0) [0|0] \"\" A\n", "no multiplexer switch"},
		{"BO_ 1 M: 8 A\n SG_ S M : 0|8@1+ (1,0) [0|0] \"\" A\n SG_ T M : 8|8@1+ (1,0) [0|0] \"\" A\n", "second multiplexer switch"},
		{"BO_ 1 M: 8 A\n SG_ S : 0|8@1+ (1,0) [0|0] \"\" A\nBO_ 1 N: 8 A\n", "already used by M"},
		{"BO_ 1 M: 8 A\n SG_ S : 0|8@1+ (1,0) [0|0] \"\" A\nSIG_VALTYPE_ 1 S : 1;\n", "value type 1 does not fit 8 bits"},
		{"BO_ 1 M: 8 A\n SG_ S : 0|8@1+ 1,0) [0|0] \"\" A\n", "test.dbc:4"},
		{"BO_ x M: 8 A\n", "test.dbc:4"},
	} {
		_, err := ParseDBC("test.dbc", []byte(head+tc.dbc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want an error mentioning %q", tc.dbc, err, tc.want)
		}
	}
	// What is tolerated, with a warning each.
	d, err := ParseDBC("ok.dbc", []byte(head+`
BO_ 1 M: 8 A
 SG_ S : 0|8@1+ (1,0) [0|0] "" A

BO_ 4096 BAD_ID: 8 A
 SG_ T : 0|8@1+ (1,0) [0|0] "" A

BO_ 2 FD: 64 A
 SG_ U : 0|8@1+ (1,0) [0|0] "" A

CM_ SG_ 1 "no signal name";
CM_ "multi-line
comment; with a semicolon";
VAL_ 1 S 0 "zero" 1 "one"
VAL_ 1 S 0 "zero";
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Messages()) != 1 || len(d.Warnings()) != 4 {
		t.Errorf("messages %d, warnings %q", len(d.Messages()), d.Warnings())
	}
	for i, want := range []string{"ok.dbc:8: ignored message", "ok.dbc:14: ignored malformed CM_", "ok.dbc:17: ignored malformed VAL_", "message FD: 64 bytes is CAN FD"} {
		found := false
		for _, w := range d.Warnings() {
			found = found || strings.Contains(w, want)
		}
		if !found {
			t.Errorf("warning %d: want one mentioning %q in %q", i, want, d.Warnings())
		}
	}
}

type want struct {
	signal string
	raw    int64
	phys   float64
	value  wire.Value
}

// TestDecodeFixture checks values worked out by hand from the bit layouts in
// testdata/can/test.dbc.
func TestDecodeFixture(t *testing.T) {
	d := loadFixtureDBC(t)
	i, f := wire.Int, wire.Float
	for _, tc := range []struct {
		line string
		want []want
	}{
		// RPM 0x1F40=8000*0.25; coolant 0x82=130-40; throttle 125*0.4;
		// torque 12 bits 0xF9C = -100 *0.5; gear = high nibble of 0x3F;
		// counter 7; engine on = bit 63.
		{"(1700000000.000100) can0 100#401F827D9C3F0780", []want{
			{"ENGINE.RPM", 8000, 2000, f(2000)}, {"ENGINE.COOLANT_TEMP", 130, 90, f(90)},
			{"ENGINE.THROTTLE", 125, 50, f(50)}, {"ENGINE.TORQUE", -100, -50, f(-50)},
			{"ENGINE.GEAR", 3, 3, i(3)}, {"ENGINE.COUNTER", 7, 7, i(7)}, {"ENGINE.ENGINE_ON", 1, 1, i(1)}}},
		// Motorola: angle = bytes 0-1 big-endian 0xFB2E = -1234 * 0.1;
		// rate = byte 2 then the high nibble of byte 3 = 0x3A5; status =
		// low nibble of byte 3.
		{"(1) can0 200#FB2E3A59", []want{
			{"STEERING.ANGLE", -1234, -123.4, f(-123.4)}, {"STEERING.RATE", 933, 933, i(933)}, {"STEERING.STATUS", 9, 9, i(9)}}},
		// Multiplexer 0: battery 0x3039=12345*0.001; ambient 0xF6=-10*0.5.
		{"(1) can0 300#003930F60000002A", []want{
			{"DIAG.MUX", 0, 0, i(0)}, {"DIAG.BATTERY_V", 12345, 12.345, f(12.345)},
			{"DIAG.AMBIENT_T", -10, -5, f(-5)}, {"DIAG.ALWAYS", 42, 42, i(42)}}},
		// Multiplexer 1: odometer 0x0012D687 = 1234567 * 0.1, which in
		// float64 is 123456.70000000001 (cantools agrees); fuel 100*0.5.
		{"(1) can0 300#0187D61200640001", []want{
			{"DIAG.MUX", 1, 1, i(1)}, {"DIAG.ODOMETER", 1234567, 123456.70000000001, f(123456.70000000001)},
			{"DIAG.FUEL", 100, 50, f(50)}, {"DIAG.ALWAYS", 1, 1, i(1)}}},
		// Multiplexer 2 has no multiplexed signals: only the switch and
		// the plain signal (cantools refuses such a frame instead).
		{"(1) can0 300#02000000000000FF", []want{{"DIAG.MUX", 2, 2, i(2)}, {"DIAG.ALWAYS", 255, 255, i(255)}}},
		// Extended ID; speed 0x1900/256; brake bits 28-29; a float32
		// (SIG_VALTYPE_ 1) 0x41AC0000 = 21.5.
		{"(1) can0 18FEF100#FF0019200000AC41", []want{
			{"CCVS.WHEEL_SPEED", 6400, 25, f(25)}, {"CCVS.BRAKE", 2, 2, i(2)}, {"CCVS.TEMP_F", 0x41AC0000, 21.5, f(21.5)}}},
		// Torque 0xFFF = -1 * 0.5; coolant raw 0 is -40.
		{"(1) can0 100#00000000FF0F0000", []want{
			{"ENGINE.RPM", 0, 0, f(0)}, {"ENGINE.COOLANT_TEMP", 0, -40, f(-40)},
			{"ENGINE.THROTTLE", 0, 0, f(0)}, {"ENGINE.TORQUE", -1, -0.5, f(-0.5)},
			{"ENGINE.GEAR", 0, 0, i(0)}, {"ENGINE.COUNTER", 0, 0, i(0)}, {"ENGINE.ENGINE_ON", 0, 0, i(0)}}},
	} {
		lf, err := ParseCandumpLine([]byte(tc.line))
		if err != nil {
			t.Fatal(err)
		}
		got, res := d.Decode(lf.Frame, nil)
		if res != ResultDecoded {
			t.Errorf("%s: %s", tc.line, res)
			continue
		}
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d values, want %d", tc.line, len(got), len(tc.want))
			continue
		}
		for k, w := range tc.want {
			g := got[k]
			if g.Signal.FullName != w.signal || g.Raw != w.raw || g.Physical != w.phys || g.Value() != w.value {
				t.Errorf("%s: got %s raw %d phys %v value %+v; want %s raw %d phys %v value %+v",
					tc.line, g.Signal.FullName, g.Raw, g.Physical, g.Value(), w.signal, w.raw, w.phys, w.value)
			}
		}
	}
	// What is skipped, and why.
	for line, res := range map[string]FrameResult{
		"(1) can0 400#010203":  ResultDLCMismatch,
		"(1) can0 7FF#00":      ResultUnknownID,
		"(1) can0 100#R8":      ResultRemote,
		"(1) can0 00000100#00": ResultUnknownID, // extended 0x100 is not standard 0x100
	} {
		lf, err := ParseCandumpLine([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if _, got := d.Decode(lf.Frame, nil); got != res {
			t.Errorf("%s: %s, want %s", line, got, res)
		}
	}
}

func TestSignExtendAndIntegers(t *testing.T) {
	if signExtend(0xFFF, 12) != -1 || signExtend(0x800, 12) != -2048 || signExtend(0x7FF, 12) != 2047 ||
		signExtend(1, 1) != -1 || signExtend(math.MaxUint64, 64) != -1 {
		t.Error("signExtend")
	}
	s := Signal{Factor: 1, Length: 64}
	if s.Integer() {
		t.Error("an unsigned 64-bit signal does not fit int64")
	}
	s.Signed = true
	if !s.Integer() {
		t.Error("a signed 64-bit signal does")
	}
}

// TestGolden runs DecodeLog over the fixture log; the golden file is
// refreshed with -update (and reviewed by hand: TestDecodeFixture holds the
// hand-computed values).
func TestGolden(t *testing.T) {
	var buf bytes.Buffer
	st, err := DecodeLog(&buf, fixture(fixtureDBC), fixture(fixtureLog), "")
	if err != nil {
		t.Fatal(err)
	}
	golden := fixture("test.golden.jsonl")
	if *update {
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("DecodeLog output differs from %s (run with -update to refresh):\n%s", golden, buf.String())
	}
	wantStats := Stats{Decoded: 9, Readings: 34, Dropped: map[DropReason]uint64{}, Skipped: map[FrameResult]uint64{
		ResultDLCMismatch: 1, ResultUnknownID: 1, ResultRemote: 1, ResultCANFD: 1, ResultErrorFrame: 1, ResultBadLine: 2}}
	if !statsEqual(st, wantStats) || st.Frames() != 16 {
		t.Errorf("stats %+v, want %+v", st, wantStats)
	}
}

func statsEqual(a, b Stats) bool {
	if a.Decoded != b.Decoded || a.Readings != b.Readings || len(a.Skipped) != len(b.Skipped) || len(a.Dropped) != len(b.Dropped) {
		return false
	}
	for k, v := range a.Skipped {
		if b.Skipped[k] != v {
			return false
		}
	}
	for k, v := range a.Dropped {
		if b.Dropped[k] != v {
			return false
		}
	}
	return true
}

// FuzzParseDBC checks that no DBC text makes ParseDBC or decoding with
// what it accepts panic.
func FuzzParseDBC(f *testing.F) {
	seed, err := os.ReadFile(fixture(fixtureDBC))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(seed), []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add("BO_ 1 M: 8 A\n SG_ S M : 0|64@0- (1,0) [0|0] \"\" A\n SG_ T m3 : 63|1@1+ (1,0) [0|0] \"\" A\n", []byte{0xFF, 3})
	f.Fuzz(func(t *testing.T, src string, data []byte) {
		d, err := ParseDBC("fuzz.dbc", []byte(src))
		if err != nil {
			return
		}
		var frame ecan.Frame
		frame.Length = uint8(copy(frame.Data[:], data))
		for _, m := range d.Messages() {
			frame.ID, frame.IsExtended, frame.Length = m.ID, m.Extended, m.Length
			d.Decode(frame, nil)
		}
	})
}
