package sink_test

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/fleetpipe/fleetpipe/internal/parquetout"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func ptr[T any](v T) *T { return &v }

// TestRowsAndLayout sends one batch that crosses midnight UTC and reads its
// files back: one per table and hour, at the documented keys, with every
// value, type and timestamp as the car sent it.
func TestRowsAndLayout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	cfg := e.config()
	r := e.startSink(cfg)

	// A few earlier batches, written first, so that the batch under test
	// starts at offset 3 and its files carry that offset.
	e.produce(drive("filler", 1, 0), drive("filler", 1, 1), drive("filler", 1, 2))
	e.waitCommitted(cfg.Group)

	epoch := uint64(0xfedcba9876543210) // a random spool id; above MaxInt64
	base := time.Date(2025, 5, 31, 23, 59, 59, 900_000_000, time.UTC)
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	ns := func(ms int) int64 { return at(ms).UnixNano() }
	b := &wire.Batch{
		Identity:     wire.Identity{VehicleID: "veh-0042", Epoch: epoch, Seq: 7},
		BaseTime:     base.UnixNano(),
		AgentVersion: "1.2.3",
		Readings: []wire.Reading{
			{Signal: "coolant_temp", Unit: "°C", Time: ns(0), Value: wire.Float(89.5)},
			{Signal: "coolant_temp", Unit: "°C", Time: ns(200), Value: wire.Float(-40.25)},
			{Signal: "rpm", Unit: "1/min", Time: ns(50), Value: wire.Int(3000)},
			{Signal: "rpm", Unit: "1/min", Time: ns(150), Value: wire.Int(1<<53 + 1)},
			{Signal: "brake", Time: ns(0), Value: wire.Bool(true)},
			{Signal: "brake", Time: ns(100), Value: wire.Bool(false)}, // 00:00:00.000 is the new hour
			{Signal: "gear", Time: ns(50), Value: wire.String("D")},
			{Signal: "gear", Time: ns(250), Value: wire.String("Rückwärts ✓")},
		},
		Fixes: []wire.Fix{
			{Time: ns(50), Lat: 52.5200066, Lon: 13.4049540, Alt: math.NaN(), Speed: 8.333, Heading: 90.25, Accuracy: math.NaN()},
			{Time: ns(150), Lat: -33.8688, Lon: 151.2093, Alt: 58.5, Speed: 0, Heading: 359.99, Accuracy: 2.5},
		},
	}
	e.produce(b)
	e.waitCommitted(cfg.Group)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}

	files, err := e.parquetFiles()
	if err != nil {
		t.Fatal(err)
	}
	name := fileName(0, 3)
	before, after := "date=2025-05-31/hour=23/", "date=2025-06-01/hour=00/"
	var got []string
	for _, k := range keysOf(files) {
		if strings.HasSuffix(k, "+3.parquet") || strings.HasSuffix(k, name) {
			got = append(got, k)
		} else if !strings.Contains(k, "/date=2025-06-01/hour=08/"+topic+"+0+") {
			t.Errorf("unexpected file %s (the filler batches are at 08:00-08:14)", k)
		}
	}
	want := []string{
		"locations/" + before + name, "locations/" + after + name,
		"readings/" + before + name, "readings/" + after + name,
	}
	if diff := mismatch(want, got); diff != "" {
		t.Fatalf("files of the batch at offset 3 %s", diff)
	}

	// batch_index is the reading's place in the batch as it travels (the
	// wire groups readings by signal).
	data, err := wire.Encode(b, wire.EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	travelled, err := wire.Decode(data, wire.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	index := map[string]int32{}
	for i, r := range travelled.Readings {
		index[fmt.Sprint(r.Signal, r.Time/1000)] = int32(i)
	}
	us := func(ms int) int64 { return at(ms).UnixMicro() }
	row := func(signal, unit, typ string, ms int) parquetout.ReadingRow {
		return parquetout.ReadingRow{VehicleID: "veh-0042", TS: us(ms), Signal: signal, Unit: unit, Type: typ, Epoch: epoch, Seq: 7,
			BatchIndex: index[fmt.Sprint(signal, us(ms))]}
	}
	with := func(r parquetout.ReadingRow, f func(*parquetout.ReadingRow)) parquetout.ReadingRow { f(&r); return r }
	// Compared sorted by signal and time (files keep the batch's order).
	wantReadings := map[string][]parquetout.ReadingRow{
		"readings/" + before + name: {
			with(row("brake", "", "bool", 0), func(r *parquetout.ReadingRow) { r.ValueBool = ptr(true) }),
			with(row("coolant_temp", "°C", "double", 0), func(r *parquetout.ReadingRow) { r.ValueDouble = ptr(89.5) }),
			with(row("gear", "", "string", 50), func(r *parquetout.ReadingRow) { r.ValueString = ptr("D") }),
			with(row("rpm", "1/min", "int", 50), func(r *parquetout.ReadingRow) { r.ValueInt = ptr(int64(3000)) }),
		},
		"readings/" + after + name: {
			with(row("brake", "", "bool", 100), func(r *parquetout.ReadingRow) { r.ValueBool = ptr(false) }),
			with(row("coolant_temp", "°C", "double", 200), func(r *parquetout.ReadingRow) { r.ValueDouble = ptr(-40.25) }),
			with(row("gear", "", "string", 250), func(r *parquetout.ReadingRow) { r.ValueString = ptr("Rückwärts ✓") }),
			with(row("rpm", "1/min", "int", 150), func(r *parquetout.ReadingRow) { r.ValueInt = ptr(int64(1<<53 + 1)) }),
		},
	}
	for key, want := range wantReadings {
		rows, err := readRows[parquetout.ReadingRow](files[key])
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		slices.SortFunc(rows, func(a, b parquetout.ReadingRow) int {
			return cmp.Or(cmp.Compare(a.Signal, b.Signal), cmp.Compare(a.TS, b.TS))
		})
		if diff := mismatch(want, rows); diff != "" {
			t.Errorf("%s %s", key, diff)
		}
	}
	wantLocations := map[string][]parquetout.LocationRow{
		"locations/" + before + name: {{VehicleID: "veh-0042", TS: us(50), Lat: 52.5200066, Lon: 13.4049540,
			Alt: nil, Speed: ptr(8.333), Heading: ptr(90.25), Accuracy: nil, Epoch: epoch, Seq: 7, BatchIndex: 0}},
		"locations/" + after + name: {{VehicleID: "veh-0042", TS: us(150), Lat: -33.8688, Lon: 151.2093,
			Alt: ptr(58.5), Speed: ptr(0.0), Heading: ptr(359.99), Accuracy: ptr(2.5), Epoch: epoch, Seq: 7, BatchIndex: 1}},
	}
	for key, want := range wantLocations {
		rows, err := readRows[parquetout.LocationRow](files[key])
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		if diff := mismatch(want, rows); diff != "" {
			t.Errorf("%s %s", key, diff)
		}
	}

	// Read generically, through the file's own schema, as a query engine
	// would (no Go struct of ours): ts is microseconds since the epoch, the
	// schema test below checks it is annotated as a UTC instant.
	data = files["readings/"+after+name]
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	rr := parquet.NewGenericReader[map[string]any](f, f.Schema())
	defer rr.Close()
	generic := make([]map[string]any, f.NumRows())
	for i := range generic {
		generic[i] = map[string]any{}
	}
	if n, _ := rr.Read(generic); n != len(generic) {
		t.Fatalf("read %d of %d rows", n, len(generic))
	}
	brake := slices.IndexFunc(generic, func(r map[string]any) bool { return r["signal"] == "brake" })
	if brake < 0 {
		t.Fatalf("no brake row read generically: %v", generic)
	}
	if ts := generic[brake]["ts"]; ts != at(100).UnixMicro() {
		t.Errorf("brake row's ts read generically = %#v, want %d (%v in microseconds)", ts, at(100).UnixMicro(), at(100))
	}
	if generic[brake]["value_double"] != nil || generic[brake]["value_bool"] != false {
		t.Errorf("brake row read generically = %v: want value_bool false and value_double null", generic[brake])
	}

	t.Run("schema", func(t *testing.T) {
		checkSchema(t, files["readings/"+before+name], []string{
			"vehicle_id REQUIRED BYTE_ARRAY STRING",
			"ts REQUIRED INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
			"signal REQUIRED BYTE_ARRAY STRING",
			"unit REQUIRED BYTE_ARRAY STRING",
			"value_type REQUIRED BYTE_ARRAY STRING",
			"value_double OPTIONAL DOUBLE",
			"value_int OPTIONAL INT64 INT(64,true)",
			"value_bool OPTIONAL BOOLEAN",
			"value_string OPTIONAL BYTE_ARRAY STRING",
			"epoch REQUIRED INT64 INT(64,false)",
			"seq REQUIRED INT64 INT(64,false)",
			"batch_index REQUIRED INT32 INT(32,true)",
			"capture_id OPTIONAL BYTE_ARRAY STRING",
			"capture_rule OPTIONAL BYTE_ARRAY STRING",
			"capture_trigger_ts OPTIONAL INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
		}, format.Zstd)
		checkSchema(t, files["locations/"+before+name], []string{
			"vehicle_id REQUIRED BYTE_ARRAY STRING",
			"ts REQUIRED INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
			"lat REQUIRED DOUBLE",
			"lon REQUIRED DOUBLE",
			"alt OPTIONAL DOUBLE",
			"speed OPTIONAL DOUBLE",
			"heading OPTIONAL DOUBLE",
			"accuracy OPTIONAL DOUBLE",
			"epoch REQUIRED INT64 INT(64,false)",
			"seq REQUIRED INT64 INT(64,false)",
			"batch_index REQUIRED INT32 INT(32,true)",
			"capture_id OPTIONAL BYTE_ARRAY STRING",
			"capture_rule OPTIONAL BYTE_ARRAY STRING",
			"capture_trigger_ts OPTIONAL INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
		}, format.Zstd)
	})
}

// checkSchema checks a file's leaf columns (name, repetition, physical and
// logical type, in order) and that every column chunk uses codec.
func checkSchema(t *testing.T, data []byte, want []string, codec format.CompressionCodec) *parquet.File {
	t.Helper()
	f, err := parquet.OpenFile(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	md := f.Metadata()
	var got []string
	for _, el := range md.Schema[1:] { // [0] is the root
		typ, _ := el.Type.Get()
		rep, _ := el.RepetitionType.Get()
		s := fmt.Sprintf("%s %s %s", el.Name, rep, typ)
		if lt := el.LogicalType.String(); lt != "" {
			s += " " + lt
		}
		got = append(got, s)
	}
	if diff := mismatch(want, got); diff != "" {
		t.Errorf("schema %s", diff)
	}
	if len(md.RowGroups) == 0 {
		t.Fatal("no row groups")
	}
	for i, rg := range md.RowGroups {
		for _, c := range rg.Columns {
			if c.MetaData.Codec != codec {
				t.Errorf("row group %d column %v: codec %v, want %v", i, c.MetaData.PathInSchema, c.MetaData.Codec, codec)
			}
		}
	}
	if cb := md.CreatedBy; !strings.HasPrefix(cb, "fleetpipe version ") {
		t.Errorf("created_by = %q", cb)
	}
	return f
}

// TestCompressionAndRowGroups checks that the codec and row group size
// settings reach the files.
func TestCompressionAndRowGroups(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 1)
	cfg := e.config()
	cfg.Compression = "snappy"
	cfg.RowGroupRows = 1000
	r := e.startSink(cfg)

	t0 := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	b := &wire.Batch{Identity: wire.Identity{VehicleID: "bus-1", Epoch: 1, Seq: 1}, BaseTime: t0.UnixNano()}
	for i := range 2500 {
		b.Readings = append(b.Readings, wire.Reading{Signal: "voltage", Unit: "V",
			Time: t0.Add(time.Duration(i) * 10 * time.Millisecond).UnixNano(), Value: wire.Float(12 + float64(i%100)/100)})
	}
	e.produce(b)
	e.waitRows(wantRows(b))
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	files, err := e.parquetFiles()
	if err != nil {
		t.Fatal(err)
	}
	key := "readings/date=2025-06-01/hour=12/" + fileName(0, 0)
	data, ok := files[key]
	if !ok || len(files) != 1 {
		t.Fatalf("files %v, want only %s", keysOf(files), key)
	}
	f := checkSchema(t, data, []string{
		"vehicle_id REQUIRED BYTE_ARRAY STRING",
		"ts REQUIRED INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
		"signal REQUIRED BYTE_ARRAY STRING",
		"unit REQUIRED BYTE_ARRAY STRING",
		"value_type REQUIRED BYTE_ARRAY STRING",
		"value_double OPTIONAL DOUBLE",
		"value_int OPTIONAL INT64 INT(64,true)",
		"value_bool OPTIONAL BOOLEAN",
		"value_string OPTIONAL BYTE_ARRAY STRING",
		"epoch REQUIRED INT64 INT(64,false)",
		"seq REQUIRED INT64 INT(64,false)",
		"batch_index REQUIRED INT32 INT(32,true)",
		"capture_id OPTIONAL BYTE_ARRAY STRING",
		"capture_rule OPTIONAL BYTE_ARRAY STRING",
		"capture_trigger_ts OPTIONAL INT64 TIMESTAMP(isAdjustedToUTC=true,unit=MICROS)",
	}, format.Snappy)
	var sizes []int64
	for _, rg := range f.RowGroups() {
		sizes = append(sizes, rg.NumRows())
	}
	if diff := mismatch([]int64{1000, 1000, 500}, sizes); diff != "" {
		t.Errorf("row group sizes %s", diff)
	}
	rows, err := readRows[parquetout.ReadingRow](data)
	if err != nil {
		t.Fatal(err)
	}
	for i, row := range rows { // in time order
		if want := t0.Add(time.Duration(i) * 10 * time.Millisecond).UnixMicro(); row.TS != want || *row.ValueDouble != 12+float64(i%100)/100 {
			t.Fatalf("row %d = ts %d value %v, want ts %d value %v", i, row.TS, *row.ValueDouble, want, 12+float64(i%100)/100)
		}
	}
}
