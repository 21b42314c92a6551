package capture

import (
	"testing"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// FuzzCondition compiles arbitrary conditions: a condition either fails to
// compile with an error or evaluates, on any readings, without panicking.
func FuzzCondition(f *testing.F) {
	for _, s := range []string{
		"ENGINE.SPEED > 40 and ENGINE.RPM < 1500",
		`change(ENGINE.SPEED, "1s") < -3 or max_over(ENGINE.RPM, 2) - min_over(ENGINE.RPM, "2s") > 100`,
		`status in ["busy", "free"] ? BRAKE.PRESSED : !BRAKE.FLAG`,
		`abs(signal("weird-name")) ** 2 % 3 / 0 == age(ENGINE.SPEED)`,
		"location.speed < 0.5", "((((", "1..3", "a?.b", `"\u00e9"`,
	} {
		f.Add(s)
	}
	items := []source.Items{
		at(0, num("ENGINE.SPEED", 50), integer("ENGINE.RPM", 2000), wire.Reading{Signal: "status", Value: wire.String("busy")}),
		at(500, num("ENGINE.SPEED", -1e308), integer("ENGINE.RPM", -1), wire.Reading{Signal: "BRAKE.PRESSED", Value: wire.Bool(true)}),
		{Fixes: []wire.Fix{{Time: t0 + 1e9, Lat: 1, Lon: 2, Speed: 0.1}}},
		at(2000, num("weird-name", 0), integer("BRAKE.FLAG", 1)),
	}
	f.Fuzz(func(t *testing.T, src string) {
		if len(src) > 1000 {
			return
		}
		e, err := New(Config{Rules: []Rule{{Name: "f", When: src, Before: cliSeconds(1), After: cliSeconds(1)}}}, testSignals,
			Options{Batch: testBatch}, Deps{Spool: nopSpool})
		if err != nil {
			return
		}
		for _, it := range items {
			if err := e.Add(it, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
