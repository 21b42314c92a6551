package wire

import (
	"fmt"
	"math"
	"slices"

	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// DecodeIdentity parses only the envelope of a batch: its identity and
// producer, without decompressing the body. It applies lim.MaxBatchBytes
// and verifies the checksum (which covers the body too).
func DecodeIdentity(data []byte, lim Limits) (Identity, error) {
	env, _, err := parseEnvelope(data, lim.withDefaults())
	if err != nil {
		return Identity{}, err
	}
	return Identity{VehicleID: env.GetVehicleId(), Epoch: env.GetEpoch(), Seq: env.GetSeq()}, nil
}

// parseEnvelope checks the size and the checksum, then parses the
// envelope; it reports whether a checksum was verified.
func parseEnvelope(data []byte, lim Limits) (*pb.Batch, bool, error) {
	if len(data) > lim.MaxBatchBytes {
		return nil, false, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(data), lim.MaxBatchBytes)
	}
	checked, err := verifyChecksum(data)
	if err != nil {
		return nil, checked, err
	}
	if !checked && lim.RequireChecksum {
		return nil, false, ErrNoChecksum
	}
	env := &pb.Batch{}
	if err := proto.Unmarshal(data, env); err != nil {
		return nil, checked, malformed("envelope: %v", err)
	}
	if err := CheckVehicleID(env.GetVehicleId()); err != nil {
		return nil, checked, malformed("%v", err)
	}
	return env, checked, nil
}

// Decode parses and validates an untrusted batch. Errors wrap ErrTooLarge,
// ErrMalformed, ErrUnsupported, ErrCorrupt, ErrNoChecksum or
// ErrUnknownCatalog.
func Decode(data []byte, lim Limits) (*Batch, error) {
	b := &Batch{}
	if _, err := decode(data, lim, b); err != nil {
		return nil, err
	}
	return b, nil
}

// DecodeInto is Decode into b, reusing the capacity of b's Readings and
// Fixes: a consumer that decodes batch after batch into one Batch
// allocates little once warm. Whatever b held is overwritten (on error, b
// is left in an unspecified state).
func DecodeInto(data []byte, lim Limits, b *Batch) error {
	_, err := decode(data, lim, b)
	return err
}

// Summary is what Check tells of a valid batch.
type Summary struct {
	Identity
	BaseTime      int64
	SchemaVersion uint32
	Checked       bool // it carried a checksum, and it matched
	Readings      int  // readings, fixes not included
	Fixes         int
	// MinTime and MaxTime bound the times of the batch's readings and
	// fixes (both BaseTime when it has none).
	MinTime, MaxTime int64
}

// Check validates an untrusted batch exactly as Decode does — it accepts
// what Decode accepts and fails with the same errors — without building
// its readings: what it allocates is bounded by the body and the coded
// section's columns, not by per-reading values (for the bridge, which
// needs a batch's identity and validity, not its readings).
func Check(data []byte, lim Limits) (Summary, error) {
	return decode(data, lim, nil)
}

// decode validates data and, when b is not nil, fills b.
func decode(data []byte, lim Limits, b *Batch) (Summary, error) {
	var sum Summary
	lim = lim.withDefaults()
	env, checked, err := parseEnvelope(data, lim)
	if err != nil {
		return sum, err
	}
	version := env.GetProducer().GetSchemaVersion()
	if version != 1 && version != SchemaVersion {
		return sum, fmt.Errorf("%w: schema version %d (this build reads 1 and %d)", ErrUnsupported, version, SchemaVersion)
	}
	if version == 1 && len(env.GetCoded()) > 0 {
		return sum, malformed("a coded section in a schema version 1 batch")
	}
	size := int(env.GetUncompressedSize())
	if size > lim.MaxBodyBytes {
		return sum, fmt.Errorf("%w: body claims %d bytes, limit %d", ErrTooLarge, size, lim.MaxBodyBytes)
	}
	raw := env.GetBody()
	switch env.GetCompression() {
	case pb.Compression_COMPRESSION_NONE:
	case pb.Compression_COMPRESSION_ZSTD:
		if lim.MaxBodyRatio > 0 && size > BodyRatioFloor && size/lim.MaxBodyRatio > len(raw) {
			return sum, fmt.Errorf("%w: a body of %d bytes claims %d once decompressed, over %d times its size", ErrTooLarge, len(raw), size, lim.MaxBodyRatio)
		}
		var h zstd.Header
		if err := h.Decode(raw); err == nil && h.HasFCS && h.FrameContentSize != uint64(size) {
			return sum, malformed("zstd frame says %d bytes, envelope says %d", h.FrameContentSize, size)
		}
		dec, err := decoder()
		if err != nil {
			return sum, fmt.Errorf("wire: zstd: %w", err)
		}
		// The claimed size was checked against the limit above; the shared
		// decoder's max-memory option stops a body that lies about it, and
		// any length other than the claimed one is refused below.
		raw, err = dec.DecodeAll(raw, make([]byte, 0, size))
		if err != nil {
			return sum, malformed("zstd body: %v", err)
		}
	default:
		return sum, fmt.Errorf("%w: compression %d", ErrUnsupported, env.GetCompression())
	}
	if len(raw) != size {
		return sum, malformed("body is %d bytes, envelope says %d", len(raw), size)
	}
	body := &pb.Body{}
	if err := proto.Unmarshal(raw, body); err != nil {
		return sum, malformed("body: %v", err)
	}
	sum = Summary{
		Identity:      Identity{VehicleID: env.GetVehicleId(), Epoch: env.GetEpoch(), Seq: env.GetSeq()},
		BaseTime:      env.GetBaseTimeUnixNano(),
		SchemaVersion: version,
		Checked:       checked,
	}
	var capture *Capture
	if c := env.GetCapture(); c != nil {
		capture = &Capture{ID: c.GetId(), Rule: c.GetRule(), TriggerTime: c.GetTriggerTimeUnixNano(), Part: c.GetPart(), Final: c.GetFinal()}
		if err := capture.check(); err != nil {
			return sum, malformed("%v", err)
		}
	}
	if lim.MaxReadingsPerByte > 0 {
		lim.MaxReadings = min(lim.MaxReadings, lim.MaxReadingsPerByte*len(data))
	}
	if b != nil {
		rs, fs := b.Readings[:0], b.Fixes[:0]
		*b = Batch{
			Readings:      rs,
			Fixes:         fs,
			Identity:      sum.Identity,
			BaseTime:      sum.BaseTime,
			AgentVersion:  env.GetProducer().GetAgentVersion(),
			SchemaVersion: version,
			Decoder:       env.GetProducer().GetDecoder(),
			Checked:       checked,
			Capture:       capture,
		}
	}
	if err := decodeBody(&sum, b, body, env.GetCoded(), version, lim); err != nil {
		return sum, err
	}
	return sum, nil
}

// decodeBody validates the body and coded section, filling sum and, when b
// is not nil, b's readings and fixes.
func decodeBody(sum *Summary, b *Batch, body *pb.Body, coded []byte, version uint32, lim Limits) error {
	tick := body.GetTickNanos()
	if tick == 0 || tick > uint64(math.MaxInt64) {
		return malformed("tick_nanos %d", tick)
	}
	signals := body.GetSignals()
	var infos []signalInfo
	if id := body.GetCatalogId(); len(id) > 0 {
		if len(signals) > 0 {
			return malformed("both a catalog id and a name table")
		}
		var cat *Catalog
		ok := false
		if lim.Catalogs != nil {
			cat, ok = lim.Catalogs.Catalog(id)
		}
		if !ok {
			return fmt.Errorf("%w %x", ErrUnknownCatalog, id)
		}
		signals, infos = cat.signals, cat.info
	} else {
		infos = signalInfos(signals, nil)
	}
	var times [][]int64
	var codedCols []decodedCol
	var err error
	if version == 1 {
		times, err = decodeTimes(body, sum.BaseTime, int64(tick), lim)
	} else {
		// The columns live in an arena until decodeBody returns: nothing
		// it builds refers to them.
		a := arenas.Get().(*colArena)
		defer a.release()
		times, codedCols, err = decodeSection(body, coded, infos, sum.BaseTime, int64(tick), lim, a)
	}
	if err != nil {
		return err
	}
	total := 0
	for _, c := range codedCols {
		total += len(c.vals)
	}
	for i, c := range body.GetColumns() {
		if c.GetTime() >= uint32(len(times)) {
			return malformed("column %d: time column %d out of range", i, c.GetTime())
		}
		if c.GetSignal() >= uint32(len(signals)) {
			return malformed("column %d: signal %d out of range", i, c.GetSignal())
		}
		total += len(times[c.GetTime()])
	}
	p := body.GetPacked()
	packedSigs, packedTotal, err := checkPacked(p, signals, times)
	if err != nil {
		return err
	}
	total += packedTotal
	if loc := body.GetLocations(); loc != nil {
		total += len(loc.GetTimeDeltaOfDelta())
	}
	if total > lim.MaxReadings {
		return fmt.Errorf("%w: %d readings, limit %d", ErrTooLarge, total, lim.MaxReadings)
	}
	sum.MinTime, sum.MaxTime = sum.BaseTime, sum.BaseTime
	first := true
	span := func(ts []int64) {
		for _, t := range ts {
			if first || t < sum.MinTime {
				sum.MinTime = t
			}
			if first || t > sum.MaxTime {
				sum.MaxTime = t
			}
			first = false
		}
	}
	for _, ts := range times {
		span(ts)
	}
	sum.Readings = total
	var fixTimes []int64
	if loc := body.GetLocations(); loc != nil {
		sum.Readings -= len(loc.GetTimeDeltaOfDelta())
		fixTimes, err = checkFixes(loc, sum.BaseTime, int64(tick))
		if err != nil {
			return malformed("locations: %v", err)
		}
		sum.Fixes = len(fixTimes)
		span(fixTimes)
	}
	var readings []Reading
	if b != nil {
		readings = slices.Grow(b.Readings[:0], total)
	}
	emit := func(r Reading) {
		if b != nil {
			readings = append(readings, r)
		}
	}
	var vals []Value
	for i, c := range body.GetColumns() {
		sig := signals[c.GetSignal()]
		ts := times[c.GetTime()]
		if b != nil {
			vals = make([]Value, len(ts))
		}
		if err := decodeValues(c, sig.GetType(), len(ts), vals); err != nil {
			return malformed("column %d (%s): %v", i, sig.GetName(), err)
		}
		if b != nil {
			for j, t := range ts {
				emit(Reading{Signal: sig.GetName(), Unit: sig.GetUnit(), Time: t, Value: vals[j]})
			}
		}
	}
	deltas := p.GetDelta()
	for i, si := range packedSigs {
		sig := signals[si]
		ts := times[p.GetTime()[i]]
		raw := p.GetFirst()[i]
		for j, t := range ts {
			if j > 0 {
				raw += deltas[0]
				deltas = deltas[1:]
			}
			r, err := codedReading(sig, -1, raw)
			if err != nil {
				return malformed("packed column %d (%s): %v", i, sig.GetName(), err)
			}
			r.Time = t
			emit(r)
		}
	}
	for i, c := range codedCols {
		sig := signals[c.signal]
		ts := times[c.time]
		if b == nil {
			// A check: the values' validity, without their readings.
			if j := invalidCoded(sig, c.decimals, c.vals); j >= 0 {
				_, err := codedReading(sig, c.decimals, c.vals[j])
				return malformed("coded column %d (%s): %v", i, sig.GetName(), err)
			}
			continue
		}
		for j, raw := range c.vals {
			r, err := codedReading(sig, c.decimals, raw)
			if err != nil {
				return malformed("coded column %d (%s): %v", i, sig.GetName(), err)
			}
			r.Time = ts[j]
			emit(r)
		}
	}
	if b != nil {
		b.Readings = readings
		if loc := body.GetLocations(); loc != nil {
			b.Fixes = fixValues(b.Fixes[:0], loc, fixTimes)
		}
	}
	return nil
}

// decodeSection reads a schema version 2 batch's coded section, returning
// its time columns as absolute times and its value columns.
func decodeSection(body *pb.Body, coded []byte, infos []signalInfo, base, tick int64, lim Limits, a *colArena) ([][]int64, []decodedCol, error) {
	if len(body.GetTimes()) > 0 || len(body.GetTimeLengths()) > 0 || len(body.GetTimeDeltaOfDelta()) > 0 || body.GetPacked() != nil {
		return nil, nil, malformed("schema version 2 with time columns or packed columns in the body")
	}
	if len(coded) == 0 {
		return nil, nil, nil
	}
	ticks, cols, err := decodeCoded(coded, infos, lim, a)
	if err != nil {
		return nil, nil, err
	}
	for i, ts := range ticks {
		for j, off := range ts {
			t, ok := addMul(base, off, tick)
			if !ok {
				return nil, nil, malformed("time column %d entry %d overflows", i, j)
			}
			ts[j] = t
		}
	}
	return ticks, cols, nil
}

// codedReading is the reading of a raw value of a coded column of sig
// (decimals -1: the raw integer under the signal's scale).
func codedReading(sig *pb.Signal, decimals int, raw int64) (Reading, error) {
	r := Reading{Signal: sig.GetName(), Unit: sig.GetUnit()}
	switch sig.GetType() {
	case pb.ValueType_VALUE_TYPE_INT:
		r.Value = Int(raw)
	case pb.ValueType_VALUE_TYPE_BOOL:
		if raw != 0 && raw != 1 {
			return r, fmt.Errorf("bool value %d", raw)
		}
		r.Value = Bool(raw == 1)
	case pb.ValueType_VALUE_TYPE_DOUBLE:
		switch {
		case decimals > 0:
			r.Value = Float(float64(raw) / pow10[decimals])
		case decimals == 0:
			r.Value = Float(float64(raw))
		case sig.GetScale() == 0:
			return r, fmt.Errorf("raw values of a double with no scale")
		default:
			r.Value = Float(Physical(raw, sig.GetScale(), sig.GetOffset()))
			r.Scale, r.Offset, r.Raw = sig.GetScale(), sig.GetOffset(), raw
		}
	default:
		return r, fmt.Errorf("a %v signal", sig.GetType())
	}
	return r, nil
}

// invalidCoded is the index of the first raw value of a coded column of
// sig that codedReading refuses, or -1: what a check needs of the values.
func invalidCoded(sig *pb.Signal, decimals int, vals []int64) int {
	if len(vals) == 0 {
		return -1
	}
	switch sig.GetType() {
	case pb.ValueType_VALUE_TYPE_INT:
		return -1
	case pb.ValueType_VALUE_TYPE_BOOL:
		for j, raw := range vals {
			if raw != 0 && raw != 1 {
				return j
			}
		}
		return -1
	case pb.ValueType_VALUE_TYPE_DOUBLE:
		if decimals < 0 && sig.GetScale() == 0 {
			return 0
		}
		return -1
	}
	return 0
}

// decodeTimes returns the body's time columns, plain ones first, then the
// packed ones, as absolute times.
func decodeTimes(body *pb.Body, base, tick int64, lim Limits) ([][]int64, error) {
	lengths := body.GetTimeLengths()
	times := make([][]int64, 0, len(body.GetTimes())+len(lengths))
	for i, tc := range body.GetTimes() {
		ts, err := absoluteTimes(tc.GetDeltaOfDelta(), base, tick)
		if err != nil {
			return nil, malformed("time column %d: %v", i, err)
		}
		times = append(times, ts)
	}
	dod := body.GetTimeDeltaOfDelta()
	sum := 0
	for _, n := range lengths {
		if n == 0 {
			return nil, malformed("empty packed time column")
		}
		if sum += int(n); sum > lim.MaxReadings {
			return nil, fmt.Errorf("%w: packed time columns of over %d entries", ErrTooLarge, lim.MaxReadings)
		}
	}
	if sum != len(dod) {
		return nil, malformed("packed time columns claim %d entries and hold %d", sum, len(dod))
	}
	for i, n := range lengths {
		ts, err := absoluteTimes(dod[:n], base, tick)
		if err != nil {
			return nil, malformed("packed time column %d: %v", i, err)
		}
		times = append(times, ts)
		dod = dod[n:]
	}
	return times, nil
}

// checkPacked validates the packed layout's directory against the signals
// and times, returning each column's signal index and the number of
// readings the columns hold.
func checkPacked(p *pb.Packed, signals []*pb.Signal, times [][]int64) ([]int, int, error) {
	n := len(p.GetSignalDelta())
	if len(p.GetTime()) != n || len(p.GetFirst()) != n {
		return nil, 0, malformed("packed directory: %d signals, %d times, %d first values", n, len(p.GetTime()), len(p.GetFirst()))
	}
	sigs := make([]int, n)
	var si int64
	total, deltas := 0, 0
	for i, d := range p.GetSignalDelta() {
		si += d
		if si < 0 || si >= int64(len(signals)) || d < -int64(len(signals)) || d > int64(len(signals)) {
			return nil, 0, malformed("packed column %d: signal %d out of range", i, si)
		}
		sig := signals[si]
		switch sig.GetType() {
		case pb.ValueType_VALUE_TYPE_INT, pb.ValueType_VALUE_TYPE_BOOL:
		case pb.ValueType_VALUE_TYPE_DOUBLE:
			if sig.GetScale() == 0 {
				return nil, 0, malformed("packed column %d: double signal %s has no scale", i, sig.GetName())
			}
		default:
			return nil, 0, malformed("packed column %d: %v signal %s", i, sig.GetType(), sig.GetName())
		}
		ti := p.GetTime()[i]
		if ti >= uint32(len(times)) || len(times[ti]) == 0 {
			return nil, 0, malformed("packed column %d: time column %d out of range or empty", i, ti)
		}
		sigs[i] = int(si)
		total += len(times[ti])
		deltas += len(times[ti]) - 1
	}
	if deltas != len(p.GetDelta()) {
		return nil, 0, malformed("packed columns need %d deltas and hold %d", deltas, len(p.GetDelta()))
	}
	return sigs, total, nil
}

func absoluteTimes(dod []int64, base, tick int64) ([]int64, error) {
	out := make([]int64, len(dod))
	var off, d int64
	for i, x := range dod {
		if i == 0 {
			off = x
		} else {
			d += x
			off += d
		}
		t, ok := addMul(base, off, tick)
		if !ok {
			return nil, fmt.Errorf("entry %d: time overflows", i)
		}
		out[i] = t
	}
	return out, nil
}

// addMul returns base + off*tick, reporting false on int64 overflow.
func addMul(base, off, tick int64) (int64, bool) {
	const limit = 1 << 62
	if off > limit/tick || off < -limit/tick {
		return 0, false
	}
	p := off * tick
	s := base + p
	if (p > 0 && s < base) || (p < 0 && s > base) {
		return 0, false
	}
	return s, true
}

// decodeValues checks a body column's n values against its signal's type
// and, when out (of length n) is not nil, fills it.
func decodeValues(c *pb.Column, typ pb.ValueType, n int, out []Value) error {
	set := func(i int, v Value) {
		if out != nil {
			out[i] = v
		}
	}
	want := func(got int) error {
		if got != n {
			return fmt.Errorf("%d values for %d times", got, n)
		}
		return nil
	}
	switch v := c.GetValues().(type) {
	case *pb.Column_Ints:
		if typ != pb.ValueType_VALUE_TYPE_INT {
			return fmt.Errorf("int values for a %v signal", typ)
		}
		ds := v.Ints.GetDelta()
		if err := want(len(ds)); err != nil {
			return err
		}
		var x int64
		for i, d := range ds {
			x += d
			set(i, Int(x))
		}
	case *pb.Column_Scaled:
		if typ != pb.ValueType_VALUE_TYPE_DOUBLE {
			return fmt.Errorf("scaled values for a %v signal", typ)
		}
		sv := v.Scaled
		ds := sv.GetRawDelta()
		if err := want(len(ds)); err != nil {
			return err
		}
		if sv.GetDecimals() >= uint32(len(pow10)) {
			return fmt.Errorf("decimals %d", sv.GetDecimals())
		}
		div := pow10[sv.GetDecimals()]
		var x int64
		for i, d := range ds {
			x += d
			if sv.GetDecimals() > 0 {
				set(i, Float(float64(x)/div))
			} else {
				set(i, Float(Physical(x, sv.GetScale(), sv.GetOffset())))
			}
		}
	case *pb.Column_Doubles:
		if typ != pb.ValueType_VALUE_TYPE_DOUBLE {
			return fmt.Errorf("double values for a %v signal", typ)
		}
		fs := v.Doubles.GetValues()
		if err := want(len(fs)); err != nil {
			return err
		}
		for i, f := range fs {
			set(i, Float(f))
		}
	case *pb.Column_Bools:
		if typ != pb.ValueType_VALUE_TYPE_BOOL {
			return fmt.Errorf("bool values for a %v signal", typ)
		}
		bits := v.Bools.GetBits()
		if len(bits) != (n+7)/8 {
			return fmt.Errorf("%d bytes of bits for %d times", len(bits), n)
		}
		for i := range n {
			set(i, Bool(bits[i/8]&(1<<(i%8)) != 0))
		}
	case *pb.Column_Strings:
		if typ != pb.ValueType_VALUE_TYPE_STRING {
			return fmt.Errorf("string values for a %v signal", typ)
		}
		idx, dict := v.Strings.GetIndex(), v.Strings.GetDictionary()
		if err := want(len(idx)); err != nil {
			return err
		}
		for i, k := range idx {
			if int(k) >= len(dict) {
				return fmt.Errorf("string index %d out of a dictionary of %d", k, len(dict))
			}
			set(i, String(dict[k]))
		}
	default:
		if n == 0 {
			return nil
		}
		return fmt.Errorf("no values")
	}
	return nil
}

// checkFixes validates the locations' columns and returns the fix times.
func checkFixes(loc *pb.Locations, base, tick int64) ([]int64, error) {
	ts, err := absoluteTimes(loc.GetTimeDeltaOfDelta(), base, tick)
	if err != nil {
		return nil, err
	}
	n := len(ts)
	for i, c := range fixColumns(loc) {
		if len(c) != n {
			return nil, fmt.Errorf("column %d has %d entries for %d fixes", i, len(c), n)
		}
	}
	if absent := loc.GetAbsent(); len(absent) != 0 && len(absent) != n {
		return nil, fmt.Errorf("absent has %d entries for %d fixes", len(absent), n)
	}
	return ts, nil
}

func fixColumns(loc *pb.Locations) [6][]int64 {
	return [6][]int64{loc.GetLatE7(), loc.GetLonE7(), loc.GetAltMm(), loc.GetSpeedMmS(), loc.GetHeadingCdeg(), loc.GetAccuracyMm()}
}

// fixValues builds the fixes of locations checkFixes accepted.
func fixValues(out []Fix, loc *pb.Locations, ts []int64) []Fix {
	cols := fixColumns(loc)
	absent := loc.GetAbsent()
	out = slices.Grow(out[:0], len(ts))[:len(ts)]
	var acc [6]int64
	for i := range out {
		for c := range cols {
			acc[c] += cols[c][i]
		}
		var a uint32
		if len(absent) > 0 {
			a = absent[i]
		}
		opt := func(v int64, scale float64, bit uint32) float64 {
			if a&bit != 0 {
				return math.NaN()
			}
			return float64(v) / scale
		}
		out[i] = Fix{
			Time:     ts[i],
			Lat:      float64(acc[0]) / 1e7,
			Lon:      float64(acc[1]) / 1e7,
			Alt:      opt(acc[2], 1e3, absentAlt),
			Speed:    opt(acc[3], 1e3, absentSpeed),
			Heading:  opt(acc[4], 1e2, absentHeading),
			Accuracy: opt(acc[5], 1e3, absentAccuracy),
		}
	}
	return out
}
