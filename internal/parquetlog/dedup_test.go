package parquetlog

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TestSeenSetMatchesAPlainSet adds random seqs (with runs, repeats and the
// extremes of uint64) and checks membership against a map, and that the
// ranges stay sorted, disjoint and non-adjacent.
func TestSeenSetMatchesAPlainSet(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := newSeenSet()
	plain := map[uint64]bool{}
	for i := range 5000 {
		var x uint64
		switch i % 4 {
		case 0:
			x = rng.Uint64N(300)
		case 1:
			x = uint64(i) // a run
		case 2:
			x = ^uint64(0) - rng.Uint64N(3)
		default:
			x = rng.Uint64N(5)
		}
		s.add(wire.Identity{VehicleID: "v", Epoch: 1, Seq: x}, int64(i))
		plain[x] = true
	}
	rs := s.vehicles["v"].Epochs[0].Ranges
	for i, r := range rs {
		if r[1] < r[0] || (i > 0 && r[0] <= rs[i-1][1]+1) {
			t.Fatalf("ranges not sorted, disjoint and apart at %d: %v %v", i, rs[i-1], r)
		}
	}
	for x := uint64(0); x < 6000; x++ {
		if got := s.has(wire.Identity{VehicleID: "v", Epoch: 1, Seq: x}); got != plain[x] {
			t.Fatalf("has(%d) = %v, want %v", x, got, plain[x])
		}
	}
	for x := ^uint64(0) - 5; x != 0; x++ {
		if got := s.has(wire.Identity{VehicleID: "v", Epoch: 1, Seq: x}); got != plain[x] {
			t.Fatalf("has(%d) = %v, want %v", x, got, plain[x])
		}
	}
	if s.has(wire.Identity{VehicleID: "v", Epoch: 2, Seq: 1}) || s.has(wire.Identity{VehicleID: "w", Epoch: 1, Seq: 1}) {
		t.Error("another epoch or vehicle counts as seen")
	}
}

// TestForgetting checks each rule of DedupConfig, and that what a delta
// rebuilds equals the state it was taken from.
func TestForgetting(t *testing.T) {
	s := newSeenSet()
	for v := range 10 {
		for e := range 5 {
			for q := range 20 {
				s.add(wire.Identity{VehicleID: fmt.Sprintf("v%d", v), Epoch: uint64(e), Seq: uint64(2 * q)}, int64(1000*v+10*e))
			}
		}
	}
	cfg := DedupConfig{TTL: 6500, MaxVehicles: 2, MaxEpochs: 3, MaxRanges: 4}
	if n := s.evict(cfg, 10_000); n != 8 {
		t.Errorf("forgot %d vehicles, want 8 (4 by TTL, 4 by count)", n)
	}
	for _, vid := range []string{"v8", "v9"} {
		v := s.vehicles[vid]
		if v == nil {
			t.Fatalf("%s, heard from most recently, was forgotten", vid)
		}
		if len(v.Epochs) != 3 || v.Epochs[0].Epoch != 4 {
			t.Errorf("%s keeps epochs %v, want the 3 most recent, newest first", vid, v.Epochs)
		}
		for _, e := range v.Epochs {
			if len(e.Ranges) != 4 || e.Ranges[0] != (seqRange{32, 32}) {
				t.Errorf("%s epoch %d keeps %v, want the 4 highest ranges", vid, e.Epoch, e.Ranges)
			}
		}
	}
	data, _, err := s.marshal(10_000)
	if err != nil {
		t.Fatal(err)
	}
	back, end, err := unmarshalSeen(data)
	if err != nil || end != 10_000 || back.len() != 2 {
		t.Fatalf("round trip: %d vehicles, end %d, %v", back.len(), end, err)
	}
	again, _, _ := back.marshal(10_000)
	if string(again) != string(data) {
		t.Error("a state marshals differently after a round trip")
	}
}
