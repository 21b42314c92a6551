package parquetlog_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/internal/objstore"
	"github.com/fleetpipe/fleetpipe/internal/parquetlog"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/s3local"
	"github.com/fleetpipe/fleetpipe/internal/testenv"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// The S3 client keeps idle keep-alive connections open.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))
}

// eachStore runs fn against the in-process S3 endpoint and against the real
// MinIO, each time with a fresh, empty store.
func eachStore(t *testing.T, fn func(t *testing.T, newStore func() *objstore.Store)) {
	t.Run("s3local", func(t *testing.T) {
		srv, err := s3local.New(s3local.Config{Dir: t.TempDir(), Buckets: []string{"fleet"}}, s3local.Deps{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		n := 0
		fn(t, func() *objstore.Store {
			n++
			return newStore(t, objstore.Config{Endpoint: srv.URL(), Bucket: "fleet", Prefix: "run" + strconv.Itoa(n), AccessKey: "x", SecretKey: "x", PathStyle: true})
		})
	})
	t.Run("minio", func(t *testing.T) {
		m := testenv.MinIO(t)
		bucket := "parquetlog-" + strconv.FormatInt(time.Now().UnixNano(), 36)
		makeBucket(t, m, bucket)
		n := 0
		fn(t, func() *objstore.Store {
			n++
			return newStore(t, objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, Prefix: "run" + strconv.Itoa(n), AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true})
		})
	})
}

func newStore(t *testing.T, cfg objstore.Config) *objstore.Store {
	t.Helper()
	cfg.MaxAttempts = 3
	s, err := objstore.New(context.Background(), cfg, objstore.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func makeBucket(t *testing.T, m testenv.S3, bucket string) {
	t.Helper()
	s := newStore(t, objstore.Config{Endpoint: m.Endpoint, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PathStyle: true})
	if err := s.EnsureBucket(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func logger(t *testing.T) *slog.Logger {
	if os.Getenv("PARQUETLOG_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

const topic = "fleet.telemetry.v1"

// testConfig has small windows: a window ends at 300 rows or 3 s of record time.
func testConfig(partition int32) parquetlog.Config {
	opts := parquetout.DefaultOptions
	opts.RowGroupRows = 100
	return parquetlog.Config{
		Topic: topic, Partition: partition, Writer: "test", Start: -1,
		Rules: parquetlog.Rules{MaxRows: 300, MaxBytes: 1 << 40, MaxAge: 3 * time.Second, QuietMargin: time.Second},
		Dedup: parquetlog.DefaultDedup, Files: opts,
	}
}

var t0 = time.Date(2026, 3, 1, 9, 58, 0, 0, time.UTC)

// makeRecords returns n records of 7 vehicles, 100 ms of Kafka time apart,
// whose readings cross 10:00 UTC. Every 10th record re-sends the batch of
// five records earlier (a duplicate), and record 13 is not a valid batch.
// want counts the rows each unique batch holds.
func makeRecords(n int) (recs []parquetlog.Record, want map[rowID]int) {
	want = map[rowID]int{}
	var batches []*wire.Batch
	for i := range n {
		at := t0.Add(time.Duration(i) * 100 * time.Millisecond)
		r := parquetlog.Record{Offset: int64(i), Timestamp: at}
		switch {
		case i == 13:
			r.Invalid = errors.New("not a batch")
		case i%10 == 9 && i >= 5 && batches[i-5] != nil:
			r.Batch = batches[i-5]
		default:
			v := i % 7
			b := &wire.Batch{Identity: wire.Identity{VehicleID: fmt.Sprintf("veh-%02d", v), Epoch: uint64(1000 + v), Seq: uint64(i)}, BaseTime: at.Add(-time.Second).UnixNano()}
			// Event time runs 60x faster than record time, so the
			// readings cross the hour.
			ev := t0.Add(time.Duration(i) * 6 * time.Second)
			for j := range 4 {
				b.Readings = append(b.Readings,
					wire.Reading{Signal: "speed", Unit: "m/s", Time: ev.Add(time.Duration(j) * 10 * time.Millisecond).UnixNano(), Value: wire.Float(float64(i) + float64(j)/4)},
					wire.Reading{Signal: "gear", Time: ev.Add(time.Duration(j) * 10 * time.Millisecond).UnixNano(), Value: wire.Int(int64(j))})
			}
			b.Readings = append(b.Readings, wire.Reading{Signal: "door", Time: ev.UnixNano(), Value: wire.String("closed")})
			b.Fixes = []wire.Fix{{Time: ev.UnixNano(), Lat: 37.9 + float64(i)/1e4, Lon: 23.7, Alt: math.NaN(), Speed: 3, Heading: 90, Accuracy: math.NaN()}}
			r.Batch = b
			for k := range b.Readings {
				want[rowID{parquetout.Readings, b.VehicleID, b.Epoch, b.Seq, int32(k)}] = 1
			}
			want[rowID{parquetout.Locations, b.VehicleID, b.Epoch, b.Seq, 0}] = 1
		}
		batches = append(batches, r.Batch)
		recs = append(recs, r)
	}
	return recs, want
}

type rowID struct {
	table   string
	vehicle string
	epoch   uint64
	seq     uint64
	index   int32
}

// readRows reads every Parquet file under the store back and counts rows.
func readRows(t *testing.T, s *objstore.Store) map[rowID]int {
	t.Helper()
	got := map[rowID]int{}
	for key, data := range parquetFiles(t, s) {
		f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		hour := strings.SplitN(key, "/", 4)
		switch hour[0] {
		case parquetout.Readings:
			rows := make([]parquetout.ReadingRow, f.NumRows())
			r := parquet.NewGenericReader[parquetout.ReadingRow](f)
			if n, err := r.Read(rows); n != len(rows) {
				t.Fatalf("%s: read %d of %d rows: %v", key, n, len(rows), err)
			}
			for _, row := range rows {
				checkHour(t, key, row.TS)
				got[rowID{parquetout.Readings, row.VehicleID, row.Epoch, row.Seq, row.BatchIndex}]++
			}
		case parquetout.Locations:
			rows := make([]parquetout.LocationRow, f.NumRows())
			r := parquet.NewGenericReader[parquetout.LocationRow](f)
			if n, err := r.Read(rows); n != len(rows) {
				t.Fatalf("%s: read %d of %d rows: %v", key, n, len(rows), err)
			}
			for _, row := range rows {
				checkHour(t, key, row.TS)
				got[rowID{parquetout.Locations, row.VehicleID, row.Epoch, row.Seq, row.BatchIndex}]++
			}
		default:
			t.Fatalf("unexpected file %s", key)
		}
	}
	return got
}

// checkHour fails unless the row's time is in the hour its key names.
func checkHour(t *testing.T, key string, tsMicros int64) {
	t.Helper()
	want := parquetout.HourOf(strings.SplitN(key, "/", 2)[0], tsMicros*1000).Dir()
	if !strings.HasPrefix(key, want+"/") {
		t.Fatalf("%s holds a row of %s", key, want)
	}
}

func parquetFiles(t *testing.T, s *objstore.Store) map[string][]byte {
	t.Helper()
	ctx := context.Background()
	objs, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, o := range objs {
		if !strings.HasSuffix(o.Key, ".parquet") {
			continue
		}
		data, err := s.Get(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		out[o.Key] = data
	}
	return out
}

// diffRows describes how got differs from want (every row exactly once).
func diffRows(got, want map[rowID]int) string {
	var missing, dup, extra []string
	for id := range want {
		switch n := got[id]; {
		case n == 0:
			missing = append(missing, fmt.Sprint(id))
		case n > 1:
			dup = append(dup, fmt.Sprintf("%v x%d", id, n))
		}
	}
	for id := range got {
		if want[id] == 0 {
			extra = append(extra, fmt.Sprint(id))
		}
	}
	if len(missing)+len(dup)+len(extra) == 0 {
		return ""
	}
	short := func(s []string) []string { slices.Sort(s); return s[:min(len(s), 5)] }
	return fmt.Sprintf("%d rows missing %v, %d duplicated %v, %d unexpected %v (of %d)",
		len(missing), short(missing), len(dup), short(dup), len(extra), short(extra), len(want))
}

// feed claims the partition and writes recs from the writer's Next,
// then cuts the last window. It returns the writer's first error.
func feed(ctx context.Context, t *testing.T, cfg parquetlog.Config, deps parquetlog.Deps, recs []parquetlog.Record) error {
	t.Helper()
	w, err := parquetlog.Claim(ctx, cfg, deps)
	if err != nil {
		return err
	}
	defer w.Abandon(context.Background())
	from := max(w.Next(), 0)
	for _, r := range recs[from:] {
		if err := w.Add(ctx, r); err != nil {
			return err
		}
	}
	return w.Cut(ctx, "end")
}

// snapshot is every object's bytes.
func snapshot(t *testing.T, s *objstore.Store) map[string]string {
	t.Helper()
	ctx := context.Background()
	objs, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, o := range objs {
		data, err := s.Get(ctx, o.Key)
		if err != nil {
			t.Fatal(err)
		}
		out[o.Key] = string(data)
	}
	return out
}

func keys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
