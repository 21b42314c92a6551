package can

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"time"
)

// DecodeLog is `edge-agent decode`: it decodes a candump -L log with a DBC,
// applies the collection config (none: keep every signal) and writes one
// JSON line per reading the agent would collect from that log, in log
// order:
//
//	{"signal":"CAR_SPEED.CAR_SPEED","value":9.5,"raw":950,"unit":"kph","ts":"2023-01-19T17:19:00.123456000Z"}
//
// value is an integer for integer signals (factor 1, offset 0) and a
// number otherwise ("NaN", "+Inf" or "-Inf" as a string for non-finite
// float signals); raw is the DBC bit field; ts is the log's timestamp in
// RFC 3339 with nanoseconds, UTC. The returned Stats count frames by
// result and values dropped by the collection config.
func DecodeLog(w io.Writer, dbcPath, logPath, collectCfgPath string) (Stats, error) {
	cfg := Config{DBC: dbcPath, Candump: logPath}
	if collectCfgPath != "" {
		c, err := LoadCollectConfig(collectCfgPath)
		if err != nil {
			return Stats{}, err
		}
		cfg.Collect = c
	}
	src, err := New(cfg, Deps{})
	if err != nil {
		return Stats{}, err
	}
	err = writeJSONLines(context.Background(), src, w)
	return src.Stats(), err
}

func writeJSONLines(ctx context.Context, src *Source, w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	var (
		buf    []byte
		werr   error
		lastT  int64 = math.MinInt64
		tsJSON []byte
		quoted = make([]*[2][]byte, len(src.dec.Signals())) // per signal: JSON of name and unit
	)
	err := src.run(ctx, func(t int64, kept, _ []Decoded) {
		if werr != nil {
			return
		}
		if t != lastT {
			lastT = t
			tsJSON = time.Unix(0, t).UTC().AppendFormat(tsJSON[:0], `"2006-01-02T15:04:05.000000000Z07:00"`)
		}
		for _, v := range kept {
			q := quoted[v.Signal.index]
			if q == nil {
				name, _ := json.Marshal(v.Signal.FullName) // strings always marshal
				unit, _ := json.Marshal(v.Signal.Unit)
				q = &[2][]byte{name, unit}
				quoted[v.Signal.index] = q
			}
			buf = appendJSONLine(buf[:0], v, q[0], q[1], tsJSON)
			if _, werr = bw.Write(buf); werr != nil {
				return
			}
		}
	})
	if err != nil {
		return err
	}
	if werr != nil {
		return werr
	}
	return bw.Flush()
}

func appendJSONLine(b []byte, v Decoded, name, unit, tsJSON []byte) []byte {
	b = append(b, `{"signal":`...)
	b = append(b, name...)
	b = append(b, `,"value":`...)
	b = appendValue(b, v)
	b = append(b, `,"raw":`...)
	if v.Signal.Type == ValueInteger && !v.Signal.Signed && v.Signal.Length == 64 {
		b = strconv.AppendUint(b, uint64(v.Raw), 10)
	} else {
		b = strconv.AppendInt(b, v.Raw, 10)
	}
	b = append(b, `,"unit":`...)
	b = append(b, unit...)
	b = append(b, `,"ts":`...)
	b = append(b, tsJSON...)
	return append(b, "}\n"...)
}

// appendValue writes the value as encoding/json would (shortest decimal
// that round-trips), with non-finite floats as strings.
func appendValue(b []byte, v Decoded) []byte {
	if v.Signal.Integer() {
		return strconv.AppendInt(b, v.Raw, 10)
	}
	f := v.Physical
	switch {
	case math.IsNaN(f):
		return append(b, `"NaN"`...)
	case math.IsInf(f, 1):
		return append(b, `"+Inf"`...)
	case math.IsInf(f, -1):
		return append(b, `"-Inf"`...)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	return strconv.AppendFloat(b, f, format, -1, 64)
}
