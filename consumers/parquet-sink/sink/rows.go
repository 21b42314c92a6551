package sink

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/compress"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// ReadingRow is one row of the long-format readings table.
type ReadingRow struct {
	VehicleID   string   `parquet:"vehicle_id,dict"`
	TS          int64    `parquet:"ts,timestamp(microsecond)"`
	Signal      string   `parquet:"signal,dict"`
	Unit        string   `parquet:"unit,dict"`
	Type        string   `parquet:"value_type,dict"`
	ValueDouble *float64 `parquet:"value_double,optional"`
	ValueInt    *int64   `parquet:"value_int,optional"`
	ValueBool   *bool    `parquet:"value_bool,optional"`
	ValueString *string  `parquet:"value_string,optional,dict"`
	Epoch       uint64   `parquet:"epoch"` // UBIGINT: an epoch is a random 64-bit id
	Seq         uint64   `parquet:"seq"`
}

// LocationRow is one row of the wide locations table.
type LocationRow struct {
	VehicleID string   `parquet:"vehicle_id,dict"`
	TS        int64    `parquet:"ts,timestamp(microsecond)"`
	Lat       float64  `parquet:"lat"`
	Lon       float64  `parquet:"lon"`
	Alt       *float64 `parquet:"alt,optional"`
	Speed     *float64 `parquet:"speed,optional"`
	Heading   *float64 `parquet:"heading,optional"`
	Accuracy  *float64 `parquet:"accuracy,optional"`
	Epoch     uint64   `parquet:"epoch"`
	Seq       uint64   `parquet:"seq"`
}

// Table names, the first level of the object layout.
const (
	tableReadings  = "readings"
	tableLocations = "locations"
)

// hourKey is one Hive partition: a table, a UTC date and hour.
type hourKey struct {
	table string
	date  string // YYYY-MM-DD
	hour  int
}

func hourOf(table string, unixNano int64) hourKey {
	t := time.Unix(0, unixNano).UTC()
	return hourKey{table: table, date: t.Format("2006-01-02"), hour: t.Hour()}
}

// objectKey is where a file of records from (topic, partition) starting at
// firstOffset goes, relative to the store's prefix.
func objectKey(h hourKey, topic string, partition int32, firstOffset int64) string {
	return fmt.Sprintf("%s/date=%s/hour=%02d/%s+%d+%020d.parquet", h.table, h.date, h.hour, topic, partition, firstOffset)
}

// Approximate in-memory sizes used for the bytes limit.
const (
	readingRowBytes  = 96
	locationRowBytes = 112
)

// appendBatch adds a batch's rows to the per-hour buffers and returns how
// many rows and estimated bytes it added.
func appendBatch(bufs map[hourKey]*hourBuf, b *wire.Batch) (rows, size int) {
	epoch, seq := b.Epoch, b.Seq
	for i := range b.Readings {
		r := &b.Readings[i]
		h := hourOf(tableReadings, r.Time)
		hb := bufs[h]
		if hb == nil {
			hb = &hourBuf{}
			bufs[h] = hb
		}
		row := ReadingRow{VehicleID: b.VehicleID, TS: r.Time / 1000, Signal: r.Signal, Unit: r.Unit, Type: r.Value.Kind.String(), Epoch: epoch, Seq: seq}
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
		hb.readings = append(hb.readings, row)
		size += readingRowBytes + len(r.Signal) + len(r.Unit) + len(r.Value.Str)
	}
	for i := range b.Fixes {
		f := &b.Fixes[i]
		h := hourOf(tableLocations, f.Time)
		hb := bufs[h]
		if hb == nil {
			hb = &hourBuf{}
			bufs[h] = hb
		}
		hb.locations = append(hb.locations, LocationRow{
			VehicleID: b.VehicleID, TS: f.Time / 1000, Lat: f.Lat, Lon: f.Lon,
			Alt: opt(f.Alt), Speed: opt(f.Speed), Heading: opt(f.Heading), Accuracy: opt(f.Accuracy),
			Epoch: epoch, Seq: seq,
		})
		size += locationRowBytes
	}
	return len(b.Readings) + len(b.Fixes), size
}

func opt(f float64) *float64 {
	if math.IsNaN(f) {
		return nil
	}
	return &f
}

// hourBuf holds the rows of one Hive partition until they are written.
type hourBuf struct {
	readings  []ReadingRow
	locations []LocationRow
}

// encode writes the buffer as a Parquet file, rows sorted by vehicle and
// time so that engines can skip row groups by statistics.
func (hb *hourBuf) encode(table string, opts []parquet.WriterOption) ([]byte, error) {
	var buf bytes.Buffer
	switch table {
	case tableReadings:
		slices.SortStableFunc(hb.readings, func(a, b ReadingRow) int {
			return cmp.Or(cmp.Compare(a.VehicleID, b.VehicleID), cmp.Compare(a.Signal, b.Signal), cmp.Compare(a.TS, b.TS))
		})
		w := parquet.NewGenericWriter[ReadingRow](&buf, opts...)
		if _, err := w.Write(hb.readings); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	case tableLocations:
		slices.SortStableFunc(hb.locations, func(a, b LocationRow) int {
			return cmp.Or(cmp.Compare(a.VehicleID, b.VehicleID), cmp.Compare(a.TS, b.TS))
		})
		w := parquet.NewGenericWriter[LocationRow](&buf, opts...)
		if _, err := w.Write(hb.locations); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func codec(name string) (compress.Codec, error) {
	switch name {
	case "zstd":
		return &parquet.Zstd, nil
	case "snappy":
		return &parquet.Snappy, nil
	case "gzip":
		return &parquet.Gzip, nil
	case "none":
		return &parquet.Uncompressed, nil
	}
	return nil, fmt.Errorf("%q: want zstd, snappy, gzip or none", name)
}
