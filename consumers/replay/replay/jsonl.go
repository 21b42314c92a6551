package replay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// jsonLines writes one JSON object per reading and per location fix to a
// file or stdout. See the package documentation for the fields.
//
// Exactly once into a file: Commit flushes and fsyncs the file, then saves
// its length with the position; a resumed replay truncates the file to that
// length (dropping lines written after the last commit) and goes on from
// the position. Stdout cannot be rewound, so a replay to it is not
// resumable; Ctrl-C still commits (flushes) before it prints the command
// that continues.
type jsonLines struct {
	w    *bufio.Writer
	file *os.File // nil for stdout
	name string   // for errors
	size int64    // bytes handed to w
	buf  []byte
}

// jsonlState is what a file target saves with its position.
type jsonlState struct {
	Bytes int64 `json:"bytes"`
}

func openJSONL(_ context.Context, env TargetEnv) (Target, error) {
	if env.Dest == "-" {
		return newJSONLines(env.Stdout), nil
	}
	j := &jsonLines{name: env.Dest}
	var err error
	if env.Resumed == nil {
		j.file, err = os.OpenFile(env.Dest, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, cli.FieldError("to-jsonl", "%v", err)
		}
	} else {
		var st jsonlState
		if len(env.State) > 0 {
			if err := json.Unmarshal(env.State, &st); err != nil {
				return nil, fmt.Errorf("replay state: target: %w", err)
			}
		}
		if j.file, err = os.OpenFile(env.Dest, os.O_WRONLY, 0); err != nil {
			return nil, cli.FieldError("to-jsonl", "resuming into %s: %v", env.Dest, err)
		}
		fi, err := j.file.Stat()
		if err == nil && fi.Size() < st.Bytes {
			err = fmt.Errorf("it holds %d bytes, fewer than the %d the replay had committed: it was changed since, so resuming cannot give every record once; start a new replay", fi.Size(), st.Bytes)
		}
		if err == nil {
			err = j.file.Truncate(st.Bytes) // lines written after the last commit
		}
		if err == nil {
			_, err = j.file.Seek(st.Bytes, io.SeekStart)
		}
		if err != nil {
			j.file.Close()
			return nil, cli.FieldError("to-jsonl", "resuming into %s: %v", env.Dest, err)
		}
		j.size = st.Bytes
	}
	j.w = bufio.NewWriterSize(j.file, 256<<10)
	return j, nil
}

func newJSONLines(w io.Writer) *jsonLines {
	return &jsonLines{w: bufio.NewWriterSize(w, 256<<10), name: "stdout"}
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
		if err := j.put(); err != nil {
			return err
		}
	}
	for i := range b.Fixes {
		f := &b.Fixes[i]
		j.buf = appendHead(j.buf[:0], rec, f.Time)
		j.buf = appendField(j.buf, "type", "location")
		for _, c := range [...]struct {
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
		if err := j.put(); err != nil {
			return err
		}
	}
	return nil
}

func (j *jsonLines) put() error {
	n, err := j.w.Write(j.buf)
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("%s: %w", j.name, err)
	}
	return nil
}

// Commit flushes (and for a file, fsyncs) every line written, then saves
// the position with the file's length.
func (j *jsonLines) Commit(ctx context.Context, pos Position, _ bool, save SaveFunc) error {
	if err := j.w.Flush(); err != nil {
		return fmt.Errorf("%s: %w", j.name, err)
	}
	if j.file == nil {
		return save(ctx, pos, nil)
	}
	if err := j.file.Sync(); err != nil {
		return fmt.Errorf("%s: fsync: %w", j.name, err)
	}
	st, err := json.Marshal(jsonlState{Bytes: j.size})
	if err != nil {
		return err
	}
	return save(ctx, pos, st)
}

// Close closes the file without flushing: lines after the last Commit are
// not part of the output (a resume truncates them).
func (j *jsonLines) Close() error {
	if j.file == nil {
		return nil
	}
	if err := j.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("%s: %w", j.name, err)
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
