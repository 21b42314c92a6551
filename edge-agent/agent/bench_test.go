package agent

import (
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// BenchmarkCollectPerReading is the agent's per-reading work for one
// simulated car at about 1,000 readings per simulated second: simulate,
// batch, encode and spool (fsync off: the disk is measured elsewhere), with
// batches naming their signals (before the cloud acks the catalog) and
// referring to the catalog (after). The uplink is not running; its queue
// just fills.
//
// "catalog+10rules" adds the ten capture rules make bench runs the agent
// with (compose/loadtest/agentload/ten-rules.yaml): their evaluation, their
// buffers and the windows they send.
func BenchmarkCollectPerReading(b *testing.B) {
	for _, acked := range []bool{false, true} {
		name := "names"
		if acked {
			name = "catalog"
		}
		b.Run(name, func(b *testing.B) { benchmarkCollect(b, acked, "") })
	}
	b.Run("catalog+10rules", func(b *testing.B) {
		benchmarkCollect(b, true, filepath.Join(testenv.RepoRoot(), "compose", "loadtest", "agentload", "ten-rules.yaml"))
	})
}

func benchmarkCollect(b *testing.B, catalogAcked bool, rules string) {
	cfg := DefaultConfig()
	cfg.CaptureRules = rules
	cfg.Spool.Dir = b.TempDir()
	cfg.Spool.Fsync = "never"
	simOf(cfg).IMUHz = 496
	cfg.Listen = ""
	simOf(cfg).Start = "2026-01-05T08:00:00Z"
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Deps{Logger: slog.New(slog.DiscardHandler), Registerer: reg, Gatherer: reg})
	if err != nil {
		b.Fatal(err)
	}
	cat, err := sim.Catalog()
	if err != nil {
		b.Fatal(err)
	}
	a.catalog = cat
	v, err := a.openVehicle("bench-0001", b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	v.catalogAcked = func() bool { return catalogAcked }
	v.linkUp = func() bool { return true }
	defer v.spool.Close()
	sc, err := simOf(cfg).Sim()
	if err != nil {
		b.Fatal(err)
	}
	car := sim.NewVehicle(sc, 0)
	c, err := a.newCollector(v, false)
	if err != nil {
		b.Fatal(err)
	}
	readings := 0
	var rs []wire.Reading // reused, as driveSim does
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var fix wire.Fix
		rs, fix = car.AppendStep(rs[:0])
		readings += len(rs) + 1
		if err := c.add(source.Items{Readings: rs, Fixes: []wire.Fix{fix}, Clock: car.Now().UnixNano()}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(readings), "ns/reading")
}
