// Package e2e runs the real binaries against the real services that
// compose/services.sh starts (Mosquitto, Apache Kafka, MinIO) and checks
// what a fleet operator would: every reading the cars sent is in the Parquet
// files on S3 exactly once, with the right values and timestamps, even when
// the sink and the bridge crash mid-stream; and the live map shows every car
// where it last was.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/edge-agent/agent"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// The simulated drive: 20 cars for 3 simulated minutes, at 10x speed.
const (
	vehicles    = 20
	simDuration = 3 * time.Minute
	speedup     = 10
	imuHz       = 5
	seed        = 7
)

func TestEndToEndExactlyOnceUnderCrashes(t *testing.T) {
	mqttURL := testenv.MQTT(t)
	brokers := testenv.Kafka(t)
	minio := testenv.MinIO(t)
	python := testenv.Python(t)

	run := strconv.FormatUint(rand.Uint64()%1e9, 36)
	topic := "e2e.telemetry." + run
	bucket := "e2e-" + run
	bins := buildBinaries(t, "./edge-agent", "./bridge", "./consumers/parquet-sink", "./consumers/live-location")
	bin := func(name string) string { return filepath.Join(bins, name) }

	store := newBucket(t, minio, bucket)
	kcl, err := kgo.NewClient(kgo.SeedBrokers(brokers))
	if err != nil {
		t.Fatal(err)
	}
	defer kcl.Close()
	adm := kadm.NewClient(kcl)

	// The cloud side. The bridge creates the topics.
	bridgeArgs := []string{"--mqtt-url", mqttURL, "--mqtt-client-id", "e2e-bridge-" + run, "--share-group", "e2e-" + run,
		"--kafka-brokers", brokers, "--topic", topic, "--dlq-topic", topic + ".dlq", "--partitions", "4", "--replication", "1",
		"--bridge-id", "e2e", "--listen", "127.0.0.1:0", "--catalog-topic", topic + ".catalog"}
	bridge := startProc(t, bin("bridge"), "bridge", bridgeArgs...)
	waitFor(t, "the bridge to create "+topic, time.Minute, func(ctx context.Context) error {
		td, err := adm.ListTopics(ctx, topic)
		if err != nil {
			return err
		}
		if !td.Has(topic) || len(td[topic].Partitions) != 4 {
			return fmt.Errorf("topic %s not there yet", topic)
		}
		return nil
	})
	sinkArgs := []string{"--kafka-brokers", brokers, "--topic", topic, "--group", "e2e-sink-" + run,
		"--s3-endpoint", minio.Endpoint, "--s3-bucket", bucket, "--s3-access-key", minio.AccessKey, "--s3-secret-key", minio.SecretKey,
		"--s3-path-style", "--instance-id", "e2e-sink", "--max-file-age", "1s", "--quiet-margin", "1s", "--max-file-rows", "5000", "--listen", "127.0.0.1:0",
		"--catalog-topic", topic + ".catalog"}
	sink := startProc(t, bin("parquet-sink"), "parquet-sink", sinkArgs...)
	liveAddr := testenv.FreeAddr(t)
	startProc(t, bin("live-location"), "live-location", "--kafka-brokers", brokers, "--topic", topic, "--catalog-topic", topic+".catalog",
		"--location-topic", topic+".location", "--location-partitions", "1", "--location-replication", "1", "--listen", liveAddr,
		// Its own group: a killed member of another test's would hold the
		// partitions until its session timed out. The drive ends as the
		// test starts; nearby must still show it when checkLive runs.
		"--group", topic+".live", "--stale-after", "30m")

	// The cars: a finite, deterministic drive ending about now, so that the
	// last positions are fresh for the live map.
	start := time.Now().UTC().Add(-simDuration).Truncate(time.Second)
	agentArgs := []string{"--mqtt-url", mqttURL, "--sim-vehicles", strconv.Itoa(vehicles), "--sim-seed", strconv.Itoa(seed),
		"--sim-start", start.Format(time.RFC3339), "--sim-duration", simDuration.String(), "--sim-speedup", strconv.Itoa(speedup),
		"--sim-imu-hz", strconv.Itoa(imuHz), "--sim-id-prefix", "e2e-" + run + "-", "--batch-max-age", "2s",
		"--ack-timeout", "3s", "--exit-when-done", "--drain-timeout", "2m", "--listen", "",
		"--spool-dir", filepath.Join(t.TempDir(), "spool"), "--backlog-rate", "200"}
	edge := startProc(t, bin("edge-agent"), "edge-agent", agentArgs...)

	// Crash the sink and then the bridge while the cars are driving.
	total := int64(vehicles * int(simDuration/(2*time.Second)))
	waitRecords := func(n int64) {
		waitFor(t, fmt.Sprintf("%d records in %s", n, topic), 2*time.Minute, func(ctx context.Context) error {
			ends, err := adm.ListEndOffsets(ctx, topic)
			if err != nil {
				return err
			}
			var sum int64
			ends.Each(func(o kadm.ListedOffset) { sum += o.Offset })
			if sum < n {
				return fmt.Errorf("%d records so far", sum)
			}
			return nil
		})
	}
	waitRecords(total / 4)
	sink.kill()
	sink = startProc(t, bin("parquet-sink"), "parquet-sink-2", sinkArgs...)
	waitRecords(total / 2)
	bridge.kill()
	bridge = startProc(t, bin("bridge"), "bridge-2", bridgeArgs...)

	if err := edge.wait(3 * time.Minute); err != nil {
		t.Fatalf("edge-agent did not finish with every batch acknowledged: %v", err)
	}
	if !edge.logContains("every batch acknowledged") {
		t.Fatal("edge-agent exited without saying every batch was acknowledged")
	}

	// Wait until the sink's checkpoints cover everything in Kafka.
	waitSinkWritten(t, adm, store, topic, 2*time.Minute)
	if err := sink.stop(30 * time.Second); err != nil {
		t.Errorf("sink shutdown: %v", err)
	}
	if err := bridge.stop(30 * time.Second); err != nil {
		t.Errorf("bridge shutdown: %v", err)
	}

	// The cars registered their catalog and most batches refer to it (the
	// first ones, sent before the ack, name their signals); the checks
	// below show the sink and live-location resolved them exactly.
	catalogs, refs, inline := 0, 0, 0
	readTopic(t, brokers, topic+".catalog", func(*kgo.Record) { catalogs++ })
	readTopic(t, brokers, topic, func(r *kgo.Record) {
		if _, err := wire.Decode(r.Value, wire.Limits{}); errors.Is(err, wire.ErrUnknownCatalog) {
			refs++
		} else {
			inline++
		}
	})
	if catalogs == 0 || refs <= inline {
		t.Errorf("%d catalog records; %d batches refer to a catalog, %d name their signals: want the catalog used by most", catalogs, refs, inline)
	}
	t.Logf("catalog records %d; batches referring to it %d, naming their signals %d", catalogs, refs, inline)

	// What the cars sent: the simulator is deterministic, so regenerate it.
	want := expected(t, agentArgs)

	// What is on S3, read by DuckDB and pyarrow.
	dir := download(t, store)
	rows := readParquet(t, python, dir)
	checkReadings(t, want, rows)

	// The live map shows every car at its last position.
	checkLive(t, "http://"+liveAddr, want)
}

// sent is what the simulated cars produced.
type sent struct {
	readings map[readingKey]wire.Value
	fixes    map[readingKey]wire.Fix
	last     map[string]wire.Fix // per vehicle
}

type readingKey struct {
	vehicle, signal string
	tsMicros        int64
}

func expected(t *testing.T, agentArgs []string) sent {
	t.Helper()
	cfg := agent.DefaultConfig()
	// Parse the same flags the agent got, so the simulation is the same.
	fs := flagSet(&cfg)
	if err := fs.Parse(agentArgs); err != nil {
		t.Fatal(err)
	}
	simCfg := cfg.Source("sim").(*sim.SourceConfig)
	sc, err := simCfg.Sim()
	if err != nil {
		t.Fatal(err)
	}
	s := sent{readings: map[readingKey]wire.Value{}, fixes: map[readingKey]wire.Fix{}, last: map[string]wire.Fix{}}
	end := sc.Start.Add(simCfg.Duration)
	for _, v := range sim.NewFleet(sc) {
		for v.Now().Before(end) {
			rs, fix := v.Step()
			for _, r := range rs {
				s.readings[readingKey{v.ID, r.Signal, r.Time / 1000}] = r.Value
			}
			s.fixes[readingKey{v.ID, "", fix.Time / 1000}] = fix
			s.last[v.ID] = fix
		}
	}
	return s
}

// newBucket creates bucket on the test's MinIO.
func newBucket(t *testing.T, minio testenv.S3, bucket string) *objstore.Store {
	t.Helper()
	ctx := context.Background()
	store, err := objstore.New(ctx, objstore.Config{Endpoint: minio.Endpoint, Bucket: bucket, AccessKey: minio.AccessKey,
		SecretKey: minio.SecretKey, PathStyle: true, Region: objstore.DefaultRegion}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if err := store.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	return store
}

func download(t *testing.T, store *objstore.Store) string {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	n := 0
	for _, table := range []string{"readings/", "locations/"} {
		objs, err := store.List(ctx, table)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			data, err := store.Get(ctx, o.Key)
			if err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(dir, filepath.FromSlash(o.Key))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	t.Logf("downloaded %d Parquet files from S3", n)
	return dir
}

type row struct {
	Table       string       `json:"table"`
	VehicleID   string       `json:"vehicle_id"`
	TSMicros    json.Number  `json:"ts_us"`
	Signal      string       `json:"signal"`
	Unit        string       `json:"unit"`
	ValueType   string       `json:"value_type"`
	ValueDouble *json.Number `json:"value_double"`
	ValueInt    *json.Number `json:"value_int"`
	ValueBool   *bool        `json:"value_bool"`
	ValueString *string      `json:"value_string"`
	Lat, Lon    json.Number
	Alt         *json.Number `json:"alt"`
	Speed       *json.Number `json:"speed"`
	Heading     *json.Number `json:"heading"`
	Accuracy    *json.Number `json:"accuracy"`
	Epoch       json.Number  `json:"epoch"`
	Seq         json.Number  `json:"seq"`
	CaptureID   *string      `json:"capture_id"`
	CaptureRule *string      `json:"capture_rule"`
	// CaptureTriggerMicros is capture_trigger_ts in µs since the epoch.
	CaptureTriggerMicros *json.Number `json:"capture_trigger_ts_us"`
	Date                 string       `json:"date"`
	Hour                 int          `json:"hour"`
	Filename             string       `json:"filename"`
}

func readParquet(t *testing.T, python, dir string) []row {
	t.Helper()
	return queryParquet(t, python, dir, "")
}

// queryParquet reads the rows of both tables that DuckDB selects with the
// SQL condition where (every row when it is empty).
func queryParquet(t *testing.T, python, dir, where string) []row {
	t.Helper()
	script := filepath.Join(testenv.RepoRoot(), "compose", "e2e", "testdata", "read_parquet.py")
	var stdout, stderr bytes.Buffer
	args := []string{script, dir}
	if where != "" {
		args = append(args, where)
	}
	cmd := exec.Command(python, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("read_parquet.py: %v\n%s", err, stderr.String())
	}
	var rows []row
	sc := bufio.NewScanner(&stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.UseNumber()
		var r row
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("bad row %q: %v", sc.Text(), err)
		}
		rows = append(rows, r)
	}
	return rows
}

func mustInt(t *testing.T, n json.Number) int64 {
	t.Helper()
	v, err := n.Int64()
	if err != nil {
		t.Fatalf("not an integer: %q", n)
	}
	return v
}

func mustFloat(t *testing.T, n *json.Number) (float64, bool) {
	t.Helper()
	if n == nil {
		return 0, false
	}
	v, err := n.Float64()
	if err != nil {
		t.Fatalf("not a number: %q", *n)
	}
	return v, true
}

// sqlString shows a nullable string column's value as SQL would.
func sqlString(s *string) string {
	if s == nil {
		return "NULL"
	}
	return "'" + *s + "'"
}

// sameValue says whether a readings row holds the value w, in the column
// of its kind.
func sameValue(t *testing.T, r row, w wire.Value) bool {
	t.Helper()
	if r.ValueType != w.Kind.String() {
		return false
	}
	switch w.Kind {
	case wire.KindDouble:
		f, ok := mustFloat(t, r.ValueDouble)
		return ok && f == w.Float
	case wire.KindInt:
		return r.ValueInt != nil && mustInt(t, *r.ValueInt) == w.Int
	case wire.KindBool:
		return r.ValueBool != nil && *r.ValueBool == w.Bool
	case wire.KindString:
		return r.ValueString != nil && *r.ValueString == w.Str
	}
	return false
}

func checkReadings(t *testing.T, want sent, rows []row) {
	t.Helper()
	seenR := map[readingKey]int{}
	seenF := map[readingKey]int{}
	seqs := map[string]map[string]map[int64]bool{} // vehicle -> epoch -> seq
	bad := 0
	report := func(format string, args ...any) {
		bad++
		if bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, r := range rows {
		ts := mustInt(t, r.TSMicros)
		utc := time.UnixMicro(ts).UTC()
		if r.Date != utc.Format("2006-01-02") || r.Hour != utc.Hour() {
			report("%s: row at %v is in partition date=%s/hour=%d", r.Filename, utc, r.Date, r.Hour)
		}
		if seqs[r.VehicleID] == nil {
			seqs[r.VehicleID] = map[string]map[int64]bool{}
		}
		if seqs[r.VehicleID][r.Epoch.String()] == nil {
			seqs[r.VehicleID][r.Epoch.String()] = map[int64]bool{}
		}
		seqs[r.VehicleID][r.Epoch.String()][mustInt(t, r.Seq)] = true
		if r.CaptureID != nil || r.CaptureRule != nil || r.CaptureTriggerMicros != nil {
			report("%s: a row of the live stream has capture_id %s, capture_rule %s, capture_trigger_ts %v: want all NULL", r.Filename, sqlString(r.CaptureID), sqlString(r.CaptureRule), r.CaptureTriggerMicros)
		}

		switch r.Table {
		case "readings":
			k := readingKey{r.VehicleID, r.Signal, ts}
			seenR[k]++
			w, ok := want.readings[k]
			if !ok {
				report("unexpected reading %+v", k)
				continue
			}
			if r.ValueType != w.Kind.String() {
				report("%+v: type %s, want %s", k, r.ValueType, w.Kind)
				continue
			}
			if !sameValue(t, r, w) {
				report("%+v: value %+v, want %+v", k, r, w)
			}
		case "locations":
			k := readingKey{r.VehicleID, "", ts}
			seenF[k]++
			w, ok := want.fixes[k]
			if !ok {
				report("unexpected fix %+v", k)
				continue
			}
			lat, _ := mustFloat(t, &r.Lat)
			lon, _ := mustFloat(t, &r.Lon)
			alt, _ := mustFloat(t, r.Alt)
			speed, _ := mustFloat(t, r.Speed)
			heading, _ := mustFloat(t, r.Heading)
			acc, _ := mustFloat(t, r.Accuracy)
			if lat != w.Lat || lon != w.Lon || alt != w.Alt || speed != w.Speed || heading != w.Heading || acc != w.Accuracy {
				report("fix %+v: got lat %v lon %v alt %v speed %v heading %v acc %v, want %+v", k, lat, lon, alt, speed, heading, acc, w)
			}
		default:
			report("row of unknown table %q", r.Table)
		}
	}
	for k := range want.readings {
		if n := seenR[k]; n != 1 {
			report("reading %+v is in the Parquet files %d times, want once", k, n)
		}
	}
	for k := range want.fixes {
		if n := seenF[k]; n != 1 {
			report("fix %+v is in the Parquet files %d times, want once", k, n)
		}
	}
	for k, n := range seenR {
		if n > 1 {
			report("reading %+v duplicated (%d times)", k, n)
		}
	}
	// Per vehicle, one epoch and a complete seq run from 1.
	for v, epochs := range seqs {
		if len(epochs) != 1 {
			report("%s: %d epochs, want 1", v, len(epochs))
		}
		for e, s := range epochs {
			for i := int64(1); i <= int64(len(s)); i++ {
				if !s[i] {
					report("%s epoch %s: seq %d missing of %d", v, e, i, len(s))
				}
			}
		}
	}
	if len(seqs) != vehicles {
		report("%d vehicles in the files, want %d", len(seqs), vehicles)
	}
	t.Logf("checked %d rows: %d readings and %d fixes, each exactly once", len(rows), len(want.readings), len(want.fixes))
}

func checkLive(t *testing.T, base string, want sent) {
	t.Helper()
	// nearby around the fleet's centre, wide enough for every car.
	url := base + "/v1/vehicles/nearby?lat=37.9838&lon=23.7275&radius_m=20000&limit=1000"
	waitFor(t, "nearby to show every car at its last position", time.Minute, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		var body struct {
			Vehicles []struct {
				ID        string  `json:"id"`
				Lat       float64 `json:"lat"`
				Lon       float64 `json:"lon"`
				DistanceM float64 `json:"distance_m"`
				UpdatedAt string  `json:"updated_at"`
			} `json:"vehicles"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		got := map[string]bool{}
		prev := -1.0
		for _, v := range body.Vehicles {
			w, ok := want.last[v.ID]
			if !ok {
				continue // another test's vehicles
			}
			if v.Lat != w.Lat || v.Lon != w.Lon {
				return fmt.Errorf("%s at %v,%v, want its last fix %v,%v", v.ID, v.Lat, v.Lon, w.Lat, w.Lon)
			}
			if ts, err := time.Parse(time.RFC3339Nano, v.UpdatedAt); err != nil || ts.UnixNano() != w.Time {
				return fmt.Errorf("%s updated_at %s, want %s", v.ID, v.UpdatedAt, time.Unix(0, w.Time).UTC().Format(time.RFC3339Nano))
			}
			if v.DistanceM < prev {
				return fmt.Errorf("nearby is not nearest first")
			}
			prev = v.DistanceM
			got[v.ID] = true
		}
		if len(got) != len(want.last) {
			return fmt.Errorf("nearby shows %d of %d cars", len(got), len(want.last))
		}
		return nil
	})
}
