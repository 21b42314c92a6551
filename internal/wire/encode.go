package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// Compression says how a batch body is compressed.
type Compression int

// The compressions a batch body can use.
const (
	CompressionZstd Compression = iota // the default
	CompressionNone
)

// EncodeOptions tune Encode. The zero value is the production default.
type EncodeOptions struct {
	// TickNanos is the time resolution of the encoding; times are truncated
	// to it relative to the batch's base time. Default 100,000 (0.1 ms).
	TickNanos int64
	// Compression of the body: zstd (where it makes the body smaller)
	// unless set to CompressionNone.
	Compression Compression
	// Catalog, if set, is a registered name table: when every reading's
	// signal (name, unit, kind) is in it, the body carries the catalog's id
	// instead of the names. Otherwise the body carries its own table.
	Catalog *Catalog
}

// minCompressBytes is the smallest body Encode tries zstd on.
const minCompressBytes = 256

// DefaultTickNanos is the default time resolution: 0.1 ms.
const DefaultTickNanos = 100_000

// The zstd encoder and decoder are built once, on first use, and shared:
// EncodeAll and DecodeAll are safe for concurrent use and building them is
// costly. They are separate so that an agent, which only encodes, never
// pays for a decoder.
var (
	encOnce sync.Once
	zstdEnc *zstd.Encoder
	encErr  error
	decOnce sync.Once
	zstdDec *zstd.Decoder
	decErr  error
)

// encoderWindow is zstd's history window. Bodies are tens of kilobytes; the
// library's default window (8 MiB) would cost an agent that much memory
// for nothing.
const encoderWindow = 512 << 10

func encoder() (*zstd.Encoder, error) {
	encOnce.Do(func() {
		zstdEnc, encErr = zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.SpeedBetterCompression),
			zstd.WithEncoderConcurrency(1),
			zstd.WithWindowSize(encoderWindow),
			zstd.WithLowerEncoderMem(true))
	})
	return zstdEnc, encErr
}

func decoder() (*zstd.Decoder, error) {
	decOnce.Do(func() {
		// Untrusted input: a frame may not make the decoder allocate more
		// than a body may hold, nor use a window larger than any encoder of
		// ours uses (twice encoderWindow leaves room).
		zstdDec, decErr = zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(uint64(DefaultLimits.MaxBodyBytes)),
			zstd.WithDecoderMaxWindow(2*encoderWindow))
	})
	return zstdDec, decErr
}

// Encode returns the wire form of b, sealed with its end-to-end checksum
// (see AppendChecksum). It fails if the vehicle ID is invalid or a value
// cannot be represented (a reading with no kind, say).
func Encode(b *Batch, opt EncodeOptions) ([]byte, error) {
	if err := CheckVehicleID(b.VehicleID); err != nil {
		return nil, err
	}
	if b.Capture != nil {
		if err := b.Capture.check(); err != nil {
			return nil, fmt.Errorf("wire: %w", err)
		}
	}
	tick := opt.TickNanos
	if tick <= 0 {
		tick = DefaultTickNanos
	}
	body, section, err := encodeBody(b, tick, opt.Catalog)
	if errors.Is(err, errOutsideCatalog) {
		// A signal outside the catalog: the batch carries its own table.
		body, section, err = encodeBody(b, tick, nil)
	}
	if err != nil {
		return nil, err
	}
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("wire: marshal body: %w", err)
	}
	out := &pb.Batch{
		VehicleId:        b.VehicleID,
		Epoch:            b.Epoch,
		Seq:              b.Seq,
		BaseTimeUnixNano: b.BaseTime,
		Producer: &pb.Producer{
			AgentVersion:  b.AgentVersion,
			SchemaVersion: SchemaVersion,
			Decoder:       b.Decoder,
		},
		UncompressedSize: uint32(len(raw)),
		Body:             raw,
		Coded:            section,
	}
	if c := b.Capture; c != nil {
		out.Capture = &pb.Capture{Id: c.ID, Rule: c.Rule, TriggerTimeUnixNano: c.TriggerTime, Part: c.Part, Final: c.Final}
	}
	// The coded section is as small as it gets; the body (names, strings,
	// fixes) may compress, unless it is too small for zstd to pay for its
	// frame, as a batch referring to a catalog usually is.
	if opt.Compression == CompressionZstd && len(raw) >= minCompressBytes {
		enc, err := encoder()
		if err != nil {
			return nil, fmt.Errorf("wire: zstd: %w", err)
		}
		// A tiny body (a second of a few signals) can come out of zstd
		// larger than it went in: it then travels as it is.
		if z := enc.EncodeAll(raw, make([]byte, 0, len(raw)/4+64)); len(z) < len(raw) {
			out.Compression = pb.Compression_COMPRESSION_ZSTD
			out.Body = z
		}
	}
	buf := make([]byte, 0, proto.Size(out)+checksumLen)
	buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, out)
	if err != nil {
		return nil, fmt.Errorf("wire: marshal batch: %w", err)
	}
	return AppendChecksum(buf), nil
}

type signalKey struct {
	name, unit string
	kind       Kind
}

type column struct {
	key    signalKey
	signal uint32
	ticks  []int64
	// rows are the column's readings, as indexes into readings: a Value is
	// 48 bytes, an index 4.
	rows     []int32
	readings []Reading
	// raws holds the readings' exact integer forms while they all share
	// one (scale, offset); nil once one does not.
	raws          []int64
	scale, offset float64
	// tableScale and tableOffset are the signal's in the name table or
	// catalog; time is the column's time column.
	tableScale, tableOffset float64
	time                    uint32
}

// packable reports whether the column's values are integers once the
// signal's scale (as the table or catalog states it) is undone.
func (c *column) packable() bool {
	switch c.value(0).Kind {
	case KindInt, KindBool:
		return true
	case KindDouble:
		return c.raws != nil && c.tableScale != 0 && c.scale == c.tableScale && c.offset == c.tableOffset
	}
	return false
}

// value is the column's j-th value.
func (c *column) value(j int) *Value { return &c.readings[c.rows[j]].Value }

// packedRaws is the column's values as the packed layout's integers.
func (c *column) packedRaws() []int64 {
	switch c.value(0).Kind {
	case KindDouble:
		return c.raws
	case KindBool:
		out := make([]int64, len(c.rows))
		for j := range c.rows {
			if c.value(j).Bool {
				out[j] = 1
			}
		}
		return out
	}
	out := make([]int64, len(c.rows))
	for j := range c.rows {
		out[j] = c.value(j).Int
	}
	return out
}

// errOutsideCatalog stops encodeBody at a reading whose signal the
// catalog does not have.
var errOutsideCatalog = errors.New("wire: a signal outside the catalog")

// encodeBody lays the batch out: the body holds the name table (or the
// catalog id), the fixes and the columns that are neither integers nor
// exact decimals; the coded section holds every time column and the
// other value columns.
func encodeBody(b *Batch, tick int64, cat *Catalog) (*pb.Body, []byte, error) {
	body := &pb.Body{TickNanos: uint64(tick)}
	if cat != nil {
		body.CatalogId = cat.ID()
	}
	index := make(map[signalKey]int, 16)
	var cols []*column
	// Readings come in a repeating order (the signals of one CAN frame,
	// frame after frame): the column that followed this one last time is
	// tried before the map.
	var next []int
	prev := -1
	for i := range b.Readings {
		r := &b.Readings[i]
		k := signalKey{r.Signal, r.Unit, r.Value.Kind}
		ci, ok := -1, false
		if prev >= 0 {
			if ci = next[prev]; ci >= 0 && cols[ci].key == k {
				ok = true
			}
		}
		if !ok {
			ci, ok = index[k]
		}
		if prev >= 0 {
			next[prev] = ci
		}
		if !ok {
			typ, err := valueType(r.Value.Kind)
			if err != nil {
				return nil, nil, fmt.Errorf("wire: reading %d (%s): %w", i, r.Signal, err)
			}
			c := &column{key: k, scale: r.Scale, offset: r.Offset, raws: []int64{}, readings: b.Readings}
			if cat != nil {
				si, ok := cat.index[k]
				if !ok {
					return nil, nil, errOutsideCatalog
				}
				c.signal = si
				sig := cat.signals[c.signal]
				c.tableScale, c.tableOffset = sig.GetScale(), sig.GetOffset()
			} else {
				sig := &pb.Signal{Name: r.Signal, Unit: r.Unit, Type: typ}
				if r.Value.Kind == KindDouble && r.Scale != 0 {
					sig.Scale, sig.Offset = r.Scale, r.Offset
				}
				body.Signals = append(body.Signals, sig)
				c.signal = uint32(len(body.Signals) - 1)
				c.tableScale, c.tableOffset = sig.Scale, sig.Offset
			}
			ci = len(cols)
			index[k] = ci
			cols = append(cols, c)
			next = append(next, -1)
			if prev >= 0 {
				next[prev] = ci
			}
		}
		prev = ci
		c := cols[ci]
		c.ticks = append(c.ticks, floorDiv(r.Time-b.BaseTime, tick))
		c.rows = append(c.rows, int32(i))
		if c.raws != nil {
			if r.Scale != 0 && r.Scale == c.scale && r.Offset == c.offset && r.Value.Kind == KindDouble &&
				math.Float64bits(Physical(r.Raw, r.Scale, r.Offset)) == math.Float64bits(r.Value.Float) {
				c.raws = append(c.raws, r.Raw)
			} else {
				c.raws = nil
			}
		}
	}

	// Signals sampled at the same instants share one time column.
	timeIndex := make(map[string]uint32, len(cols))
	var times [][]int64
	var keyBuf []byte
	for _, c := range cols {
		keyBuf = keyBuf[:0]
		for _, t := range c.ticks {
			keyBuf = binary.AppendVarint(keyBuf, t)
		}
		ti, ok := timeIndex[string(keyBuf)]
		if !ok {
			ti = uint32(len(times))
			timeIndex[string(keyBuf)] = ti
			times = append(times, c.ticks)
		}
		c.time = ti
	}

	// Integers (and doubles with an exact integer form) go to the coded
	// section; strings and other doubles are columns of the body.
	var coded []*codedCol
	for _, c := range cols {
		if c.packable() {
			coded = append(coded, &codedCol{signal: c.signal, time: c.time, decimals: -1, vals: c.packedRaws()})
			continue
		}
		var floats []float64 // a double with no raw form under a scale
		if c.raws == nil && c.value(0).Kind == KindDouble {
			floats = make([]float64, len(c.rows))
			for i := range floats {
				floats[i] = c.value(i).Float
			}
			if d, raws, ok := decimalRaws(floats); ok {
				coded = append(coded, &codedCol{signal: c.signal, time: c.time, decimals: d, vals: raws})
				continue
			}
		}
		pc := &pb.Column{Signal: c.signal, Time: c.time}
		switch {
		case c.raws != nil:
			pc.Values = &pb.Column_Scaled{Scaled: &pb.ScaledValues{Scale: c.scale, Offset: c.offset, RawDelta: delta(c.raws)}}
		case floats != nil:
			pc.Values = &pb.Column_Doubles{Doubles: &pb.DoubleValues{Values: floats}}
		default:
			pc.Values = &pb.Column_Strings{Strings: stringValues(c)}
		}
		body.Columns = append(body.Columns, pc)
	}

	if len(b.Fixes) > 0 {
		body.Locations = encodeFixes(b.Fixes, b.BaseTime, tick)
	}
	var infos []signalInfo
	if cat != nil {
		infos = cat.info
	} else {
		infos = signalInfos(body.Signals, nil)
	}
	var section []byte
	if len(times) > 0 {
		section = encodeCoded(nil, times, coded, infos)
	}
	return body, section, nil
}

// decimalRaws finds the fewest decimals d (0..9) such that every value of
// a double column is exactly raw/10^d.
func decimalRaws(floats []float64) (int, []int64, bool) {
	raws := make([]int64, len(floats))
	for d := range len(pow10) {
		if allExact(floats, d, raws) {
			return d, raws, true
		}
	}
	return 0, nil, false
}

func valueType(k Kind) (pb.ValueType, error) {
	switch k {
	case KindDouble:
		return pb.ValueType_VALUE_TYPE_DOUBLE, nil
	case KindInt:
		return pb.ValueType_VALUE_TYPE_INT, nil
	case KindBool:
		return pb.ValueType_VALUE_TYPE_BOOL, nil
	case KindString:
		return pb.ValueType_VALUE_TYPE_STRING, nil
	}
	return 0, fmt.Errorf("value has no kind (%d)", k)
}

// stringValues is a string column's dictionary and each value's index in
// it. (INT and BOOL columns always go to the coded section; the decoder
// still reads them as body columns, as schema version 1 sent them.)
func stringValues(c *column) *pb.StringValues {
	sv := &pb.StringValues{Index: make([]uint32, len(c.rows))}
	dict := make(map[string]uint32)
	for i := range c.rows {
		str := c.value(i).Str
		di, ok := dict[str]
		if !ok {
			di = uint32(len(sv.Dictionary))
			dict[str] = di
			sv.Dictionary = append(sv.Dictionary, str)
		}
		sv.Index[i] = di
	}
	return sv
}

// maxExactInt is the largest integer magnitude a float64 holds exactly.
const maxExactInt = 1 << 53

var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9}

// allExact fills raws with every value's raw form at d decimals, reporting
// false at the first value that has none.
func allExact(fs []float64, d int, raws []int64) bool {
	for i, f := range fs {
		raw, ok := exactDecimal(f, d)
		if !ok {
			return false
		}
		raws[i] = raw
	}
	return true
}

// exactDecimal returns raw with raw/10^d == f bit for bit (raw*1 when d is 0).
func exactDecimal(f float64, d int) (int64, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) || (f == 0 && math.Signbit(f)) {
		return 0, false
	}
	r := math.Round(f * pow10[d])
	if math.Abs(r) > maxExactInt {
		return 0, false
	}
	raw := int64(r)
	var back float64
	if d == 0 {
		back = float64(raw)
	} else {
		back = float64(raw) / pow10[d]
	}
	return raw, math.Float64bits(back) == math.Float64bits(f)
}

func encodeFixes(fs []Fix, base, tick int64) *pb.Locations {
	n := len(fs)
	ticks := make([]int64, n)
	lat, lon := make([]int64, n), make([]int64, n)
	alt, speed, heading, acc := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	absent := make([]uint32, n)
	anyAbsent := false
	for i, f := range fs {
		ticks[i] = floorDiv(f.Time-base, tick)
		lat[i] = quantise(f.Lat, 1e7)
		lon[i] = quantise(f.Lon, 1e7)
		var a uint32
		opt := func(v, scale float64, bit uint32, dst []int64) {
			if isNaN(v) {
				a |= bit
				if i > 0 {
					dst[i] = dst[i-1] // keeps the delta zero
				}
				return
			}
			dst[i] = quantise(v, scale)
		}
		opt(f.Alt, 1e3, absentAlt, alt)
		opt(f.Speed, 1e3, absentSpeed, speed)
		opt(f.Heading, 1e2, absentHeading, heading)
		opt(f.Accuracy, 1e3, absentAccuracy, acc)
		absent[i] = a
		anyAbsent = anyAbsent || a != 0
	}
	loc := &pb.Locations{
		TimeDeltaOfDelta: deltaOfDelta(ticks),
		LatE7:            delta(lat),
		LonE7:            delta(lon),
		AltMm:            delta(alt),
		SpeedMmS:         delta(speed),
		HeadingCdeg:      delta(heading),
		AccuracyMm:       delta(acc),
	}
	if anyAbsent {
		loc.Absent = absent
	}
	return loc
}

// Bits of Locations.absent.
const (
	absentAlt      = 1
	absentSpeed    = 2
	absentHeading  = 4
	absentAccuracy = 8
)

func quantise(v, scale float64) int64 {
	r := math.Round(v * scale)
	if math.IsNaN(r) || math.Abs(r) > maxExactInt {
		return 0
	}
	return int64(r)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func delta(vs []int64) []int64 {
	out := make([]int64, len(vs))
	var prev int64
	for i, v := range vs {
		out[i] = v - prev
		prev = v
	}
	return out
}

func deltaOfDelta(vs []int64) []int64 {
	return appendDeltaOfDelta(make([]int64, 0, len(vs)), vs)
}

// appendDeltaOfDelta appends vs as TimeColumn encodes them: the first value,
// the first delta, then the changes of delta.
func appendDeltaOfDelta(out, vs []int64) []int64 {
	var prev, prevDelta int64
	for i, v := range vs {
		d := v - prev
		if i == 0 {
			out = append(out, v)
		} else {
			out = append(out, d-prevDelta)
			prevDelta = d
		}
		prev = v
	}
	return out
}
