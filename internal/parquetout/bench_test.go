package parquetout_test

import (
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// benchBatches is what a partition of the sink reads: simulated cars
// (IMU at 47 Hz: 100 readings and a fix a second), one-second batches
// referring to the registered catalog, interleaved as Kafka holds them.
func benchBatches(b *testing.B) (payloads [][]byte, cats wire.Catalogs, readings int) {
	b.Helper()
	cat, err := sim.Catalog()
	if err != nil {
		b.Fatal(err)
	}
	cats = wire.Catalogs{}
	cats.Add(cat)
	cfg := sim.DefaultConfig()
	cfg.Vehicles, cfg.IMUHz, cfg.Start = 100, 47, time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	fleet := sim.NewFleet(cfg)
	for seq := range 20 {
		for _, v := range fleet {
			bt := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 42, Seq: uint64(seq)}, BaseTime: v.Now().UnixNano()}
			var fix wire.Fix
			bt.Readings, fix = v.AppendStep(nil)
			bt.Fixes = []wire.Fix{fix}
			data, err := wire.Encode(bt, wire.EncodeOptions{Catalog: cat})
			if err != nil {
				b.Fatal(err)
			}
			payloads = append(payloads, data)
			readings += len(bt.Readings) + len(bt.Fixes)
		}
	}
	return payloads, cats, readings
}

func decodeAll(b *testing.B, payloads [][]byte, cats wire.Catalogs) []*wire.Batch {
	b.Helper()
	out := make([]*wire.Batch, len(payloads))
	for i, p := range payloads {
		bt, err := wire.Decode(p, wire.Limits{Catalogs: cats})
		if err != nil {
			b.Fatal(err)
		}
		out[i] = bt
	}
	return out
}

// perReading reports wall and CPU time (the process's, GC included, which
// other load on the machine does not inflate) per reading.
func perReading(b *testing.B, readings int, cpu0 time.Duration) {
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(readings), "ns/reading")
	b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N)/float64(readings), "cpu-ns/reading")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkDecode: wire.Decode of the batches, per reading (fixes count).
func BenchmarkDecode(b *testing.B) {
	payloads, cats, readings := benchBatches(b)
	var into wire.Batch
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		for _, p := range payloads {
			if err := wire.DecodeInto(p, wire.Limits{Catalogs: cats}, &into); err != nil {
				b.Fatal(err)
			}
		}
	}
	perReading(b, readings, cpu0)
}

// BenchmarkEncode: the sink's encoding of decoded batches into the two
// tables' Parquet files (Splitter and FileWriter, zstd), per reading.
func BenchmarkEncode(b *testing.B) {
	payloads, cats, readings := benchBatches(b)
	batches := decodeAll(b, payloads, cats)
	opts := parquetout.DefaultOptions
	var out counter
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		out = 0
		rw, err := parquetout.NewFileWriter[parquetout.ReadingRow](&out, opts)
		if err != nil {
			b.Fatal(err)
		}
		lw, _ := parquetout.NewFileWriter[parquetout.LocationRow](&out, opts)
		var s parquetout.Splitter
		for _, bt := range batches {
			err := s.Split(bt, parquetout.Emit{
				Readings:  func(_ parquetout.Hour, rows []parquetout.ReadingRow) error { return rw.Write(rows) },
				Locations: func(_ parquetout.Hour, rows []parquetout.LocationRow) error { return lw.Write(rows) },
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		if err := rw.Close(); err != nil {
			b.Fatal(err)
		}
		if err := lw.Close(); err != nil {
			b.Fatal(err)
		}
	}
	perReading(b, readings, cpu0)
	b.ReportMetric(float64(out)/float64(readings), "B/reading")
}

// counter counts what is written to it.
type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }

// BenchmarkGenericWriter: parquet-go's own GenericWriter (zstd, defaults)
// writing the same rows, already built, as a baseline for BenchmarkEncode.
func BenchmarkGenericWriter(b *testing.B) {
	payloads, cats, readings := benchBatches(b)
	batches := decodeAll(b, payloads, cats)
	rrows, lrows := splitAll(b, batches)
	b.ResetTimer()
	cpu0 := cpuTime()
	for range b.N {
		rw := parquet.NewGenericWriter[parquetout.ReadingRow](io.Discard, parquet.Compression(&parquet.Zstd))
		lw := parquet.NewGenericWriter[parquetout.LocationRow](io.Discard, parquet.Compression(&parquet.Zstd))
		for i := 0; i < len(rrows); i += 100 {
			if _, err := rw.Write(rrows[i:min(i+100, len(rrows))]); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := lw.Write(lrows); err != nil {
			b.Fatal(err)
		}
		if err := rw.Close(); err != nil {
			b.Fatal(err)
		}
		if err := lw.Close(); err != nil {
			b.Fatal(err)
		}
	}
	perReading(b, readings, cpu0)
}
