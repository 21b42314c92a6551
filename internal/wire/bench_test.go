package wire

import (
	"testing"
	"time"
)

// benchBatch is the batch of the bridge's load test (fleetsim): 100
// readings of four signals, names inline.
func benchBatch(tb testing.TB) []byte {
	tb.Helper()
	b := &Batch{Identity: Identity{VehicleID: "bench-0001", Epoch: 1, Seq: 1}, BaseTime: time.Now().UnixNano(), AgentVersion: "bench", Decoder: "bench:v1"}
	for i := range 100 {
		t := b.BaseTime + int64(i/4)*10_000_000
		switch i % 4 {
		case 0:
			b.Readings = append(b.Readings, Reading{Signal: "speed", Unit: "km/h", Time: t, Value: Float(float64(i%97) / 4)})
		case 1:
			b.Readings = append(b.Readings, Reading{Signal: "rpm", Unit: "rpm", Time: t, Value: Int(int64(800 + i))})
		case 2:
			b.Readings = append(b.Readings, Reading{Signal: "coolant", Unit: "C", Time: t, Value: Int(int64(80 + i%3))})
		default:
			b.Readings = append(b.Readings, Reading{Signal: "brake", Time: t, Value: Bool(i%8 == 3)})
		}
	}
	data, err := Encode(b, EncodeOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

// The bridge checks every batch (BenchmarkCheck); the consumers decode
// them (BenchmarkDecode); DecodeIdentity is the envelope alone.
func BenchmarkCheck(b *testing.B) {
	benchRead(b, func(d []byte) error { _, err := Check(d, Limits{}); return err })
}
func BenchmarkDecode(b *testing.B) {
	benchRead(b, func(d []byte) error { _, err := Decode(d, Limits{}); return err })
}
func BenchmarkDecodeIdentity(b *testing.B) {
	benchRead(b, func(d []byte) error { _, err := DecodeIdentity(d, Limits{}); return err })
}

func benchRead(b *testing.B, read func([]byte) error) {
	data := benchBatch(b)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if err := read(data); err != nil {
			b.Fatal(err)
		}
	}
}
