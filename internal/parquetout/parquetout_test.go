package parquetout_test

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestSplitAcrossHours: a batch across midnight gives one call per table
// and hour, hours in order, each row with its batch identity, its index in
// the batch, its capture window, and absent optional values as NULL.
func TestSplitAcrossHours(t *testing.T) {
	mid := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b := &wire.Batch{
		Identity: wire.Identity{VehicleID: "car-7", Epoch: 0xabc, Seq: 9},
		Readings: []wire.Reading{
			{Signal: "a", Time: mid.Add(time.Millisecond).UnixNano(), Value: wire.Float(1)},
			{Signal: "a", Time: mid.Add(-time.Millisecond).UnixNano(), Value: wire.Int(2)},
			{Signal: "b", Time: mid.Add(-1).UnixNano(), Value: wire.Bool(true)}, // 1 ns before: still the old hour, floored micros
			{Signal: "c", Time: mid.UnixNano(), Value: wire.String("x")},
		},
		Fixes:   []wire.Fix{{Time: mid.UnixNano(), Lat: 1, Lon: 2, Alt: math.NaN(), Speed: 3, Heading: math.NaN(), Accuracy: 4}},
		Capture: &wire.Capture{ID: 5, Rule: "harsh_brake"},
	}
	type call struct {
		hour  string
		index []int32
	}
	var calls []call
	var s parquetout.Splitter
	err := s.Split(b, parquetout.Emit{
		Readings: func(h parquetout.Hour, rows []parquetout.ReadingRow) error {
			c := call{hour: h.Dir()}
			for _, r := range rows {
				c.index = append(c.index, r.BatchIndex)
				if r.VehicleID != "car-7" || r.Epoch != 0xabc || r.Seq != 9 || *r.CaptureID != "car-7/0000000000000abc/5" || *r.CaptureRule != "harsh_brake" {
					t.Errorf("row %+v", r)
				}
				if !strings.HasPrefix(parquetout.HourOf(parquetout.Readings, r.TS*1000).Dir(), h.Dir()) {
					t.Errorf("row at %d µs emitted for %s", r.TS, h.Dir())
				}
			}
			calls = append(calls, c)
			return nil
		},
		Locations: func(h parquetout.Hour, rows []parquetout.LocationRow) error {
			calls = append(calls, call{hour: h.Dir(), index: []int32{rows[0].BatchIndex}})
			if r := rows[0]; r.Alt != nil || r.Heading != nil || *r.Speed != 3 || *r.Accuracy != 4 || r.CaptureID == nil {
				t.Errorf("fix row %+v", r)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []call{
		{"readings/date=2025-12-31/hour=23", []int32{1, 2}},
		{"readings/date=2026-01-01/hour=00", []int32{0, 3}},
		{"locations/date=2026-01-01/hour=00", []int32{0}},
	}
	if len(calls) != len(want) {
		t.Fatalf("calls %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i].hour != want[i].hour || !slices.Equal(calls[i].index, want[i].index) {
			t.Errorf("call %d: %v, want %v", i, calls[i], want[i])
		}
	}
}

// TestFileWriterRoundTrip: a file written in several row groups reads back
// with pyarrow-visible metadata: the rows, the row group size, a bloom
// filter on vehicle_id and who made it.
func TestFileWriterRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	opts := parquetout.DefaultOptions
	opts.RowGroupRows = 1000
	w, err := parquetout.NewFileWriter[parquetout.ReadingRow](&buf, opts)
	if err != nil {
		t.Fatal(err)
	}
	var rows []parquetout.ReadingRow
	for i := range 2500 {
		v := float64(i)
		rows = append(rows, parquetout.ReadingRow{VehicleID: []string{"a", "b"}[i%2], TS: int64(i), Signal: "s", Type: "double", ValueDouble: &v, BatchIndex: int32(i)})
	}
	if err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Rows() != 2500 {
		t.Errorf("Rows %d", w.Rows())
	}
	f, err := parquet.OpenFile(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil {
		t.Fatal(err)
	}
	var groups []int64
	for _, rg := range f.RowGroups() {
		groups = append(groups, rg.NumRows())
		vid := rg.ColumnChunks()[0]
		bf := vid.BloomFilter()
		if bf == nil {
			t.Fatal("no bloom filter on vehicle_id")
		}
		if ok, _ := bf.Check(parquet.ValueOf("a")); !ok {
			t.Error("the bloom filter rules out a vehicle that is there")
		}
	}
	if !slices.Equal(groups, []int64{1000, 1000, 500}) {
		t.Errorf("row groups %v", groups)
	}
	back, err := parquet.Read[parquetout.ReadingRow](bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	if err != nil || len(back) != 2500 || *back[2499].ValueDouble != 2499 || back[2499].BatchIndex != 2499 {
		t.Fatalf("read back %d rows, %v", len(back), err)
	}
	if cb := f.Metadata().CreatedBy; !strings.HasPrefix(cb, "fleetpipe version "+opts.Version) {
		t.Errorf("created_by %q", cb)
	}
	for _, name := range []string{"zstd", "snappy", "gzip", "none"} {
		if _, err := parquetout.Codec(name); err != nil {
			t.Error(err)
		}
	}
	if _, err := parquetout.Codec("lz4"); err == nil || !strings.Contains(err.Error(), "want zstd") {
		t.Errorf("Codec(lz4) = %v", err)
	}
}
