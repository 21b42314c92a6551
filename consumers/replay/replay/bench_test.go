package replay

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// simBatch is one second of a simulated car with a 100 Hz accelerometer,
// encoded with the simulator's catalog and decoded back, as the replay
// sees it.
func simBatch(b *testing.B) ([]byte, *wire.Catalog) {
	b.Helper()
	cfg := sim.DefaultConfig()
	cfg.IMUHz, cfg.Start = 100, time.Date(2025, 6, 1, 8, 0, 0, 0, time.UTC)
	v := sim.NewVehicle(cfg, 0)
	batch := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 1, Seq: 1}, BaseTime: v.Now().UnixNano()}
	var fix wire.Fix
	batch.Readings, fix = v.AppendStep(nil)
	batch.Fixes = []wire.Fix{fix}
	cat, err := sim.Catalog()
	if err != nil {
		b.Fatal(err)
	}
	data, err := wire.Encode(batch, wire.EncodeOptions{Catalog: cat})
	if err != nil {
		b.Fatal(err)
	}
	return data, cat
}

type oneCatalog struct{ c *wire.Catalog }

func (o oneCatalog) Catalog([]byte) (*wire.Catalog, bool) { return o.c, true }

// BenchmarkDecodeAndJSONLines is the CPU of the JSON lines path per batch:
// decoding and formatting (the write goes to io.Discard).
func BenchmarkDecodeAndJSONLines(b *testing.B) {
	data, cat := simBatch(b)
	j := newJSONLines(io.Discard)
	var readings int
	for b.Loop() {
		batch, err := wire.Decode(data, wire.Limits{Catalogs: oneCatalog{cat}})
		if err != nil {
			b.Fatal(err)
		}
		if err := j.Write(context.Background(), Record{Partition: 1, Offset: 42, Batch: batch}); err != nil {
			b.Fatal(err)
		}
		readings += len(batch.Readings) + len(batch.Fixes)
	}
	b.ReportMetric(float64(readings)/b.Elapsed().Seconds(), "readings/s")
}

// BenchmarkDecode is the decoding alone, for comparison.
func BenchmarkDecode(b *testing.B) {
	data, cat := simBatch(b)
	var readings int
	for b.Loop() {
		batch, err := wire.Decode(data, wire.Limits{Catalogs: oneCatalog{cat}})
		if err != nil {
			b.Fatal(err)
		}
		readings += len(batch.Readings) + len(batch.Fixes)
	}
	b.ReportMetric(float64(readings)/b.Elapsed().Seconds(), "readings/s")
}
