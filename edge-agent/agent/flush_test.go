package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestFlushSplitsOnlyWhileSpooling: while the link is up and the spool
// holds no backlog, a flush is one batch (high class: it has the fix);
// while the link is down, the fixes and priority signals go in a high
// batch and the rest in a bulk one, so a full spool drops the signals
// first. Nothing is lost either way.
func TestFlushSplitsOnlyWhileSpooling(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Spool.Dir = t.TempDir()
	cfg.Spool.Fsync = "never"
	simOf(cfg).Start = "2026-01-05T08:00:00Z"
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Deps{Logger: mqtttest.Logger(t), Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatal(err)
	}
	a.catalog = nil
	v, err := a.openVehicle("flush-0001", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer v.spool.Close()
	up := true
	v.linkUp = func() bool { return up }
	sc, err := simOf(cfg).Sim()
	if err != nil {
		t.Fatal(err)
	}
	car := sim.NewVehicle(sc, 0)
	c, err := a.newCollector(v, false)
	if err != nil {
		t.Fatal(err)
	}
	step := func() (readings int) {
		rs, fix := car.AppendStep(nil)
		if err := c.add(source.Items{Readings: rs, Fixes: []wire.Fix{fix}, Clock: car.Now().UnixNano()}); err != nil {
			t.Fatal(err)
		}
		if err := c.flush(); err != nil {
			t.Fatal(err)
		}
		return len(rs) + 1
	}
	classes := func(from uint64) (high, bulk, readings int) {
		for rec, err := range v.spool.Pending(from) {
			if err != nil {
				t.Fatal(err)
			}
			if rec.Meta.Class == spool.High {
				high++
			} else {
				bulk++
			}
			b, err := wire.Decode(rec.Payload, wire.Limits{})
			if err != nil {
				t.Fatal(err)
			}
			readings += len(b.Readings) + len(b.Fixes)
		}
		return high, bulk, readings
	}

	want := step() + step() + step()
	if h, b, n := classes(0); h != 3 || b != 0 || n != want {
		t.Errorf("link up: %d high and %d bulk batches of %d readings, want 3 high of %d", h, b, n, want)
	}
	next := v.spool.Stats().NextSeq
	up = false
	want = step() + step()
	if h, b, n := classes(next); h != 2 || b != 2 || n != want {
		t.Errorf("link down: %d high and %d bulk batches of %d readings, want 2 and 2 of %d", h, b, n, want)
	}
}
