package parquetout_test

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// fixtureBatches are the batches of testdata/previous: simulated cars
// (fixed seed and start) and one batch with every value type, absent fix
// fields and a capture window.
func fixtureBatches(t *testing.T) []*wire.Batch {
	t.Helper()
	cfg := sim.DefaultConfig()
	cfg.Vehicles, cfg.IMUHz, cfg.Start = 5, 10, time.Date(2026, 3, 1, 9, 59, 58, 0, time.UTC)
	var out []*wire.Batch
	fleet := sim.NewFleet(cfg)
	for seq := range 3 {
		for _, v := range fleet {
			b := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 0xfeedface, Seq: uint64(seq + 1)}, BaseTime: v.Now().UnixNano()}
			var fix wire.Fix
			b.Readings, fix = v.AppendStep(nil)
			b.Fixes = []wire.Fix{fix}
			out = append(out, b)
		}
	}
	at := cfg.Start.UnixNano()
	return append(out, &wire.Batch{
		Identity: wire.Identity{VehicleID: "car-7", Epoch: 1<<63 + 5, Seq: 9}, BaseTime: at,
		Readings: []wire.Reading{
			{Signal: "a", Time: at, Value: wire.Float(1.5)},
			{Signal: "b", Time: at + 1000, Value: wire.Int(-2)},
			{Signal: "c", Time: at + 2000, Value: wire.Bool(true)},
			{Signal: "d", Time: at + 3000, Value: wire.String("x")},
		},
		Fixes:   []wire.Fix{{Time: at, Lat: 1, Lon: 2, Alt: math.NaN(), Speed: 3, Heading: math.NaN(), Accuracy: 4}},
		Capture: &wire.Capture{ID: 5, Rule: "harsh_brake", TriggerTime: at},
	})
}

// splitAll is every row of batches, per table.
func splitAll(tb testing.TB, batches []*wire.Batch) (readings []parquetout.ReadingRow, locations []parquetout.LocationRow) {
	tb.Helper()
	var s parquetout.Splitter
	for _, b := range batches {
		err := s.Split(b, parquetout.Emit{
			Readings: func(_ parquetout.Hour, rows []parquetout.ReadingRow) error {
				readings = append(readings, rows...)
				return nil
			},
			Locations: func(_ parquetout.Hour, rows []parquetout.LocationRow) error {
				locations = append(locations, rows...)
				return nil
			},
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	return readings, locations
}

// writeTable is one file of rows, as the sink writes it.
func writeTable[T parquetout.Row](t *testing.T, rows []T) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := parquetout.NewFileWriter[T](&buf, parquetout.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReadsPreviousVersionFiles: files written before epoch and seq were
// dictionary-encoded and page headers lost their statistics
// (testdata/previous, made by a59e376 from fixtureBatches with writeTable)
// have the schema the current version writes, so a dataset holding both
// reads as one table, and they read back as the rows the current version
// makes of the same batches.
func TestReadsPreviousVersionFiles(t *testing.T) {
	readings, locations := splitAll(t, fixtureBatches(t))
	check := func(name string, now []byte, rows any, read func(*os.File, int64) (any, error)) {
		t.Helper()
		f, err := os.Open(filepath.Join("testdata", "previous", name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			t.Fatal(err)
		}
		old, err := parquet.OpenFile(f, st.Size())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		cur, err := parquet.OpenFile(bytes.NewReader(now), int64(len(now)))
		if err != nil {
			t.Fatal(err)
		}
		if !parquet.EqualNodes(old.Schema(), cur.Schema()) {
			t.Errorf("%s: schema\n%v\nwas\n%v", name, cur.Schema(), old.Schema())
		}
		// The fixture is the old encoding: its epoch pages are plain.
		if e := epochEncodings(t, old); slices.Contains(e, format.RLEDictionary) {
			t.Errorf("%s: epoch encodings %v, a dictionary: not the previous version's file", name, e)
		}
		if e := epochEncodings(t, cur); !slices.Contains(e, format.RLEDictionary) {
			t.Errorf("%s: epoch encodings %v written now, want a dictionary", name, e)
		}
		got, err := read(f, st.Size())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(got, rows) {
			t.Errorf("%s: rows read differ from the rows of the same batches now", name)
		}
	}
	check("readings.parquet", writeTable(t, readings), readings, func(f *os.File, n int64) (any, error) {
		return parquet.Read[parquetout.ReadingRow](f, n)
	})
	check("locations.parquet", writeTable(t, locations), locations, func(f *os.File, n int64) (any, error) {
		return parquet.Read[parquetout.LocationRow](f, n)
	})
}

func epochEncodings(t *testing.T, f *parquet.File) []format.Encoding {
	t.Helper()
	leaf, ok := f.Schema().Lookup("epoch")
	if !ok {
		t.Fatal("no epoch column")
	}
	return f.Metadata().RowGroups[0].Columns[leaf.ColumnIndex].MetaData.Encoding
}
