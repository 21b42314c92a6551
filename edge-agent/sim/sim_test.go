package sim

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var start = time.Date(2025, 6, 2, 7, 30, 0, 0, time.UTC)

func testConfig() Config {
	c := DefaultConfig()
	c.Start = start
	c.Vehicles = 8
	return c
}

// step is one simulated second of one car.
type step struct {
	readings []wire.Reading
	fix      wire.Fix
}

func drive(v *Vehicle, seconds int) []step {
	out := make([]step, seconds)
	for i := range out {
		out[i].readings, out[i].fix = v.Step()
	}
	return out
}

// TestAppendStepReusesMemory: a caller reusing one buffer gets exactly the
// readings Step gives, with no allocation for them after the first step.
func TestAppendStepReusesMemory(t *testing.T) {
	cfg := testConfig()
	want := drive(NewVehicle(cfg, 0), 60)
	v := NewVehicle(cfg, 0)
	var buf []wire.Reading
	for i, w := range want {
		var fix wire.Fix
		buf, fix = v.AppendStep(buf[:0])
		if !reflect.DeepEqual(buf, w.readings) || fix != w.fix {
			t.Fatalf("step %d: AppendStep differs from Step", i)
		}
	}
	if n := testing.AllocsPerRun(10, func() { buf, _ = v.AppendStep(buf[:0]) }); n != 0 {
		t.Errorf("AppendStep into a reused buffer allocates %v times per step, want 0", n)
	}
}

func TestDeterministic(t *testing.T) {
	cfg := testConfig()
	a, b := NewFleet(cfg), NewFleet(cfg)
	if len(a) != cfg.Vehicles {
		t.Fatalf("NewFleet made %d vehicles, want %d", len(a), cfg.Vehicles)
	}
	ids := map[string]bool{}
	for i := range a {
		if want := fmt.Sprintf("sim-%04d", i+1); a[i].ID != want {
			t.Errorf("vehicle %d is %q, want %q", i, a[i].ID, want)
		}
		ids[a[i].ID] = true
		ra, rb := drive(a[i], 120), drive(b[i], 120)
		if !reflect.DeepEqual(ra, rb) {
			t.Fatalf("%s: two fleets of the same config drove differently", a[i].ID)
		}
		// A car does not depend on the others: car i alone drives as car i
		// of the fleet (an agent may run any subset).
		if alone := drive(NewVehicle(cfg, i), 120); !reflect.DeepEqual(ra, alone) {
			t.Fatalf("%s: NewVehicle differs from the fleet's car", a[i].ID)
		}
	}
	if len(ids) != cfg.Vehicles {
		t.Errorf("vehicle IDs not unique: %v", ids)
	}

	other := cfg
	other.Seed++
	if reflect.DeepEqual(drive(NewVehicle(cfg, 0), 60), drive(NewVehicle(other, 0), 60)) {
		t.Error("a different seed gave the same readings")
	}
	if reflect.DeepEqual(drive(NewVehicle(cfg, 0), 60), drive(NewVehicle(cfg, 1), 60)) {
		t.Error("two cars of one fleet gave the same readings")
	}
	later := cfg
	later.Start = start.Add(time.Hour)
	s0, s1 := drive(NewVehicle(cfg, 0), 1)[0], drive(NewVehicle(later, 0), 1)[0]
	if s1.fix.Time-s0.fix.Time != int64(time.Hour) || s1.fix.Lat != s0.fix.Lat || s1.fix.Lon != s0.fix.Lon {
		t.Errorf("a later start should shift times only: %+v vs %+v", s0.fix, s1.fix)
	}
}

// metresFrom returns how far (north, east) p is from the centre.
func metresFrom(cfg Config, lat, lon float64) (north, east float64) {
	const earth = 6371008.8
	north = (lat - cfg.CenterLat) * math.Pi / 180 * earth
	east = (lon - cfg.CenterLon) * math.Pi / 180 * earth * math.Cos(cfg.CenterLat*math.Pi/180)
	return north, east
}

func TestPlausible(t *testing.T) {
	cfg := testConfig()
	const seconds = 30 * 60
	for _, v := range NewFleet(cfg) {
		statuses := map[string]int{}
		var prev *wire.Fix
		var prevOdo int64
		moved := 0.0
		for i, s := range drive(v, seconds) {
			t0 := start.Add(time.Duration(i) * time.Second).UnixNano()
			end := t0 + int64(time.Second)
			if s.fix.Time != end {
				t.Fatalf("%s step %d: fix at %d, want the end of the step %d", v.ID, i, s.fix.Time, end)
			}
			if got := v.Now().UnixNano(); i == seconds-1 && got != end {
				t.Errorf("%s: Now %d after the last step, want %d", v.ID, got, end)
			}
			perSecond := map[string][]int64{}
			for _, r := range s.readings {
				perSecond[r.Signal] = append(perSecond[r.Signal], r.Time)
				if r.Time%int64(time.Millisecond) != 0 || r.Time < t0 || r.Time > end {
					t.Fatalf("%s step %d: %s at %d, not a whole millisecond in the step", v.ID, i, r.Signal, r.Time)
				}
				switch r.Signal {
				case "vehicle.speed":
					if r.Value.Kind != wire.KindDouble || r.Value.Float < 0 || r.Value.Float > 60 {
						t.Fatalf("%s: speed %+v km/h", v.ID, r.Value)
					}
					if math.Abs(r.Value.Float/3.6-s.fix.Speed) > 0.01 {
						t.Fatalf("%s: speed signal %v km/h but fix says %v m/s", v.ID, r.Value.Float, s.fix.Speed)
					}
				case "status":
					statuses[r.Value.Str]++
				case "odometer":
					if r.Value.Int < prevOdo {
						t.Fatalf("%s: odometer went back from %d to %d", v.ID, prevOdo, r.Value.Int)
					}
					prevOdo = r.Value.Int
				case "battery.voltage":
					if r.Value.Float < 11.8 || r.Value.Float > 14.4 {
						t.Fatalf("%s: battery %v V", v.ID, r.Value.Float)
					}
				case "engine.rpm":
					if r.Value.Int < 700 || r.Value.Int > 7000 {
						t.Fatalf("%s: %d rpm", v.ID, r.Value.Int)
					}
				}
			}
			for _, sig := range []string{"vehicle.speed", "engine.rpm", "battery.voltage", "odometer", "door.open", "status"} {
				if ts := perSecond[sig]; len(ts) != 1 || ts[0] != end {
					t.Fatalf("%s step %d: %s at %v, want once at the fix time", v.ID, i, sig, ts)
				}
			}
			for _, sig := range []string{"imu.accel_x", "imu.accel_y"} {
				ts := perSecond[sig]
				if len(ts) != cfg.IMUHz {
					t.Fatalf("%s step %d: %d %s readings, want IMUHz = %d", v.ID, i, len(ts), sig, cfg.IMUHz)
				}
				for k := 1; k < len(ts); k++ {
					if ts[k] <= ts[k-1] || ts[k] >= end {
						t.Fatalf("%s step %d: %s times %v not increasing within the second", v.ID, i, sig, ts)
					}
				}
			}

			f := s.fix
			if f.Speed < 0 || f.Speed > 60/3.6+0.01 {
				t.Fatalf("%s: fix speed %v m/s", v.ID, f.Speed)
			}
			if f.Heading != 0 && f.Heading != 90 && f.Heading != 180 && f.Heading != 270 {
				t.Fatalf("%s: heading %v off the street grid", v.ID, f.Heading)
			}
			if f.Accuracy <= 0 || f.Accuracy > 10 || math.IsNaN(f.Alt) {
				t.Fatalf("%s: fix %+v", v.ID, f)
			}
			north, east := metresFrom(cfg, f.Lat, f.Lon)
			if math.Abs(north) > cfg.RadiusM+0.1 || math.Abs(east) > cfg.RadiusM+0.1 {
				t.Fatalf("%s step %d: %.0f m north, %.0f m east of the centre; the city is %v m wide each way", v.ID, i, north, east, cfg.RadiusM)
			}
			if prev != nil {
				pn, pe := metresFrom(cfg, prev.Lat, prev.Lon)
				d := math.Hypot(north-pn, east-pe)
				if d > f.Speed*1+0.05 {
					t.Fatalf("%s step %d: moved %.2f m in a second at %.2f m/s", v.ID, i, d, f.Speed)
				}
				moved += d
			}
			prev = &f
		}
		if statuses["available"] == 0 || statuses["busy"] == 0 || len(statuses) != 2 {
			t.Errorf("%s: statuses over 30 minutes %v; want both available and busy, nothing else", v.ID, statuses)
		}
		if moved < 1000 {
			t.Errorf("%s: drove only %.0f m in 30 minutes", v.ID, moved)
		}
	}
}

// TestStaysInTheCity drives many cars for a minute: a car that starts on
// the edge of the grid must not begin by driving out of the city.
func TestStaysInTheCity(t *testing.T) {
	cfg := testConfig()
	cfg.Vehicles = 200
	for _, v := range NewFleet(cfg) {
		for i, s := range drive(v, 60) {
			north, east := metresFrom(cfg, s.fix.Lat, s.fix.Lon)
			if math.Abs(north) > cfg.RadiusM+0.1 || math.Abs(east) > cfg.RadiusM+0.1 {
				t.Fatalf("%s second %d: %.0f m north, %.0f m east of the centre; the city is %v m wide each way", v.ID, i, north, east, cfg.RadiusM)
			}
		}
	}
}

func TestIMURate(t *testing.T) {
	for _, hz := range []int{0, 1, 10, 50} {
		cfg := testConfig()
		cfg.IMUHz = hz
		v := NewVehicle(cfg, 0)
		for i := 0; i < 5; i++ {
			rs, _ := v.Step()
			n := 0
			for _, r := range rs {
				if r.Signal == "imu.accel_x" {
					n++
				}
			}
			if n != hz {
				t.Errorf("IMUHz %d: %d accel_x readings in a second", hz, n)
			}
		}
	}
}

func sortReadings(rs []wire.Reading) {
	sort.SliceStable(rs, func(i, j int) bool {
		if rs[i].Signal != rs[j].Signal {
			return rs[i].Signal < rs[j].Signal
		}
		return rs[i].Time < rs[j].Time
	})
}

func sameFloat(a, b float64) bool { return math.Float64bits(a) == math.Float64bits(b) }

// TestSurvivesTheWire checks that what the simulator produces is exactly
// representable on the wire: encoded and decoded, every value is
// bit-identical. The end-to-end tests compare the cloud's data with a
// regenerated simulation and rely on this.
func TestSurvivesTheWire(t *testing.T) {
	cfg := testConfig()
	cfg.Vehicles = 3
	cat, err := Catalog()
	if err != nil {
		t.Fatal(err)
	}
	reg := wire.Catalogs{}
	reg.Add(cat)
	for _, v := range NewFleet(cfg) {
		steps := drive(v, 3*60)
		for first := 0; first < len(steps); first += 10 { // ten-second batches
			in := &wire.Batch{Identity: wire.Identity{VehicleID: v.ID, Epoch: 1, Seq: uint64(first/10 + 1)}, Decoder: Decoder}
			for _, s := range steps[first : first+10] {
				in.Readings = append(in.Readings, s.readings...)
				in.Fixes = append(in.Fixes, s.fix)
			}
			in.BaseTime = in.Readings[0].Time
			// Every other batch refers to the catalog, which must cover
			// every signal the simulator reports.
			opt := wire.EncodeOptions{}
			if first%20 == 10 {
				opt.Catalog = cat
			}
			data, err := wire.Encode(in, opt)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := wire.Decode(data, wire.Limits{}); opt.Catalog != nil && !errors.Is(err, wire.ErrUnknownCatalog) {
				t.Fatalf("%v: encoded with the catalog, decoded without it: %v (the catalog misses a signal)", in.Identity, err)
			}
			out, err := wire.Decode(data, wire.Limits{Catalogs: reg})
			if err != nil {
				t.Fatal(err)
			}
			want, got := append([]wire.Reading(nil), in.Readings...), out.Readings
			sortReadings(want)
			sortReadings(got)
			if len(got) != len(want) {
				t.Fatalf("%v: %d readings back, want %d", in.Identity, len(got), len(want))
			}
			for i := range want {
				w, g := want[i], got[i]
				if w.Signal != g.Signal || w.Unit != g.Unit || w.Time != g.Time || w.Value.Kind != g.Value.Kind ||
					!sameFloat(w.Value.Float, g.Value.Float) || w.Value.Int != g.Value.Int || w.Value.Bool != g.Value.Bool || w.Value.Str != g.Value.Str {
					t.Fatalf("%v: reading %+v came back as %+v", in.Identity, w, g)
				}
			}
			if len(out.Fixes) != len(in.Fixes) {
				t.Fatalf("%v: %d fixes back, want %d", in.Identity, len(out.Fixes), len(in.Fixes))
			}
			for i, w := range in.Fixes {
				g := out.Fixes[i]
				if w.Time != g.Time || !sameFloat(w.Lat, g.Lat) || !sameFloat(w.Lon, g.Lon) || !sameFloat(w.Alt, g.Alt) ||
					!sameFloat(w.Speed, g.Speed) || !sameFloat(w.Heading, g.Heading) || !sameFloat(w.Accuracy, g.Accuracy) {
					t.Fatalf("%v: fix %+v came back as %+v", in.Identity, w, g)
				}
			}
		}
	}
}
