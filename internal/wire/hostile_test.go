package wire

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/fleetpipe/fleetpipe/proto/fleet/telemetry/v1"
)

// bridgeLimits are the bridge's default limits (bridge/relay flags).
var bridgeLimits = Limits{MaxBatchBytes: 1_000_000, MaxBodyBytes: 1 << 20, MaxReadings: 1_000_000, MaxReadingsPerByte: 1024, MaxBodyRatio: 32}

// zstdBomb is a small batch whose body, all zero deltas of one time
// column, decompresses to n bytes (n readings-worth of times).
func zstdBomb(t testing.TB, n int) []byte {
	t.Helper()
	body, err := proto.Marshal(&pb.Body{TickNanos: 1, Times: []*pb.TimeColumn{{DeltaOfDelta: make([]int64, n)}},
		Signals: []*pb.Signal{{Name: "x", Type: pb.ValueType_VALUE_TYPE_INT}},
		Columns: []*pb.Column{{Values: &pb.Column_Ints{Ints: &pb.IntValues{Delta: make([]int64, n)}}}}})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := encoder()
	if err != nil {
		t.Fatal(err)
	}
	data, err := Seal(&pb.Batch{VehicleId: "bomb", Epoch: 1, Seq: 1, Producer: &pb.Producer{SchemaVersion: 1},
		Compression: pb.Compression_COMPRESSION_ZSTD, UncompressedSize: uint32(len(body)), Body: enc.EncodeAll(body, nil)})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// denseBatch is a valid batch of signals constant over n samples at
// 100 Hz: the most readings per byte our own encoder writes.
func denseBatch(t testing.TB, signals, n int) []byte {
	t.Helper()
	var specs []SignalSpec
	for s := range signals {
		specs = append(specs, SignalSpec{Name: fmt.Sprintf("s%d", s), Kind: KindDouble, Scale: 0.5, RawBits: 16})
	}
	cat, err := NewCatalog(specs)
	if err != nil {
		t.Fatal(err)
	}
	b := &Batch{Identity: Identity{VehicleID: "dense", Epoch: 1, Seq: 1}, BaseTime: t0}
	for i := range n {
		for s := range signals {
			b.Readings = append(b.Readings, Reading{Signal: fmt.Sprintf("s%d", s), Time: t0 + int64(i)*10_000_000,
				Value: Float(Physical(int64(s), 0.5, 0)), Scale: 0.5, Raw: int64(s)})
		}
	}
	data, err := Encode(b, EncodeOptions{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// allocated is the bytes f allocates.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A small batch that decompresses to a million readings is refused before
// it is decompressed, for the cost of reading its envelope.
func TestAmplificationRefusedCheaply(t *testing.T) {
	for _, n := range []int{990_000, 400_000} { // over the body limit; under it, over the ratio
		bomb := zstdBomb(t, n)
		if len(bomb) > 1000 {
			t.Fatalf("the bomb is %d bytes", len(bomb))
		}
		var err error
		alloc := allocated(func() { _, err = Check(bomb, bridgeLimits) })
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("Check: %v, want ErrTooLarge", err)
		}
		if alloc > 64*uint64(len(bomb))+8192 {
			t.Errorf("refusing a %d-byte bomb allocated %d bytes", len(bomb), alloc)
		}
		t.Logf("%d-byte zstd bomb of %d readings: refused with %d bytes allocated (%v)", len(bomb), 2*n, alloc, err)
		// Without the ratio limit the readings-per-byte limit still refuses it.
		lim := bridgeLimits
		lim.MaxBodyRatio = 0
		lim.MaxBodyBytes = 16 << 20
		if _, err := Check(bomb, lim); !errors.Is(err, ErrTooLarge) {
			t.Errorf("without the ratio and body limits: %v, want ErrTooLarge", err)
		}
	}
}

// The densest valid batch our encoder writes passes the bridge's limits,
// and checking it costs a fraction of decoding it.
func TestDenseValidBatchChecksWithinBounds(t *testing.T) {
	data := denseBatch(t, 200, 1000) // 200,000 readings
	perByte := 200_000 / len(data)
	if perByte > bridgeLimits.MaxReadingsPerByte {
		t.Fatalf("%d readings per byte: the default limit would refuse our own encoder's batches", perByte)
	}
	cats := Catalogs{}
	var specs []SignalSpec
	for s := range 200 {
		specs = append(specs, SignalSpec{Name: fmt.Sprintf("s%d", s), Kind: KindDouble, Scale: 0.5, RawBits: 16})
	}
	cat, _ := NewCatalog(specs)
	cats.Add(cat)
	lim := bridgeLimits
	lim.Catalogs = cats
	var sum Summary
	var err error
	checkAlloc := allocated(func() { sum, err = Check(data, lim) })
	if err != nil || sum.Readings != 200_000 {
		t.Fatalf("Check: %v, %d readings", err, sum.Readings)
	}
	decodeAlloc := allocated(func() { _, err = Decode(data, lim) })
	if err != nil {
		t.Fatal(err)
	}
	// Check keeps the coded columns (8 bytes an entry) and nothing per reading.
	if checkAlloc > 24*200_000 {
		t.Errorf("Check allocated %d bytes for 200,000 readings", checkAlloc)
	}
	t.Logf("%d-byte batch of 200,000 readings (%d per byte): Check allocated %d bytes, Decode %d", len(data), perByte, checkAlloc, decodeAlloc)
}

func BenchmarkCheckHostile(b *testing.B) {
	for name, data := range map[string][]byte{"zstd-bomb": zstdBomb(b, 990_000), "bit-flipped": func() []byte {
		d := denseBatch(b, 10, 10)
		d[len(d)/2] ^= 4
		return d
	}()} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = Check(data, bridgeLimits)
			}
		})
	}
}
