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
	head    []byte // the current record's shared fields
	signals map[signalKey][]byte
	w       *bufio.Writer
	file    *os.File // nil for stdout
	name    string   // for errors
	size    int64    // bytes handed to w
	buf     []byte
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
// The fields every line of the record shares are formatted once, and the
// signal, unit and type of each signal once per target.
func (j *jsonLines) Write(_ context.Context, rec Record) error {
	b := rec.Batch
	j.head = appendHead(j.head[:0], rec)
	for i := range b.Readings {
		r := &b.Readings[i]
		j.buf = append(append(j.buf[:0], j.head...), `,"ts":"`...)
		j.buf = appendTime(j.buf, r.Time)
		j.buf = append(j.buf, j.signal(r)...)
		j.buf = appendValue(j.buf, r.Value)
		j.buf = append(j.buf, "}\n"...)
		if err := j.put(); err != nil {
			return err
		}
	}
	for i := range b.Fixes {
		f := &b.Fixes[i]
		j.buf = append(append(j.buf[:0], j.head...), `,"ts":"`...)
		j.buf = appendTime(j.buf, f.Time)
		j.buf = append(j.buf, `","type":"location"`...)
		for _, c := range [...]struct {
			name string
			v    float64
		}{{`,"lat":`, f.Lat}, {`,"lon":`, f.Lon}, {`,"alt":`, f.Alt}, {`,"speed":`, f.Speed}, {`,"heading":`, f.Heading}, {`,"accuracy":`, f.Accuracy}} {
			if math.IsNaN(c.v) || math.IsInf(c.v, 0) {
				continue // absent
			}
			j.buf = append(j.buf, c.name...)
			j.buf = appendFloat(j.buf, c.v)
		}
		j.buf = append(j.buf, "}\n"...)
		if err := j.put(); err != nil {
			return err
		}
	}
	return nil
}

// signalKey is what the signal part of a line depends on.
type signalKey struct {
	signal, unit string
	kind         wire.Kind
}

// signal returns `","signal":...,"unit":...,"type":...,"value":` for r.
func (j *jsonLines) signal(r *wire.Reading) []byte {
	k := signalKey{r.Signal, r.Unit, r.Value.Kind}
	if frag, ok := j.signals[k]; ok {
		return frag
	}
	if j.signals == nil || len(j.signals) > 100_000 {
		j.signals = map[signalKey][]byte{} // bounded, whatever the data
	}
	frag := append([]byte(`","signal":`), appendString(nil, r.Signal)...)
	frag = append(append(frag, `,"unit":`...), appendString(nil, r.Unit)...)
	frag = append(append(frag, `,"type":`...), appendString(nil, r.Value.Kind.String())...)
	frag = append(frag, `,"value":`...)
	j.signals[k] = frag
	return frag
}

func (j *jsonLines) put() error {
	n, err := j.w.Write(j.buf)
	j.size += int64(n)
	if err != nil {
		return fmt.Errorf("%s: %w", j.name, err)
	}
	return nil
}

// OpenRange reads every range from where the replay's state says.
func (j *jsonLines) OpenRange(_ context.Context, _ int, from int64) (int64, error) { return from, nil }

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

// appendHead starts an object with the fields every line of a record has,
// up to (not including) ts.
func appendHead(buf []byte, rec Record) []byte {
	b := rec.Batch
	buf = append(buf, `{"vehicle_id":`...)
	buf = appendString(buf, b.VehicleID)
	buf = append(buf, `,"epoch":"`...)
	const hexDigits = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		buf = append(buf, hexDigits[b.Epoch>>uint(shift)&0xf])
	}
	buf = append(buf, `","seq":`...)
	buf = strconv.AppendUint(buf, b.Seq, 10)
	buf = append(buf, `,"partition":`...)
	buf = strconv.AppendInt(buf, int64(rec.Partition), 10)
	buf = append(buf, `,"offset":`...)
	buf = strconv.AppendInt(buf, rec.Offset, 10)
	return buf
}

// appendTime appends a Unix nanosecond time as RFC 3339 in UTC with the
// digits it needs (time.RFC3339Nano).
func appendTime(buf []byte, ns int64) []byte {
	return time.Unix(0, ns).UTC().AppendFormat(buf, time.RFC3339Nano)
}

// appendString appends s as a JSON string, escaped as encoding/json does
// (HTML characters as \u escapes, invalid UTF-8 as U+FFFD). Plain
// printable ASCII, the common case, is copied as it is.
func appendString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			out, _ := json.Marshal(s)
			return append(buf, out...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
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

// appendFloat appends a finite float the way encoding/json does: the
// shortest form that round-trips, in exponent form below 1e-6 and from 1e21
// on, with a one-digit negative exponent. Callers exclude NaN and
// infinities, which JSON cannot hold.
func appendFloat(buf []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	buf = strconv.AppendFloat(buf, f, format, -1, 64)
	if format == 'e' {
		// e-09 becomes e-9, as encoding/json writes it.
		if n := len(buf); n >= 4 && buf[n-4] == 'e' && buf[n-3] == '-' && buf[n-2] == '0' {
			buf[n-2] = buf[n-1]
			buf = buf[:n-1]
		}
	}
	return buf
}
