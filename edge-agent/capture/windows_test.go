package capture

import (
	"context"
	"fmt"
	"math"
	"path"
	"slices"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/batcher"
	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

type realLog struct{ dbc, log string }

var (
	civic = realLog{"honda_civic_hatchback_ex_2017_can_generated.dbc", "civic_typer_2019_turnonanddrive.candump.log"}
	kona  = realLog{"hyundai_kia_generic.dbc", "hyundai_kona_turnonlog.candump.log"}
)

// replay runs the agent's CAN source over a real log, as the agent does:
// one Items per decoded frame (copied, as the agent copies them), and the
// DBC's signals for the engine.
func replay(t testing.TB, l realLog) ([]source.Items, []wire.SignalSpec) {
	t.Helper()
	sc := &can.SourceConfig{Config: can.Config{DBC: testenv.SharedData(t, l.dbc), Candump: testenv.SharedData(t, l.log)}}
	src, err := sc.New(source.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var items []source.Items
	err = src.Run(context.Background(), func(it source.Items) {
		items = append(items, source.Items{Readings: slices.Clone(it.Readings)})
	})
	if err != nil {
		t.Fatal(err)
	}
	specs, err := sc.Signals()
	if err != nil {
		t.Fatal(err)
	}
	return items, specs
}

// collected is what a test's Spool received: the parts of each window.
type collected struct {
	parts []Batch // readings and fixes copied
	seq   uint64
}

func (c *collected) spool(b *Batch) (uint64, error) {
	c.seq++
	if b.Capture.Part == 0 {
		b.Capture.ID = c.seq
	}
	c.parts = append(c.parts, Batch{Capture: b.Capture, Priority: b.Priority,
		Readings: slices.Clone(b.Readings), Fixes: slices.Clone(b.Fixes)})
	return c.seq, nil
}

// gotWindow is a window reassembled from its parts.
type gotWindow struct {
	id       uint64
	rule     string
	trigger  int64
	readings []wire.Reading
	final    bool
}

// windows reassembles the parts into windows, checking the parts of each
// are numbered 0, 1, … and only the last is final.
func (c *collected) windows(t *testing.T, rule string) []gotWindow {
	t.Helper()
	var out []gotWindow
	byID := map[uint64]int{}
	for _, p := range c.parts {
		if p.Capture.Rule != rule {
			continue
		}
		i, ok := byID[p.Capture.ID]
		if !ok {
			if p.Capture.Part != 0 {
				t.Fatalf("window %d starts at part %d", p.Capture.ID, p.Capture.Part)
			}
			i = len(out)
			byID[p.Capture.ID] = i
			out = append(out, gotWindow{id: p.Capture.ID, rule: rule, trigger: p.Capture.TriggerTime})
		}
		w := &out[i]
		if w.final {
			t.Fatalf("window %d: part %d after the final one", w.id, p.Capture.Part)
		}
		if p.Capture.TriggerTime != w.trigger {
			t.Fatalf("window %d: parts disagree on the trigger time", w.id)
		}
		w.readings = append(w.readings, p.Readings...)
		w.final = p.Capture.Final
	}
	return out
}

// wantWindow is the reference model's window.
type wantWindow struct{ trigger, start, end int64 }

// model is the documented semantics, written out plainly: the condition
// is a predicate of one signal's value, evaluated on each of its readings;
// a trigger (rising: false to true; level: every true), unless within
// minInterval of the previous one, opens a window [T-before, T+after]
// (starting after the previous window's end) or extends the open one.
func model(items []source.Items, signal string, pred func(float64) bool, edge Edge, before, after, minInterval time.Duration) []wantWindow {
	var out []wantWindow
	prev, triggered := false, false
	var last int64
	lastTime := int64(0)
	for _, it := range items {
		for _, r := range it.Readings {
			lastTime = max(lastTime, r.Time)
			if r.Signal != signal {
				continue
			}
			v := r.Value.Float
			if r.Value.Kind == wire.KindInt {
				v = float64(r.Value.Int)
			}
			cur := pred(v)
			fire := cur && (edge == Level || !prev)
			prev = cur
			if !fire || (triggered && r.Time-last < int64(minInterval)) {
				continue
			}
			triggered, last = true, r.Time
			if n := len(out); n > 0 && r.Time <= out[n-1].end {
				out[n-1].end = max(out[n-1].end, r.Time+int64(after))
				continue
			}
			start := r.Time - int64(before)
			if n := len(out); n > 0 && start <= out[n-1].end {
				start = out[n-1].end + 1
			}
			out = append(out, wantWindow{trigger: r.Time, start: start, end: r.Time + int64(after)})
		}
	}
	if n := len(out); n > 0 {
		out[n-1].end = min(out[n-1].end, lastTime)
	}
	return out
}

// selected are the log's readings a window [start, end] of the signals
// globs select holds.
func selected(items []source.Items, globs []string, start, end int64) []wire.Reading {
	var out []wire.Reading
	for _, it := range items {
		for _, r := range it.Readings {
			if r.Time < start || r.Time > end {
				continue
			}
			for _, g := range globs {
				if ok, _ := path.Match(g, r.Signal); ok {
					out = append(out, r)
					break
				}
			}
		}
	}
	return out
}

func readingKey(r wire.Reading) string {
	return fmt.Sprintf("%s@%d=%v/%d/%v", r.Signal, r.Time, math.Float64bits(r.Value.Float), r.Value.Int, r.Value.Bool)
}

// checkWindows holds the engine's windows of a rule to the model: the
// count, each trigger and bounds, and every reading exactly once.
func checkWindows(t *testing.T, got []gotWindow, want []wantWindow, items []source.Items, globs []string) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d windows, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.trigger != w.trigger {
			t.Errorf("window %d: trigger at %v, want %v", i, time.Unix(0, g.trigger).UTC(), time.Unix(0, w.trigger).UTC())
		}
		if !g.final {
			t.Errorf("window %d: no final part", i)
		}
		exp := selected(items, globs, w.start, w.end)
		if len(exp) == 0 {
			t.Fatalf("window %d: the model selects no reading", i)
		}
		counts := map[string]int{}
		for _, r := range exp {
			counts[readingKey(r)]++
		}
		for _, r := range g.readings {
			k := readingKey(r)
			if counts[k] == 0 {
				t.Fatalf("window %d [%v, %v]: reading %s not in the window, or twice", i, time.Unix(0, w.start).UTC(), time.Unix(0, w.end).UTC(), k)
			}
			counts[k]--
		}
		if len(g.readings) != len(exp) {
			t.Fatalf("window %d: %d readings, want %d", i, len(g.readings), len(exp))
		}
	}
}

func run(t testing.TB, e *Engine, items []source.Items) {
	t.Helper()
	for _, it := range items {
		if err := e.Add(it, 0); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
}

var testBatch = batcher.Config{MaxAge: time.Second, MaxReadings: 10_000}

// TestWindowsOnRealLogs runs rules whose triggers fire a known number of
// times on the real logs and checks every window against the model.
func TestWindowsOnRealLogs(t *testing.T) {
	sec := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	for _, c := range []struct {
		name   string
		log    realLog
		when   string
		signal string
		pred   func(float64) bool
		edge   Edge
		before time.Duration
		after  time.Duration
		minInt time.Duration
		globs  []string
		want   int // windows: known from the log
	}{
		// Seven brake presses in the drive; two come 1 s apart and share a
		// window.
		{"brake", civic, "POWERTRAIN_DATA.BRAKE_PRESSED == 1", "POWERTRAIN_DATA.BRAKE_PRESSED", func(v float64) bool { return v == 1 },
			Rising, sec(2), sec(1), 0, []string{"POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"}, 6},
		// The same with 2 s between triggers: the press 1 s after another
		// is ignored, the window it would have extended ends sooner.
		{"brake-min-interval", civic, "POWERTRAIN_DATA.BRAKE_PRESSED", "POWERTRAIN_DATA.BRAKE_PRESSED", func(v float64) bool { return v == 1 },
			Rising, sec(2), sec(1), sec(2), []string{"*"}, 6},
		// Driving faster than 8 km/h, level: one window per stretch.
		{"fast", civic, "CAR_SPEED.CAR_SPEED > 8", "CAR_SPEED.CAR_SPEED", func(v float64) bool { return v > 8 },
			Level, 0, sec(0.5), 0, []string{"CAR_SPEED.*", "ENGINE_DATA.XMISSION_SPEED"}, 0},
		// Steering past -40° twice while parked.
		{"steer", kona, "SAS11.SAS_Angle < -40", "SAS11.SAS_Angle", func(v float64) bool { return v < -40 },
			Rising, sec(1), sec(0.5), 0, []string{"SAS11.*", "ESP12.*"}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			items, specs := replay(t, c.log)
			var out collected
			cfg := Config{Rules: []Rule{{Name: c.name, When: c.when, Before: cli.Duration(c.before), After: cli.Duration(c.after),
				Edge: c.edge, MinInterval: cli.Duration(c.minInt), Signals: c.globs}}}
			e, err := New(cfg, specs, Options{Batch: testBatch}, Deps{Spool: out.spool})
			if err != nil {
				t.Fatal(err)
			}
			run(t, e, items)
			want := model(items, c.signal, c.pred, c.edge, c.before, c.after, c.minInt)
			if c.want > 0 && len(want) != c.want {
				t.Fatalf("the model finds %d windows in the log, the test expects %d", len(want), c.want)
			}
			if len(want) == 0 {
				t.Fatal("no window in the log: the test proves nothing")
			}
			checkWindows(t, out.windows(t, c.name), want, items, c.globs)
			t.Logf("%s: %d windows, %d parts", c.name, len(want), len(out.parts))
		})
	}
}

// TestBufferStaysWithinItsBudget: a rule whose ten seconds before the
// trigger hold far more than 8 KiB of readings keeps 8 KiB, never more,
// drops its oldest readings (counted), and its window then holds what the
// budget holds instead of the full ten seconds.
func TestBufferStaysWithinItsBudget(t *testing.T) {
	items, specs := replay(t, civic)
	var out collected
	const budget = 8 << 10
	cfg := Config{Rules: []Rule{{Name: "small", When: "POWERTRAIN_DATA.BRAKE_PRESSED == 1", Before: cli.Duration(10 * time.Second),
		After: cli.Duration(time.Second), BufferBytes: budget}}}
	e, err := New(cfg, specs, Options{Batch: testBatch}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	peak := int64(0)
	for _, it := range items {
		if err := e.Add(it, 0); err != nil {
			t.Fatal(err)
		}
		peak = max(peak, e.MemoryBytes())
		if m := e.MemoryBytes(); m > budget {
			t.Fatalf("the rule holds %d bytes, budget %d", m, budget)
		}
	}
	r := e.ring
	if r.evicted == 0 {
		t.Fatal("nothing was evicted: the test did not fill the buffer")
	}
	ws := out.windows(t, "small")
	if len(ws) == 0 {
		t.Fatal("no window")
	}
	first := ws[0]
	pre := 0
	for _, rd := range first.readings {
		if rd.Time <= first.trigger {
			pre++
		}
		if rd.Time < first.trigger-int64(10*time.Second) {
			t.Fatalf("a reading from before the window")
		}
	}
	if maxEntries := budget / int(entrySize); pre > maxEntries || pre < maxEntries/2 {
		t.Errorf("%d readings before the trigger; the budget holds %d", pre, maxEntries)
	}
	if inLog := len(selected(items, []string{"*"}, first.trigger-int64(10*time.Second), first.trigger)); pre >= inLog {
		t.Errorf("%d readings before the trigger, as many as the log's 10 s hold (%d): nothing was cut", pre, inLog)
	}
	t.Logf("peak %d bytes of %d; %d readings evicted; %d readings before the first trigger", peak, budget, r.evicted, pre)
}

// TestRulesShareOneBuffer: two rules capturing the same signals keep one
// copy of them, and each window takes at most its own rule's budget of it.
func TestRulesShareOneBuffer(t *testing.T) {
	items, specs := replay(t, civic)
	var out collected
	when := "POWERTRAIN_DATA.BRAKE_PRESSED == 1"
	cfg := Config{Rules: []Rule{
		{Name: "small", When: when, Before: cli.Duration(10 * time.Second), After: cli.Duration(time.Second), BufferBytes: 8 << 10},
		{Name: "big", When: when, Before: cli.Duration(10 * time.Second), After: cli.Duration(time.Second), BufferBytes: 4 << 20},
	}}
	e, err := New(cfg, specs, Options{Batch: testBatch}, Deps{Spool: out.spool})
	if err != nil {
		t.Fatal(err)
	}
	one, err := New(Config{Rules: cfg.Rules[1:]}, specs, Options{Batch: testBatch}, Deps{Spool: (&collected{}).spool})
	if err != nil {
		t.Fatal(err)
	}
	run(t, e, items)
	run(t, one, items)
	if both, alone := e.MemoryBytes(), one.MemoryBytes(); both > alone+alone/4 {
		t.Errorf("two rules hold %d bytes, one alone %d: the readings are kept twice", both, alone)
	}
	small, big := out.windows(t, "small"), out.windows(t, "big")
	if len(small) != 6 || len(big) != 6 {
		t.Fatalf("%d and %d windows, want 6 each", len(small), len(big))
	}
	pre := func(w gotWindow) int {
		n := 0
		for _, r := range w.readings {
			if r.Time <= w.trigger {
				n++
			}
		}
		return n
	}
	for i := range small {
		s, b := pre(small[i]), pre(big[i])
		if s > (8<<10)/int(entrySize) || s >= b {
			t.Errorf("window %d: %d readings before the trigger under 8 KiB, %d under 4 MiB", i, s, b)
		}
	}
}
