package capture

import (
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// tenRules are ten rules of the kinds fleets run, on the Civic's signals,
// each capturing every signal 10 s before and 5 s after its trigger.
func tenRules() Config {
	whens := map[string]string{
		"brake":      "POWERTRAIN_DATA.BRAKE_PRESSED == 1",
		"harsh":      "KINEMATICS.LONG_ACCEL < -1.0",
		"slowing":    `change(CAR_SPEED.CAR_SPEED, "1s") < -3`,
		"steer":      "abs(STEERING_SENSORS.STEER_ANGLE) > 200",
		"fast":       "CAR_SPEED.CAR_SPEED > 8",
		"standstill": `max_over(ENGINE_DATA.XMISSION_SPEED, "5s") < 0.5`,
		"kickdown":   "GAS_PEDAL_2.CAR_GAS > 50 and POWERTRAIN_DATA.ENGINE_RPM > 1200",
		"swerve":     `rate(STEERING_SENSORS.STEER_ANGLE, "500ms") > 100`,
		"hard_pedal": "VSA_STATUS.USER_BRAKE > 5",
		"parked":     "EPB_STATUS.EPB_ACTIVE == 1 or DOORS_STATUS.DOOR_OPEN_FL == 1",
	}
	var c Config
	for _, name := range []string{"brake", "harsh", "slowing", "steer", "fast", "standstill", "kickdown", "swerve", "hard_pedal", "parked"} {
		edge := Rising
		if name == "fast" {
			edge = Level
		}
		c.Rules = append(c.Rules, Rule{Name: name, When: whens[name], Before: cli.Duration(10 * time.Second), After: cli.Duration(5 * time.Second), Edge: edge})
	}
	return c
}

// countingSpool counts parts and allocates nothing.
type countingSpool struct{ seq, readings uint64 }

func (c *countingSpool) spool(b *Batch) (uint64, error) {
	c.seq++
	c.readings += uint64(len(b.Readings) + len(b.Fixes))
	return c.seq, nil
}

// shift moves every item's time on by d, for another lap of the log.
func shift(items []source.Items, d int64) {
	for _, it := range items {
		for i := range it.Readings {
			it.Readings[i].Time += d
		}
	}
}

func logSpan(items []source.Items) int64 {
	first, last := items[0].Readings[0].Time, items[len(items)-1].Readings[0].Time
	return last - first + int64(time.Second)
}

// TestAddAllocatesNothing: once its buffers have grown (one lap of the
// log), the engine evaluates ten rules, fills their rings, opens, streams
// and closes windows without allocating.
func TestAddAllocatesNothing(t *testing.T) {
	items, specs := replay(t, civic)
	var sp countingSpool
	e, err := New(tenRules(), specs, Options{Batch: testBatch}, Deps{Spool: sp.spool})
	if err != nil {
		t.Fatal(err)
	}
	span := logSpan(items)
	lap := func() {
		for _, it := range items {
			if err := e.Add(it, 0); err != nil {
				t.Fatal(err)
			}
		}
		shift(items, span)
	}
	lap()
	lap()
	windows := sp.seq
	allocs := testing.AllocsPerRun(1, lap)
	if sp.seq == windows {
		t.Fatal("no part was spooled in the measured lap: the test proves nothing about windows")
	}
	if allocs != 0 {
		t.Errorf("%v allocations in a lap of %d frames with ten rules, want 0", allocs, len(items))
	}
	if e.MemoryBytes() > 10*DefaultBufferBytes {
		t.Errorf("%d bytes of buffers for ten rules of 1 MiB", e.MemoryBytes())
	}
}

// BenchmarkCapturePerReading is the engine's CPU per reading with ten
// rules active (the agent's capture cost; batching, encoding and the spool
// are measured elsewhere), over laps of the Civic log.
func BenchmarkCapturePerReading(b *testing.B) {
	items, specs := replay(b, civic)
	perLap := 0
	for _, it := range items {
		perLap += len(it.Readings)
	}
	for _, n := range []int{1, 10} {
		b.Run(map[int]string{1: "1rule", 10: "10rules"}[n], func(b *testing.B) {
			cfg := tenRules()
			cfg.Rules = cfg.Rules[:n]
			var sp countingSpool
			e, err := New(cfg, specs, Options{Batch: testBatch}, Deps{Spool: sp.spool})
			if err != nil {
				b.Fatal(err)
			}
			span := logSpan(items)
			readings := 0
			b.ReportAllocs()
			for b.Loop() {
				for _, it := range items {
					if err := e.Add(it, 0); err != nil {
						b.Fatal(err)
					}
				}
				shift(items, span)
				readings += perLap
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(readings), "ns/reading")
			b.ReportMetric(float64(e.MemoryBytes()), "buffer-bytes")
		})
	}
}
