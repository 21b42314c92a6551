package wire

import (
	"bytes"
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

func sampleCatalog(t testing.TB) *Catalog {
	t.Helper()
	c, err := NewCatalog([]SignalSpec{
		{Name: "speed", Unit: "km/h", Kind: KindDouble}, {Name: "rpm", Unit: "rpm", Kind: KindInt},
		{Name: "steer", Unit: "deg", Kind: KindDouble, Scale: 0.1, Offset: -10},
		{Name: "door_open", Kind: KindBool}, {Name: "status", Kind: KindString}, {Name: "unused", Kind: KindInt},
		{Name: "torque", Unit: "Nm", Kind: KindDouble, Scale: 0.25, Offset: -100},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCatalogRoundTrip(t *testing.T) {
	cat := sampleCatalog(t)
	in := sampleBatch()
	withCat, err := Encode(in, EncodeOptions{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	inline, err := Encode(in, EncodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(withCat) >= len(inline) {
		t.Errorf("with the catalog %d bytes, without %d: the name table should be gone", len(withCat), len(inline))
	}
	if _, err := Decode(withCat, Limits{}); !errors.Is(err, ErrUnknownCatalog) {
		t.Fatalf("decode without the catalog: %v, want ErrUnknownCatalog", err)
	}
	reg := Catalogs{}
	parsed, err := ParseCatalog(cat.Bytes(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(parsed.ID(), cat.ID()) || len(cat.ID()) != CatalogIDLen {
		t.Fatalf("parsed catalog id %x, built %x", parsed.ID(), cat.ID())
	}
	reg.Add(parsed)
	out, err := Decode(withCat, Limits{Catalogs: reg})
	if err != nil {
		t.Fatal(err)
	}
	want, got := sortedReadings(in.Readings), sortedReadings(out.Readings)
	if len(got) != len(want) {
		t.Fatalf("%d readings back, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Signal != want[i].Signal || got[i].Unit != want[i].Unit || got[i].Time != want[i].Time || got[i].Value != want[i].Value {
			t.Fatalf("reading %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A reading whose scale differs from its catalog entry's still travels
// exactly: its column carries its own scale.
func TestCatalogScaleMismatchIsLossless(t *testing.T) {
	cat, err := NewCatalog([]SignalSpec{{Name: "torque", Unit: "Nm", Kind: KindDouble, Scale: 0.5, Offset: -100}})
	if err != nil {
		t.Fatal(err)
	}
	in := &Batch{Identity: Identity{VehicleID: "v1", Epoch: 1, Seq: 1}, BaseTime: t0}
	for i := int64(0); i < 10; i++ {
		in.Readings = append(in.Readings, Reading{Signal: "torque", Unit: "Nm", Time: t0 + i*1e6,
			Value: Float(Physical(400+i, 0.25, -100)), Scale: 0.25, Offset: -100, Raw: 400 + i})
	}
	data, err := Encode(in, EncodeOptions{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	reg := Catalogs{}
	reg.Add(cat)
	out, err := Decode(data, Limits{Catalogs: reg})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range out.Readings {
		if r.Value != in.Readings[i].Value || r.Time != in.Readings[i].Time {
			t.Fatalf("reading %d: got %+v, want %+v", i, r, in.Readings[i])
		}
	}
}

func TestCatalogFallsBackToInlineNames(t *testing.T) {
	cat, err := NewCatalog([]SignalSpec{{Name: "speed", Unit: "km/h", Kind: KindDouble}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := Encode(sampleBatch(), EncodeOptions{Catalog: cat}) // rpm etc. are not in it
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode(data, Limits{}); err != nil {
		t.Fatalf("a batch with signals outside the catalog must carry its own names: %v", err)
	}
}

func TestCatalogBodyChecks(t *testing.T) {
	cat := sampleCatalog(t)
	reg := Catalogs{}
	reg.Add(cat)
	enc := func(body *pb.Body) []byte {
		raw, _ := proto.Marshal(body)
		out, _ := proto.Marshal(&pb.Batch{VehicleId: "v", Producer: &pb.Producer{SchemaVersion: SchemaVersion}, UncompressedSize: uint32(len(raw)), Body: raw})
		return out
	}
	times := []*pb.TimeColumn{{DeltaOfDelta: []int64{0, 1}}}
	ints := &pb.Column_Ints{Ints: &pb.IntValues{Delta: []int64{1, 1}}}
	for name, body := range map[string]*pb.Body{
		"both table and id":    {TickNanos: 1, CatalogId: cat.ID(), Signals: []*pb.Signal{{Name: "x", Type: pb.ValueType_VALUE_TYPE_INT}}, Times: times},
		"index past catalog":   {TickNanos: 1, CatalogId: cat.ID(), Times: times, Columns: []*pb.Column{{Signal: 99, Values: ints}}},
		"type against catalog": {TickNanos: 1, CatalogId: cat.ID(), Times: times, Columns: []*pb.Column{{Signal: 0, Values: ints}}},
	} {
		if _, err := Decode(enc(body), Limits{Catalogs: reg}); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
	if _, err := ParseCatalog([]byte{0xff, 0xff}, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage catalog: %v", err)
	}
}
