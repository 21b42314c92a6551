package gps

import (
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestEdgeCaseFixture reads testdata/gps/edge_cases.nmea, written for these
// cases; every expected value is worked out by hand from its sentences.
func TestEdgeCaseFixture(t *testing.T) {
	fixes, st, reg := runFile(t, filepath.Join(fixtureDir(), "edge_cases.nmea"), nil)
	checkGolden(t, "edge_cases.golden.jsonl", goldenLines(t, fixes, st))

	want := []wantFix{
		// b. $GPRMC,120000.000,A,3436.5000,S,05822.2000,W,10.0,90.0,150324 + GGA 1,08,1.2,25.0,M
		{"2024-03-15T12:00:00Z", -(34 + 36.5/60), -(58 + 22.2/60), 25.0, 10.0 * 1852 / 3600, 90.0, 1.2 * 5},
		// c. RMC lost to its checksum: GGA only, date carried from b, no speed or course
		{"2024-03-15T12:00:01Z", -(34 + 36.51/60), -(58 + 22.21/60), 25.5, nan, nan, 1.2 * 5},
		// d. GN talker; course 92.5 from VTG; GGA without altitude and HDOP
		{"2024-03-15T12:00:02Z", -(34 + 36.52/60), -(58 + 22.22/60), nan, 12.0 * 1852 / 3600, 92.5, nan},
		// g. GLRMC after a torn line start, alone in its epoch
		{"2024-03-15T12:00:05Z", -(34 + 36.54/60), -(58 + 22.24/60), nan, 0, nan, nan},
		// h. the last second of 2024 near 0°N 0°W
		{"2024-12-31T23:59:59Z", 0.5 / 60, -0.5 / 60, 3.0, 1.0 * 1852 / 3600, 180, 2.0 * 5},
		// GGA only at 00:00:00: the date rolls over to 2025-01-01; HDOP 99.99 is "unknown"
		{"2025-01-01T00:00:00Z", 0.49 / 60, -0.5 / 60, 3.5, nan, nan, nan},
		// RMC dated 010125, DGPS GGA
		{"2025-01-01T00:00:00.5Z", 0.48 / 60, -0.5 / 60, 4.0, 1.0 * 1852 / 3600, 180, 0.9 * 5},
	}
	if len(fixes) != len(want) {
		t.Fatalf("%d fixes, want %d: %+v", len(fixes), len(want), fixes)
	}
	for i, w := range want {
		checkFix(t, w.time, fixes[i], w)
	}
	for _, c := range []struct {
		result string
		n      int
	}{
		{ResultOK, 16}, {ResultBadChecksum, 1}, {ResultNoChecksum, 1}, {ResultMalformed, 2}, {ResultIgnored, 0},
	} {
		if got := metric(t, reg, "fleet_agent_gps_sentences_total", "result", c.result); got != float64(c.n) {
			t.Errorf("sentences %s = %v, want %d", c.result, got, c.n)
		}
	}
	for reason, n := range map[string]int{DropNoTime: 1, DropNoFix: 1, DropNoPosition: 0} {
		if got := metric(t, reg, "fleet_agent_gps_epochs_dropped_total", "reason", reason); got != float64(n) {
			t.Errorf("dropped %s = %v, want %d", reason, got, n)
		}
	}
}

// nmeaLine frames a sentence body with '$' and its checksum.
func nmeaLine(body string) string {
	var c byte
	for i := 0; i < len(body); i++ {
		c ^= body[i]
	}
	return fmt.Sprintf("$%s*%02X", body, c)
}

// feed decodes lines and returns the fixes, flushing at the end.
func feed(d *Decoder, lines ...string) []wire.Fix {
	var out []wire.Fix
	emit := func(f wire.Fix) { out = append(out, f) }
	for _, l := range lines {
		d.Feed([]byte(l), emit)
	}
	d.Flush(emit)
	return out
}

func TestDecoderEpochs(t *testing.T) {
	var (
		rmc = nmeaLine("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E") // the NMEA reference example
		gga = nmeaLine("GPGGA,081836,3751.65,S,14507.36,E,1,05,1.5,280.2,M,-34.0,M,,")
	)
	t.Run("complete on RMC and GGA, stragglers ignored", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		var got []wire.Fix
		emit := func(f wire.Fix) { got = append(got, f) }
		d.Feed([]byte(rmc), emit)
		if len(got) != 0 {
			t.Fatal("emitted before the epoch was complete")
		}
		d.Feed([]byte(gga), emit)
		if len(got) != 1 {
			t.Fatalf("RMC+GGA of one time gave %d fixes, want 1 at once", len(got))
		}
		d.Feed([]byte(gga), emit) // a repeated GGA of the completed epoch
		d.Flush(emit)
		if len(got) != 1 {
			t.Fatalf("%d fixes, want 1", len(got))
		}
		checkFix(t, "reference", got[0], wantFix{"1998-09-13T08:18:36Z", -(37 + 51.65/60), 145 + 7.36/60, 280.2, 0, 360, 1.5 * 5})
	})
	t.Run("UERE", func(t *testing.T) {
		for _, c := range []struct {
			uere, want float64
		}{{0, 1.5 * DefaultUERE}, {3, 4.5}, {-1, nan}} {
			f := feed(NewDecoder(DecoderOptions{UERE: c.uere}), rmc, gga)
			if len(f) != 1 || !near(f[0].Accuracy, c.want, 1e-12) {
				t.Errorf("UERE %v: %+v, want accuracy %v", c.uere, f, c.want)
			}
		}
	})
	t.Run("RMC without GGA ends with a new time", func(t *testing.T) {
		f := feed(NewDecoder(DecoderOptions{}),
			nmeaLine("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E"),
			nmeaLine("GPRMC,081837,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E"))
		if len(f) != 2 || f[1].Time-f[0].Time != 1e9 {
			t.Fatalf("%+v", f)
		}
	})
	t.Run("no date", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		if f := feed(d, gga); len(f) != 0 {
			t.Fatalf("a GGA with no date anywhere gave %+v", f)
		}
		if d.Stats().Dropped[DropNoTime] != 1 {
			t.Fatalf("%+v", d.Stats())
		}
	})
	t.Run("date carried only within a minute", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		f := feed(d, rmc, gga,
			nmeaLine("GPGGA,081936,3751.65,S,14507.36,E,1,05,1.5,280.2,M,-34.0,M,,"), // +60 s: carried
			nmeaLine("GPGGA,083000,3751.65,S,14507.36,E,1,05,1.5,280.2,M,-34.0,M,,")) // +10.5 min: not
		if len(f) != 2 || f[1].Time-f[0].Time != 60e9 {
			t.Fatalf("%+v", f)
		}
		if d.Stats().Dropped[DropNoTime] != 1 {
			t.Fatalf("%+v", d.Stats())
		}
	})
	t.Run("FAA mode N means no fix", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		if f := feed(d, nmeaLine("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E,N")); len(f) != 0 {
			t.Fatalf("%+v", f)
		}
	})
	t.Run("bad fields are malformed", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		lines := []string{
			nmeaLine("GPRMC,081836,A,3761.65,S,14507.36,E,000.0,360.0,130998,011.3,E"), // 61 minutes
			nmeaLine("GPRMC,081836,A,9151.65,S,14507.36,E,000.0,360.0,130998,011.3,E"), // 91 degrees
			nmeaLine("GPRMC,081836,A,3751.65,S,14507.36,E,000.0,360.0,310298,011.3,E"), // 31 February
			nmeaLine("GPRMC,251836,A,3751.65,S,14507.36,E,000.0,360.0,130998,011.3,E"), // hour 25
			nmeaLine("GPRMC,081836,A,3751.65,Q,14507.36,E,000.0,360.0,130998,011.3,E"), // hemisphere Q
		}
		if f := feed(d, lines...); len(f) != 0 {
			t.Fatalf("%+v", f)
		}
		if got := d.Stats().Sentences[ResultMalformed]; got != len(lines) {
			t.Fatalf("malformed %d, want %d: %+v", got, len(lines), d.Stats())
		}
	})
	t.Run("over-long line", func(t *testing.T) {
		d := NewDecoder(DecoderOptions{})
		feed(d, "$GPTXT,"+strings.Repeat("x", MaxLineBytes))
		if d.Stats().Sentences[ResultMalformed] != 1 {
			t.Fatalf("%+v", d.Stats())
		}
	})
	t.Run("knots", func(t *testing.T) {
		if got := KnotsToMPS(1); got != 1852.0/3600 || math.Abs(KnotsToMPS(3600)-1852) > 0 {
			t.Fatalf("1 kn = %v m/s", got)
		}
	})
}
