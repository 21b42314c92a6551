package parquetlog_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestWritesEveryRowOnce: one writer over records with duplicates, an
// invalid record and readings across an hour writes each row exactly once,
// in its own hour's file, in windows named by their first offset.
func TestWritesEveryRowOnce(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		recs, want := makeRecords(200)
		m := parquetlog.NewMetrics(nil, "t")
		if err := feed(context.Background(), t, testConfig(3), parquetlog.Deps{Store: s, Logger: logger(t), Metrics: m}, recs); err != nil {
			t.Fatal(err)
		}
		if d := diffRows(readRows(t, s), want); d != "" {
			t.Fatal(d)
		}
		files := parquetFiles(t, s)
		hours := map[string]bool{}
		for k := range files {
			if !strings.Contains(k, "/fleet.telemetry.v1+3+") {
				t.Errorf("file %s is not named for partition 3", k)
			}
			hours[k[:strings.LastIndex(k, "/")]] = true
		}
		for _, h := range []string{"readings/date=2026-03-01/hour=09", "readings/date=2026-03-01/hour=10", "locations/date=2026-03-01/hour=10"} {
			if !hours[h] {
				t.Errorf("no file in %s; have %v", h, keys(files))
			}
		}
		// 200 records of 10 rows, 300 rows or 3 s (30 records) a window:
		// several windows, each file named by its window's first offset.
		if len(files) < 8 {
			t.Errorf("%d files, want the records split into several windows: %v", len(files), keys(files))
		}
	})
}

// TestSameRecordsSameFiles: writing the same records into two empty
// prefixes gives byte-identical objects under identical names.
func TestSameRecordsSameFiles(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		recs, _ := makeRecords(150)
		var runs []map[string][]byte
		for range 2 {
			s := newStore()
			if err := feed(context.Background(), t, testConfig(0), parquetlog.Deps{Store: s, Logger: logger(t)}, recs); err != nil {
				t.Fatal(err)
			}
			runs = append(runs, parquetFiles(t, s))
		}
		if !slices.Equal(keys(runs[0]), keys(runs[1])) {
			t.Fatalf("object names differ:\n%v\n%v", keys(runs[0]), keys(runs[1]))
		}
		for k, v := range runs[0] {
			if string(v) != string(runs[1][k]) {
				t.Errorf("%s differs between the runs", k)
			}
		}
	})
}

var errCrash = errors.New("simulated crash")

var steps = []string{"intent", "complete", "state", "committed"}

// TestCrashAtEveryStep: a writer dies (nothing cleaned up) at each step of
// its second window's commit; a new writer claims the partition and
// finishes. Every row is written exactly once, and no file is left that is
// not a committed window's.
func TestCrashAtEveryStep(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		recs, want := makeRecords(150)
		for _, step := range steps {
			t.Run(step, func(t *testing.T) {
				s := newStore()
				ctx := context.Background()
				commits := 0
				crashing := parquetlog.Deps{Store: s, Logger: logger(t), Step: func(st string) error {
					if st == "committed" {
						commits++
					}
					if st == step && commits == 1 {
						return errCrash
					}
					return nil
				}}
				crashCtx, crash := context.WithCancel(ctx)
				err := feed(crashCtx, t, testConfig(1), crashing, recs)
				crash() // what was in flight dies with the process
				if !errors.Is(err, errCrash) {
					t.Fatalf("first writer: %v, want the simulated crash", err)
				}
				if err := feed(ctx, t, testConfig(1), parquetlog.Deps{Store: s, Logger: logger(t)}, recs); err != nil {
					t.Fatalf("second writer: %v", err)
				}
				if d := diffRows(readRows(t, s), want); d != "" {
					t.Fatal(d)
				}
				checkOnlyReferencedState(t, s, 1)
			})
		}
	})
}

// TestZombieAtEveryStep: a writer is paused at each step of a commit while
// another claims the partition and writes everything; then it resumes. It
// is fenced, changes no object the new owner wrote (no data file, no
// checkpoint), and every row is there exactly once.
func TestZombieAtEveryStep(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		recs, want := makeRecords(150)
		for _, step := range append(slices.Clone(steps), "mid-window") {
			t.Run(step, func(t *testing.T) {
				s := newStore()
				ctx := context.Background()
				paused, resume := make(chan struct{}), make(chan struct{})
				var once sync.Once
				commits := 0
				zombie := parquetlog.Deps{Store: s, Logger: logger(t), Step: func(st string) error {
					if st == "committed" {
						commits++
					}
					if st == step && commits == 1 {
						once.Do(func() { close(paused); <-resume })
					}
					return nil
				}}
				done := make(chan error, 1)
				go func() {
					w, err := parquetlog.Claim(ctx, testConfig(2), zombie)
					if err != nil {
						done <- err
						return
					}
					defer w.Abandon(context.Background())
					for i, r := range recs {
						if step == "mid-window" && i == 75 {
							once.Do(func() { close(paused); <-resume })
						}
						if err := w.Add(ctx, r); err != nil {
							done <- err
							return
						}
					}
					done <- w.Cut(ctx, "end")
				}()
				select {
				case <-paused:
				case err := <-done:
					t.Fatalf("the zombie finished (%v) before reaching %s", err, step)
				case <-time.After(time.Minute):
					t.Fatalf("the zombie never reached %s", step)
				}
				if err := feed(ctx, t, testConfig(2), parquetlog.Deps{Store: s, Logger: logger(t)}, recs); err != nil {
					t.Fatalf("new owner: %v", err)
				}
				before := snapshot(t, s)
				close(resume)
				err := <-done
				if step == "committed" && err == nil {
					t.Fatal("the zombie finished without being fenced")
				}
				if err != nil && !errors.Is(err, parquetlog.ErrFenced) {
					t.Fatalf("zombie: %v, want ErrFenced", err)
				}
				after := snapshot(t, s)
				for k, v := range before {
					if after[k] != v && (strings.HasSuffix(k, ".parquet") || strings.Contains(k, "checkpoints")) {
						t.Errorf("the zombie changed %s", k)
					}
				}
				for k := range after {
					if _, ok := before[k]; !ok && strings.HasSuffix(k, ".parquet") {
						t.Errorf("the zombie added %s", k)
					}
				}
				if d := diffRows(readRows(t, s), want); d != "" {
					t.Fatal(d)
				}
			})
		}
	})
}

// checkOnlyReferencedState fails if a state object exists that the
// checkpoint does not name (after a claim collected garbage).
func checkOnlyReferencedState(t *testing.T, s *objstore.Store, partition int32) {
	t.Helper()
	ctx := context.Background()
	// A claim collects garbage; claim once more to be sure it ran.
	w, err := parquetlog.Claim(ctx, testConfig(partition), parquetlog.Deps{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	w.Abandon(ctx)
	ck, err := s.Get(ctx, fmt.Sprintf("_sink/checkpoints/%s+%d.json", topic, partition))
	if err != nil {
		t.Fatal(err)
	}
	objs, err := s.List(ctx, fmt.Sprintf("_sink/state/%s+%d/", topic, partition))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !strings.Contains(string(ck), o.Key) {
			t.Errorf("state object %s is not named by the checkpoint", o.Key)
		}
	}
}

// TestConflictNeverReplaces: a file at the key of a window the checkpoint
// knows nothing of (here: the checkpoint was deleted) is not replaced; the
// writer stops with ErrConflict.
func TestConflictNeverReplaces(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		ctx := context.Background()
		recs, _ := makeRecords(60)
		if err := feed(ctx, t, testConfig(4), parquetlog.Deps{Store: s}, recs); err != nil {
			t.Fatal(err)
		}
		before := parquetFiles(t, s)
		if err := s.Delete(ctx, "_sink/checkpoints/"+topic+"+4.json"); err != nil {
			t.Fatal(err)
		}
		m := parquetlog.NewMetrics(nil, "t")
		err := feed(ctx, t, testConfig(4), parquetlog.Deps{Store: s, Metrics: m}, recs)
		if !errors.Is(err, parquetlog.ErrConflict) || !strings.Contains(err.Error(), "was the checkpoint deleted") {
			t.Fatalf("rewrite without the checkpoint: %v, want ErrConflict", err)
		}
		after := parquetFiles(t, s)
		for k, v := range before {
			if string(after[k]) != string(v) {
				t.Errorf("%s was replaced", k)
			}
		}
	})
}

// TestDuplicatesAfterRestart: batches written before a restart are dropped
// when they come again after it (the filter is in the checkpoint), through
// several base and delta rewrites of the filter.
func TestDuplicatesAfterRestart(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		ctx := context.Background()
		recs, want := makeRecords(400)
		cfg := testConfig(5)
		for from := 0; from < len(recs); from += 100 {
			w, err := parquetlog.Claim(ctx, cfg, parquetlog.Deps{Store: s})
			if err != nil {
				t.Fatal(err)
			}
			// Re-send what came before: all duplicates, at later offsets.
			next := max(w.Next(), 0)
			for _, r := range recs[next:min(from+100, len(recs))] {
				if err := w.Add(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Cut(ctx, "end"); err != nil {
				t.Fatal(err)
			}
			w.Abandon(ctx)
		}
		// Now every batch once more, as new records.
		w, err := parquetlog.Claim(ctx, cfg, parquetlog.Deps{Store: s})
		if err != nil {
			t.Fatal(err)
		}
		base := w.Next()
		for i, r := range recs {
			r.Offset = base + int64(i)
			if err := w.Add(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Cut(ctx, "end"); err != nil {
			t.Fatal(err)
		}
		w.Abandon(ctx)
		if d := diffRows(readRows(t, s), want); d != "" {
			t.Fatal(d)
		}
		checkOnlyReferencedState(t, s, 5)
	})
}

// TestQuietPartitionIsFlushed: a caught-up partition's window is committed
// by Tick once the wall clock is MaxAge + QuietMargin past its first
// record, not before, and not while records are still to be read.
func TestQuietPartitionIsFlushed(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		ctx := context.Background()
		recs, _ := makeRecords(5)
		w, err := parquetlog.Claim(ctx, testConfig(6), parquetlog.Deps{Store: s})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Abandon(ctx)
		for _, r := range recs {
			if err := w.Add(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		first := recs[0].Timestamp
		for _, tc := range []struct {
			now      time.Time
			caughtUp bool
			want     bool
		}{
			{first.Add(3500 * time.Millisecond), true, false}, // within MaxAge + QuietMargin (4 s)
			{first.Add(10 * time.Second), false, false},       // records still to read
			{first.Add(4 * time.Second), true, true},
		} {
			got, err := w.Tick(ctx, tc.now, tc.caughtUp)
			if err != nil || got != tc.want {
				t.Fatalf("Tick(%v after the first record, caught up %v) = %v, %v; want %v", tc.now.Sub(first), tc.caughtUp, got, err, tc.want)
			}
		}
		if w.Committed() != 5 {
			t.Errorf("committed %d after the quiet flush, want 5", w.Committed())
		}
		if n := len(parquetFiles(t, s)); n == 0 {
			t.Error("no files after the quiet flush")
		}
	})
}

// TestRecordsGoneFromKafka: when the records after a checkpoint have been
// deleted (retention), the writer starts at the first one left.
func TestRecordsGoneFromKafka(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		ctx := context.Background()
		recs, _ := makeRecords(100)
		if err := feed(ctx, t, testConfig(7), parquetlog.Deps{Store: s}, recs[:40]); err != nil {
			t.Fatal(err)
		}
		w, err := parquetlog.Claim(ctx, testConfig(7), parquetlog.Deps{Store: s})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Abandon(ctx)
		if w.Next() != 40 {
			t.Fatalf("Next %d, want 40", w.Next())
		}
		for _, r := range recs[60:] {
			if err := w.Add(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Cut(ctx, "end"); err != nil {
			t.Fatal(err)
		}
		if w.Committed() != 100 {
			t.Errorf("committed %d, want 100", w.Committed())
		}
		for k := range parquetFiles(t, s) {
			for off := 40; off < 60; off++ {
				if strings.HasSuffix(k, fmt.Sprintf("+%020d.parquet", off)) {
					t.Errorf("%s is named for a record that was gone", k)
				}
			}
		}
	})
}

// TestHoursFollowEventTime checks the object layout and hour split of one
// batch across midnight.
func TestObjectKey(t *testing.T) {
	h := parquetout.HourOf(parquetout.Readings, time.Date(2025, 12, 31, 23, 59, 59, 999_999_999, time.UTC).UnixNano())
	if got, want := parquetout.ObjectKey(h, topic, 11, 42), "readings/date=2025-12-31/hour=23/fleet.telemetry.v1+11+00000000000000000042.parquet"; got != want {
		t.Errorf("ObjectKey = %s, want %s", got, want)
	}
	h = parquetout.HourOf(parquetout.Locations, time.Date(1969, 12, 31, 23, 30, 0, 0, time.UTC).UnixNano())
	if got := h.Dir(); got != "locations/date=1969-12-31/hour=23" {
		t.Errorf("a time before 1970 is in %s", got)
	}
}

// TestLateRowsGoToTheirHour: batches that arrive hours late (a car draining
// its backlog) put their rows in their own hours' folders, one file per hour
// a window touches (not one per batch), and are counted as late.
func TestLateRowsGoToTheirHour(t *testing.T) {
	eachStore(t, func(t *testing.T, newStore func() *objstore.Store) {
		s := newStore()
		ctx := context.Background()
		now := time.Date(2026, 3, 1, 12, 10, 0, 0, time.UTC)
		var recs []parquetlog.Record
		lateRows := 0
		for i := range 60 {
			at := now.Add(time.Duration(i) * 100 * time.Millisecond)
			ev := at
			if i%3 == 0 { // every third batch is from a backlog, 3 to 5 hours old
				ev = at.Add(-time.Duration(3+2*(i%2)) * time.Hour)
			}
			b := &wire.Batch{Identity: wire.Identity{VehicleID: fmt.Sprintf("v%d", i%4), Epoch: 1, Seq: uint64(i)}, BaseTime: ev.UnixNano()}
			for j := range 5 {
				b.Readings = append(b.Readings, wire.Reading{Signal: "x", Time: ev.Add(time.Duration(j) * time.Millisecond).UnixNano(), Value: wire.Int(int64(j))})
			}
			if ev != at {
				lateRows += len(b.Readings)
			}
			recs = append(recs, parquetlog.Record{Offset: int64(i), Timestamp: at, Batch: b})
		}
		reg := prometheus.NewRegistry()
		m := parquetlog.NewMetrics(reg, "t")
		if err := feed(ctx, t, testConfig(8), parquetlog.Deps{Store: s, Metrics: m}, recs); err != nil {
			t.Fatal(err)
		}
		files := parquetFiles(t, s)
		readRows(t, s) // every row in its own hour's folder
		perHour := map[string]int{}
		for k := range files {
			perHour[k[:strings.LastIndex(k, "/")]]++
		}
		// 60 records over 6 s of record time: two 3 s windows, each touching
		// the current hour and two backlog hours: two files per hour.
		want := map[string]int{"readings/date=2026-03-01/hour=12": 2, "readings/date=2026-03-01/hour=09": 2, "readings/date=2026-03-01/hour=07": 2}
		if fmt.Sprint(perHour) != fmt.Sprint(want) {
			t.Errorf("files per hour %v, want %v", perHour, want)
		}
		late, err := testutil.GatherAndCount(reg, "t_late_rows_total")
		if err != nil || late != 1 {
			t.Fatalf("late row series: %d, %v", late, err)
		}
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "t_late_rows_total" {
				if got := mf.GetMetric()[0].GetCounter().GetValue(); int(got) != lateRows {
					t.Errorf("late rows counted %v, want %d", got, lateRows)
				}
			}
		}
	})
}
