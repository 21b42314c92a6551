package sink_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/consumers/parquet-sink/sink"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var fileKey = regexp.MustCompile(`^(readings|locations)/date=(\d{4}-\d\d-\d\d)/hour=(\d\d)/` +
	regexp.QuoteMeta(topic) + `\+(\d+)\+(\d{20})\.parquet$`)

// TestEndToEnd runs a fleet through Kafka into the sink while it writes
// files: every reading lands once, in the hour of its own time, in a file
// of the partition its vehicle's key maps to.
func TestEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	cfg := e.config()
	r := e.startSink(cfg)

	const vehicles, perVehicle = 8, 15
	var all []*wire.Batch
	partitionOf := map[string]int32{}
	for wave := range 3 { // three waves, so the sink writes several files per partition
		var batches []*wire.Batch
		for v := range vehicles {
			for s := range perVehicle / 3 {
				batches = append(batches, drive(fmt.Sprintf("car-%02d", v), 0xc0ffee, uint64(wave*perVehicle/3+s)))
			}
		}
		for _, rec := range e.produce(batches...) {
			partitionOf[string(rec.Key)] = rec.Partition
		}
		all = append(all, batches...)
		e.waitRows(wantRows(all...))
	}
	e.waitCommitted(cfg.Group)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkStoppedCleanly(cfg.Group)
	want := wantRows(all...)
	e.checkExactlyOnce(want)

	// Layout: each file's rows are of its hour and its partition's vehicles.
	tb, err := e.readTables()
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for key, data := range tb.files {
		m := fileKey.FindStringSubmatch(key)
		if m == nil {
			t.Errorf("file %s does not follow {table}/date=YYYY-MM-DD/hour=HH/{topic}+{partition}+{offset:020}.parquet", key)
			continue
		}
		part, _ := strconv.Atoi(m[4])
		check := func(vehicle string, tsMicros int64) {
			ts := time.UnixMicro(tsMicros).UTC()
			if ts.Format("2006-01-02") != m[2] || fmt.Sprintf("%02d", ts.Hour()) != m[3] {
				t.Errorf("%s holds a row of %v", key, ts)
			}
			if partitionOf[vehicle] != int32(part) {
				t.Errorf("%s holds a row of %s, whose records are in partition %d", key, vehicle, partitionOf[vehicle])
			}
			used[m[4]] = true
		}
		if m[1] == "readings" {
			rows, _ := readRows[parquetout.ReadingRow](data)
			for _, row := range rows {
				check(row.VehicleID, row.TS)
			}
		} else {
			rows, _ := readRows[parquetout.LocationRow](data)
			for _, row := range rows {
				check(row.VehicleID, row.TS)
			}
		}
	}
	if len(used) < 2 {
		t.Errorf("rows came from partitions %v only; the test wants vehicles on several", used)
	}

	var readings, fixes float64
	for _, b := range all {
		readings += float64(len(b.Readings))
		fixes += float64(len(b.Fixes))
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"fleet_sink_records_total", []string{"result", "ok"}, float64(len(all))},
		{"fleet_sink_records_total", []string{"result", "duplicate"}, 0},
		{"fleet_sink_rows_total", []string{"table", "readings"}, readings},
		{"fleet_sink_rows_total", []string{"table", "locations"}, fixes},
		{"fleet_sink_files_total", []string{"table", "readings"}, float64(countPrefix(tb.files, "readings/"))},
		{"fleet_sink_open_rows", nil, 0},
	} {
		if got := r.metric(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func countPrefix(files map[string][]byte, p string) int {
	n := 0
	for k := range files {
		if len(k) >= len(p) && k[:len(p)] == p {
			n++
		}
	}
	return n
}

// TestDuplicatesDropped sends batches again, as an agent's re-send or a
// bridge's retry would: within one file's records, after the original was
// written, and after a sink restart. Each batch's rows appear once, and the
// duplicates are counted.
func TestDuplicatesDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2)
	cfg := e.config()
	r1 := e.startSink(cfg)

	b1, b2, b3, b4 := drive("dup-car", 9, 1), drive("dup-car", 9, 2), drive("dup-car", 9, 3), drive("dup-car", 9, 4)
	// A new spool epoch restarts seq: same seq, different batch.
	newEpoch := drive("dup-car", 10, 1)

	e.produce(b1, b1, b2) // a copy right behind the original
	e.waitCommitted(cfg.Group)
	if got := r1.metric("fleet_sink_records_total", "result", "duplicate"); got != 1 {
		t.Errorf("duplicates after a copy in the same write = %v, want 1", got)
	}
	e.produce(b1, b3) // a copy after the original is in a file
	e.waitCommitted(cfg.Group)
	if got := r1.metric("fleet_sink_records_total", "result", "duplicate"); got != 2 {
		t.Errorf("duplicates after a copy in a later write = %v, want 2", got)
	}
	if got := r1.metric("fleet_sink_records_total", "result", "ok"); got != 3 {
		t.Errorf("ok records = %v, want 3", got)
	}
	if err := r1.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkStoppedCleanly(cfg.Group)

	r2 := e.startSink(cfg) // same group: resumes from the checkpoint
	e.produce(b2, b4, newEpoch, b4)
	e.waitCommitted(cfg.Group)
	if err := r2.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if got := r2.metric("fleet_sink_records_total", "result", "duplicate"); got != 2 {
		t.Errorf("duplicates after the restart = %v, want 2 (b2 from before it, b4 after)", got)
	}
	if got := r2.metric("fleet_sink_records_total", "result", "ok"); got != 2 {
		t.Errorf("ok records after the restart = %v, want 2 (it must not re-read what was written)", got)
	}
	e.checkExactlyOnce(wantRows(b1, b2, b3, b4, newEpoch))
}

// TestShutdown stops a sink that holds records in open windows (its limits
// are far off). By default it leaves them to be read again: no file, no
// commit, and the next sink writes them all once. With --flush-on-stop it
// writes and commits them before Run returns. Either way no goroutine is
// left behind.
func TestShutdown(t *testing.T) {
	for _, flush := range []bool{false, true} {
		t.Run(fmt.Sprintf("flush-on-stop=%v", flush), func(t *testing.T) {
			leaks := goleak.IgnoreCurrent()
			e := newEnv(t, 3)
			cfg := e.config()
			cfg.MaxFileAge = time.Hour
			cfg.FlushOnStop = flush
			r := e.startSink(cfg)

			var batches []*wire.Batch
			for v := range 6 {
				for s := range 5 {
					batches = append(batches, drive(fmt.Sprintf("van-%d", v), 77, uint64(s)))
				}
			}
			e.produce(batches...)
			eventually(t, "sink consumed every record", func() error {
				if got := r.metric("fleet_sink_records_total", "result", "ok"); got != float64(len(batches)) {
					return fmt.Errorf("%v of %d records consumed", got, len(batches))
				}
				return nil
			})
			if files, err := e.parquetFiles(); err != nil || len(files) != 0 {
				t.Fatalf("files before shutdown: %v %v; want none (the limits are far off)", keysOf(files), err)
			}
			if got := r.metric("fleet_sink_open_rows"); got != 30*6 {
				t.Errorf("open rows = %v, want %d", got, 30*6)
			}
			if err := r.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			files, err := e.parquetFiles()
			if err != nil {
				t.Fatal(err)
			}
			if !flush {
				if len(files) != 0 {
					t.Fatalf("files after a stop without --flush-on-stop: %v", keysOf(files))
				}
				// The next sink reads the records again and writes them.
				r2 := e.startSink(e.config())
				e.waitCommitted(cfg.Group)
				if err := r2.stop(); err != nil {
					t.Fatal(err)
				}
			}
			// Everything is on S3 and committed the moment Run returns.
			e.checkExactlyOnce(wantRows(batches...))
			e.checkStoppedCleanly(cfg.Group)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			adm := kadm.NewClient(e.prod)
			ends, err := adm.ListEndOffsets(ctx, topic)
			if err != nil {
				t.Fatal(err)
			}
			committed, err := adm.FetchOffsets(ctx, cfg.Group)
			if err != nil {
				t.Fatal(err)
			}
			ends.Each(func(o kadm.ListedOffset) {
				if c, _ := committed.Lookup(o.Topic, o.Partition); c.At != o.Offset {
					t.Errorf("partition %d: committed %d, end %d", o.Partition, c.At, o.Offset)
				}
			})
			e.close()
			goleak.VerifyNone(t, leaks, goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
				goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
		})
	}
}

// TestRotation checks the row and byte limits: a partition's files are
// written as soon as its buffer reaches either, not only when it is old.
func TestRotation(t *testing.T) {
	t.Parallel()
	b0, b1, b2 := bigDrive("tram-1", 2, 0, 600), bigDrive("tram-1", 2, 1, 600), bigDrive("tram-1", 2, 2, 600)
	rowsPerBatch := len(wantRows(b0)) // 600 readings and a fix

	for _, tc := range []struct {
		name  string
		limit func(*sink.Config)
	}{
		// Two batches reach the limit, one does not.
		{"rows", func(c *sink.Config) { c.MaxFileRows = 2 * rowsPerBatch }},
		// A row group of 1000 rows is more than 1024 bytes of Parquet.
		{"bytes", func(c *sink.Config) { c.MaxFileBytes = 1024; c.RowGroupRows = 1000 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, 1)
			cfg := e.config()
			cfg.MaxFileAge = time.Hour
			tc.limit(&cfg)
			r := e.startSink(cfg)

			e.produce(b0)
			eventually(t, "first batch consumed", func() error {
				if got := r.metric("fleet_sink_records_total", "result", "ok"); got != 1 {
					return fmt.Errorf("%v records consumed", got)
				}
				return nil
			})
			if files, err := e.parquetFiles(); err != nil || len(files) != 0 {
				t.Fatalf("files below the limit: %v %v", keysOf(files), err)
			}
			e.produce(b1)
			e.waitCommitted(cfg.Group)
			e.produce(b2)
			eventually(t, "third batch consumed", func() error {
				if got := r.metric("fleet_sink_records_total", "result", "ok"); got != 3 {
					return fmt.Errorf("%v records consumed", got)
				}
				return nil
			})
			files, err := e.parquetFiles()
			if err != nil {
				t.Fatal(err)
			}
			want := []string{
				"locations/date=2025-06-01/hour=08/" + fileName(0, 0),
				"readings/date=2025-06-01/hour=08/" + fileName(0, 0),
			}
			if diff := mismatch(want, keysOf(files)); diff != "" {
				t.Fatalf("files after the limit was reached %s", diff)
			}
			e.checkExactlyOnce(wantRows(b0, b1))
			if got := r.metric("fleet_sink_windows_total", "reason", tc.name); got != 1 {
				t.Errorf("windows closed by the %s limit: %v, want 1", tc.name, got)
			}
			if err := r.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			e.checkExactlyOnce(wantRows(b0, b1)) // the third waits for the next run
		})
	}
}

// TestStopWhileRecordingAWrite stops the sink at the worst moment of a
// write: its files are on S3 and it is recording that in its checkpoint. A
// graceful stop still finishes the write: once Run has returned, the
// checkpoint and the group's committed offset cover everything it read.
func TestStopWhileRecordingAWrite(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	cfg := e.config()
	reached, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	let := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(let)
	var checkpointPuts atomic.Int32
	e.s3.onRequest(func(chunk []byte) {
		if bytes.HasPrefix(chunk, []byte("PUT /"+bucket+"/"+prefix+"/_sink/checkpoints/")) &&
			checkpointPuts.Add(1) == 3 { // the first window's commit; the claim and the intent were the first two
			close(reached)
			<-release
		}
	})
	r := e.startSink(cfg)
	batches := []*wire.Batch{drive("late-bus", 6, 0), drive("late-bus", 6, 1)}
	e.produce(batches...)
	select {
	case <-reached:
	case <-time.After(waitFor):
		t.Fatal("the sink did not write")
	}

	r.cancel()
	if r.returned(500 * time.Millisecond) {
		t.Errorf("Run returned (%v) while its write's checkpoint was still on its way to S3", r.err)
	}
	let()
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(batches...))
	cp, err := e.checkpoint(0)
	if err != nil || cp.NextOffset != 2 || cp.Window != nil {
		t.Errorf("checkpoint after a graceful stop: %+v %v; want next offset 2, nothing pending", cp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	committed, err := kadm.NewClient(e.prod).FetchOffsets(ctx, cfg.Group)
	if c, _ := committed.Lookup(topic, 0); err != nil || c.At != 2 {
		t.Errorf("committed offset after a graceful stop: %d %v; want 2", c.At, err)
	}
}

// TestTransactionalTopic: a topic written in transactions (replay
// --to-topic writes so) has a commit marker after each transaction's last
// record. The sink skips aborted records, still flushes a quiet partition
// whose last offset is a marker (the high watermark counts it), and a
// restart from a checkpoint that sits at a marker reads on from there.
func TestTransactionalTopic(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 2)
	txn, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.DefaultProduceTopic(topic), kgo.TransactionalID("replay-like"))
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	inTxn := func(commit bool, batches ...*wire.Batch) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := txn.ProduceSync(ctx, e.records(batches...)...).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := txn.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	wave := func(w uint64) []*wire.Batch {
		var bs []*wire.Batch
		for v := range 4 {
			bs = append(bs, drive(fmt.Sprintf("txn-%d", v), 5, w))
		}
		return bs
	}
	cfg := e.config()
	r1 := e.startSink(cfg)
	inTxn(false, drive("aborted-car", 1, 0))
	inTxn(true, wave(0)...)
	want := wantRows(wave(0)...)
	// No flush on stop, no later records: only a quiet flush writes these.
	e.waitRows(want)
	if err := r1.stop(); err != nil {
		t.Fatalf("first sink's Run: %v", err)
	}

	r2 := e.startSink(cfg)
	inTxn(true, wave(1)...)
	inTxn(false, drive("aborted-car", 1, 1))
	want = wantRows(append(wave(0), wave(1)...)...)
	e.waitRows(want)
	if err := r2.stop(); err != nil {
		t.Fatalf("second sink's Run: %v", err)
	}
	e.checkExactlyOnce(want)
	if got := r2.metric("fleet_sink_records_total", "result", "ok"); got != float64(len(wave(1))) {
		t.Errorf("the restarted sink wrote %v records, want %d: it should resume at its checkpoint, past the first wave", got, len(wave(1)))
	}
}

// TestMemoryLimit: the binary's sink sets the Go soft memory limit for the
// partitions it owns (--memory-limit-bytes 0), or the limit it is given;
// a sink embedded in another process (and -1) leaves the runtime alone.
// Not parallel: the limit is the process's.
func TestMemoryLimit(t *testing.T) {
	if os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOMEMLIMIT is set: the sink leaves the limit to it, by design")
	}
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	own := func(d *sink.Deps) { d.OwnProcess = true }
	for _, c := range []struct {
		name  string
		limit int64
		own   bool
		want  int64
	}{
		{"sized by partitions", 0, true, sink.MemoryLimitFor(3, 1000)},
		{"given", 300 << 20, true, 300 << 20},
		{"none", -1, true, before},
		{"embedded", 0, false, before},
	} {
		t.Run(c.name, func(t *testing.T) {
			debug.SetMemoryLimit(before)
			e := newEnv(t, 3)
			cfg := e.config()
			cfg.MemoryLimit = c.limit
			var opts []func(*sink.Deps)
			if c.own {
				opts = append(opts, own)
			}
			r := e.startSink(cfg, opts...)
			// Once the sink has written a window of every partition it owns
			// all three, and its upkeep has run since.
			var batches []*wire.Batch
			for v := range 12 {
				batches = append(batches, drive(fmt.Sprintf("car-%02d", v), 7, 0))
			}
			e.produce(batches...)
			e.waitRows(wantRows(batches...))
			eventually(t, "the memory limit", func() error {
				if got := debug.SetMemoryLimit(-1); got != c.want {
					return fmt.Errorf("Go memory limit %d, want %d", got, c.want)
				}
				return nil
			})
			if err := r.stop(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
