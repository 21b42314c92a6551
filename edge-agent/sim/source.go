package sim

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Spec is the simulator, --source sim: a fleet of simulated cars in one
// process, each with its own MQTT client and spool, configured by the
// --sim-* flags.
func Spec() source.Spec {
	return source.Spec{Name: "sim", Summary: "a simulated fleet, each car its own MQTT client and spool",
		NewConfig: func() source.Config { return &SourceConfig{} }}
}

// SourceConfig is the simulator's flags.
type SourceConfig struct {
	NumVehicles int
	Seed        uint64
	Start       string // RFC 3339; empty: now
	Speedup     float64
	Duration    time.Duration // of simulated time; 0: run until stopped
	IMUHz       int
	Center      string // "lat,lon"
	IDPrefix    string

	now time.Time // the start without --sim-start, read once
}

// RegisterFlags declares the --sim-* flags.
func (c *SourceConfig) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.IntVar(&c.NumVehicles, "sim-vehicles", d.Vehicles, "number of simulated vehicles (each its own MQTT client)")
	fs.Uint64Var(&c.Seed, "sim-seed", d.Seed, "simulator seed; the same seed and start give the same readings")
	fs.StringVar(&c.Start, "sim-start", "", "simulated start time, RFC 3339 (default: now)")
	fs.Float64Var(&c.Speedup, "sim-speedup", 1, "simulated seconds per wall-clock second (0: as fast as possible)")
	fs.DurationVar(&c.Duration, "sim-duration", 0, "simulated time to run, e.g. 10m (0: until stopped)")
	fs.IntVar(&c.IMUHz, "sim-imu-hz", d.IMUHz, "simulated accelerometer rate in Hz (0: none)")
	fs.StringVar(&c.Center, "sim-center", fmt.Sprintf("%g,%g", d.CenterLat, d.CenterLon), "city centre of the simulation, lat,lon")
	fs.StringVar(&c.IDPrefix, "sim-id-prefix", d.IDPrefix, "prefix of simulated vehicle IDs")
}

// Validate names the first bad --sim-* flag.
func (c *SourceConfig) Validate() error {
	if c.NumVehicles < 1 || c.NumVehicles > 100_000 {
		return cli.FieldError("sim-vehicles", "%d: want 1 to 100000", c.NumVehicles)
	}
	if _, err := c.start(); err != nil {
		return cli.FieldError("sim-start", "%v", err)
	}
	if c.Speedup < 0 {
		return cli.FieldError("sim-speedup", "%g is negative", c.Speedup)
	}
	if c.Duration < 0 {
		return cli.FieldError("sim-duration", "%v is negative", c.Duration)
	}
	if c.IMUHz < 0 || c.IMUHz > 1000 {
		return cli.FieldError("sim-imu-hz", "%d: want 0 to 1000", c.IMUHz)
	}
	if _, _, err := c.center(); err != nil {
		return cli.FieldError("sim-center", "%v", err)
	}
	return nil
}

func (c *SourceConfig) start() (time.Time, error) {
	if c.Start == "" {
		if c.now.IsZero() {
			c.now = time.Now().UTC().Truncate(time.Second)
		}
		return c.now, nil
	}
	return time.Parse(time.RFC3339, c.Start)
}

func (c *SourceConfig) center() (float64, float64, error) {
	a, b, ok := strings.Cut(c.Center, ",")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want lat,lon", c.Center)
	}
	lat, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	lon, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	if err1 != nil || err2 != nil || lat < -85 || lat > 85 || lon < -180 || lon > 180 {
		return 0, 0, fmt.Errorf("%q: want lat,lon in degrees (|lat| <= 85)", c.Center)
	}
	return lat, lon, nil
}

// Sim is the simulator configuration the flags describe. Without
// --sim-start the start is the time of the first call (or Validate), which
// later calls repeat.
func (c *SourceConfig) Sim() (Config, error) {
	start, err := c.start()
	if err != nil {
		return Config{}, err
	}
	lat, lon, err := c.center()
	if err != nil {
		return Config{}, err
	}
	s := DefaultConfig()
	s.Seed, s.Vehicles, s.Start, s.IMUHz, s.IDPrefix = c.Seed, c.NumVehicles, start, c.IMUHz, c.IDPrefix
	s.CenterLat, s.CenterLon = lat, lon
	return s, nil
}

// Input is a simulated clock, finite with --sim-duration.
func (c *SourceConfig) Input() source.Input {
	return source.Input{Clock: source.Recorded, Finite: c.Duration > 0}
}

// Signals is every signal a simulated car reports.
func (c *SourceConfig) Signals() ([]wire.SignalSpec, error) { return signalSpecs(), nil }

// Vehicles are the simulated cars' IDs.
func (c *SourceConfig) Vehicles() []string {
	s, err := c.Sim()
	if err != nil {
		return nil
	}
	ids := make([]string, s.Vehicles)
	for i := range ids {
		ids[i] = vehicleID(s, i)
	}
	return ids
}

// Decoder is the tag simulated batches carry.
func (c *SourceConfig) Decoder() string { return Decoder }

// New is the source of the fleet's first car.
func (c *SourceConfig) New(deps source.Deps) (source.Source, error) { return c.NewVehicle(0, deps) }

// NewVehicle is the source of car i: it steps the car, one simulated
// second an Items, paced at --sim-speedup, for --sim-duration.
func (c *SourceConfig) NewVehicle(i int, _ source.Deps) (source.Source, error) {
	s, err := c.Sim()
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= s.Vehicles {
		return nil, fmt.Errorf("sim: no vehicle %d of %d", i, s.Vehicles)
	}
	src := &carSource{car: NewVehicle(s, i), speedup: c.Speedup}
	if c.Duration > 0 {
		src.end = s.Start.Add(c.Duration)
	}
	return src, nil
}

// carSource runs one simulated car.
type carSource struct {
	car     *Vehicle
	speedup float64
	end     time.Time // zero: endless
}

// Run steps the car until ctx is cancelled or its duration has run.
// Each step's Items carries the simulated clock after it, so its batch
// closes at once.
func (s *carSource) Run(ctx context.Context, emit source.Emit) error {
	var rs []wire.Reading // reused: the agent copies what it keeps
	var fix [1]wire.Fix
	wallStart := time.Now()
	var timer *time.Timer
	for step := 1; s.end.IsZero() || s.car.Now().Before(s.end); step++ {
		rs, fix[0] = s.car.AppendStep(rs[:0])
		emit(source.Items{Readings: rs, Fixes: fix[:], Clock: s.car.Now().UnixNano()})
		if s.speedup <= 0 {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		next := wallStart.Add(time.Duration(float64(step) * float64(time.Second) / s.speedup))
		if timer == nil {
			timer = time.NewTimer(time.Until(next))
			defer timer.Stop()
		} else {
			timer.Reset(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
	}
	return nil
}
