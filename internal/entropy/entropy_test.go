package entropy

import (
	"math"
	"math/rand/v2"
	"testing"
)

// streams are number sequences shaped like what the wire codes: constant
// residuals, small noise, sparse spikes, and the extremes of int64.
func streams() map[string][]int64 {
	rng := rand.New(rand.NewPCG(1, 2))
	out := map[string][]int64{}
	constant := make([]int64, 1000)
	for i := range constant {
		constant[i] = 1
	}
	out["constant"] = constant
	noise := make([]int64, 1000)
	for i := range noise {
		noise[i] = int64(rng.NormFloat64() * 4)
	}
	out["noise"] = noise
	spikes := make([]int64, 1000)
	for i := range spikes {
		if rng.IntN(50) == 0 {
			spikes[i] = rng.Int64N(1<<40) - 1<<39
		}
	}
	out["spikes"] = spikes
	out["extremes"] = []int64{math.MinInt64, math.MaxInt64, -1, 0, 1, math.MinInt64 + 1, 1 << 62, -(1 << 62)}
	wide := make([]int64, 300)
	for i := range wide {
		wide[i] = int64(rng.Uint64())
	}
	out["uniform64"] = wide
	return out
}

// encode codes xs under a fresh model.
func encode(xs []int64) []byte {
	var m Int
	m.Init()
	e := NewEncoder(nil)
	for _, x := range xs {
		e.Int(&m, x)
	}
	return e.Finish()
}

func TestIntRoundTrip(t *testing.T) {
	for name, xs := range streams() {
		var m Int
		m.Init()
		e := NewEncoder(nil)
		for _, x := range xs {
			e.Int(&m, x)
		}
		e.Direct(0x5a5, 12)
		data := e.Finish()

		m.Init()
		d := NewDecoder(data)
		for i, want := range xs {
			if got := d.Int(&m); got != want {
				t.Fatalf("%s: number %d: got %d, want %d", name, i, got, want)
			}
		}
		if got := d.Direct(12); got != 0x5a5 {
			t.Fatalf("%s: direct bits: got %#x", name, got)
		}
		if d.Overrun() {
			t.Errorf("%s: decoding a whole stream read past its end", name)
		}
	}
}

// TestCounterMatchesCoding checks the estimate choices are made on: within
// 1% (plus the flush) of the bytes the encoder really writes.
func TestCounterMatchesCoding(t *testing.T) {
	for name, xs := range streams() {
		var m Int
		m.Init()
		c := NewCounter()
		for _, x := range xs {
			c.Int(&m, x)
		}
		got := float64(len(encode(xs)) * 8)
		if est := c.Bits(); math.Abs(est-got) > 0.01*got+40 {
			t.Errorf("%s: estimated %.0f bits, coded %.0f", name, est, got)
		}
	}
}

// TestConstantIsNearlyFree is the property the wire format relies on: a
// column of one repeated residual costs a small fraction of a bit each.
func TestConstantIsNearlyFree(t *testing.T) {
	var m Int
	m.Init()
	e := NewEncoder(nil)
	for range 10_000 {
		e.Int(&m, 3)
	}
	if n := len(e.Finish()); n > 100 {
		t.Errorf("10,000 equal numbers took %d bytes", n)
	}
}

func TestTruncatedStreamOverruns(t *testing.T) {
	xs := streams()["noise"]
	data := encode(xs)
	var m Int
	m.Init()
	d := NewDecoder(data[:len(data)/2])
	for range xs {
		d.Int(&m)
	}
	if !d.Overrun() {
		t.Error("decoding half a stream did not report an overrun")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Int
		m.Init()
		d := NewDecoder(data)
		for range 200 {
			d.Int(&m)
			d.Direct(7)
		}
	})
}

func BenchmarkEncodeInt(b *testing.B) {
	xs := streams()["noise"]
	var m Int
	e := NewEncoder(make([]byte, 0, 4096))
	b.SetBytes(int64(len(xs)))
	for b.Loop() {
		m.Init()
		e.Reset(e.out[:0])
		for _, x := range xs {
			e.Int(&m, x)
		}
		e.Finish()
	}
}

func BenchmarkDecodeInt(b *testing.B) {
	xs := streams()["noise"]
	data := encode(xs)
	var m Int
	var d Decoder
	b.SetBytes(int64(len(xs)))
	for b.Loop() {
		m.Init()
		d.Reset(data)
		for range xs {
			d.Int(&m)
		}
	}
}
