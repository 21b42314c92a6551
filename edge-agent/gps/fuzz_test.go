package gps

import (
	"bytes"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// checkFixInvariants is what any fix must satisfy, whatever the input.
func checkFixInvariants(t *testing.T, f wire.Fix) {
	t.Helper()
	if !(f.Lat >= -90 && f.Lat <= 90) || !(f.Lon >= -180 && f.Lon <= 180) {
		t.Fatalf("position %v,%v", f.Lat, f.Lon)
	}
	if !math.IsNaN(f.Speed) && !(f.Speed >= 0 && !math.IsInf(f.Speed, 0)) {
		t.Fatalf("speed %v", f.Speed)
	}
	if !math.IsNaN(f.Heading) && !(f.Heading >= 0 && f.Heading <= 360) {
		t.Fatalf("heading %v", f.Heading)
	}
	if !math.IsNaN(f.Accuracy) && !(f.Accuracy >= 0 && !math.IsInf(f.Accuracy, 0)) {
		t.Fatalf("accuracy %v", f.Accuracy)
	}
	if math.IsInf(f.Alt, 0) {
		t.Fatalf("alt %v", f.Alt)
	}
	const y1980, y2201 = 315532800e9, 7289654400e9
	if f.Time < y1980 || f.Time >= y2201 {
		t.Fatalf("time %d", f.Time)
	}
}

// FuzzNMEALine feeds arbitrary text, split into lines, to a Decoder: it
// never panics, every line is counted once, and every fix is plausible.
// Seeds: each line of testdata/gps/*.nmea, the whole fixture (so epochs
// merge), and a few real sentences quoted from the gpsd recordings.
func FuzzNMEALine(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(fixtureDir(), "*.nmea"))
	if len(files) == 0 {
		f.Fatal("no seed fixtures in testdata/gps")
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(data))
		for _, line := range strings.Split(string(data), "\n") {
			f.Add(line)
		}
	}
	for _, s := range []string{
		"$GPRMC,,V,,,,,,,,,,N*53",
		"$GPGGA,,,,,,0,00,99.99,,,,,,*48",
		"$GPRMC,152505.00,A,5547.82113,N,02334.14130,E,0.253,,091209,,,A*7A\n$GPVTG,,T,,M,0.253,N,0.469,K,A*2C\n$GPGGA,152505.00,5547.82113,N,02334.14130,E,1,04,2.72,37.0,M,26.9,M,,*6B",
		"$GNRMC,091507.000,A,4813.0407,N,00824.8685,E,10.09,187.74,101015,,,A,V*31",
		"$GPRMC,102143.990,A,3340.7753,S,15117.4475,E,6.7,155.8,251112,0.0,W*6D",
		"$GPTXT,TELIT SW Version: SL869 v3.1.2.1 -STD -N96",
		"$QZGSV,1,1,01,193,34,332,,,,,,,,,,,,,*6A",
		"\\s:r3669961,c:1120959341*0D\\$GPZDA,152504.50,09,12,2009,00,00*65",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		d := NewDecoder(DecoderOptions{})
		emit := func(fix wire.Fix) { checkFixInvariants(t, fix) }
		lines := 0
		for _, line := range strings.Split(text, "\n") {
			if s := strings.TrimSpace(line); s != "" && s[0] != '#' {
				lines++
			}
			d.Feed([]byte(line), emit)
		}
		d.Flush(emit)
		st := d.Stats()
		counted := 0
		for _, n := range st.Sentences {
			counted += n
		}
		if counted != lines {
			t.Fatalf("%d lines, %d counted: %+v", lines, counted, st)
		}
	})
}

// FuzzGPSDReport feeds arbitrary lines to the gpsd report parser.
func FuzzGPSDReport(f *testing.F) {
	for _, s := range []string{
		`{"class":"VERSION","release":"3.25","rev":"3.25","proto_major":3,"proto_minor":15}`,
		`{"class":"TPV","device":"/dev/ttyUSB0","mode":3,"time":"2015-10-10T09:15:07.000Z","ept":0.005,"lat":48.217345,"lon":8.414475,"altHAE":813.8,"altMSL":766.4,"alt":766.4,"epx":2.1,"epy":2.4,"epv":5.5,"track":187.74,"speed":5.191,"climb":0.0,"eps":4.8,"eph":3.9}`,
		`{"class":"TPV","device":"/dev/ttyUSB0","mode":1}`,
		`{"class":"TPV","mode":2,"time":"2012-11-25T10:21:43.990Z","lat":-33.679588,"lon":151.290791}`,
		`{"class":"SKY","satellites":[]}`,
		`{"class":"TPV","mode":3,"lat":1e999}`,
		`not json`,
	} {
		f.Add([]byte(s))
	}
	g := &GPSDSource{log: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, line []byte) {
		last := map[string]int64{}
		if fix, ok := g.report(bytes.TrimSpace(line), last); ok {
			if math.IsNaN(fix.Lat) || math.IsNaN(fix.Lon) || math.Abs(fix.Lat) > 90 || math.Abs(fix.Lon) > 180 {
				t.Fatalf("position %v,%v", fix.Lat, fix.Lon)
			}
		}
	})
}
