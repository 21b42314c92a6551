package wire

import (
	"errors"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	ecan "go.einride.tech/can"
	"google.golang.org/protobuf/proto"

	"github.com/fleetpipe/fleetpipe/internal/entropy"
	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// TestNearestMatchesBinarySearch checks the hinted search against the
// plain definition on sorted columns, from every hint.
func TestNearestMatchesBinarySearch(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		n := 1 + rng.IntN(40)
		ts := make([]int64, n)
		for i := range ts {
			ts[i] = rng.Int64N(100)
		}
		sort.Slice(ts, func(i, j int) bool { return ts[i] < ts[j] })
		for x := int64(-5); x < 106; x++ {
			i := sort.Search(n, func(i int) bool { return ts[i] >= x })
			want := i
			switch {
			case i == n:
				want = n - 1
			case i > 0 && x-ts[i-1] <= ts[i]-x:
				want = i - 1
			}
			for hint := -1; hint <= n; hint++ {
				if got := nearest(ts, x, hint); got != want {
					t.Fatalf("nearest(%v, %d, hint %d) = %d, want %d", ts, x, hint, got, want)
				}
			}
		}
	}
}

// canMessage is a synthetic 8-byte CAN message with a counter and a
// checksum, as a DBC describes one, for the checksum and wrap tests.
type canMessage struct {
	cat     *Catalog
	signals []SignalSpec
}

// testMessage is three data signals (16-bit big-endian speed, 12-bit
// little-endian signed torque, a flag) and a 2-bit counter in bytes 0-3,
// and a checksum field of the given width and place in byte 7.
func testMessage(t *testing.T, csStart, csBits uint8, csBigEndian bool) canMessage {
	t.Helper()
	m := CANMessage{ID: 0x1D0, Length: 8}
	f := func(start uint8, be bool) *CANField { return &CANField{Message: m, StartBit: start, BigEndian: be} }
	specs := []SignalSpec{
		{Name: "MSG.SPEED", Unit: "km/h", Kind: KindDouble, Scale: 0.01, RawBits: 16, CAN: f(7, true)},
		{Name: "MSG.TORQUE", Unit: "Nm", Kind: KindInt, RawBits: 12, RawSigned: true, CAN: f(16, false)},
		{Name: "MSG.FLAG", Kind: KindInt, RawBits: 1, CAN: f(28, false)},
		{Name: "MSG.COUNTER", Kind: KindInt, RawBits: 2, CAN: f(29, false)},
		{Name: "MSG.CHECKSUM", Kind: KindInt, RawBits: csBits, CAN: f(csStart, csBigEndian)},
	}
	cat, err := NewCatalog(specs)
	if err != nil {
		t.Fatal(err)
	}
	return canMessage{cat: cat, signals: specs}
}

// frames returns n readings of each signal of msg, 10 ms apart with some
// jitter, the checksum computed by sum from the frame's other bytes.
func (msg canMessage) frames(n int, seed uint64, sum func(d *ecan.Data) uint64) []Reading {
	rng := rand.New(rand.NewPCG(seed, 7))
	var out []Reading
	speed, torque := int64(3000), int64(-40)
	for i := range n {
		ts := t0 + int64(i)*10_000_000 + rng.Int64N(5)*100_000
		speed += rng.Int64N(21) - 10
		torque += rng.Int64N(7) - 3
		raws := []int64{speed, torque, int64(rng.IntN(50) / 49), int64(i % 4), 0}
		var d ecan.Data
		for k, s := range msg.signals[:4] {
			frameField{start: s.CAN.StartBit, length: s.RawBits, bigEndian: s.CAN.BigEndian}.place(&d, raws[k])
		}
		cs := msg.signals[4]
		raws[4] = int64(sum(&d) & (1<<cs.RawBits - 1))
		for k, s := range msg.signals {
			r := Reading{Signal: s.Name, Unit: s.Unit, Time: ts, Value: Int(raws[k])}
			if s.Kind == KindDouble {
				r.Value = Float(Physical(raws[k], s.Scale, s.Offset))
				r.Scale, r.Offset, r.Raw = s.Scale, s.Offset, raws[k]
			}
			out = append(out, r)
		}
	}
	return out
}

// codedColumns encodes readings with cat and returns the coded section's
// columns by signal name, checking on the way that the batch decodes to
// exactly its readings.
func codedColumns(t *testing.T, rs []Reading, cat *Catalog) (map[string]decodedCol, int) {
	t.Helper()
	data := roundTrip(t, rs, rs[0].Time, cat, cat)
	env := &pb.Batch{} // the body may be compressed; the coded section never is
	if err := proto.Unmarshal(data, env); err != nil {
		t.Fatal(err)
	}
	_, cols, err := decodeCoded(env.GetCoded(), cat.info, DefaultLimits, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]decodedCol{}
	for _, c := range cols {
		byName[cat.signals[c.signal].GetName()] = c
	}
	return byName, len(data)
}

// unpack reads an uncompressed batch's envelope and body.
func unpack(t *testing.T, data []byte) (*pb.Batch, *pb.Body) {
	t.Helper()
	env := &pb.Batch{}
	if err := proto.Unmarshal(data, env); err != nil {
		t.Fatal(err)
	}
	body := &pb.Body{}
	if err := proto.Unmarshal(env.GetBody(), body); err != nil {
		t.Fatalf("body: %v", err)
	}
	return env, body
}

// roundTrip encodes readings (with the catalog use, if not nil), checks
// that they decode (with the catalog known) to exactly themselves, and
// returns the encoding.
func roundTrip(t *testing.T, rs []Reading, base int64, use, known *Catalog) []byte {
	t.Helper()
	in := &Batch{Identity: Identity{VehicleID: "v"}, BaseTime: base, Readings: rs}
	data, err := Encode(in, EncodeOptions{Catalog: use})
	if err != nil {
		t.Fatal(err)
	}
	reg := Catalogs{}
	reg.Add(known)
	out, err := Decode(data, Limits{Catalogs: reg})
	if err != nil {
		t.Fatal(err)
	}
	sameReadings(t, out.Readings, rs)
	return data
}

// sameReadings fails unless got holds exactly want (times truncated to
// the default tick), whatever the order.
func sameReadings(t *testing.T, got, want []Reading) {
	t.Helper()
	w := make([]Reading, len(want))
	for i, r := range want {
		r.Time = t0 + floorDiv(r.Time-t0, DefaultTickNanos)*DefaultTickNanos
		w[i] = r
	}
	g, w := sortedReadings(got), sortedReadings(w)
	if len(g) != len(w) {
		t.Fatalf("%d readings back, want %d", len(g), len(w))
	}
	for i := range w {
		if g[i].Signal != w[i].Signal || g[i].Time != w[i].Time || g[i].Value.Kind != w[i].Value.Kind || g[i].Value.Int != w[i].Value.Int ||
			g[i].Value.Bool != w[i].Value.Bool || g[i].Value.Str != w[i].Value.Str || math.Float64bits(g[i].Value.Float) != math.Float64bits(w[i].Value.Float) {
			t.Fatalf("reading %d: got %+v, want %+v", i, g[i], w[i])
		}
	}
}

// hondaSum is Honda's checksum: 8 minus the sum of the frame's nibbles and
// the address's, the checksum's own nibble excluded.
func hondaSum(d *ecan.Data) uint64 {
	s := uint64(0x1 + 0xD + 0x0)
	for _, b := range d {
		s += uint64(b>>4) + uint64(b&0xF)
	}
	return 8 - s
}

// crc8Sum is a CRC-8 over the frame's first 7 bytes with the given table,
// initial value and final XOR 0xFF (as SAE J1850 and AUTOSAR specify them).
func crc8Sum(table *[256]byte) func(d *ecan.Data) uint64 {
	return func(d *ecan.Data) uint64 {
		c := byte(0xFF)
		for _, b := range d[:7] {
			c = table[c^b]
		}
		return uint64(c ^ 0xFF)
	}
}

func TestChecksumIsPredictedFromTheFrame(t *testing.T) {
	families := []struct {
		name    string
		start   uint8
		bits    uint8
		big     bool
		sum     func(d *ecan.Data) uint64
		derived checksumFamily
	}{
		{"honda nibble sum", 59, 4, true, hondaSum, sumNibblesNeg},
		{"nibble sum", 59, 4, true, func(d *ecan.Data) uint64 { return hondaSum(d)*15 + 3 }, sumNibbles},
		{"toyota byte sum", 63, 8, true, func(d *ecan.Data) uint64 {
			s := uint64(0x1D0&0xFF + 0x1D0>>8 + 8)
			for _, b := range d[:7] {
				s += uint64(b)
			}
			return s
		}, sumBytes},
		{"negated byte sum", 56, 8, false, func(d *ecan.Data) uint64 {
			var s uint64
			for _, b := range d {
				s += uint64(b)
			}
			return 0x100 - s
		}, sumBytesNeg},
		{"xor", 56, 8, false, func(d *ecan.Data) uint64 {
			x := byte(0x5A)
			for _, b := range d {
				x ^= b
			}
			return uint64(x)
		}, xorBytes},
		{"crc8 0x1d", 56, 8, false, crc8Sum(&crcSAE), crc8SAE},
		{"crc8 0x2f", 56, 8, false, crc8Sum(&crcAUTOSAR), crc8AUTOSAR},
	}
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			msg := testMessage(t, f.start, f.bits, f.big)
			rs := msg.frames(500, 1, f.sum)
			cols, size := codedColumns(t, rs, msg.cat)
			cs := cols["MSG.CHECKSUM"]
			if !cs.derived() {
				t.Fatalf("the checksum was coded, not predicted from the frame")
			}
			if cs.family != f.derived {
				t.Errorf("predicted with family %d, want %d", cs.family, f.derived)
			}
			// Corrupt one frame's checksum: still lossless, and not much
			// larger.
			for i := range rs {
				if rs[i].Signal == "MSG.CHECKSUM" && rs[i].Time >= t0+2_000_000_000 {
					rs[i].Value = Int((rs[i].Value.Int + 1) & (1<<f.bits - 1))
					break
				}
			}
			cols, corrupt := codedColumns(t, rs, msg.cat)
			if !cols["MSG.CHECKSUM"].derived() {
				t.Errorf("one bad checksum in 500 stopped the prediction")
			}
			if corrupt > size+16 {
				t.Errorf("one bad checksum costs %d bytes", corrupt-size)
			}
		})
	}
}

// TestChecksumPredictionNeedsTheWholeFrame: a frame whose bits the DBC does
// not describe (here: a signal not collected) cannot predict its checksum;
// the column is coded like any other and nothing is lost.
func TestChecksumPredictionNeedsTheWholeFrame(t *testing.T) {
	msg := testMessage(t, 59, 4, true)
	rs := msg.frames(300, 2, hondaSum)
	var kept []Reading
	for _, r := range rs {
		if r.Signal != "MSG.SPEED" {
			kept = append(kept, r)
		}
	}
	cols, _ := codedColumns(t, kept, msg.cat)
	if cols["MSG.CHECKSUM"].derived() {
		t.Fatal("predicted a checksum without the frame's speed bits")
	}
}

// TestCounterWraps: a 2-bit rolling counter, taken modulo 4, costs almost
// nothing (the whole batch, envelope included, stays under 100 bytes);
// without the catalog's bit width it costs its wraps.
func TestCounterWraps(t *testing.T) {
	msg := testMessage(t, 59, 4, true)
	var rs []Reading
	for i := range 4000 {
		rs = append(rs, Reading{Signal: "MSG.COUNTER", Time: t0 + int64(i)*10_000_000, Value: Int(int64(i % 4))})
	}
	_, withBits := codedColumns(t, rs, msg.cat)
	plain, err := NewCatalog([]SignalSpec{{Name: "MSG.COUNTER", Kind: KindInt}})
	if err != nil {
		t.Fatal(err)
	}
	_, without := codedColumns(t, rs, plain)
	if withBits > 100 || withBits*5 > without {
		t.Errorf("4,000 counter values: %d bytes with the bit width, %d without", withBits, without)
	}
}

// TestSignalFollowsAnother: a signal that repeats another of its frame
// (two wheel speeds, a copied speed) is coded as the other's change.
func TestSignalFollowsAnother(t *testing.T) {
	cat, err := NewCatalog([]SignalSpec{{Name: "a", Kind: KindInt}, {Name: "b", Kind: KindInt}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var rs []Reading
	var a int64
	for i := range 2000 {
		ts := t0 + int64(i)*10_000_000
		a += rng.Int64N(200) - 100
		rs = append(rs, Reading{Signal: "a", Time: ts, Value: Int(a)}, Reading{Signal: "b", Time: ts, Value: Int(a + 7)})
	}
	_, both := codedColumns(t, rs, cat)
	var onlyA []Reading
	for _, r := range rs {
		if r.Signal == "a" {
			onlyA = append(onlyA, r)
		}
	}
	_, one := codedColumns(t, onlyA, cat)
	if both > one+40 {
		t.Errorf("a copy of a signal costs %d bytes (the signal alone %d)", both-one, one)
	}
}

// TestBurstTimesFollowEachOther: two frames sent in one burst every 10 ms
// with the burst's jitter are cheaper together than twice one of them.
func TestBurstTimesFollowEachOther(t *testing.T) {
	cat, err := NewCatalog([]SignalSpec{{Name: "a", Kind: KindInt}, {Name: "b", Kind: KindInt}})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(8, 9))
	var both, onlyA []Reading
	for i := range 2000 {
		ts := t0 + int64(i)*10_000_000 + rng.Int64N(40)*100_000 // 4 ms of burst jitter
		a := Reading{Signal: "a", Time: ts, Value: Int(1)}
		both = append(both, a, Reading{Signal: "b", Time: ts + 300_000, Value: Int(2)})
		onlyA = append(onlyA, a)
	}
	_, two := codedColumns(t, both, cat)
	_, one := codedColumns(t, onlyA, cat)
	if two > one+60 {
		t.Errorf("a second frame of the burst costs %d bytes of times (the first %d)", two-one, one)
	}
}

// TestCodedRoundTripRandom round-trips batches of every kind of column,
// times out of order, repeated and before the base time, values at the
// limits of int64 and of their bit widths, with and without a catalog.
func TestCodedRoundTripRandom(t *testing.T) {
	msg := testMessage(t, 59, 4, true)
	specs := append([]SignalSpec{
		{Name: "i", Kind: KindInt}, {Name: "b", Kind: KindBool}, {Name: "d", Kind: KindDouble},
		{Name: "s", Kind: KindString}, {Name: "w", Kind: KindInt, RawBits: 3, RawSigned: true},
	}, msg.signals...)
	cat, err := NewCatalog(specs)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(10, 11))
	for round := range 300 {
		var rs []Reading
		n := 1 + rng.IntN(200)
		for range n {
			ts := t0 + rng.Int64N(2_000_000_000) - 500_000_000
			switch rng.IntN(6) {
			case 0:
				v := []int64{math.MinInt64, math.MaxInt64, 0, -1, rng.Int64()}[rng.IntN(5)]
				rs = append(rs, Reading{Signal: "i", Time: ts, Value: Int(v)})
			case 1:
				rs = append(rs, Reading{Signal: "b", Time: ts, Value: Bool(rng.IntN(2) == 1)})
			case 2:
				v := []float64{0.125, -3.5, math.Copysign(0, -1), math.NaN(), 1e300, float64(rng.IntN(1000)) / 100}[rng.IntN(6)]
				rs = append(rs, Reading{Signal: "d", Time: ts, Value: Float(v)})
			case 3:
				rs = append(rs, Reading{Signal: "s", Time: ts, Value: String([]string{"a", "", "busy"}[rng.IntN(3)])})
			case 4:
				rs = append(rs, Reading{Signal: "w", Time: ts, Value: Int(rng.Int64N(8) - 4)})
			default:
				rs = append(rs, msg.frames(1+rng.IntN(5), uint64(round), hondaSum)...)
			}
		}
		roundTrip(t, rs, t0, cat, cat)
		roundTrip(t, rs, t0, nil, cat)
	}
}

// craft builds a coded section by hand, for the decoder's checks.
func craft(f func(e *entropy.Encoder, m *dirModels)) []byte {
	var m dirModels
	m.init()
	e := entropy.NewEncoder(nil)
	f(e, &m)
	return e.Finish()
}

func TestDecodeRejectsBadCodedSections(t *testing.T) {
	msg := testMessage(t, 59, 4, true)
	infos := msg.cat.info
	oneTime := func(e *entropy.Encoder, m *dirModels) {
		e.Int(&m.count, 1)
		e.Int(&m.length, 2) // 3 entries
		e.Int(&m.period, 10)
		e.Int(&m.ref, 0)
		var col entropy.Int
		col.Init()
		for range 3 {
			e.Int(&col, 10)
		}
	}
	column := func(e *entropy.Encoder, m *dirModels, sig, tm, pred int64) {
		e.Int(&m.signal, sig)
		e.Int(&m.time, tm)
		if sig < int64(len(infos)) && infos[sig].kind == KindDouble {
			e.Int(&m.decimals, 0)
		}
		e.Int(&m.pred, pred)
	}
	cases := map[string]struct {
		data []byte
		want error
	}{
		"truncated":             {craft(func(e *entropy.Encoder, m *dirModels) { oneTime(e, m) })[:2], ErrMalformed},
		"negative time columns": {craft(func(e *entropy.Encoder, m *dirModels) { e.Int(&m.count, -1) }), ErrMalformed},
		"too many time columns": {craft(func(e *entropy.Encoder, m *dirModels) { e.Int(&m.count, 1<<40) }), ErrTooLarge},
		"too long a time column": {craft(func(e *entropy.Encoder, m *dirModels) {
			e.Int(&m.count, 1)
			e.Int(&m.length, 1<<40)
		}), ErrTooLarge},
		"time reference ahead": {craft(func(e *entropy.Encoder, m *dirModels) {
			e.Int(&m.count, 1)
			e.Int(&m.length, 0)
			e.Int(&m.period, 0)
			e.Int(&m.ref, 1)
		}), ErrMalformed},
		"signal out of range": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			column(e, m, 99, 0, predDelta)
		}), ErrMalformed},
		"time column out of range": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			column(e, m, 1, 5, predDelta)
		}), ErrMalformed},
		"unknown predictor": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			column(e, m, 1, 0, int64(maxPred)+1)
		}), ErrMalformed},
		"reference to no column": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			column(e, m, 1, 0, predXref)
			e.Int(&m.ref, 1)
		}), ErrMalformed},
		"checksum of a signed signal": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			column(e, m, 1, 0, predChecksum) // MSG.TORQUE: signed 12 bits
		}), ErrMalformed},
		"too many decimals": {craft(func(e *entropy.Encoder, m *dirModels) {
			oneTime(e, m)
			e.Int(&m.count, 1)
			e.Int(&m.signal, 0) // MSG.SPEED, a double
			e.Int(&m.time, 0)
			e.Int(&m.decimals, 40)
		}), ErrMalformed},
	}
	for name, c := range cases {
		if _, _, err := decodeCoded(c.data, infos, DefaultLimits, nil); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", name, err, c.want)
		}
	}
	// Garbage never panics, and whatever it decodes to stays in bounds.
	rng := rand.New(rand.NewPCG(12, 13))
	for range 2000 {
		junk := make([]byte, rng.IntN(64))
		for i := range junk {
			junk[i] = byte(rng.UintN(256))
		}
		times, cols, err := decodeCoded(junk, infos, Limits{MaxReadings: 10_000}, nil)
		if err != nil {
			continue
		}
		for _, c := range cols {
			if int(c.time) >= len(times) || len(c.vals) != len(times[c.time]) {
				t.Fatalf("a column of %d values on a time column of %d", len(c.vals), len(times[c.time]))
			}
		}
	}
}

func TestDecodeRejectsMixedLayouts(t *testing.T) {
	good, err := Encode(sampleBatch(), EncodeOptions{Compression: CompressionNone})
	if err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(env *pb.Batch, body *pb.Body)) []byte {
		env, body := unpack(t, good)
		f(env, body)
		env.Body, _ = proto.Marshal(body)
		env.UncompressedSize = uint32(len(env.Body))
		out, err := Seal(env)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	for name, data := range map[string][]byte{
		"version 1 with a coded section": mutate(func(env *pb.Batch, _ *pb.Body) { env.Producer.SchemaVersion = 1 }),
		"version 2 with packed columns":  mutate(func(_ *pb.Batch, b *pb.Body) { b.Packed = &pb.Packed{} }),
		"version 2 with body times":      mutate(func(_ *pb.Batch, b *pb.Body) { b.Times = []*pb.TimeColumn{{DeltaOfDelta: []int64{1}}} }),
		"coded section cut short":        mutate(func(env *pb.Batch, _ *pb.Body) { env.Coded = env.Coded[:len(env.Coded)/2] }),
	} {
		if _, err := Decode(data, Limits{}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestCatalogRejectsBadCANFields(t *testing.T) {
	m := CANMessage{ID: 1, Length: 2}
	for name, spec := range map[string]SignalSpec{
		"past the frame (little endian)": {Name: "x", Kind: KindInt, RawBits: 8, CAN: &CANField{Message: m, StartBit: 12}},
		"past the frame (big endian)":    {Name: "x", Kind: KindInt, RawBits: 13, CAN: &CANField{Message: m, StartBit: 3, BigEndian: true}},
		"no width":                       {Name: "x", Kind: KindInt, CAN: &CANField{Message: m}},
		"a CAN FD frame":                 {Name: "x", Kind: KindInt, RawBits: 8, CAN: &CANField{Message: CANMessage{Length: 12}}},
		"65 bits":                        {Name: "x", Kind: KindInt, RawBits: 65},
	} {
		if _, err := NewCatalog([]SignalSpec{spec}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A catalog that arrives with such a field is malformed.
	bad := &pb.Catalog{Signals: []*pb.Signal{{Name: "x", Type: pb.ValueType_VALUE_TYPE_INT, RawBits: 8, Can: &pb.CanField{Message: 3}}}}
	data, _ := proto.Marshal(bad)
	if _, err := ParseCatalog(data, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("CAN message out of range: got %v, want ErrMalformed", err)
	}
}
