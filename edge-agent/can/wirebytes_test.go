package can

import (
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	"github.com/fleetpipe/fleetpipe/internal/wire/wiretest"
)

// logReadings decodes a real candump log with its DBC, keeping every decoded
// signal of every frame (the collection default).
func logReadings(tb testing.TB, dbcName, logName string) []wire.Reading {
	tb.Helper()
	d, err := LoadDBC(testenv.SharedData(tb, dbcName))
	if err != nil {
		tb.Fatal(err)
	}
	f, err := os.Open(testenv.SharedData(tb, logName))
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	r := NewCandumpReader(f)
	var out []wire.Reading
	var dec []Decoded
	for {
		lf, err := r.Next()
		if err != nil {
			break
		}
		if lf.FD || lf.Error {
			continue
		}
		dec, _ = d.Decode(lf.Frame, dec[:0])
		for _, v := range dec {
			out = append(out, v.Reading(lf.Time))
		}
	}
	if len(out) == 0 {
		tb.Fatalf("%s decoded to nothing", logName)
	}
	return out
}

// dbcCatalog is the catalog of every signal of a DBC, as an agent with that
// DBC would register it.
func dbcCatalog(tb testing.TB, dbcName string) *wire.Catalog {
	tb.Helper()
	d, err := LoadDBC(testenv.SharedData(tb, dbcName))
	if err != nil {
		tb.Fatal(err)
	}
	cat, err := d.Catalog()
	if err != nil {
		tb.Fatal(err)
	}
	return cat
}

var wireLogs = []struct{ name, dbc, log string }{
	{"civic", "honda_civic_hatchback_ex_2017_can_generated.dbc", "civic_typer_2019_turnonanddrive.candump.log"},
	{"kona", "hyundai_kia_generic.dbc", "hyundai_kona_turnonlog.candump.log"},
}

// BenchmarkWireBytesPerReading reports bytes on the wire per reading for
// the real CAN logs decoded with their DBCs, every decoded signal of every
// frame, values lossless, timestamps at 0.1 ms, in 1 s and 10 s batches,
// next to the one-message-per-reading snappy baseline.
func BenchmarkWireBytesPerReading(b *testing.B) {
	for _, l := range wireLogs {
		rs := logReadings(b, l.dbc, l.log)
		cat := dbcCatalog(b, l.dbc)
		for _, w := range []time.Duration{time.Second, 10 * time.Second} {
			batches := wiretest.Windows(rs, w)
			b.Run(fmt.Sprintf("%s/%s", l.name, w), func(b *testing.B) {
				var n int
				for i := 0; i < b.N; i++ {
					var err error
					if n, err = wiretest.EncodedBytes(batches, nil, nil); err != nil {
						b.Fatal(err)
					}
				}
				withCat, err := wiretest.EncodedBytes(batches, nil, cat)
				if err != nil {
					b.Fatal(err)
				}
				base := wiretest.BaselineBytes(batches)
				b.ReportMetric(float64(withCat)/float64(len(rs)), "B/reading-catalog")
				b.ReportMetric(float64(n)/float64(len(rs)), "B/reading")
				b.ReportMetric(float64(base)/float64(len(rs)), "baseline-B/reading")
				b.ReportMetric(float64(base)/float64(withCat), "x-smaller")
				b.ReportMetric(float64(len(rs))/float64(b.Elapsed().Seconds())*float64(b.N), "readings/s")
			})
		}
	}
}

// TestWireBytesBudget holds the encoding to its budget on the real logs:
// at most 0.5 bytes per reading in 1 s batches and 0.25 in 10 s ones, as
// the agent sends them once its catalog is registered. Sizes are exact,
// not timings: the same readings always encode to the same bytes.
func TestWireBytesBudget(t *testing.T) {
	for _, l := range wireLogs {
		rs := logReadings(t, l.dbc, l.log)
		cat := dbcCatalog(t, l.dbc)
		for _, c := range []struct {
			window time.Duration
			budget float64
		}{{time.Second, 0.5}, {10 * time.Second, 0.25}} {
			n, err := wiretest.EncodedBytes(wiretest.Windows(rs, c.window), nil, cat)
			if err != nil {
				t.Fatal(err)
			}
			perReading := float64(n) / float64(len(rs))
			t.Logf("%s, %v batches: %.3f bytes per reading", l.name, c.window, perReading)
			if perReading > c.budget {
				t.Errorf("%s, %v batches: %.3f bytes per reading, budget %.2f", l.name, c.window, perReading, c.budget)
			}
		}
	}
}

// TestWireEncodingIsLossless checks what the benchmark relies on: the real
// logs' readings come back from the wire bit for bit (times at 0.1 ms).
func TestWireEncodingIsLossless(t *testing.T) {
	for _, l := range wireLogs {
		rs := logReadings(t, l.dbc, l.log)
		cat := dbcCatalog(t, l.dbc)
		reg := wire.Catalogs{}
		reg.Add(cat)
		for i, batch := range wiretest.Windows(rs, time.Second) {
			opt := wire.EncodeOptions{TickNanos: 100_000}
			if i%2 == 1 {
				opt.Catalog = cat // every other batch refers to the DBC's catalog
			}
			data, err := wire.Encode(&wire.Batch{Identity: wire.Identity{VehicleID: "car"}, BaseTime: batch[0].Time, Readings: batch}, opt)
			if err != nil {
				t.Fatal(err)
			}
			got, err := wire.Decode(data, wire.Limits{Catalogs: reg})
			if err != nil {
				t.Fatal(err)
			}
			want := map[string][]wire.Reading{}
			for _, r := range batch {
				r.Time = batch[0].Time + (r.Time-batch[0].Time)/100_000*100_000
				want[r.Signal] = append(want[r.Signal], r)
			}
			seen := map[string]int{}
			for _, g := range got.Readings {
				i := seen[g.Signal]
				seen[g.Signal]++
				w := want[g.Signal][i]
				if g.Time != w.Time || g.Unit != w.Unit || g.Value.Kind != w.Value.Kind || g.Value.Int != w.Value.Int ||
					math.Float64bits(g.Value.Float) != math.Float64bits(w.Value.Float) {
					t.Fatalf("%s: %s reading %d: got %+v, want %+v", l.name, g.Signal, i, g, w)
				}
			}
			if len(got.Readings) != len(batch) {
				t.Fatalf("%s: %d readings back of %d", l.name, len(got.Readings), len(batch))
			}
		}
	}
}

// BenchmarkEncodeCivic is the agent's cost of encoding (and the cloud's of
// decoding) the Civic log's readings in 1 s batches with its catalog, per
// reading.
func BenchmarkEncodeCivic(b *testing.B) {
	rs := logReadings(b, wireLogs[0].dbc, wireLogs[0].log)
	cat := dbcCatalog(b, wireLogs[0].dbc)
	reg := wire.Catalogs{}
	reg.Add(cat)
	batches := wiretest.Windows(rs, time.Second)
	encoded := make([][]byte, len(batches))
	b.Run("encode", func(b *testing.B) {
		for b.Loop() {
			for i, rs := range batches {
				data, err := wire.Encode(&wire.Batch{Identity: wire.Identity{VehicleID: "car"}, BaseTime: rs[0].Time, Readings: rs}, wire.EncodeOptions{Catalog: cat})
				if err != nil {
					b.Fatal(err)
				}
				encoded[i] = data
			}
		}
		b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N*len(rs)), "ns/reading")
	})
	b.Run("decode", func(b *testing.B) {
		for b.Loop() {
			for _, data := range encoded {
				if _, err := wire.Decode(data, wire.Limits{Catalogs: reg}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(b.N*len(rs)), "ns/reading")
	})
}
