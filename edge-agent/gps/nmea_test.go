package gps

import (
	"bufio"
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// runFile reads an NMEA file through the public Source API, as the agent
// would, and returns the fixes, the decoder counts and the registry.
func runFile(t *testing.T, path string, edit func(*Config)) ([]wire.Fix, Stats, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Kind, cfg.Path = KindNMEA, path
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	src, err := New(cfg, Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	var fixes []wire.Fix
	if err := src.Run(context.Background(), emitFixes(func(f wire.Fix) { fixes = append(fixes, f) })); err != nil {
		t.Fatal(err)
	}
	return fixes, src.(*NMEASource).Stats(), reg
}

// metric returns the value of a counter in reg (0 when absent).
func metric(t *testing.T, reg prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				if !hasLabel(m, labels[i], labels[i+1]) {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// utc parses an RFC 3339 time to Unix nanoseconds.
func utc(t *testing.T, s string) int64 {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v.UnixNano()
}

// near compares floats; NaN equals NaN.
func near(got, want, tol float64) bool {
	if math.IsNaN(want) {
		return math.IsNaN(got)
	}
	return math.Abs(got-want) <= tol
}

// wantFix is a fix computed by hand from the raw sentences.
type wantFix struct {
	time                    string
	lat, lon                float64
	alt, speed, head, accur float64
}

func checkFix(t *testing.T, what string, got wire.Fix, w wantFix) {
	t.Helper()
	if got.Time != utc(t, w.time) {
		t.Errorf("%s: time %s, want %s", what, time.Unix(0, got.Time).UTC().Format(time.RFC3339Nano), w.time)
	}
	// 1e-9 degree is 0.1 mm: the hand computation, not a tolerance for error.
	if !near(got.Lat, w.lat, 1e-9) || !near(got.Lon, w.lon, 1e-9) {
		t.Errorf("%s: position %.10f,%.10f, want %.10f,%.10f", what, got.Lat, got.Lon, w.lat, w.lon)
	}
	if !near(got.Alt, w.alt, 1e-9) {
		t.Errorf("%s: alt %v, want %v", what, got.Alt, w.alt)
	}
	if !near(got.Speed, w.speed, 1e-12) {
		t.Errorf("%s: speed %v, want %v", what, got.Speed, w.speed)
	}
	if !near(got.Heading, w.head, 1e-9) {
		t.Errorf("%s: heading %v, want %v", what, got.Heading, w.head)
	}
	if !near(got.Accuracy, w.accur, 1e-9) {
		t.Errorf("%s: accuracy %v, want %v", what, got.Accuracy, w.accur)
	}
}

// rawCounts counts, independently of the decoder, the RMC and GGA lines of a
// recording and how many of them report a fix (RMC status A, GGA quality
// not 0), by splitting the text.
func rawCounts(t *testing.T, path string) (rmc, rmcValid, gga, ggaValid int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ",")
		if len(fields[0]) != 6 || fields[0][0] != '$' {
			continue
		}
		switch fields[0][3:] {
		case "RMC":
			rmc++
			if fields[2] == "A" {
				rmcValid++
			}
		case "GGA":
			gga++
			if fields[6] != "0" && fields[6] != "" {
				ggaValid++
			}
		}
	}
	return
}

func maxSpeed(fixes []wire.Fix) float64 {
	m := math.NaN()
	for _, f := range fixes {
		if !math.IsNaN(f.Speed) && !(f.Speed <= m) {
			m = f.Speed
		}
	}
	return m
}

// recording describes one real receiver log in ../shared/data and what
// SOURCES.txt and a reading of its sentences say about it.
type recording struct {
	file                  string
	rmc, rmcValid, gga    int
	fixes                 int
	noFix                 int // epochs the receiver flagged as without fix
	maxKnots              float64
	first, last           string
	spots                 map[int]wantFix // fix index -> hand-computed fix
	sentencesOK, noChksum int
}

var nan = math.NaN()

var recordings = []recording{
	{
		// No fix (4 empty RMC V / GGA 0 cycles), stationary 15:25:05-15:25:08.5,
		// then "moving in car" at 14:33: the splice goes back in time. The
		// moving part opens with a GGA whose RMC and VTG were cut off (its
		// date comes from the ZDA of the same second) and ends with an RMC
		// whose GGA was cut off.
		file: "gpsd_bt451.nmea.log", rmc: 17, rmcValid: 13, gga: 17,
		fixes: 14, noFix: 4, maxKnots: 32.273,
		first: "2009-12-09T15:25:05Z", last: "2009-12-09T14:33:08.5Z",
		spots: map[int]wantFix{
			// $GPRMC,152505.00,A,5547.82113,N,02334.14130,E,0.253,,091209,,,A
			// $GPGGA,152505.00,...,1,04,2.72,37.0,M,...   (VTG course empty too)
			0: {"2009-12-09T15:25:05Z", 55 + 47.82113/60, 23 + 34.14130/60, 37.0, 0.253 * 1852 / 3600, nan, 2.72 * 5},
			// $GPRMC,152507.00,A,5547.82139,N,02334.14105,E,0.371,16.99,091209
			// $GPGGA,152507.00,...,1,04,2.72,36.0,M
			4: {"2009-12-09T15:25:07Z", 55 + 47.82139/60, 23 + 34.14105/60, 36.0, 0.371 * 1852 / 3600, 16.99, 2.72 * 5},
			// $GPGGA,143306.00,5546.83315,N,02334.72613,E,1,08,1.28,129.9,M + $GPZDA,143306.00,09,12,2009
			8: {"2009-12-09T14:33:06Z", 55 + 46.83315/60, 23 + 34.72613/60, 129.9, nan, nan, 1.28 * 5},
			// $GPRMC,143306.50,A,5546.82983,N,02334.72123,E,30.324,221.16,091209
			// $GPGGA,143306.50,...,1,09,1.26,128.9,M
			9: {"2009-12-09T14:33:06.5Z", 55 + 46.82983/60, 23 + 34.72123/60, 128.9, 30.324 * 1852 / 3600, 221.16, 1.26 * 5},
			// $GPRMC,143308.50,A,5546.81633,N,02334.70079,E,32.273,221.54,091209 (last line of the file)
			13: {"2009-12-09T14:33:08.5Z", 55 + 46.81633/60, 23 + 34.70079/60, nan, 32.273 * 1852 / 3600, 221.54, nan},
		},
		sentencesOK: 17 * 4, // RMC, GGA, VTG and ZDA, empty ones included
	},
	{
		// Parked, driving from 09:15 (a 2.5 minute gap), stopped at 09:34
		// (a 20 minute gap). GN talker for the combined GPS+GLONASS fix.
		file: "gpsd_nl2008u.nmea.log", rmc: 9, rmcValid: 9, gga: 9,
		fixes: 9, maxKnots: 10.09,
		first: "2015-10-10T09:12:32Z", last: "2015-10-10T09:34:53Z",
		spots: map[int]wantFix{
			// $GNRMC,091232.000,A,4813.0535,N,00824.8697,E,0.00,0.00,101015
			// $GNGGA,091232.000,...,1,12,0.7,765.8,M
			0: {"2015-10-10T09:12:32Z", 48 + 13.0535/60, 8 + 24.8697/60, 765.8, 0, 0, 0.7 * 5},
			// $GNRMC,091507.000,A,4813.0407,N,00824.8685,E,10.09,187.74,101015
			// $GNGGA,091507.000,...,1,12,0.7,766.4,M
			6: {"2015-10-10T09:15:07Z", 48 + 13.0407/60, 8 + 24.8685/60, 766.4, 10.09 * 1852 / 3600, 187.74, 0.7 * 5},
			// $GNRMC,093453.000,A,4813.2480,N,00825.3129,E,0.00,281.08,101015
			// $GNGGA,093453.000,...,1,12,0.6,723.7,M
			8: {"2015-10-10T09:34:53Z", 48 + 13.2480/60, 8 + 25.3129/60, 723.7, 0, 281.08, 0.6 * 5},
		},
		sentencesOK: 9 + 9 + 9 + 9,
	},
	{
		// 7 seconds without fix (RMC V with a position, GGA 0), then a
		// 3-satellite 2-D fix (GGA quality 1 with HDOP 99.0 on two epochs),
		// then 5 satellites. Time stamps are not on whole seconds:
		// 10:21:43.990 and 10:21:48.020. The GPTXT banner has no checksum.
		file: "gpsd_sl869.nmea.log", rmc: 15, rmcValid: 8, gga: 15,
		fixes: 8, noFix: 7, maxKnots: 6.7,
		first: "2012-11-25T10:21:43Z", last: "2012-11-25T10:21:49Z",
		spots: map[int]wantFix{
			// $GPRMC,102143.000,A,3340.7732,S,15117.4478,E,6.7,155.1,251112,0.0,W
			// $GPGGA,102143.000,...,1,03,4.1,063.76,M
			0: {"2012-11-25T10:21:43Z", -(33 + 40.7732/60), 151 + 17.4478/60, 63.76, 6.7 * 1852 / 3600, 155.1, 4.1 * 5},
			// $GPRMC,102143.990,A,3340.7753,S,15117.4475,E,6.7,155.8,251112
			// $GPGGA,102143.990,...,1,03,99.0,063.79,M  (HDOP 99: accuracy unknown)
			1: {"2012-11-25T10:21:43.99Z", -(33 + 40.7753/60), 151 + 17.4475/60, 63.79, 6.7 * 1852 / 3600, 155.8, nan},
			// $GPRMC,102148.020,A,3340.8149,S,15117.4711,E,0.1,0.0,251112
			// $GPGGA,102148.020,...,1,05,2.0,082.56,M
			6: {"2012-11-25T10:21:48.02Z", -(33 + 40.8149/60), 151 + 17.4711/60, 82.56, 0.1 * 1852 / 3600, 0, 2.0 * 5},
			7: {"2012-11-25T10:21:49Z", -(33 + 40.8139/60), 151 + 17.4712/60, 83.12, 0.2 * 1852 / 3600, 0, 2.0 * 5},
		},
		sentencesOK: 15 + 15, noChksum: 1,
	},
}

func TestRecordings(t *testing.T) {
	for _, rec := range recordings {
		t.Run(rec.file, func(t *testing.T) {
			path := testenv.SharedData(t, rec.file)

			// What the file holds, counted without the decoder, matches
			// SOURCES.txt.
			rmc, rmcValid, gga, _ := rawCounts(t, path)
			if rmc != rec.rmc || rmcValid != rec.rmcValid || gga != rec.gga {
				t.Fatalf("raw counts RMC %d (%d valid), GGA %d; SOURCES.txt says %d (%d), %d",
					rmc, rmcValid, gga, rec.rmc, rec.rmcValid, rec.gga)
			}

			fixes, st, reg := runFile(t, path, nil)
			checkGolden(t, strings.TrimSuffix(rec.file, ".nmea.log")+".golden.jsonl", goldenLines(t, fixes, st))

			if st.Types["RMC"] != rec.rmc || st.Types["GGA"] != rec.gga {
				t.Errorf("decoder saw RMC %d, GGA %d; want %d, %d", st.Types["RMC"], st.Types["GGA"], rec.rmc, rec.gga)
			}
			if len(fixes) != rec.fixes {
				t.Fatalf("%d fixes, want %d", len(fixes), rec.fixes)
			}
			if got := time.Unix(0, fixes[0].Time).UTC(); got.UnixNano() != utc(t, rec.first) {
				t.Errorf("first fix at %v, want %s", got, rec.first)
			}
			if got := time.Unix(0, fixes[len(fixes)-1].Time).UTC(); got.UnixNano() != utc(t, rec.last) {
				t.Errorf("last fix at %v, want %s", got, rec.last)
			}
			if got, want := maxSpeed(fixes), KnotsToMPS(rec.maxKnots); got != want {
				t.Errorf("max speed %v m/s, want %v (%v kn)", got, want, rec.maxKnots)
			}
			for i, w := range rec.spots {
				checkFix(t, "fix "+strings.TrimSpace(time.Unix(0, fixes[i].Time).UTC().Format(time.RFC3339Nano)), fixes[i], w)
			}
			for i, f := range fixes {
				if f.Lat < -90 || f.Lat > 90 || f.Lon < -180 || f.Lon > 180 || math.IsNaN(f.Lat) || math.IsNaN(f.Lon) {
					t.Errorf("fix %d: position %v,%v out of range", i, f.Lat, f.Lon)
				}
			}

			// The metrics say the same as the decoder.
			if got := metric(t, reg, "fleet_agent_gps_fixes_total"); got != float64(rec.fixes) {
				t.Errorf("fleet_agent_gps_fixes_total = %v, want %d", got, rec.fixes)
			}
			if got := metric(t, reg, "fleet_agent_gps_epochs_dropped_total", "reason", DropNoFix); got != float64(rec.noFix) {
				t.Errorf("dropped no_fix = %v, want %d", got, rec.noFix)
			}
			if got := metric(t, reg, "fleet_agent_gps_sentences_total", "result", ResultOK); got != float64(rec.sentencesOK) {
				t.Errorf("sentences ok = %v, want %d", got, rec.sentencesOK)
			}
			if got := metric(t, reg, "fleet_agent_gps_sentences_total", "result", ResultNoChecksum); got != float64(rec.noChksum) {
				t.Errorf("sentences no_checksum = %v, want %d", got, rec.noChksum)
			}
			for _, r := range []string{ResultBadChecksum, ResultMalformed} {
				if got := metric(t, reg, "fleet_agent_gps_sentences_total", "result", r); got != 0 {
					t.Errorf("sentences %s = %v, want 0", r, got)
				}
			}
		})
	}
}
