package wire

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
)

// catalogSeeds are catalogs as vehicles register them: names only, DBC
// signals with scales, raw ranges and CAN fields (a checksum among them).
func catalogSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	msg := CANMessage{ID: 0x1D0, Length: 8}
	specs := [][]SignalSpec{
		{{Name: "speed", Unit: "km/h", Kind: KindDouble}, {Name: "door", Kind: KindBool}, {Name: "status", Kind: KindString}},
		{
			{Name: "WHEEL_SPEEDS.WHEEL_SPEED_FL", Unit: "kph", Kind: KindDouble, Scale: 0.01, RawBits: 15, CAN: &CANField{Message: msg, StartBit: 7, BigEndian: true}},
			{Name: "WHEEL_SPEEDS.COUNTER", Kind: KindInt, RawBits: 2, CAN: &CANField{Message: msg, StartBit: 61, BigEndian: true}},
			{Name: "WHEEL_SPEEDS.CHECKSUM", Kind: KindInt, RawBits: 4, CAN: &CANField{Message: msg, StartBit: 59, BigEndian: true}},
			{Name: "STEER.ANGLE", Unit: "deg", Kind: KindDouble, Scale: -0.1, Offset: 3, RawBits: 16, RawSigned: true},
		},
	}
	var out [][]byte
	for _, s := range specs {
		c, err := NewCatalog(s)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, c.Bytes())
	}
	return out
}

// FuzzParseCatalog feeds arbitrary bytes to the catalog parser, which
// reads what vehicles publish: it never panics, and a catalog it accepts
// has the id of its bytes, parses again the same, and carries batches
// that refer to it: every signal's readings come back from the wire.
func FuzzParseCatalog(f *testing.F) {
	for _, s := range catalogSeeds(f) {
		f.Add(s)
	}
	f.Add([]byte{})
	seeds, _ := filepath.Glob(filepath.Join("testdata", "catalogs", "*.bin"))
	for _, p := range seeds {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseCatalog(data, Limits{MaxBodyBytes: 1 << 20})
		if err != nil {
			return
		}
		sum := sha256.Sum256(data)
		if !bytes.Equal(c.ID(), sum[:CatalogIDLen]) {
			t.Fatalf("id %x is not the SHA-256 of the catalog's bytes", c.ID())
		}
		again, err := ParseCatalog(c.Bytes(), Limits{})
		if err != nil || !bytes.Equal(again.ID(), c.ID()) || again.Len() != c.Len() {
			t.Fatalf("an accepted catalog does not parse again the same: %v", err)
		}
		// A batch of every signal (up to 64), three readings each, with
		// values every raw range holds, refers to the catalog.
		b := &Batch{Identity: Identity{VehicleID: "fuzz"}, BaseTime: 1e18}
		for i, s := range c.signals[:min(len(c.signals), 64)] {
			k, _ := kindOf(s.GetType())
			if c.index[signalKey{s.GetName(), s.GetUnit(), k}] != uint32(i) {
				continue // a duplicate: batches name the first
			}
			v := Value{Kind: k}
			switch k {
			case KindDouble:
				v.Float = s.GetOffset() // raw 0
			case KindString:
				v.Str = "x"
			}
			for j := range 3 {
				b.Readings = append(b.Readings, Reading{Signal: s.GetName(), Unit: s.GetUnit(), Time: b.BaseTime + int64(j)*1e7,
					Value: v, Scale: s.GetScale(), Offset: s.GetOffset()})
			}
		}
		if len(b.Readings) == 0 {
			return
		}
		enc, err := Encode(b, EncodeOptions{Catalog: c, Compression: CompressionNone})
		if err != nil {
			return // a value the encoder cannot carry under this catalog (a NaN offset, say)
		}
		got, err := Decode(enc, Limits{Catalogs: Catalogs{string(c.ID()): c}})
		if err != nil {
			t.Fatalf("a batch referring to an accepted catalog does not decode: %v", err)
		}
		if len(got.Readings) != len(b.Readings) {
			t.Fatalf("%d readings back of %d", len(got.Readings), len(b.Readings))
		}
	})
}
