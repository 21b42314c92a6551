package sink_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// rowsOf converts batches to rows the way the sink does, for writing the
// files a crashed sink would have left.
func rowsOf(batches ...*wire.Batch) ([]parquetout.ReadingRow, []parquetout.LocationRow) {
	var rs []parquetout.ReadingRow
	var ls []parquetout.LocationRow
	opt := func(f float64) *float64 {
		if math.IsNaN(f) {
			return nil
		}
		return &f
	}
	for _, b := range batches {
		for _, r := range b.Readings {
			row := parquetout.ReadingRow{VehicleID: b.VehicleID, TS: r.Time / 1000, Signal: r.Signal, Unit: r.Unit,
				Type: r.Value.Kind.String(), Epoch: b.Epoch, Seq: b.Seq}
			switch r.Value.Kind {
			case wire.KindDouble:
				row.ValueDouble = &r.Value.Float
			case wire.KindInt:
				row.ValueInt = &r.Value.Int
			case wire.KindBool:
				row.ValueBool = &r.Value.Bool
			case wire.KindString:
				row.ValueString = &r.Value.Str
			}
			rs = append(rs, row)
		}
		for _, f := range b.Fixes {
			ls = append(ls, parquetout.LocationRow{VehicleID: b.VehicleID, TS: f.Time / 1000, Lat: f.Lat, Lon: f.Lon,
				Alt: opt(f.Alt), Speed: opt(f.Speed), Heading: opt(f.Heading), Accuracy: opt(f.Accuracy),
				Epoch: b.Epoch, Seq: b.Seq})
		}
	}
	return rs, ls
}

func encodeRows[T any](t *testing.T, rows []T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := parquet.Write(&buf, rows); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestMigratesAnInterruptedFormat1Checkpoint starts a sink on the state the
// sink before fencing (checkpoint format 1) left when it crashed between
// "intent checkpoint + some uploads" and "final checkpoint": it must resume
// at the checkpoint's offset, delete the interrupted write's files (it
// writes its own windows from there), and drop batches the checkpoint's
// filter has seen.
func TestMigratesAnInterruptedFormat1Checkpoint(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	cfg := e.config()
	h10 := time.Date(2025, 6, 1, 10, 0, 0, 0, time.UTC)
	h11 := h10.Add(time.Hour)
	a := make([]*wire.Batch, 7)
	for i := range a {
		at := h10.Add(time.Duration(i) * 5 * time.Minute)
		if i >= 5 {
			at = h11.Add(time.Duration(i) * time.Minute)
		}
		a[i] = driveAt("crash-car", 5, uint64(i), at)
	}
	// Offsets: 0:a0 1:a1 | 2:a2 3:a3 4:a1 (a re-send) 5:a4 | 6:a5 7:a6 (later)
	e.produce(a[0], a[1], a[2], a[3], a[1], a[4])

	// The crashed sink had written offsets 0-1 and checkpointed next
	// offset 2; then it started a write of offsets 2-7 (a5 and a6, in hour
	// 11, were in Kafka then), recorded its intent, uploaded two of its
	// four files (one of them cut short: a2's rows only), and died.
	dir := func(table string, h time.Time) string {
		return fmt.Sprintf("%s/date=%s/hour=%02d/", table, h.Format("2006-01-02"), h.Hour())
	}
	r01, l01 := rowsOf(a[0], a[1])
	done := map[string][]byte{
		dir("readings", h10) + fileName(0, 0):  encodeRows(t, r01),
		dir("locations", h10) + fileName(0, 0): encodeRows(t, l01),
	}
	for k, v := range done {
		e.putObject(k, v)
	}
	r2, _ := rowsOf(a[2])
	r56, _ := rowsOf(a[5], a[6])
	e.putObject(dir("readings", h10)+fileName(0, 2), encodeRows(t, r2))
	stale := dir("readings", h11) + fileName(0, 2)
	e.putObject(stale, encodeRows(t, r56))
	intent, _ := json.Marshal(checkpointDoc{Topic: topic, Partition: 0, NextOffset: 2,
		Pending: []string{
			dir("readings", h10) + fileName(0, 2), dir("locations", h10) + fileName(0, 2),
			stale, dir("locations", h11) + fileName(0, 2),
		},
		Seen: map[string]map[string][][2]uint64{"crash-car": {"5": {{0, 1}}}},
	})
	e.putObject(checkpointKey(0), intent)

	r := e.startSink(cfg)
	eventually(t, "checkpoint past the interrupted write", func() error {
		cp, err := e.checkpoint(0)
		if err != nil {
			return err
		}
		if cp.NextOffset != 6 || cp.Window != nil || len(cp.Pending) != 0 || cp.Seen != nil {
			return fmt.Errorf("checkpoint %+v", cp)
		}
		return nil
	})
	files, err := e.parquetFiles()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := files[stale]; ok {
		t.Errorf("%s, a file of the interrupted write that the restart did not rewrite, is still there", stale)
	}

	e.produce(a[5], a[6])
	e.waitCommitted(cfg.Group)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(a...))

	files, err = e.parquetFiles()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		dir("locations", h10) + fileName(0, 0), dir("locations", h10) + fileName(0, 2), dir("locations", h11) + fileName(0, 6),
		dir("readings", h10) + fileName(0, 0), dir("readings", h10) + fileName(0, 2), dir("readings", h11) + fileName(0, 6),
	}
	if diff := mismatch(want, keysOf(files)); diff != "" {
		t.Errorf("files %s", diff)
	}
	for k, v := range done {
		if !bytes.Equal(files[k], v) {
			t.Errorf("%s, written before the checkpoint's offset, was rewritten", k)
		}
	}
	if got := r.metric("fleet_sink_records_total", "result", "duplicate"); got != 1 {
		t.Errorf("duplicates = %v, want 1 (the re-send of seq 1 at offset 4)", got)
	}
	cp, err := e.checkpoint(0)
	if err != nil {
		t.Fatal(err)
	}
	if cp.NextOffset != 8 || cp.Window != nil {
		t.Errorf("final checkpoint %+v, want next offset 8, no window pending", cp)
	}
}

// TestRestartMidStream stops a sink while batches are still being produced
// and starts another in the same group: together they write every reading
// once; the second re-reads only what the first had not committed.
func TestRestartMidStream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 3)
	cfg := e.config()
	r1 := e.startSink(cfg)

	const vehicles, waves = 6, 30
	wave := func(w int) []*wire.Batch {
		var bs []*wire.Batch
		for v := range vehicles {
			bs = append(bs, drive(fmt.Sprintf("cab-%d", v), 3, uint64(w)))
		}
		return bs
	}
	var all []*wire.Batch
	for w := range 10 {
		all = append(all, wave(w)...)
	}
	e.produce(all...)
	eventually(t, "first sink wrote some files", func() error {
		files, err := e.parquetFiles()
		if err == nil && len(files) == 0 {
			err = errors.New("no files yet")
		}
		return err
	})

	// Keep producing while the first sink stops and the second starts.
	var later [][]*kgo.Record
	for w := 10; w < waves; w++ {
		later = append(later, e.records(wave(w)...))
		all = append(all, wave(w)...)
	}
	produced := make(chan error, 1)
	halfway := make(chan struct{})
	go func() {
		defer close(produced)
		for i, recs := range later {
			if i == len(later)/4 {
				close(halfway)
			}
			if err := e.prod.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
				produced <- err
				return
			}
		}
	}()
	<-halfway
	if err := r1.stop(); err != nil {
		t.Fatalf("first sink's Run: %v", err)
	}
	e.checkStoppedCleanly(cfg.Group)
	r2 := e.startSink(cfg)
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	e.waitRows(wantRows(all...))
	e.waitCommitted(cfg.Group)
	if err := r2.stop(); err != nil {
		t.Fatalf("second sink's Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(all...))

	ok1, ok2 := r1.metric("fleet_sink_records_total", "result", "ok"), r2.metric("fleet_sink_records_total", "result", "ok")
	dups := r1.metric("fleet_sink_records_total", "result", "duplicate") + r2.metric("fleet_sink_records_total", "result", "duplicate")
	if ok1+ok2 < float64(len(all)) || dups != 0 || ok1 == 0 || ok2 == 0 || ok2 == float64(len(all)) {
		t.Errorf("records: first sink %v, second %v, duplicates %v; want %d in all, the second not re-reading everything", ok1, ok2, dups, len(all))
	}
}

// TestS3Outage makes S3 unreachable while the sink runs: its writers fail,
// nothing is committed, and once S3 is back the partitions are claimed
// again and everything is written once.
func TestS3Outage(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.S3.MaxAttempts = 1 // fail at once rather than after the SDK's backoff
	r := e.startSink(cfg)

	var first, second []*wire.Batch
	for v := range 4 {
		for s := range 3 {
			first = append(first, drive(fmt.Sprintf("truck-%d", v), 1, uint64(s)))
			second = append(second, drive(fmt.Sprintf("truck-%d", v), 1, uint64(s+3)))
		}
	}
	e.produce(first...)
	e.waitCommitted(cfg.Group)

	e.s3.unreachable()
	e.produce(second...)
	eventually(t, "the sink's writers fail while S3 is out of reach", func() error {
		if r.metric("fleet_sink_writer_errors_total") == 0 {
			return errors.New("no failed write yet")
		}
		return nil
	})
	tb, err := e.readTables()
	if err != nil {
		t.Fatal(err)
	}
	if err := diffRows(tb.rowIDs(), wantRows(first...)); err != nil {
		t.Fatalf("files during the outage, compared with the first batches: %v", err)
	}

	e.s3.reachable()
	e.waitRows(wantRows(append(first, second...)...))
	e.waitCommitted(cfg.Group)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(append(first, second...)...))
}

// TestStopDuringS3Outage stops a sink that cannot write what it holds:
// nothing of it is committed, and the next sink writes it all.
func TestStopDuringS3Outage(t *testing.T) {
	e := newEnv(t, 2)
	cfg := e.config()
	cfg.S3.MaxAttempts = 1
	r1 := e.startSink(cfg)

	var first, second []*wire.Batch
	for v := range 4 {
		for s := range 3 {
			first = append(first, drive(fmt.Sprintf("bike-%d", v), 1, uint64(s)))
			second = append(second, drive(fmt.Sprintf("bike-%d", v), 1, uint64(s+3)))
		}
	}
	e.produce(first...)
	e.waitCommitted(cfg.Group)

	e.s3.unreachable()
	e.produce(second...)
	eventually(t, "sink consumed the records it cannot write", func() error {
		if got := r1.metric("fleet_sink_records_total", "result", "ok"); got < float64(len(first)+len(second)) {
			return fmt.Errorf("%v records consumed", got)
		}
		return nil
	})
	if err := r1.stop(); err != nil {
		t.Fatalf("Run = %v; a stop discards the open windows, which cannot fail", err)
	}

	e.s3.reachable()
	r2 := e.startSink(cfg)
	all := append(first, second...)
	e.waitRows(wantRows(all...))
	e.waitCommitted(cfg.Group)
	if err := r2.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(all...))
	if got := r2.metric("fleet_sink_records_total", "result", "ok"); got != float64(len(second)) {
		t.Errorf("second sink read %v records, want %d (only those not written)", got, len(second))
	}
}

// TestTwoSinksShareTheGroup starts a second sink beside a first one that
// never writes on its own (its limits are far off): the partitions that
// move are dropped by the first (their open windows discarded) and read
// again by the second from their checkpoints. Every reading is written
// once.
func TestTwoSinksShareTheGroup(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 4)
	cfgA := e.config()
	cfgA.MaxFileAge = time.Hour
	cfgA.FlushOnStop = true // what it keeps, it writes when stopped
	a := e.startSink(cfgA)

	var all []*wire.Batch
	seq := uint64(0)
	wave := func() {
		var bs []*wire.Batch
		for v := range 8 {
			bs = append(bs, drive(fmt.Sprintf("shuttle-%d", v), 4, seq))
		}
		seq++
		e.produce(bs...)
		all = append(all, bs...)
	}
	wave()
	eventually(t, "first sink consumed the first wave", func() error {
		if got := a.metric("fleet_sink_records_total", "result", "ok"); got != float64(len(all)) {
			return fmt.Errorf("%v of %d records", got, len(all))
		}
		return nil
	})

	// Keep the fleet driving until the group has rebalanced (the first
	// sink hears of the second at its next heartbeat, within 3s).
	cfgB := e.config()
	cfgB.FlushOnStop = true
	b := e.startSink(cfgB)
	deadline := time.Now().Add(waitFor)
	for b.metric("fleet_sink_records_total", "result", "ok") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the second sink read nothing within %v", waitFor)
		}
		wave()
		time.Sleep(250 * time.Millisecond) // pace the fleet; the loop waits on the condition above
	}
	// The first sink writes nothing of the partitions it gives up.
	if files := a.metric("fleet_sink_files_total"); files != 0 {
		t.Errorf("the first sink wrote %v files before it was stopped", files)
	}
	wave()
	if err := b.stop(); err != nil {
		t.Fatalf("second sink's Run: %v", err)
	}
	if err := a.stop(); err != nil {
		t.Fatalf("first sink's Run: %v", err)
	}
	// What they held when stopped they wrote; a third sink writes the rest.
	c := e.startSink(e.config())
	e.waitCommitted(cfgA.Group)
	if err := c.stop(); err != nil {
		t.Fatalf("third sink's Run: %v", err)
	}
	e.checkExactlyOnce(wantRows(all...))
	dups := a.metric("fleet_sink_records_total", "result", "duplicate") + b.metric("fleet_sink_records_total", "result", "duplicate")
	if dups != 0 {
		t.Errorf("%v duplicates, want none: no batch was sent twice", dups)
	}
}
