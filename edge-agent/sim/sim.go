// Package sim simulates a fleet of cars driving in a city, deterministically:
// the same Config gives the same readings, whatever the wall clock does, so
// tests can regenerate exactly what an agent sent.
//
// Each car drives a street grid around Config.Center: it accelerates to a
// street's speed limit, slows for junctions and red lights, turns, and
// alternates between "available" and "busy" (on a trip). Every simulated
// second it reports a GPS fix and a mix of signals: speed, engine rpm,
// battery voltage, odometer, door state and status at 1 Hz, and a
// two-axis accelerometer at IMUHz.
package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config describes the simulated fleet.
type Config struct {
	Seed     uint64
	Vehicles int
	// IDPrefix names the cars: prefix + zero-padded index ("sim-0001").
	IDPrefix string
	// Start is the simulated time of the first step.
	Start time.Time
	// Center of the city (degrees) and the half-width of its grid (metres).
	CenterLat, CenterLon float64
	RadiusM              float64
	// IMUHz is the accelerometer rate (0 disables it).
	IMUHz int
}

// DefaultConfig is a 50-car fleet in central Athens.
func DefaultConfig() Config {
	return Config{Seed: 1, Vehicles: 50, IDPrefix: "sim-", CenterLat: 37.9838, CenterLon: 23.7275, RadiusM: 3000, IMUHz: 10}
}

// Catalog is the signal catalog of every signal a simulated car reports,
// for batches to refer to once the cloud has registered it.
func Catalog() (*wire.Catalog, error) {
	return wire.NewCatalog(signalSpecs())
}

func signalSpecs() []wire.SignalSpec {
	return []wire.SignalSpec{
		{Name: "imu.accel_x", Unit: "m/s2", Kind: wire.KindDouble},
		{Name: "imu.accel_y", Unit: "m/s2", Kind: wire.KindDouble},
		{Name: "vehicle.speed", Unit: "km/h", Kind: wire.KindDouble},
		{Name: "engine.rpm", Unit: "rpm", Kind: wire.KindInt},
		{Name: "battery.voltage", Unit: "V", Kind: wire.KindDouble},
		{Name: "odometer", Unit: "m", Kind: wire.KindInt},
		{Name: "door.open", Kind: wire.KindBool},
		{Name: "status", Kind: wire.KindString},
	}
}

// Decoder is the decoder tag simulated batches carry.
const Decoder = "sim:v1"

// Vehicle is one simulated car. It is not safe for concurrent use.
type Vehicle struct {
	ID  string
	cfg Config
	rng *rand.Rand

	now       time.Time
	x, y      float64 // metres east/north of the centre, on the grid
	dirX      int     // unit direction along the grid: (dirX, dirY)
	dirY      int
	speed     float64 // m/s
	limit     float64 // m/s, current street
	stopFor   int     // seconds left stopped (red light, pick-up)
	busy      bool
	statusFor int // seconds left in the current status
	odometer  float64
	battery   float64
	door      bool
	prevSpeed float64
}

const block = 200.0 // metres between junctions

// NewFleet returns the configured cars, each with its own random stream.
func NewFleet(cfg Config) []*Vehicle {
	out := make([]*Vehicle, cfg.Vehicles)
	for i := range out {
		out[i] = NewVehicle(cfg, i)
	}
	return out
}

// NewVehicle returns car number i of the fleet.
func NewVehicle(cfg Config, i int) *Vehicle {
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(i)+1))
	blocks := int(cfg.RadiusM / block)
	if blocks < 1 {
		blocks = 1
	}
	v := &Vehicle{
		ID:  vehicleID(cfg, i),
		cfg: cfg,
		rng: rng,
		now: cfg.Start,
		// start on a junction
		x:        float64(rng.IntN(2*blocks+1)-blocks) * block,
		y:        float64(rng.IntN(2*blocks+1)-blocks) * block,
		limit:    streetLimit(rng),
		busy:     rng.IntN(2) == 0,
		odometer: float64(10_000_000 + rng.IntN(90_000_000)), // metres
		battery:  12.4 + rng.Float64()*0.4,
	}
	v.dirX, v.dirY = randomDir(rng)
	if lim := float64(blocks) * block; math.Abs(v.x+float64(v.dirX)*block) > lim || math.Abs(v.y+float64(v.dirY)*block) > lim {
		v.dirX, v.dirY = -v.dirX, -v.dirY // on the edge facing out: drive in, as turn does
	}
	v.statusFor = 60 + rng.IntN(600)
	return v
}

// vehicleID names car i of the fleet.
func vehicleID(cfg Config, i int) string { return fmt.Sprintf("%s%04d", cfg.IDPrefix, i+1) }

func streetLimit(rng *rand.Rand) float64 {
	return []float64{30, 40, 50, 50, 60}[rng.IntN(5)] / 3.6
}

func randomDir(rng *rand.Rand) (int, int) {
	switch rng.IntN(4) {
	case 0:
		return 1, 0
	case 1:
		return -1, 0
	case 2:
		return 0, 1
	}
	return 0, -1
}

// Now is the simulated time of the next step.
func (v *Vehicle) Now() time.Time { return v.now }

// Step simulates one second and returns its readings and the fix at its
// end. Times fall on whole milliseconds.
func (v *Vehicle) Step() ([]wire.Reading, wire.Fix) {
	return v.AppendStep(nil)
}

// readingsPerStep is how many readings a step produces.
func (v *Vehicle) readingsPerStep() int { return 2*max(v.cfg.IMUHz, 0) + 6 }

// AppendStep is Step appending the readings to rs, so a caller that is done
// with one step's readings before the next can reuse their memory.
func (v *Vehicle) AppendStep(rs []wire.Reading) ([]wire.Reading, wire.Fix) {
	t0 := v.now
	v.now = v.now.Add(time.Second)
	v.drive()

	rs = slices.Grow(rs, v.readingsPerStep())
	if v.cfg.IMUHz > 0 {
		along := v.speed - v.prevSpeed // m/s² over the second
		step := time.Second / time.Duration(v.cfg.IMUHz)
		for k := 0; k < v.cfg.IMUHz; k++ {
			ts := t0.Add(time.Duration(k) * step).Truncate(time.Millisecond).UnixNano()
			rs = append(rs,
				wire.Reading{Signal: "imu.accel_x", Unit: "m/s2", Time: ts, Value: wire.Float(milli(along + v.rng.NormFloat64()*0.05))},
				wire.Reading{Signal: "imu.accel_y", Unit: "m/s2", Time: ts, Value: wire.Float(milli(v.rng.NormFloat64() * 0.08))})
		}
	}
	ts := v.now.UnixNano()
	rpm := int64(750)
	if v.speed > 0.5 {
		gear := math.Min(5, 1+math.Floor(v.speed/4))
		rpm = int64(900 + v.speed*3.6*28/gear + float64(v.rng.IntN(40)))
	}
	rs = append(rs,
		wire.Reading{Signal: "vehicle.speed", Unit: "km/h", Time: ts, Value: wire.Float(centi(v.speed * 3.6))},
		wire.Reading{Signal: "engine.rpm", Unit: "rpm", Time: ts, Value: wire.Int(rpm)},
		wire.Reading{Signal: "battery.voltage", Unit: "V", Time: ts, Value: wire.Float(milli(v.battery))},
		wire.Reading{Signal: "odometer", Unit: "m", Time: ts, Value: wire.Int(int64(v.odometer))},
		wire.Reading{Signal: "door.open", Time: ts, Value: wire.Bool(v.door)},
		wire.Reading{Signal: "status", Time: ts, Value: wire.String(v.Status())},
	)
	lat, lon := v.latLon()
	heading := math.Mod(math.Atan2(float64(v.dirX), float64(v.dirY))*180/math.Pi+360, 360)
	fix := wire.Fix{
		Time:     ts,
		Lat:      lat,
		Lon:      lon,
		Alt:      centi(70 + 5*math.Sin(v.x/700) + v.rng.NormFloat64()*0.3),
		Speed:    centi(v.speed),
		Heading:  centi(heading),
		Accuracy: centi(2.5 + v.rng.Float64()*2),
	}
	return rs, fix
}

// Status is "busy" on a trip, "available" otherwise.
func (v *Vehicle) Status() string {
	if v.busy {
		return "busy"
	}
	return "available"
}

func (v *Vehicle) drive() {
	v.prevSpeed = v.speed
	v.battery += (v.rng.Float64() - 0.5) * 0.01
	v.battery = math.Max(11.8, math.Min(14.4, v.battery))
	v.statusFor--
	if v.statusFor <= 0 {
		v.busy = !v.busy
		v.statusFor = 120 + v.rng.IntN(900)
		v.stopFor = 10 + v.rng.IntN(20) // pick-up or drop-off
	}
	if v.stopFor > 0 {
		v.stopFor--
		v.speed = math.Max(0, v.speed-3)
		v.door = v.speed == 0 && v.stopFor > 2 && v.stopFor < 8
		return
	}
	v.door = false
	// Accelerate towards the limit, braking before the next junction.
	dist := v.distToJunction()
	target := v.limit
	if brake := math.Sqrt(2 * 2.5 * dist); brake < target {
		target = math.Max(brake, 4)
	}
	switch {
	case v.speed < target:
		v.speed = math.Min(target, v.speed+1.5+v.rng.Float64()*0.5)
	case v.speed > target:
		v.speed = math.Max(target, v.speed-2.5)
	}
	move := v.speed
	if move >= dist {
		// Reach the junction, then pick the next street.
		v.x += float64(v.dirX) * dist
		v.y += float64(v.dirY) * dist
		v.x, v.y = math.Round(v.x/block)*block, math.Round(v.y/block)*block
		v.turn()
		v.limit = streetLimit(v.rng)
		if v.rng.IntN(4) == 0 {
			v.stopFor = 5 + v.rng.IntN(40) // red light
		}
		move -= dist
		if v.stopFor > 0 {
			move = 0
		}
	}
	v.x += float64(v.dirX) * move
	v.y += float64(v.dirY) * move
	v.odometer += v.speed
}

func (v *Vehicle) distToJunction() float64 {
	pos := v.x*float64(v.dirX) + v.y*float64(v.dirY)
	next := math.Floor(pos/block+1e-9)*block + block
	return next - pos
}

func (v *Vehicle) turn() {
	lim := math.Floor(v.cfg.RadiusM/block) * block
	for tries := 0; tries < 8; tries++ {
		dx, dy := v.dirX, v.dirY
		switch r := v.rng.IntN(10); {
		case r < 2:
			dx, dy = -v.dirY, v.dirX // left
		case r < 4:
			dx, dy = v.dirY, -v.dirX // right
		}
		nx, ny := v.x+float64(dx)*block, v.y+float64(dy)*block
		if math.Abs(nx) <= lim && math.Abs(ny) <= lim {
			v.dirX, v.dirY = dx, dy
			return
		}
	}
	v.dirX, v.dirY = -v.dirX, -v.dirY // dead end: U-turn
}

func (v *Vehicle) latLon() (float64, float64) {
	const earth = 6371008.8
	lat := v.cfg.CenterLat + v.y/earth*180/math.Pi
	lon := v.cfg.CenterLon + v.x/(earth*math.Cos(v.cfg.CenterLat*math.Pi/180))*180/math.Pi
	// 1e-7 degree is the wire's resolution; rounding here keeps the
	// simulator's output exactly what comes out at the other end.
	return math.Round(lat*1e7) / 1e7, math.Round(lon*1e7) / 1e7
}

// centi and milli round to 2 and 3 decimals, as a sensor reports. A
// rounded -0.0004 is 0, not -0: a sensor reports no sign on zero.
func centi(f float64) float64 { return noNegZero(math.Round(f*100) / 100) }
func milli(f float64) float64 { return noNegZero(math.Round(f*1000) / 1000) }

func noNegZero(f float64) float64 {
	if f == 0 {
		return 0
	}
	return f
}
