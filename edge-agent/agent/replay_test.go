package agent

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/gps"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/embedmqtt/mqtttest"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
	"github.com/fleetpipe/fleetpipe/internal/wire/wiretest"
)

const (
	civicDBC = "honda_civic_hatchback_ex_2017_can_generated.dbc"
	civicLog = "civic_typer_2019_turnonanddrive.candump.log"
)

// decodeLog is what the agent collects from a candump log with every
// signal kept: each decoded frame's signals, in log order.
func decodeLog(t *testing.T, dbc, log string) []wire.Reading {
	t.Helper()
	d, err := can.LoadDBC(dbc)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := can.NewCandumpReader(f)
	var out []wire.Reading
	var dec []can.Decoded
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
	return out
}

// replayConfig replays a candump log for one vehicle to the broker at url.
func replayConfig(t *testing.T, url, dbc, log string, realtime bool) Config {
	cfg := testConfig(t, url)
	cfg.Sources = cli.StringList{"can"}
	cfg.VehicleID = "replay-0001"
	cc := canOf(cfg)
	cc.DBC, cc.Candump, cc.Realtime = dbc, log, realtime
	return cfg
}

// batchesInOrder returns the vehicle's batches by seq.
func batchesInOrder(got map[wire.Identity]*wire.Batch, vehicle string) []*wire.Batch {
	var out []*wire.Batch
	for id, b := range got {
		if id.VehicleID == vehicle {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out
}

// checkLogBatches holds the agent's batches of a replayed log to the
// definition of a batch of age MaxAge in log time: the readings, in log
// order, cut wherever the next one is MaxAge or more after the batch's
// first (wiretest.Windows). The count, the bounds and every reading must
// match.
func checkLogBatches(t *testing.T, batches []*wire.Batch, want []wire.Reading, maxAge time.Duration) {
	t.Helper()
	windows := wiretest.Windows(want, maxAge)
	if len(batches) != len(windows) {
		t.Fatalf("%d batches, want %d: %d readings cut into batches of %v of log time", len(batches), len(windows), len(want), maxAge)
	}
	for i, b := range batches {
		w := windows[i]
		if len(b.Readings) != len(w) || b.BaseTime != w[0].Time {
			t.Fatalf("batch %d (%v): %d readings from %v, want %d from %v", i, b.Identity, len(b.Readings),
				time.Unix(0, b.BaseTime).UTC(), len(w), time.Unix(0, w[0].Time).UTC())
		}
		got := append([]wire.Reading(nil), b.Readings...)
		exp := make([]wire.Reading, len(w))
		for j, r := range w {
			r.Time = b.BaseTime + (r.Time-b.BaseTime)/100_000*100_000 // the wire's 0.1 ms
			r.Scale, r.Offset, r.Raw = 0, 0, 0
			exp[j] = r
		}
		sortReadings(got)
		sortReadings(exp)
		for j := range exp {
			if !sameReading(got[j], exp[j]) {
				t.Fatalf("batch %d: reading %+v arrived as %+v", i, exp[j], got[j])
			}
		}
	}
}

// TestLogReplayBatchesByLogTime replays a real candump log recorded years
// ago as fast as possible: its batches must close on the log's clock, one
// per second of recording, not on every frame because the wall clock says
// each reading is years old.
func TestLogReplayBatchesByLogTime(t *testing.T) {
	dbc, log := testenv.SharedData(t, civicDBC), testenv.SharedData(t, civicLog)
	want := decodeLog(t, dbc, log)
	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := replayConfig(t, broker.URL(), dbc, log, false)
	if err := runAgent(t, context.Background(), cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}
	batches := batchesInOrder(got, cfg.VehicleID)
	checkLogBatches(t, batches, want, cfg.BatchMaxAge)
	bytes := 0
	for _, b := range batches {
		bytes += len(cloud.payload(b.Identity))
	}
	perReading := float64(bytes) / float64(len(want))
	t.Logf("%d readings in %d batches, %.3f bytes per reading (signal names in every batch)", len(want), len(batches), perReading)
	// The same batches encoded alone, names inline, are 0.84 B a reading;
	// a batch a frame was 21 B.
	if perReading > 1.0 {
		t.Errorf("%.3f bytes per reading; 1 s batches of this log naming their signals take under 1.0", perReading)
	}
}

// TestRealtimeReplayBatchesByLogTime replays three seconds of the same log
// at the log's pace: the same batches as fast replay, one per second.
func TestRealtimeReplayBatchesByLogTime(t *testing.T) {
	dbc, full := testenv.SharedData(t, civicDBC), testenv.SharedData(t, civicLog)
	// 2.5 s of the drive from 29.3 s in (before that the key-on has gaps of
	// seconds), as its own log.
	log := filepath.Join(t.TempDir(), "head.candump.log")
	in, err := os.Open(full)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(log)
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(in)
	var first int64
	for sc.Scan() {
		lf, err := can.ParseCandumpLine(sc.Bytes())
		if err != nil {
			continue
		}
		if first == 0 {
			first = lf.Time
		}
		if at := time.Duration(lf.Time - first); at >= 29300*time.Millisecond && at < 31800*time.Millisecond {
			out.WriteString(sc.Text() + "\n")
		}
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	want := decodeLog(t, dbc, log)
	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := replayConfig(t, broker.URL(), dbc, log, true)
	if err := runAgent(t, context.Background(), cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}
	batches := batchesInOrder(got, cfg.VehicleID)
	checkLogBatches(t, batches, want, cfg.BatchMaxAge)
	if len(batches) != 3 {
		t.Errorf("%d batches of 2.5 s replayed in real time, want 3", len(batches))
	}
}

// TestGPSReplayBatchesByLogTime replays a real NMEA recording (2 Hz, from
// 2009, spliced from two drives): batches follow the recording's clock,
// two fixes a second, and a jump of the clock starts a new batch.
func TestGPSReplayBatchesByLogTime(t *testing.T) {
	nmea := testenv.SharedData(t, "gpsd_bt451.nmea.log")
	gc := gps.DefaultConfig()
	gc.Path = nmea
	src, err := gc.New(source.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var fixes []wire.Fix
	if err := src.Run(context.Background(), func(it source.Items) { fixes = append(fixes, it.Fixes...) }); err != nil {
		t.Fatal(err)
	}
	// The batches by definition: cut before a fix that would make a batch
	// span a second or more.
	var want [][]wire.Fix
	for _, f := range fixes {
		n := len(want)
		if n > 0 {
			lo, hi := f.Time, f.Time
			for _, g := range want[n-1] {
				lo, hi = min(lo, g.Time), max(hi, g.Time)
			}
			if hi-lo < int64(time.Second) {
				want[n-1] = append(want[n-1], f)
				continue
			}
		}
		want = append(want, []wire.Fix{f})
	}
	if len(fixes) < 10 || len(want) >= len(fixes) {
		t.Fatalf("%d fixes make %d batches: the recording does not show the point", len(fixes), len(want))
	}

	broker := mqtttest.StartBroker(t)
	cloud := startAcker(t, broker.URL())
	cfg := testConfig(t, broker.URL())
	cfg.Sources = cli.StringList{"gps"}
	cfg.VehicleID = "gps-0001"
	gpsOf(cfg).Path = nmea
	if err := runAgent(t, context.Background(), cfg); err != nil {
		t.Fatalf("Run: %v", err)
	}
	got, problems := cloud.snapshot()
	for _, p := range problems {
		t.Error(p)
	}
	batches := batchesInOrder(got, cfg.VehicleID)
	if len(batches) != len(want) {
		t.Fatalf("%d fixes in %d batches, want %d", len(fixes), len(batches), len(want))
	}
	for i, b := range batches {
		if len(b.Fixes) != len(want[i]) || b.Fixes[0].Time != want[i][0].Time {
			t.Errorf("batch %d: %d fixes from %v, want %d from %v", i, len(b.Fixes), time.Unix(0, b.BaseTime).UTC(),
				len(want[i]), time.Unix(0, want[i][0].Time).UTC())
		}
	}
}
