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
	"strings"
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

// captureRule is a capture rule of the end-to-end test and what the drive
// makes of it.
type captureRule struct {
	name, when, priority string
	before, after        time.Duration
	globs                []string
	windows              int           // known from the log
	reach                time.Duration // how far past its trigger a window may end (a trigger during it extends it)
}

var captureRules = []captureRule{
	// Seven brake presses in the drive, two a second apart: six windows.
	{name: "brake", when: "POWERTRAIN_DATA.BRAKE_PRESSED == 1", priority: "high", before: 2 * time.Second, after: time.Second,
		globs: []string{"POWERTRAIN_DATA.*", "KINEMATICS.*", "WHEEL_SPEEDS.*"}, windows: 6, reach: 3 * time.Second},
	// The wheel turned past 200° to the right twice (31.9 s and 59.2 s
	// into the drive). The car's speed is in these windows at full rate
	// and in the live stream once a second: a reading can be in both.
	{name: "sharp_turn", when: "STEERING_SENSORS.STEER_ANGLE < -200", priority: "normal", before: time.Second, after: time.Second,
		globs: []string{"STEERING_SENSORS.STEER_ANGLE", "CAR_SPEED.CAR_SPEED"}, windows: 2, reach: time.Second},
}

// liveSignal is the one signal of the live stream, once a second.
const liveSignal = "CAR_SPEED.CAR_SPEED"

func (r captureRule) selects(signal string) bool {
	for _, g := range r.globs {
		if ok, _ := path.Match(g, signal); ok {
			return true
		}
	}
	return false
}

func captureFiles(t *testing.T) (rules, collect string) {
	t.Helper()
	dir := t.TempDir()
	rules, collect = filepath.Join(dir, "capture.yaml"), filepath.Join(dir, "collect.yaml")
	var b strings.Builder
	b.WriteString("rules:\n")
	for _, r := range captureRules {
		globs := make([]string, len(r.globs))
		for i, g := range r.globs {
			globs[i] = strconv.Quote(g)
		}
		fmt.Fprintf(&b, "  - name: %s\n    when: %s\n    before: %v\n    after: %v\n    priority: %s\n    signals: [%s]\n",
			r.name, r.when, r.before, r.after, r.priority, strings.Join(globs, ", "))
	}
	if err := os.WriteFile(rules, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(collect, []byte("signals:\n  - {match: "+liveSignal+", mode: interval, interval: 1s}\n"), 0o644); err != nil {
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
	id       string // the capture_id the sink writes: vehicle/epoch (16 hex digits)/window id
	rule     string
	trigger  int64
	parts    map[uint32]bool
	final    uint32
	readings map[string]wire.Reading // by signal@ts (µs, as Parquet holds it)
}

func windowKey(signal string, tsMicros int64) string { return fmt.Sprintf("%s@%d", signal, tsMicros) }

// rowKey tells the rows of the capture test apart: a reading of the live
// stream (capture "") can be in a window too.
type rowKey struct {
	capture, signal string
	tsMicros        int64
}

// wantRow is what Parquet must hold at a rowKey.
type wantRow struct {
	rule    string // "" for the live stream
	trigger int64  // the window's trigger time, ns (0 for the live stream)
	value   wire.Value
}

// TestCaptureEndToEnd replays a real drive through the edge-agent binary
// with two capture rules, over the real broker and the bridge into real
// Kafka, and on through the parquet-sink binary into Parquet on the real
// MinIO. In Kafka every window arrives whole (parts 0..final) and holds
// every reading of its signals at full rate between its first and last
// reading (the live stream keeps one signal once a second); no reading is
// in two windows of a rule. In Parquet, read by DuckDB, every reading of
// every window is there exactly once (one batch of a window is in Kafka
// twice, as after a lost ack) with its capture_id and capture_rule, the
// live stream's rows have both NULL, and `WHERE capture_rule = ...` and
// `WHERE capture_id = ...` select exactly a rule's and a window's readings.
func TestCaptureEndToEnd(t *testing.T) {
	mqttURL := testenv.MQTT(t)
	brokers := testenv.Kafka(t)
	minio := testenv.MinIO(t)
	python := testenv.Python(t)
	dbc, log := testenv.SharedData(t, captureDBC), testenv.SharedData(t, captureLog)
	run := strconv.FormatUint(mrand.Uint64()%1e9, 36)
	topic := "e2e.capture." + run
	vehicle := "e2e-capture-" + run
	bins := buildBinaries(t, "./edge-agent", "./bridge", "./consumers/parquet-sink")
	bin := func(name string) string { return filepath.Join(bins, name) }

	store := newBucket(t, minio, "e2e-capture-"+run)

	startProc(t, bin("bridge"), "bridge", "--mqtt-url", mqttURL, "--mqtt-client-id", "capture-bridge-"+run,
		"--share-group", "capture-"+run, "--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic+".dlq",
		"--partitions", "2", "--replication", "1", "--listen", "127.0.0.1:0", "--catalog-topic", topic+".catalog")
	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.RecordPartitioner(kgo.ManualPartitioner()))
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
	sinkAdmin := testenv.FreeAddr(t)
	sink := startProc(t, bin("parquet-sink"), "parquet-sink", "--kafka-brokers", brokers, "--topic", topic,
		"--catalog-topic", topic+".catalog", "--group", "capture-sink-"+run, "--instance-id", "capture-sink",
		"--s3-endpoint", minio.Endpoint, "--s3-bucket", "e2e-capture-"+run, "--s3-access-key", minio.AccessKey, "--s3-secret-key", minio.SecretKey,
		"--s3-path-style", "--max-file-age", "1s", "--quiet-margin", "1s", "--listen", sinkAdmin)

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
	windows := map[string]*sentWindow{}
	want := map[rowKey]wantRow{}
	var resend *kgo.Record
	readTopic(t, brokers, topic, func(r *kgo.Record) {
		b, err := wire.Decode(r.Value, wire.Limits{Catalogs: catalogs})
		if err != nil {
			t.Fatalf("a batch in Kafka does not decode: %v", err)
		}
		if b.VehicleID != vehicle {
			t.Fatalf("batch %v in Kafka from another vehicle", b.Identity)
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
				if rd.Signal != liveSignal {
					t.Fatalf("live batch %v holds %s", b.Identity, rd.Signal)
				}
				want[rowKey{"", rd.Signal, rd.Time / 1000}] = wantRow{value: rd.Value}
			}
			return
		}
		if resend == nil {
			resend = &kgo.Record{Topic: r.Topic, Partition: r.Partition, Key: r.Key, Value: r.Value}
		}
		id := fmt.Sprintf("%s/%016x/%d", b.VehicleID, b.Epoch, c.ID)
		w := windows[id]
		if w == nil {
			w = &sentWindow{id: id, rule: c.Rule, trigger: c.TriggerTime, parts: map[uint32]bool{}, readings: map[string]wire.Reading{}}
			windows[id] = w
		}
		if w.rule != c.Rule || w.trigger != c.TriggerTime {
			t.Fatalf("window %s: part %d of rule %q triggered at %d, part before of rule %q at %d", id, c.Part, c.Rule, c.TriggerTime, w.rule, w.trigger)
		}
		if w.parts[c.Part] {
			t.Fatalf("window %s has two parts %d", id, c.Part)
		}
		w.parts[c.Part] = true
		if c.Final {
			w.final = c.Part
		}
		for _, rd := range b.Readings {
			k := windowKey(rd.Signal, rd.Time/1000)
			if _, dup := w.readings[k]; dup {
				t.Fatalf("window %s holds %s twice", id, k)
			}
			w.readings[k] = rd
			want[rowKey{id, rd.Signal, rd.Time / 1000}] = wantRow{rule: c.Rule, trigger: c.TriggerTime, value: rd.Value}
		}
	})
	checkSentWindows(t, windows, logReadings(t, dbc, log))

	// A window's batch again, as an agent re-sends it when an ack is lost:
	// the sink must write it once.
	if resend == nil {
		t.Fatal("no capture batch in Kafka")
	}
	if err := kcl.ProduceSync(context.Background(), resend).FirstErr(); err != nil {
		t.Fatal(err)
	}
	waitSinkWritten(t, adm, store, topic, 2*time.Minute)
	if n := metricSum(sinkAdmin, `fleet_sink_records_total{result="duplicate"`); n < 1 {
		t.Errorf("the sink counted %v duplicate records, want the re-sent one at least", n)
	}
	if err := sink.stop(30 * time.Second); err != nil {
		t.Errorf("sink shutdown: %v", err)
	}

	// What is on S3, read by DuckDB.
	dir := download(t, store)
	checkCaptureRows(t, "every row", readParquet(t, python, dir), want, func(rowKey, wantRow) bool { return true })
	for _, r := range captureRules {
		checkCaptureRows(t, "capture_rule = '"+r.name+"'", queryParquet(t, python, dir, "capture_rule = '"+r.name+"'"), want,
			func(_ rowKey, w wantRow) bool { return w.rule == r.name })
	}
	var one *sentWindow
	for _, w := range windows {
		if one == nil || w.id < one.id {
			one = w
		}
	}
	checkCaptureRows(t, "capture_id = '"+one.id+"'", queryParquet(t, python, dir, "capture_id = '"+one.id+"'"), want,
		func(k rowKey, _ wantRow) bool { return k.capture == one.id })
}

// checkSentWindows holds the windows to the rules and to what the log
// holds.
func checkSentWindows(t *testing.T, windows map[string]*sentWindow, all []wire.Reading) {
	t.Helper()
	owner := map[string]string{}
	for _, rule := range captureRules {
		n := 0
		for id, w := range windows {
			if w.rule != rule.name {
				continue
			}
			n++
			for p := uint32(0); p <= w.final; p++ {
				if !w.parts[p] || len(w.parts) != int(w.final)+1 {
					t.Fatalf("window %s: parts %v, final %d", id, w.parts, w.final)
				}
			}
			var lo, hi int64 = 1 << 62, 0
			for k, rd := range w.readings {
				if !rule.selects(rd.Signal) {
					t.Fatalf("window %s of rule %s holds %s", id, rule.name, rd.Signal)
				}
				lo, hi = min(lo, rd.Time), max(hi, rd.Time)
				if other, dup := owner[rule.name+" "+k]; dup {
					t.Fatalf("reading %s in windows %s and %s of rule %s", k, other, id, rule.name)
				}
				owner[rule.name+" "+k] = id
			}
			want := 0
			for _, rd := range all {
				if rule.selects(rd.Signal) && rd.Time >= lo && rd.Time < hi+100_000 { // 0.1 ms ticks on the wire
					want++
				}
			}
			if len(w.readings) != want {
				t.Errorf("window %s: %d readings, the log has %d of its signals between its first and last", id, len(w.readings), want)
			}
			if lo < w.trigger-int64(rule.before) || hi > w.trigger+int64(rule.reach) {
				t.Errorf("window %s spans %v..%v around its trigger", id, time.Duration(lo-w.trigger), time.Duration(hi-w.trigger))
			}
		}
		if n != rule.windows {
			t.Errorf("%d %s windows, want %d", n, rule.name, rule.windows)
		}
	}
	total := 0
	for _, r := range captureRules {
		total += r.windows
	}
	if len(windows) != total {
		t.Errorf("%d windows in Kafka, want %d", len(windows), total)
	}
}

// checkCaptureRows checks that rows, what DuckDB selected by what, are
// exactly the rows of want that in selects, each once, with the value,
// capture_id, capture_rule and capture_trigger_ts (all NULL for the live
// stream) it was sent with.
func checkCaptureRows(t *testing.T, what string, rows []row, want map[rowKey]wantRow, in func(rowKey, wantRow) bool) {
	t.Helper()
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf(what+": "+format, args...)
		}
	}
	seen := map[rowKey]int{}
	for _, r := range rows {
		if r.Table != "readings" {
			report("a %s row from a source without fixes: %+v", r.Table, r)
			continue
		}
		k := rowKey{signal: r.Signal, tsMicros: mustInt(t, r.TSMicros)}
		if r.CaptureID != nil {
			k.capture = *r.CaptureID
		}
		seen[k]++
		w, ok := want[k]
		switch {
		case !ok || !in(k, w):
			report("unexpected row %+v (capture_rule %s)", k, sqlString(r.CaptureRule))
		case (r.CaptureRule == nil) != (w.rule == "") || (w.rule != "" && *r.CaptureRule != w.rule):
			report("row %+v has capture_rule %s, want %q", k, sqlString(r.CaptureRule), w.rule)
		case (r.CaptureTriggerMicros == nil) != (w.rule == "") ||
			(w.rule != "" && mustInt(t, *r.CaptureTriggerMicros) != w.trigger/1000):
			report("row %+v has capture_trigger_ts %v µs, want the trigger at %d ns", k, r.CaptureTriggerMicros, w.trigger)
		case !sameValue(t, r, w.value):
			report("row %+v: %+v, want %+v", k, r, w.value)
		}
	}
	rules := map[string]int{}
	for k, w := range want {
		if !in(k, w) {
			continue
		}
		rules[w.rule]++
		if seen[k] != 1 {
			report("%+v is in Parquet %d times, want once", k, seen[k])
		}
	}
	if len(rows) == 0 {
		t.Errorf("%s: no rows", what)
	}
	t.Logf("%s: %d rows (by rule: %v), each once", what, len(rows), rules)
}
