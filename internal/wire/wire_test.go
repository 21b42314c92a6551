package wire

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

const t0 = int64(1_700_000_000_000_000_000)

func sampleBatch() *Batch {
	b := &Batch{
		Identity:     Identity{VehicleID: "veh-0001", Epoch: 0xdeadbeefcafef00d, Seq: 42},
		BaseTime:     t0,
		AgentVersion: "0.1.0",
		Decoder:      "sim:v1",
	}
	for i := 0; i < 100; i++ {
		ts := t0 + int64(i)*10_000_000 // 100 Hz
		b.Readings = append(b.Readings,
			Reading{Signal: "speed", Unit: "km/h", Time: ts, Value: Float(float64(i) / 100)},
			Reading{Signal: "rpm", Unit: "rpm", Time: ts, Value: Int(int64(800 + i))},
			Reading{Signal: "steer", Unit: "deg", Time: ts, Value: Float(math.Sin(float64(i)))}, // no exact decimal
			// A DBC signal: factor 0.25, offset -100.
			Reading{Signal: "torque", Unit: "Nm", Time: ts, Value: Float(Physical(int64(400+i%7), 0.25, -100)), Scale: 0.25, Offset: -100, Raw: int64(400 + i%7)},
		)
		if i%10 == 0 {
			b.Readings = append(b.Readings,
				Reading{Signal: "door_open", Time: ts, Value: Bool(i%20 == 0)},
				Reading{Signal: "status", Time: ts, Value: String([]string{"available", "busy"}[i%2])},
			)
			b.Fixes = append(b.Fixes, Fix{Time: ts, Lat: 37.9838 + float64(i)*1e-5, Lon: 23.7275, Alt: 70.5, Speed: 8.25, Heading: 181.5, Accuracy: 3.2})
		}
	}
	b.Fixes = append(b.Fixes, Fix{Time: t0 + 999_000_000, Lat: -33.8688, Lon: 151.2093, Alt: math.NaN(), Speed: math.NaN(), Heading: math.NaN(), Accuracy: math.NaN()})
	return b
}

// sortedReadings orders readings so two batches can be compared whatever
// column order the encoder chose.
func sortedReadings(rs []Reading) []Reading {
	out := append([]Reading(nil), rs...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Signal != out[j].Signal {
			return out[i].Signal < out[j].Signal
		}
		return out[i].Time < out[j].Time
	})
	return out
}

func sameFloat(a, b float64) bool {
	return math.Float64bits(a) == math.Float64bits(b) || (math.IsNaN(a) && math.IsNaN(b))
}

func TestRoundTrip(t *testing.T) {
	for _, c := range []struct {
		name string
		opt  EncodeOptions
	}{{"zstd", EncodeOptions{}}, {"none", EncodeOptions{Compression: CompressionNone}}, {"1ns-tick", EncodeOptions{TickNanos: 1}}} {
		t.Run(c.name, func(t *testing.T) {
			in := sampleBatch()
			data, err := Encode(in, c.opt)
			if err != nil {
				t.Fatal(err)
			}
			out, err := Decode(data, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if out.Identity != in.Identity || out.BaseTime != in.BaseTime || out.AgentVersion != in.AgentVersion ||
				out.Decoder != in.Decoder || out.SchemaVersion != SchemaVersion {
				t.Fatalf("header: got %+v", out)
			}
			want, got := sortedReadings(in.Readings), sortedReadings(out.Readings)
			if len(got) != len(want) {
				t.Fatalf("got %d readings, want %d", len(got), len(want))
			}
			for i := range want {
				w, g := want[i], got[i]
				if g.Signal != w.Signal || g.Unit != w.Unit || g.Time != w.Time || g.Value.Kind != w.Value.Kind ||
					!sameFloat(g.Value.Float, w.Value.Float) || g.Value.Int != w.Value.Int || g.Value.Bool != w.Value.Bool || g.Value.Str != w.Value.Str {
					t.Fatalf("reading %d: got %+v, want %+v", i, g, w)
				}
			}
			if len(out.Fixes) != len(in.Fixes) {
				t.Fatalf("got %d fixes, want %d", len(out.Fixes), len(in.Fixes))
			}
			for i, w := range in.Fixes {
				g := out.Fixes[i]
				near := func(a, b, tol float64) bool { return (math.IsNaN(a) && math.IsNaN(b)) || math.Abs(a-b) <= tol }
				if g.Time != w.Time || !near(g.Lat, w.Lat, 1e-7) || !near(g.Lon, w.Lon, 1e-7) || !near(g.Alt, w.Alt, 1e-3) ||
					!near(g.Speed, w.Speed, 1e-3) || !near(g.Heading, w.Heading, 1e-2) || !near(g.Accuracy, w.Accuracy, 1e-3) {
					t.Fatalf("fix %d: got %+v, want %+v", i, g, w)
				}
			}
			id, err := DecodeIdentity(data, Limits{})
			if err != nil || id != in.Identity {
				t.Fatalf("DecodeIdentity = %v, %v", id, err)
			}
		})
	}
}

func TestSharedTimeColumns(t *testing.T) {
	data, err := Encode(sampleBatch(), EncodeOptions{Compression: CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	env, body := unpack(t, data)
	if env.GetProducer().GetSchemaVersion() != SchemaVersion {
		t.Fatalf("schema version %d", env.GetProducer().GetSchemaVersion())
	}
	times, cols, err := decodeCoded(env.GetCoded(), signalInfos(body.GetSignals(), nil), DefaultLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	// speed, rpm, steer and torque share the 100 Hz column; door_open and
	// status the 10 Hz one.
	if len(times) != 2 || len(times[0]) != 100 || len(times[1]) != 10 {
		t.Fatalf("%d time columns, want 2 of 100 and 10 entries", len(times))
	}
	var coded []string
	for _, c := range cols {
		coded = append(coded, body.GetSignals()[c.signal].GetName())
	}
	// In signal order: speed is an exact decimal, steer is not.
	if want := []string{"speed", "rpm", "torque", "door_open"}; !slices.Equal(coded, want) {
		t.Fatalf("coded columns %v, want %v", coded, want)
	}
	var inBody []string
	for _, c := range body.GetColumns() {
		inBody = append(inBody, body.GetSignals()[c.GetSignal()].GetName())
		if c.GetTime() >= uint32(len(times)) {
			t.Errorf("body column %d refers to time column %d", c.GetSignal(), c.GetTime())
		}
	}
	if want := []string{"steer", "status"}; !slices.Equal(inBody, want) {
		t.Fatalf("body columns %v, want %v", inBody, want)
	}
}

func TestTimesTruncateToTick(t *testing.T) {
	b := &Batch{Identity: Identity{VehicleID: "v1"}, BaseTime: t0,
		Readings: []Reading{{Signal: "x", Time: t0 + 123_456, Value: Int(1)}, {Signal: "x", Time: t0 - 50_001, Value: Int(2)}}}
	data, err := Encode(b, EncodeOptions{TickNanos: 100_000})
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(data, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Readings[0].Time != t0+100_000 || out.Readings[1].Time != t0-100_000 {
		t.Fatalf("times %d, %d", out.Readings[0].Time-t0, out.Readings[1].Time-t0)
	}
}

func TestDecimalRawsPicksFewestDecimals(t *testing.T) {
	for _, c := range []struct {
		in       []float64
		decimals int // -1: no exact form
	}{
		{[]float64{1, 2, -3, 1e15}, 0},
		{[]float64{0.5, 1.25, 3}, 2},
		{[]float64{0.1, 0.2, 0.30000000000000004}, -1},
		{[]float64{math.Copysign(0, -1)}, -1},
		{[]float64{math.Inf(1)}, -1},
		{[]float64{1e300}, -1},
	} {
		d, _, ok := decimalRaws(c.in)
		switch {
		case c.decimals < 0 && ok:
			t.Errorf("%v: got decimals %d, want no exact form", c.in, d)
		case c.decimals >= 0 && (!ok || d != c.decimals):
			t.Errorf("%v: got %d (%v), want decimals %d", c.in, d, ok, c.decimals)
		}
	}
}

func TestEncodeRejects(t *testing.T) {
	for name, b := range map[string]*Batch{
		"bad vehicle id":   {Identity: Identity{VehicleID: "a/b"}},
		"empty vehicle id": {},
		"value with no kind": {Identity: Identity{VehicleID: "v"},
			Readings: []Reading{{Signal: "x", Time: t0}}},
	} {
		if _, err := Encode(b, EncodeOptions{}); err == nil {
			t.Errorf("%s: Encode succeeded", name)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good, err := Encode(sampleBatch(), EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	withEnv := func(f func(*pb.Batch)) []byte {
		env := &pb.Batch{}
		if err := proto.Unmarshal(good, env); err != nil {
			t.Fatal(err)
		}
		f(env)
		out, err := Seal(env)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for _, c := range []struct {
		name string
		data []byte
		lim  Limits
		want error
	}{
		{"garbage", []byte("not a batch at all"), Limits{}, ErrMalformed},
		{"too big", good, Limits{MaxBatchBytes: 10}, ErrTooLarge},
		{"too many readings", good, Limits{MaxReadings: 10}, ErrTooLarge},
		{"body claims too much", withEnv(func(e *pb.Batch) { e.UncompressedSize = 1 << 30 }), Limits{}, ErrTooLarge},
		{"body size lies", withEnv(func(e *pb.Batch) { e.UncompressedSize-- }), Limits{}, ErrMalformed},
		{"corrupt zstd", withEnv(func(e *pb.Batch) { e.Body[len(e.Body)/2] ^= 0xff }), Limits{}, ErrMalformed},
		{"future schema", withEnv(func(e *pb.Batch) { e.Producer.SchemaVersion = 99 }), Limits{}, ErrUnsupported},
		{"unknown compression", withEnv(func(e *pb.Batch) { e.Compression = 7 }), Limits{}, ErrUnsupported},
		{"bad vehicle id", withEnv(func(e *pb.Batch) { e.VehicleId = "+" }), Limits{}, ErrMalformed},
	} {
		_, err := Decode(c.data, c.lim)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
}

func TestDecodeRejectsInconsistentBody(t *testing.T) {
	enc := func(body *pb.Body) []byte {
		raw, err := proto.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		// Schema version 1: every column in the body.
		out, err := proto.Marshal(&pb.Batch{VehicleId: "v", Producer: &pb.Producer{SchemaVersion: 1},
			UncompressedSize: uint32(len(raw)), Body: raw})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	sig := []*pb.Signal{{Name: "x", Type: pb.ValueType_VALUE_TYPE_INT}}
	times := []*pb.TimeColumn{{DeltaOfDelta: []int64{0, 1, 0}}}
	ints := func(n int) *pb.Column_Ints { return &pb.Column_Ints{Ints: &pb.IntValues{Delta: make([]int64, n)}} }
	for name, body := range map[string]*pb.Body{
		"zero tick":        {Signals: sig, Times: times},
		"signal index":     {TickNanos: 1, Signals: sig, Times: times, Columns: []*pb.Column{{Signal: 5, Values: ints(3)}}},
		"time index":       {TickNanos: 1, Signals: sig, Times: times, Columns: []*pb.Column{{Time: 5, Values: ints(3)}}},
		"short column":     {TickNanos: 1, Signals: sig, Times: times, Columns: []*pb.Column{{Values: ints(2)}}},
		"type mismatch":    {TickNanos: 1, Signals: sig, Times: times, Columns: []*pb.Column{{Values: &pb.Column_Bools{Bools: &pb.BoolValues{Bits: []byte{1}}}}}},
		"time overflow":    {TickNanos: 1 << 40, Signals: sig, Times: []*pb.TimeColumn{{DeltaOfDelta: []int64{1 << 40}}}},
		"string index":     {TickNanos: 1, Signals: []*pb.Signal{{Name: "s", Type: pb.ValueType_VALUE_TYPE_STRING}}, Times: times, Columns: []*pb.Column{{Values: &pb.Column_Strings{Strings: &pb.StringValues{Index: []uint32{0, 0, 1}, Dictionary: []string{"a"}}}}}},
		"location columns": {TickNanos: 1, Locations: &pb.Locations{TimeDeltaOfDelta: []int64{0, 1}, LatE7: []int64{1}}},
		"decimals":         {TickNanos: 1, Signals: []*pb.Signal{{Name: "d", Type: pb.ValueType_VALUE_TYPE_DOUBLE}}, Times: times, Columns: []*pb.Column{{Values: &pb.Column_Scaled{Scaled: &pb.ScaledValues{Decimals: 40, RawDelta: make([]int64, 3)}}}}},
		// The packed layout.
		"packed time lengths": {TickNanos: 1, TimeLengths: []uint32{2, 2}, TimeDeltaOfDelta: []int64{0, 1, 0}},
		"empty packed time":   {TickNanos: 1, TimeLengths: []uint32{0}},
		"packed directory":    {TickNanos: 1, Signals: sig, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0, 0}, First: []int64{1}}},
		"packed signal":       {TickNanos: 1, Signals: sig, Times: times, Packed: &pb.Packed{SignalDelta: []int64{1}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{0, 0}}},
		"packed negative sig": {TickNanos: 1, Signals: sig, Times: times, Packed: &pb.Packed{SignalDelta: []int64{-1}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{0, 0}}},
		"packed time":         {TickNanos: 1, Signals: sig, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{1}, First: []int64{1}, Delta: []int64{0, 0}}},
		"packed empty time":   {TickNanos: 1, Signals: sig, Times: []*pb.TimeColumn{{}}, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0}, First: []int64{1}}},
		"packed deltas":       {TickNanos: 1, Signals: sig, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{0}}},
		"packed unscaled":     {TickNanos: 1, Signals: []*pb.Signal{{Name: "d", Type: pb.ValueType_VALUE_TYPE_DOUBLE}}, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{0, 0}}},
		"packed string":       {TickNanos: 1, Signals: []*pb.Signal{{Name: "s", Type: pb.ValueType_VALUE_TYPE_STRING}}, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{0, 0}}},
		"packed bool of 2":    {TickNanos: 1, Signals: []*pb.Signal{{Name: "b", Type: pb.ValueType_VALUE_TYPE_BOOL}}, Times: times, Packed: &pb.Packed{SignalDelta: []int64{0}, Time: []uint32{0}, First: []int64{1}, Delta: []int64{1, 0}}},
	} {
		if _, err := Decode(enc(body), Limits{}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestValidVehicleID(t *testing.T) {
	for id, want := range map[string]bool{
		"veh-0001": true, "ABC_12.3:x": true, "": false, "-lead": false, "a/b": false, "a+b": false, "a#": false,
		"x234567890123456789012345678901234567890123456789012345678901234":  true,
		"x2345678901234567890123456789012345678901234567890123456789012345": false,
		"_x": false, ".x": false, ":x": false, "9": true, "a b": false, "a\x00": false, "vé": false, "a\n": false,
	} {
		if got := ValidVehicleID(id); got != want {
			t.Errorf("ValidVehicleID(%q) = %v, want %v", id, got, want)
		}
	}
}

// FuzzValidVehicleID holds the hand-written check to the rule as a
// regular expression.
func FuzzValidVehicleID(f *testing.F) {
	rule := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$`)
	for _, s := range []string{"veh-0001", "-lead", "", "a/b", "ABC_12.3:x", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if got, want := ValidVehicleID(id), rule.MatchString(id); got != want {
			t.Fatalf("ValidVehicleID(%q) = %v, the rule says %v", id, got, want)
		}
	})
}

// TestEncodingIsCompact guards the property the layout exists for: regular
// signals cost far less than a naive message per reading.
func TestEncodingIsCompact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	b := &Batch{Identity: Identity{VehicleID: "v1"}, BaseTime: t0}
	speed := 50.0
	for i := 0; i < 1000; i++ {
		ts := t0 + int64(i)*10_000_000 + int64(rng.IntN(3))*100_000
		speed += float64(rng.IntN(3)-1) * 0.01
		b.Readings = append(b.Readings,
			Reading{Signal: "speed", Time: ts, Value: Float(math.Round(speed*100) / 100)},
			Reading{Signal: "gear", Time: ts, Value: Int(3)},
			Reading{Signal: "brake", Time: ts, Value: Bool(false)})
	}
	data, err := Encode(b, EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	perReading := float64(len(data)) / float64(len(b.Readings))
	if perReading > 1.0 {
		t.Fatalf("%.2f bytes per reading for regular 100 Hz signals, want under 1", perReading)
	}
}

func FuzzDecode(f *testing.F) {
	good, err := Encode(sampleBatch(), EncodeOptions{})
	if err != nil {
		f.Fatal(err)
	}
	plain, err := Encode(sampleBatch(), EncodeOptions{Compression: CompressionNone})
	if err != nil {
		f.Fatal(err)
	}
	cat, err := NewCatalog([]SignalSpec{{Name: "speed", Unit: "km/h", Kind: KindDouble}, {Name: "rpm", Unit: "rpm", Kind: KindInt},
		{Name: "steer", Unit: "deg", Kind: KindDouble, Scale: 0.1, Offset: -10}, {Name: "door_open", Kind: KindBool}, {Name: "status", Kind: KindString},
		{Name: "torque", Unit: "Nm", Kind: KindDouble, Scale: 0.25, Offset: -100}})
	if err != nil {
		f.Fatal(err)
	}
	catalogs := Catalogs{}
	catalogs.Add(cat)
	withCat, err := Encode(sampleBatch(), EncodeOptions{Catalog: cat, Compression: CompressionNone})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(plain)
	f.Add(withCat)
	f.Add([]byte{})
	seeds, _ := filepath.Glob(filepath.Join("testdata", "seeds", "*.bin"))
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// A mutation almost always breaks the checksum; resealing the
		// batch lets the fuzzer reach everything behind it too.
		if n := len(data); n > checksumLen && data[n-checksumLen] == checksumTag {
			data = AppendChecksum(bytes.Clone(data[:n-checksumLen]))
		}
		lim := Limits{MaxBodyBytes: 1 << 20, MaxReadings: 100_000, MaxReadingsPerByte: 1000, MaxBodyRatio: 64, Catalogs: catalogs}
		b, err := Decode(data, lim)
		// Check, the bridge's way, agrees with Decode on every input.
		sum, cerr := Check(data, lim)
		if (err == nil) != (cerr == nil) || (err != nil && err.Error() != cerr.Error()) {
			t.Fatalf("Decode says %v, Check says %v", err, cerr)
		}
		if err != nil {
			return
		}
		if sum.Identity != b.Identity || sum.Readings != len(b.Readings) || sum.Fixes != len(b.Fixes) || sum.Checked != b.Checked {
			t.Fatalf("Check summary %+v, Decode %v: %d readings, %d fixes", sum, b.Identity, len(b.Readings), len(b.Fixes))
		}
		for _, r := range b.Readings {
			if r.Time < sum.MinTime || r.Time > sum.MaxTime {
				t.Fatalf("reading time %d outside [%d, %d]", r.Time, sum.MinTime, sum.MaxTime)
			}
		}
		// Whatever decodes must encode again and decode to the same count.
		again, err := Encode(b, EncodeOptions{TickNanos: 1})
		if err != nil {
			return // e.g. a valid batch whose signal has no values kind
		}
		b2, err := Decode(again, Limits{})
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if len(b2.Readings) != len(b.Readings) || len(b2.Fixes) != len(b.Fixes) {
			t.Fatalf("re-encode changed counts: %d/%d readings, %d/%d fixes", len(b2.Readings), len(b.Readings), len(b2.Fixes), len(b.Fixes))
		}
	})
}
