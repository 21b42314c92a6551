package replay

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Record is one replayed Kafka record with its decoded batch.
type Record struct {
	Topic     string
	Partition int32
	Offset    int64
	Timestamp time.Time // the record's Kafka timestamp
	Key       []byte    // the vehicle ID
	Value     []byte    // the batch bytes as the bridge produced them
	Batch     *wire.Batch
}

// Target is where a replay sends its records. The replay calls Write from
// one goroutine, once per decodable record, in replay order (partitions
// ascending, offsets ascending), then Close once, also after a failure. A
// target must turn the same records into the same output. Future targets (a
// Parquet backfill, another Kafka topic) implement this; a Kafka target would
// forward Value unchanged.
type Target interface {
	Write(ctx context.Context, rec Record) error
	// Close flushes what was written and releases the target.
	Close() error
}

// jsonLines writes one JSON object per reading and per location fix. See
// the package documentation for the fields.
type jsonLines struct {
	w   *bufio.Writer
	buf []byte
}

func newJSONLines(w io.Writer) *jsonLines {
	return &jsonLines{w: bufio.NewWriterSize(w, 64<<10)}
}

// Write appends the record's readings, then its fixes, in decoded order.
func (j *jsonLines) Write(_ context.Context, rec Record) error {
	b := rec.Batch
	for i := range b.Readings {
		r := &b.Readings[i]
		j.buf = appendHead(j.buf[:0], rec, r.Time)
		j.buf = appendField(j.buf, "signal", r.Signal)
		j.buf = appendField(j.buf, "unit", r.Unit)
		j.buf = appendField(j.buf, "type", r.Value.Kind.String())
		j.buf = append(j.buf, `,"value":`...)
		j.buf = appendValue(j.buf, r.Value)
		j.buf = append(j.buf, "}\n"...)
		if _, err := j.w.Write(j.buf); err != nil {
			return fmt.Errorf("stdout: %w", err)
		}
	}
	for i := range b.Fixes {
		f := &b.Fixes[i]
		j.buf = appendHead(j.buf[:0], rec, f.Time)
		j.buf = appendField(j.buf, "type", "location")
		for _, c := range []struct {
			name string
			v    float64
		}{{"lat", f.Lat}, {"lon", f.Lon}, {"alt", f.Alt}, {"speed", f.Speed}, {"heading", f.Heading}, {"accuracy", f.Accuracy}} {
			if math.IsNaN(c.v) || math.IsInf(c.v, 0) {
				continue // absent
			}
			j.buf = append(j.buf, `,"`...)
			j.buf = append(j.buf, c.name...)
			j.buf = append(j.buf, `":`...)
			j.buf = appendFloat(j.buf, c.v)
		}
		j.buf = append(j.buf, "}\n"...)
		if _, err := j.w.Write(j.buf); err != nil {
			return fmt.Errorf("stdout: %w", err)
		}
	}
	return nil
}

// Close flushes the buffered lines.
func (j *jsonLines) Close() error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("stdout: %w", err)
	}
	return nil
}

// appendHead starts an object with the fields every line has.
func appendHead(buf []byte, rec Record, ts int64) []byte {
	b := rec.Batch
	buf = append(buf, `{"vehicle_id":`...)
	buf = appendString(buf, b.VehicleID)
	buf = append(buf, `,"epoch":"`...)
	buf = fmt.Appendf(buf, "%016x", b.Epoch)
	buf = append(buf, `","seq":`...)
	buf = strconv.AppendUint(buf, b.Seq, 10)
	buf = append(buf, `,"partition":`...)
	buf = strconv.AppendInt(buf, int64(rec.Partition), 10)
	buf = append(buf, `,"offset":`...)
	buf = strconv.AppendInt(buf, rec.Offset, 10)
	buf = append(buf, `,"ts":`...)
	buf = appendString(buf, time.Unix(0, ts).UTC().Format(time.RFC3339Nano))
	return buf
}

func appendField(buf []byte, name, v string) []byte {
	buf = append(buf, `,"`...)
	buf = append(buf, name...)
	buf = append(buf, `":`...)
	return appendString(buf, v)
}

// appendString appends s as a JSON string, escaped as encoding/json does
// (invalid UTF-8 becomes U+FFFD; marshalling a string cannot fail).
func appendString(buf []byte, s string) []byte {
	out, _ := json.Marshal(s)
	return append(buf, out...)
}

// appendValue appends a reading's value: a number, a boolean or a string.
// Non-finite doubles, which JSON cannot hold, are the strings "NaN", "+Inf"
// and "-Inf".
func appendValue(buf []byte, v wire.Value) []byte {
	switch v.Kind {
	case wire.KindDouble:
		switch {
		case math.IsNaN(v.Float):
			return append(buf, `"NaN"`...)
		case math.IsInf(v.Float, 1):
			return append(buf, `"+Inf"`...)
		case math.IsInf(v.Float, -1):
			return append(buf, `"-Inf"`...)
		}
		return appendFloat(buf, v.Float)
	case wire.KindInt:
		return strconv.AppendInt(buf, v.Int, 10)
	case wire.KindBool:
		return strconv.AppendBool(buf, v.Bool)
	case wire.KindString:
		return appendString(buf, v.Str)
	}
	return append(buf, "null"...)
}

// appendFloat appends a finite float the way encoding/json does (shortest
// form that round-trips). Callers exclude NaN and infinities, the only
// floats Marshal rejects.
func appendFloat(buf []byte, f float64) []byte {
	out, _ := json.Marshal(f)
	return append(buf, out...)
}
