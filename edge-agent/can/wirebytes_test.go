package can

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
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

// windows splits time-ordered readings into batches of the given length.
func windows(rs []wire.Reading, d time.Duration) [][]wire.Reading {
	var out [][]wire.Reading
	start := 0
	for i := range rs {
		if rs[i].Time-rs[start].Time >= int64(d) {
			out = append(out, rs[start:i])
			start = i
		}
	}
	return append(out, rs[start:])
}

// wireBytes is the size of the batches as the agent encodes them.
func wireBytes(tb testing.TB, batches [][]wire.Reading) int {
	n := 0
	for i, rs := range batches {
		data, err := wire.Encode(&wire.Batch{
			Identity: wire.Identity{VehicleID: "car-0001", Epoch: 1 << 62, Seq: uint64(i + 1)},
			BaseTime: rs[0].Time, AgentVersion: "0.1.0", Decoder: "dbc", Readings: rs,
		}, wire.EncodeOptions{TickNanos: 100_000})
		if err != nil {
			tb.Fatal(err)
		}
		n += len(data)
	}
	return n
}

// baselineBytes is the naive encoding the issue compares against: one
// protobuf message per reading (signal id, time offset in ms, double),
// length-delimited, each batch compressed with snappy.
func baselineBytes(batches [][]wire.Reading) int {
	ids := map[string]uint64{}
	n := 0
	var buf []byte
	for _, rs := range batches {
		buf = buf[:0]
		for _, r := range rs {
			id, ok := ids[r.Signal]
			if !ok {
				id = uint64(len(ids) + 1)
				ids[r.Signal] = id
			}
			var msg []byte
			msg = protowire.AppendTag(msg, 1, protowire.VarintType)
			msg = protowire.AppendVarint(msg, id)
			msg = protowire.AppendTag(msg, 2, protowire.VarintType)
			msg = protowire.AppendVarint(msg, uint64((r.Time-rs[0].Time)/1e6))
			msg = protowire.AppendTag(msg, 3, protowire.Fixed64Type)
			v := r.Value.Float
			if r.Value.Kind == wire.KindInt {
				v = float64(r.Value.Int)
			}
			msg = protowire.AppendFixed64(msg, math.Float64bits(v))
			buf = protowire.AppendBytes(buf, msg)
		}
		n += len(snappy.Encode(nil, buf))
	}
	return n
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
		for _, w := range []time.Duration{time.Second, 10 * time.Second} {
			batches := windows(rs, w)
			b.Run(fmt.Sprintf("%s/%s", l.name, w), func(b *testing.B) {
				var n int
				for i := 0; i < b.N; i++ {
					n = wireBytes(b, batches)
				}
				base := baselineBytes(batches)
				b.ReportMetric(float64(n)/float64(len(rs)), "B/reading")
				b.ReportMetric(float64(base)/float64(len(rs)), "baseline-B/reading")
				b.ReportMetric(float64(base)/float64(n), "x-smaller")
				b.ReportMetric(float64(len(rs))/float64(b.Elapsed().Seconds())*float64(b.N), "readings/s")
			})
		}
	}
}

// TestWireEncodingIsLossless checks what the benchmark relies on: the real
// logs' readings come back from the wire bit for bit (times at 0.1 ms).
func TestWireEncodingIsLossless(t *testing.T) {
	for _, l := range wireLogs {
		rs := logReadings(t, l.dbc, l.log)
		for _, batch := range windows(rs, time.Second) {
			data, err := wire.Encode(&wire.Batch{Identity: wire.Identity{VehicleID: "car"}, BaseTime: batch[0].Time, Readings: batch},
				wire.EncodeOptions{TickNanos: 100_000})
			if err != nil {
				t.Fatal(err)
			}
			got, err := wire.Decode(data, wire.Limits{})
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
	_ = bytes.MinRead
}
