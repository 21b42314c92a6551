// Package parquetout is the Parquet form of the telemetry: the row schema
// of the `readings` and `locations` tables, the conversion of a decoded
// batch into rows, the Hive-style object layout, and a writer that streams
// one table's rows for one hour into a Parquet file. parquet-sink and
// replay's Parquet backfill both write through it, so the two produce the
// same files from the same records.
//
// The schema (column, Parquet type, meaning):
//
//	readings (long: one row per reading)
//	  vehicle_id    string (dictionary)          the batch's vehicle
//	  ts            timestamp(µs, UTC)           the reading's time, car clock
//	  signal        string (dictionary)          signal name
//	  unit          string (dictionary)          unit, "" when the signal has none
//	  value_type    string (dictionary)          double, int, bool or string
//	  value_double  double, optional             set when value_type = double
//	  value_int     int64, optional              set when value_type = int
//	  value_bool    boolean, optional            set when value_type = bool
//	  value_string  string, optional             set when value_type = string
//	  epoch, seq    uint64 (dictionary)          the batch's identity with vehicle_id
//	  batch_index   int32                        the reading's index within its batch
//	  capture_id    string, optional             capture window "vehicle/epoch/id", when the batch is part of one
//	  capture_rule  string, optional (dictionary) the rule that triggered the window
//	  capture_trigger_ts  timestamp(µs, UTC), optional  when the window's (first) trigger fired, car clock
//
//	locations (wide: one row per fix)
//	  vehicle_id, ts                             as above (ts is the fix time)
//	  lat, lon      double                       WGS84 degrees
//	  alt, speed, heading, accuracy  double, optional  metres, m/s, degrees, metres
//	  epoch, seq, batch_index, capture_id, capture_rule, capture_trigger_ts  as above (batch_index indexes the fixes)
//
// (vehicle_id, epoch, seq, batch_index) identifies a row: its provenance.
// Files are zstd-compressed by default, with a split-block bloom filter on
// vehicle_id so that engines that read them (DuckDB does) skip row groups
// that do not hold a vehicle, and min/max statistics on the columns queries
// filter on (all but unit, value_type, batch_index and the capture columns)
// so that filters on ts skip row groups by time, kept per row group and per
// page (the column index), not in each data page's header, which only
// repeats them. epoch and seq are dictionary-encoded: a batch's rows share
// them, so their pages shrink to runs of one index, which costs less to
// build and to compress than 16 plain bytes a row. Rows are in the order
// their records sit in Kafka (about time order).
package parquetout

import (
	"fmt"
	"strconv"
	"time"

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
	Epoch       uint64   `parquet:"epoch,dict"` // UBIGINT: an epoch is a random 64-bit id
	Seq         uint64   `parquet:"seq,dict"`
	BatchIndex  int32    `parquet:"batch_index"`
	CaptureID   *string  `parquet:"capture_id,optional"`
	CaptureRule *string  `parquet:"capture_rule,optional,dict"`
	// CaptureTriggerTS is the trigger's time, µs: ts - capture_trigger_ts
	// places a row in its window.
	CaptureTriggerTS *int64 `parquet:"capture_trigger_ts,optional,timestamp(microsecond)"`
}

// LocationRow is one row of the wide locations table.
type LocationRow struct {
	VehicleID   string   `parquet:"vehicle_id,dict"`
	TS          int64    `parquet:"ts,timestamp(microsecond)"`
	Lat         float64  `parquet:"lat"`
	Lon         float64  `parquet:"lon"`
	Alt         *float64 `parquet:"alt,optional"`
	Speed       *float64 `parquet:"speed,optional"`
	Heading     *float64 `parquet:"heading,optional"`
	Accuracy    *float64 `parquet:"accuracy,optional"`
	Epoch       uint64   `parquet:"epoch,dict"`
	Seq         uint64   `parquet:"seq,dict"`
	BatchIndex  int32    `parquet:"batch_index"`
	CaptureID   *string  `parquet:"capture_id,optional"`
	CaptureRule *string  `parquet:"capture_rule,optional,dict"`
	// CaptureTriggerTS is the trigger's time, µs: ts - capture_trigger_ts
	// places a row in its window.
	CaptureTriggerTS *int64 `parquet:"capture_trigger_ts,optional,timestamp(microsecond)"`
}

// Table names, the first level of the object layout.
const (
	Readings  = "readings"
	Locations = "locations"
)

// Tables lists the tables in the order files are written.
var Tables = []string{Locations, Readings}

// Hour is one Hive partition of one table: the rows whose time falls in one
// UTC hour.
type Hour struct {
	Table string
	// Start is the hour's first second, Unix seconds, UTC.
	Start int64
}

// HourOf returns the partition of table holding a row at unixNano.
func HourOf(table string, unixNano int64) Hour {
	s := unixNano / 1e9
	if unixNano%1e9 < 0 {
		s--
	}
	h := s / 3600
	if s%3600 < 0 {
		h--
	}
	return Hour{Table: table, Start: h * 3600}
}

// Dir is the hour's folder: {table}/date=YYYY-MM-DD/hour=HH.
func (h Hour) Dir() string {
	t := time.Unix(h.Start, 0).UTC()
	return fmt.Sprintf("%s/date=%s/hour=%02d", h.Table, t.Format("2006-01-02"), t.Hour())
}

// Compare orders hours by table, then time.
func (h Hour) Compare(o Hour) int {
	switch {
	case h.Table < o.Table:
		return -1
	case h.Table > o.Table:
		return 1
	case h.Start < o.Start:
		return -1
	case h.Start > o.Start:
		return 1
	}
	return 0
}

// ObjectKey is where a file of table rows from (topic, partition) whose
// records start at firstOffset goes, relative to the store's prefix:
// {table}/date=YYYY-MM-DD/hour=HH/{topic}+{partition}+{first offset, 20 digits}.parquet.
func ObjectKey(h Hour, topic string, partition int32, firstOffset int64) string {
	return fmt.Sprintf("%s/%s+%d+%020d.parquet", h.Dir(), topic, partition, firstOffset)
}

// CaptureID names a capture window everywhere: "vehicle/epoch (16 hex
// digits)/id", the format of wire.Identity.String with the window's id.
func CaptureID(id wire.Identity, c *wire.Capture) string {
	return id.VehicleID + "/" + fmt.Sprintf("%016x", id.Epoch) + "/" + strconv.FormatUint(c.ID, 10)
}
