package sim

import (
	"fmt"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
	"github.com/fleetpipe/fleetpipe/internal/wire/wiretest"
)

// BenchmarkWireBytesPerReading reports bytes on the wire per reading for
// ten simulated minutes of one car (IMU at 10 Hz plus six 1 Hz signals and
// a fix each second), in 1 s and 10 s batches, next to the one-protobuf-
// message-per-reading snappy baseline. Fixes count as readings.
func BenchmarkWireBytesPerReading(b *testing.B) {
	cfg := DefaultConfig()
	cfg.Start = time.Date(2026, 1, 5, 8, 0, 0, 0, time.UTC)
	for _, window := range []int{1, 10} {
		b.Run(fmt.Sprintf("sim/%ds", window), func(b *testing.B) {
			v := NewVehicle(cfg, 0)
			var batches [][]wire.Reading
			var fixes [][]wire.Fix
			var rs []wire.Reading
			var fs []wire.Fix
			n := 0
			for step := 1; step <= 600; step++ {
				r, f := v.Step()
				rs, fs = append(rs, r...), append(fs, f)
				n += len(r) + 1
				if step%window == 0 {
					batches, fixes = append(batches, rs), append(fixes, fs)
					rs, fs = nil, nil
				}
			}
			var size int
			for i := 0; i < b.N; i++ {
				var err error
				if size, err = wiretest.EncodedBytes(batches, fixes, nil); err != nil {
					b.Fatal(err)
				}
			}
			cat, err := Catalog()
			if err != nil {
				b.Fatal(err)
			}
			withCat, err := wiretest.EncodedBytes(batches, fixes, cat)
			if err != nil {
				b.Fatal(err)
			}
			// The baseline sends a fix as its six fields, six readings.
			base := baselineWithFixes(batches, fixes)
			b.ReportMetric(float64(withCat)/float64(n), "B/reading-catalog")
			b.ReportMetric(float64(size)/float64(n), "B/reading")
			b.ReportMetric(float64(base)/float64(n), "baseline-B/reading")
			b.ReportMetric(float64(base)/float64(withCat), "x-smaller")
		})
	}
}

func baselineWithFixes(batches [][]wire.Reading, fixes [][]wire.Fix) int {
	all := make([][]wire.Reading, len(batches))
	for i, rs := range batches {
		all[i] = append([]wire.Reading(nil), rs...)
		for _, f := range fixes[i] {
			for name, v := range map[string]float64{"lat": f.Lat, "lon": f.Lon, "alt": f.Alt, "speed": f.Speed, "heading": f.Heading, "accuracy": f.Accuracy} {
				all[i] = append(all[i], wire.Reading{Signal: "fix." + name, Time: f.Time, Value: wire.Float(v)})
			}
		}
	}
	return wiretest.BaselineBytes(all)
}

// BenchmarkEncodeSecond encodes one simulated second at about 1,000
// readings (agentload's car) with the catalog, per reading.
func BenchmarkEncodeSecond(b *testing.B) {
	cfg := DefaultConfig()
	cfg.IMUHz = 496
	v := NewVehicle(cfg, 0)
	rs, fix := v.AppendStep(nil)
	cat, err := Catalog()
	if err != nil {
		b.Fatal(err)
	}
	batch := &wire.Batch{Identity: wire.Identity{VehicleID: "sim-0001"}, BaseTime: rs[0].Time, Readings: rs, Fixes: []wire.Fix{fix}}
	for b.Loop() {
		if _, err := wire.Encode(batch, wire.EncodeOptions{Catalog: cat}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N*(len(rs)+1)), "ns/reading")
}
