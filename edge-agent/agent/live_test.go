package agent

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// stallingSource emits its items, then reads nothing more until stopped,
// like a bus that went quiet.
type stallingSource struct{ items []source.Items }

func (s stallingSource) Run(ctx context.Context, emit source.Emit) error {
	for _, it := range s.items {
		emit(it)
	}
	<-ctx.Done()
	return nil
}

// TestLiveBatchClosesOnTheWallClock: a live source's batch is spooled
// MaxAge after its first reading arrived even when no reading follows, and
// even though the readings' own clock (a car clock years behind) says
// nothing about the wall clock.
func TestLiveBatchClosesOnTheWallClock(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Sources = cli.StringList{"gps"}
	cfg.VehicleID = "live-0001"
	gpsOf(cfg).Path = "/dev/null"
	cfg.Spool.Dir = t.TempDir()
	cfg.Spool.Fsync = "never"
	cfg.BatchMaxAge = 300 * time.Millisecond
	cfg.Listen = ""
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Deps{Logger: mqtttest.Logger(t), Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	v, err := a.openVehicle(cfg.VehicleID, cfg.Spool.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer v.spool.Close()
	old := time.Date(2019, 5, 1, 8, 0, 0, 0, time.UTC).UnixNano()
	// Both readings at once: a stall between two sends could otherwise
	// outlast MaxAge and close a batch between them.
	src := stallingSource{items: []source.Items{
		{Readings: []wire.Reading{{Signal: "x", Time: old, Value: wire.Int(1)}, {Signal: "x", Time: old + int64(10*time.Millisecond), Value: wire.Int(2)}}},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- a.runVehicle(ctx, v, []source.Source{src}, true) }()
	deadline := time.Now().Add(waitLimit)
	for v.spool.Records() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := v.spool.Records(); n != 1 {
		t.Fatalf("%d batches spooled while the source was quiet, want 1", n)
	}
	if took < cfg.BatchMaxAge {
		t.Errorf("the batch closed %v after its first reading, before --batch-max-age %v", took, cfg.BatchMaxAge)
	}
	for rec, err := range v.spool.Pending(0) {
		if err != nil {
			t.Fatal(err)
		}
		b, err := wire.Decode(rec.Payload, wire.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Readings) != 2 {
			t.Errorf("the batch holds %d readings, want both", len(b.Readings))
		}
	}
}
