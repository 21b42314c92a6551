package e2e

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

const (
	captureDBC = "honda_civic_hatchback_ex_2017_can_generated.dbc"
	captureLog = "civic_typer_2019_turnonanddrive.candump.log"
)

// captureGlobs are the signals the brake rule captures.
var captureGlobs = []string{"POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"}

func captureFiles(t *testing.T) (rules, collect string) {
	t.Helper()
	dir := t.TempDir()
	rules, collect = filepath.Join(dir, "capture.yaml"), filepath.Join(dir, "collect.yaml")
	// Seven brake presses in the drive, two a second apart: six windows.
	if err := os.WriteFile(rules, []byte(`rules:
  - name: brake
    when: POWERTRAIN_DATA.BRAKE_PRESSED == 1
    before: 2s
    after: 1s
    signals: ["POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	// The live stream keeps only the car's speed, once a second.
	if err := os.WriteFile(collect, []byte("signals:\n  - {match: CAR_SPEED.CAR_SPEED, mode: interval, interval: 1s}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return rules, collect
}

// logReadings decodes the log as the agent does (every signal of every
// decoded frame).
func logReadings(t *testing.T, dbc, log string) []wire.Reading {
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

// sentWindow is one capture window as Kafka holds it.
type sentWindow struct {
	trigger  int64
	parts    map[uint32]bool
	final    uint32
	readings map[string]wire.Reading // by signal@ts (µs, as Parquet holds it)
}

func windowKey(signal string, tsMicros int64) string { return fmt.Sprintf("%s@%d", signal, tsMicros) }

// TestCaptureEndToEnd replays a real drive through the edge-agent binary
// with a brake capture rule, over the real broker and the bridge, into
// real Kafka: every window arrives whole (parts 0..final), holds every
// reading of its signals at full rate between its first and last reading
// (the live stream keeps one signal once a second), and no reading is in
// two windows.
func TestCaptureEndToEnd(t *testing.T) {
	mqttURL := testenv.MQTT(t)
	brokers := testenv.Kafka(t)
	dbc, log := testenv.SharedData(t, captureDBC), testenv.SharedData(t, captureLog)
	run := strconv.FormatUint(mrand.Uint64()%1e9, 36)
	topic := "e2e.capture." + run
	vehicle := "e2e-capture-" + run
	bins := buildBinaries(t, "./edge-agent", "./bridge")
	bin := func(name string) string { return filepath.Join(bins, name) }

	startProc(t, bin("bridge"), "bridge", "--mqtt-url", mqttURL, "--mqtt-client-id", "capture-bridge-"+run,
		"--share-group", "capture-"+run, "--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic+".dlq",
		"--partitions", "2", "--replication", "1", "--listen", "127.0.0.1:0", "--catalog-topic", topic+".catalog")
	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)
	waitFor(t, "the bridge to create "+topic, time.Minute, func(ctx context.Context) error {
		td, err := adm.ListTopics(ctx, topic)
		if err != nil {
			return err
		}
		if !td.Has(topic) {
			return fmt.Errorf("topic %s not there yet", topic)
		}
		return nil
	})

	rules, collect := captureFiles(t)
	edge := startProc(t, bin("edge-agent"), "edge-agent", "--mqtt-url", mqttURL, "--source", "can", "--vehicle-id", vehicle,
		"--can-dbc", dbc, "--can-candump", log, "--can-realtime=false", "--can-collect", collect, "--capture-rules", rules,
		"--exit-when-done", "--drain-timeout", "2m", "--ack-timeout", "3s", "--listen", "", "--spool-dir", filepath.Join(t.TempDir(), "spool"))
	if err := edge.wait(3 * time.Minute); err != nil {
		t.Fatalf("edge-agent did not finish with every batch acknowledged: %v", err)
	}

	// What Kafka holds, each batch once (re-sends are byte-identical).
	catalogs := wire.Catalogs{}
	readTopic(t, brokers, topic+".catalog", func(r *kgo.Record) {
		if c, err := wire.ParseCatalog(r.Value, wire.Limits{}); err == nil {
			catalogs.Add(c)
		}
	})
	payloads := map[wire.Identity][]byte{}
	windows := map[uint64]*sentWindow{}
	live := 0
	readTopic(t, brokers, topic, func(r *kgo.Record) {
		b, err := wire.Decode(r.Value, wire.Limits{Catalogs: catalogs})
		if err != nil {
			t.Fatalf("a batch in Kafka does not decode: %v", err)
		}
		if prev, dup := payloads[b.Identity]; dup {
			if !bytes.Equal(prev, r.Value) {
				t.Fatalf("batch %v in Kafka twice with different bytes", b.Identity)
			}
			return
		}
		payloads[b.Identity] = r.Value
		c := b.Capture
		if c == nil {
			for _, rd := range b.Readings {
				if rd.Signal != "CAR_SPEED.CAR_SPEED" {
					t.Fatalf("live batch %v holds %s", b.Identity, rd.Signal)
				}
			}
			live += len(b.Readings)
			return
		}
		if c.Rule != "brake" {
			t.Fatalf("batch %v of rule %q", b.Identity, c.Rule)
		}
		w := windows[c.ID]
		if w == nil {
			w = &sentWindow{trigger: c.TriggerTime, parts: map[uint32]bool{}, readings: map[string]wire.Reading{}}
			windows[c.ID] = w
		}
		if w.parts[c.Part] {
			t.Fatalf("window %d has two parts %d", c.ID, c.Part)
		}
		w.parts[c.Part] = true
		if c.Final {
			w.final = c.Part
		}
		for _, rd := range b.Readings {
			k := windowKey(rd.Signal, rd.Time/1000)
			if _, dup := w.readings[k]; dup {
				t.Fatalf("window %d holds %s twice", c.ID, k)
			}
			w.readings[k] = rd
		}
	})
	if live == 0 {
		t.Fatal("no live readings")
	}
	checkSentWindows(t, windows, logReadings(t, dbc, log))
}

// checkSentWindows holds the windows to what the log holds.
func checkSentWindows(t *testing.T, windows map[uint64]*sentWindow, all []wire.Reading) {
	t.Helper()
	if len(windows) != 6 {
		t.Fatalf("%d brake windows, want 6", len(windows))
	}
	selected := func(sig string) bool {
		for _, g := range captureGlobs {
			if ok, _ := path.Match(g, sig); ok {
				return true
			}
		}
		return false
	}
	owner := map[string]uint64{}
	for id, w := range windows {
		for p := uint32(0); p <= w.final; p++ {
			if !w.parts[p] || len(w.parts) != int(w.final)+1 {
				t.Fatalf("window %d: parts %v, final %d", id, w.parts, w.final)
			}
		}
		var lo, hi int64 = 1 << 62, 0
		for k, rd := range w.readings {
			lo, hi = min(lo, rd.Time), max(hi, rd.Time)
			if other, dup := owner[k]; dup {
				t.Fatalf("reading %s in windows %d and %d", k, other, id)
			}
			owner[k] = id
		}
		want := 0
		for _, rd := range all {
			if selected(rd.Signal) && rd.Time >= lo && rd.Time < hi+100_000 { // 0.1 ms ticks on the wire
				want++
			}
		}
		if len(w.readings) != want {
			t.Errorf("window %d: %d readings, the log has %d of its signals between its first and last", id, len(w.readings), want)
		}
		if lo < w.trigger-int64(2*time.Second) || hi > w.trigger+int64(3*time.Second) {
			t.Errorf("window %d spans %v..%v around its trigger", id, time.Duration(lo-w.trigger), time.Duration(hi-w.trigger))
		}
	}
}
