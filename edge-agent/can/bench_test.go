package can

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"testing"

	ecan "go.einride.tech/can"

	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func civicFrames(b *testing.B) (*Decoder, []ecan.Frame) {
	d, err := LoadDBC(testenv.SharedData(b, civicDBC))
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(testenv.SharedData(b, civicLog))
	if err != nil {
		b.Fatal(err)
	}
	r := NewCandumpReader(bytes.NewReader(data))
	var frames []ecan.Frame
	for {
		lf, err := r.Next()
		if errors.Is(err, io.EOF) {
			return d, frames
		}
		if err != nil {
			b.Fatal(err)
		}
		frames = append(frames, lf.Frame)
	}
}

// BenchmarkDecodeCivic decodes the Civic log's frames (all 28835, of which
// 16032 are in the DBC) with the DBC, already parsed and in memory.
func BenchmarkDecodeCivic(b *testing.B) {
	d, frames := civicFrames(b)
	var out []Decoded
	readings := 0
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, _ = d.Decode(frames[i%len(frames)], out[:0])
		readings += len(out)
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N)/sec, "frames/s")
	b.ReportMetric(float64(readings)/float64(b.N), "readings/frame")
	if readings > 0 {
		b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(readings), "ns/reading")
	}
}

// BenchmarkSourceCivic is the whole path the agent runs on a replay: read
// and parse the log, decode, apply the (empty) collection config and build
// wire readings. One op is the whole 65.5 s log.
func BenchmarkSourceCivic(b *testing.B) {
	src := func() *Source {
		s, err := New(Config{DBC: testenv.SharedData(b, civicDBC), Candump: testenv.SharedData(b, civicLog)}, Deps{})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	readings := 0
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s := src()
		if err := s.Run(context.Background(), emitReadings(func(rs []wire.Reading) { readings += len(rs) })); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()*1e9/float64(readings), "ns/reading")
	b.ReportMetric(float64(readings)/float64(b.N), "readings/op")
}

func BenchmarkParseCandumpLine(b *testing.B) {
	line := []byte("(1674148739.212487) can0 14A#FFF1000007FFF124\n")
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := parseLine(line); err != nil {
			b.Fatal(err)
		}
	}
}
