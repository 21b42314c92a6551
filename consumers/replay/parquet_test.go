package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
)

// newBucket creates a fresh bucket on the real MinIO.
func newBucket(t *testing.T, m testenv.S3) string {
	t.Helper()
	bucket := fmt.Sprintf("replay-pq-%d", time.Now().UnixNano())
	if err := storeAt(t, m, bucket, "").EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
	return bucket
}

func storeAt(t *testing.T, m testenv.S3, bucket, prefix string) *objstore.Store {
	t.Helper()
	st, err := objstore.New(context.Background(), objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: prefix,
		AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true}, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// s3Flags reach the real MinIO.
func s3Flags(m testenv.S3) []string {
	return []string{"--s3-endpoint", m.Endpoint, "--s3-access-key", m.AccessKey, "--s3-secret-key", m.SecretKey, "--s3-path-style"}
}

// parquetObjects maps every Parquet object under bucket/prefix (relative
// key) to its bytes.
func parquetObjects(t *testing.T, m testenv.S3, bucket, prefix string) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	st := storeAt(t, m, bucket, prefix)
	objs, err := st.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, o := range objs {
		if strings.HasSuffix(o.Key, ".parquet") {
			if out[o.Key], err = st.Get(ctx, o.Key); err != nil {
				t.Fatal(err)
			}
		}
	}
	return out
}

// replayOK runs the replay binary and fails the test if it fails.
func replayOK(t *testing.T, args ...string) string {
	t.Helper()
	out, err := command(args...).CombinedOutput()
	if err != nil {
		t.Fatalf("replay %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// row is one row as rows.py prints it.
type row map[string]any

func parseRows(t *testing.T, out string) []row {
	t.Helper()
	var rows []row
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var r row
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("rows.py printed %q: %v", l, err)
		}
		rows = append(rows, r)
	}
	return rows
}

// id is a row's provenance: table, vehicle, batch and index in the batch.
func (r row) id() string {
	return fmt.Sprintf("%v/%v/%v/%v/%v/%v", r["table"], r["vehicle_id"], r["epoch"], r["seq"], r["batch_index"], r["signal"])
}

// seq is the row's batch seq (the history's record number).
func (r row) seq() int { return int(r["seq"].(float64)) }

// checkOnce fails unless rows hold exactly the rows of the history's
// batches whose seq keep accepts, each once: readings (of the signals
// sigs accepts) and, when fixes, their fix.
func checkOnce(t *testing.T, rows []row, keep func(seq int) bool, readingsPerBatch int, fixes bool) {
	t.Helper()
	seen := map[string]int{}
	perSeq := map[int]int{}
	for _, r := range rows {
		if seen[r.id()]++; seen[r.id()] > 1 {
			t.Fatalf("row %s is in the output twice", r.id())
		}
		if !keep(r.seq()) {
			t.Fatalf("row %s is of a batch outside the slice", r.id())
		}
		perSeq[r.seq()]++
	}
	want := readingsPerBatch
	if fixes {
		want++
	}
	batches := 0
	for seq := range killRecords {
		if !keep(seq) {
			continue
		}
		batches++
		if perSeq[seq] != want {
			t.Fatalf("batch %d has %d rows in the output, want %d", seq, perSeq[seq], want)
		}
	}
	if batches == 0 {
		t.Fatal("the slice holds no batch: the test checks nothing")
	}
}

// TestParquetTwice replays a time range to Parquet into two prefixes and
// once more into the first: the same object names with the same bytes,
// every row of the range once (read by DuckDB and pyarrow), and a second
// replay into the same prefix finds the range written and changes nothing.
func TestParquetTwice(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.pq2.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	bucket := newBucket(t, m)
	from, to := t0.Add(20*time.Second), t0.Add(150*time.Second) // records 200 to 1499
	args := append([]string{"--kafka-brokers", brokers, "--topic", src, "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339),
		"--progress", "none", "--max-file-age", "10s"}, s3Flags(m)...)
	for _, prefix := range []string{"a", "b"} {
		replayOK(t, append(slices.Clip(args), "--to-parquet", "s3://"+bucket+"/"+prefix)...)
	}
	a, b := parquetObjects(t, m, bucket, "a"), parquetObjects(t, m, bucket, "b")
	if !slices.Equal(slices.Sorted(maps.Keys(a)), slices.Sorted(maps.Keys(b))) {
		t.Fatalf("object names differ:\n%v\n%v", slices.Sorted(maps.Keys(a)), slices.Sorted(maps.Keys(b)))
	}
	for k := range a {
		if !bytes.Equal(a[k], b[k]) {
			t.Errorf("%s differs between the two replays", k)
		}
	}
	// 4 partitions, 13 s of records each at most 10 s a window, two tables.
	if len(a) < 16 {
		t.Errorf("%d objects: want several windows per partition: %v", len(a), slices.Sorted(maps.Keys(a)))
	}
	rowsA := prefixRows(t, python, m, bucket, "a")
	if rowsB := prefixRows(t, python, m, bucket, "b"); rowsA != rowsB {
		t.Fatal("DuckDB reads different rows from the two replays")
	}
	checkOnce(t, parseRows(t, rowsA), func(seq int) bool { return seq >= 200 && seq < 1500 }, 20, true)

	// Again into a: written already, nothing changes.
	out := replayOK(t, append(slices.Clip(args), "--to-parquet", "s3://"+bucket+"/a")...)
	if strings.Count(out, "already written") != killPartitions {
		t.Errorf("the second replay into the same prefix did not find the %d partitions written:\n%s", killPartitions, out)
	}
	again := parquetObjects(t, m, bucket, "a")
	if !maps.EqualFunc(a, again, bytes.Equal) {
		t.Fatal("replaying the same range into the same prefix changed its objects")
	}
}

// TestParquetVehicleSignals: --vehicle and --signals narrow a backfill to
// one vehicle's rows of the chosen signals.
func TestParquetVehicleSignals(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.pqv.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	bucket := newBucket(t, m)
	replayOK(t, append([]string{"--kafka-brokers", brokers, "--topic", src, "--from", t0.Format(time.RFC3339), "--progress", "none",
		"--vehicle", "car-07", "--signals", "sig_1,location", "--to-parquet", "s3://" + bucket + "/v"}, s3Flags(m)...)...)
	rows := parseRows(t, prefixRows(t, python, m, bucket, "v"))
	for _, r := range rows {
		if r["vehicle_id"] != "car-07" || (r["table"] == "readings" && r["signal"] != "sig_1") {
			t.Fatalf("row %s is not car-07's sig_1 or location", r.id())
		}
	}
	// car-07's batches are every 40th; each has 4 sig_1 readings and a fix.
	checkOnce(t, rows, func(seq int) bool { return seq%killVehicles == 7 }, 4, true)
}

// TestParquetRanges: ranges of one partition in one prefix. The same first
// offset with a later end continues the backfill; an overlapping range or
// the same range with other settings is refused before anything is
// written; a range after it is fine; together they hold what one replay
// of the whole span writes.
func TestParquetRanges(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.pqr.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	bucket := newBucket(t, m)
	base := append([]string{"--kafka-brokers", brokers, "--topic", src, "--progress", "none", "--max-file-age", "5s", "--to-parquet", "s3://" + bucket + "/r"}, s3Flags(m)...)
	replayOK(t, append(slices.Clip(base), "--offsets", "0:100-200")...)
	before := parquetObjects(t, m, bucket, "r")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--offsets", "0:150-300"}, "--to-parquet: s3://" + bucket + "/r/ holds a backfill of " + src + " partition 0, offsets 100-200; this replay's range 150-300 overlaps it"},
		{[]string{"--offsets", "0:50-101"}, "--to-parquet: s3://" + bucket + "/r/ holds a backfill of " + src + " partition 0, offsets 100-200; this replay's range 50-101 overlaps it"},
		{[]string{"--offsets", "0:100-200", "--max-file-rows", "10"}, "--max-file-rows: s3://" + bucket + "/r/ holds a backfill of " + src + " partition 0 from offset 100 made with --max-file-rows 50000000, not 10"},
		{[]string{"--offsets", "0:100-200", "--signals", "sig_1"}, "--signals: s3://" + bucket + "/r/ holds a backfill of " + src + " partition 0 from offset 100 made with --signals"},
	} {
		out, err := command(append(slices.Clip(base), c.args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("%v: err %v, want an error saying %q:\n%s", c.args, err, c.want, out)
		}
	}
	if after := parquetObjects(t, m, bucket, "r"); !maps.EqualFunc(before, after, bytes.Equal) {
		t.Fatal("a refused replay changed the prefix")
	}
	out := replayOK(t, append(slices.Clip(base), "--offsets", "0:100-250")...)
	if !strings.Contains(out, "continuing the partition's backfill from its checkpoint") || !strings.Contains(out, "from=200") {
		t.Errorf("a later end did not continue the range from 200:\n%s", out)
	}
	replayOK(t, append(slices.Clip(base), "--offsets", "0:250-330")...)
	replayOK(t, append([]string{"--kafka-brokers", brokers, "--topic", src, "--progress", "none", "--max-file-age", "5s",
		"--offsets", "0:100-330", "--to-parquet", "s3://" + bucket + "/whole"}, s3Flags(m)...)...)
	if got, want := prefixRows(t, python, m, bucket, "r"), prefixRows(t, python, m, bucket, "whole"); got != want || want == "" {
		t.Fatalf("three ranges hold %d rows, one replay of their span %d", strings.Count(got, "\n"), strings.Count(want, "\n"))
	}
}

// TestParquetKillResume kill -9s a Parquet backfill mid-way and resumes
// it with --resume: every row once, and the same objects, byte for byte,
// as an uninterrupted backfill of the range.
func TestParquetKillResume(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.pqk.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	bucket := newBucket(t, m)
	common := append([]string{"--kafka-brokers", brokers, "--topic", src, "--state-topic", src + ".state", "--from", t0.Format(time.RFC3339),
		"--progress", "none", "--commit-interval", "100ms", "--max-file-age", "5s"}, s3Flags(m)...)
	replayOK(t, append(slices.Clip(common), "--to-parquet", "s3://"+bucket+"/ref")...)

	clientID := fmt.Sprintf("replay-pqkill-%d", time.Now().UnixNano())
	args := append(slices.Clip(common), "--to-parquet", "s3://"+bucket+"/killed", "--resume", "pqkill", "--kafka-client-id", clientID)
	undo := throttle(t, brokers, src, clientID, 16<<10)
	defer undo()
	var stderr lockedBuffer
	cmd := command(args...)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backfill's first committed files", 60*time.Second, func() bool {
		return len(parquetObjects(t, m, bucket, "killed")) >= 4
	})
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
		t.Fatalf("the replay ended before it was killed (%v): throttle it harder\n%s", err, stderr.String())
	}
	partial := len(parquetObjects(t, m, bucket, "killed"))
	undo()
	out := replayOK(t, args...)
	// It continues from the saved position: a partition the kill
	// interrupted mid-way (unless it came between ranges) from that
	// range's checkpoint.
	if !strings.Contains(out, "resuming replay") {
		t.Errorf("the second run did not resume the replay:\n%s", out)
	}
	t.Logf("resumed run:\n%s", out)
	ref, got := parquetObjects(t, m, bucket, "ref"), parquetObjects(t, m, bucket, "killed")
	if partial >= len(ref) {
		t.Errorf("the kill came after the last file (%d of %d)", partial, len(ref))
	}
	if !slices.Equal(slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(ref))) {
		t.Fatalf("after kill -9 and --resume the objects differ from an uninterrupted backfill's:\n%v\n%v",
			slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(ref)))
	}
	for k := range ref {
		if !bytes.Equal(got[k], ref[k]) {
			t.Errorf("%s differs from the uninterrupted backfill's", k)
		}
	}
	checkOnce(t, parseRows(t, prefixRows(t, python, m, bucket, "killed")), func(int) bool { return true }, 20, true)
}

// TestParquetMatchesSink runs the real parquet-sink on a topic and replays
// the topic, and a time range of it, to Parquet: DuckDB reads the same
// rows from the backfill as from the sink's files for the same records.
func TestParquetMatchesSink(t *testing.T) {
	brokers := testenv.Kafka(t)
	m := testenv.MinIO(t)
	python := testenv.Python(t)
	src := fmt.Sprintf("test.replay.pqs.%d", time.Now().UnixNano())
	produceHistory(t, brokers, src)
	bin := buildSink(t)
	bucket := newBucket(t, m)
	sinkToPrefix(t, bin, brokers, m, bucket, src, "live", killRecords)
	sink := parseRows(t, prefixRows(t, python, m, bucket, "live"))

	base := append([]string{"--kafka-brokers", brokers, "--topic", src, "--progress", "none", "--max-file-age", "1s"}, s3Flags(m)...)
	replayOK(t, append(slices.Clip(base), "--offsets", "0,1,2,3", "--to-parquet", "s3://"+bucket+"/all")...)
	sameRows(t, parseRows(t, prefixRows(t, python, m, bucket, "all")), sink)

	from, to := t0.Add(50*time.Second), t0.Add(150*time.Second) // records 500 to 1499
	replayOK(t, append(slices.Clip(base), "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339), "--to-parquet", "s3://"+bucket+"/hour")...)
	var inRange []row
	for _, r := range sink {
		if r.seq() >= 500 && r.seq() < 1500 {
			inRange = append(inRange, r)
		}
	}
	sameRows(t, parseRows(t, prefixRows(t, python, m, bucket, "hour")), inRange)
}

// sameRows fails unless got and want hold the same rows (on the columns
// both have, each row as DuckDB reads it).
func sameRows(t *testing.T, got, want []row) {
	t.Helper()
	if len(got) == 0 || len(got) != len(want) {
		t.Fatalf("%d rows, want %d", len(got), len(want))
	}
	common := func(r row, o row) string {
		keys := slices.Sorted(maps.Keys(r))
		var b strings.Builder
		for _, k := range keys {
			if _, ok := o[k]; ok {
				fmt.Fprintf(&b, "%s=%v;", k, r[k])
			}
		}
		return b.String()
	}
	g, w := make([]string, len(got)), make([]string, len(want))
	for i := range got {
		g[i] = common(got[i], want[0])
	}
	for i := range want {
		w[i] = common(want[i], got[0])
	}
	sort.Strings(g)
	sort.Strings(w)
	for i := range g {
		if g[i] != w[i] {
			t.Fatalf("rows differ; first difference:\n got %s\nwant %s", g[i], w[i])
		}
	}
}

// buildSink builds the real parquet-sink binary.
func buildSink(t *testing.T) string {
	t.Helper()
	bin := t.TempDir() + "/parquet-sink"
	build := exec.Command("go", "build", "-o", bin, "./consumers/parquet-sink")
	build.Dir = testenv.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build parquet-sink: %v\n%s", err, out)
	}
	return bin
}
