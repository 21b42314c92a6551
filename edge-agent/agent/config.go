package agent

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/gps"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config is the agent's configuration.
type Config struct {
	MQTT mqttconn.Config

	// Sources lists where readings come from: "sim" (a simulated fleet,
	// each car its own MQTT client and spool), or any of "can" and "gps"
	// for the one vehicle named by VehicleID.
	Sources   cli.StringList
	VehicleID string

	CAN        can.Config
	CANCollect string // YAML collection config file
	GPS        gps.Config

	Spool spool.Config
	// PrioritySignals are the signals that, with the fixes, go in a
	// batch of the spool's high class (kept when bulk signals are dropped).
	PrioritySignals cli.StringList

	MaxInflight int
	BacklogRate float64
	// Catalog registers the vehicle's signal catalog (the DBC's signals,
	// or the simulator's) with the cloud; once it is acked, batches carry
	// signal indexes instead of names.
	Catalog      bool
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// CheckConfig validates the configuration (loading the DBC and the
	// collection config) and exits.
	CheckConfig bool

	SimVehicles int
	SimSeed     uint64
	SimStart    string // RFC 3339; empty: now
	SimSpeedup  float64
	SimDuration time.Duration // of simulated time; 0: run until stopped
	SimIMUHz    int
	SimCenter   string // "lat,lon"
	SimIDPrefix string

	BatchMaxAge      time.Duration
	BatchMaxReadings int
	TickNanos        int64

	AckTimeout time.Duration
	// MemoryLimitBytes is the Go runtime's soft memory limit per vehicle
	// (see MemoryLimit); 0 leaves the runtime's default, no limit.
	MemoryLimitBytes int64
	// CPUs the agent runs on: "auto" (one CPU when it runs one vehicle on
	// one core), "none", or a list such as "1" or "0,2-3" (see ApplyCPUs).
	CPUs string
	// TimerSlack is how late the kernel may fire the process's timers
	// (see ApplyTimerSlack); 0 leaves the kernel's default (50 µs).
	TimerSlack time.Duration
	// MaxProcs bounds the CPU cores the Go runtime uses at once
	// (GOMAXPROCS); 0 means one per vehicle, up to the machine's cores.
	MaxProcs int
	// Listen serves the agent's /metrics locally.
	Listen string
	// ExitWhenDone makes a finite simulation exit once every batch is
	// acked end to end (or DrainTimeout passes, which is an error).
	ExitWhenDone bool
	DrainTimeout time.Duration
}

// defaultClientID stands for "the vehicle's ID" as the MQTT client ID.
const defaultClientID = "(vehicle id)"

// DefaultConfig returns the defaults the flags use.
func DefaultConfig() Config {
	var c Config
	c.RegisterFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	return c
}

// RegisterFlags declares the agent's flags.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	c.MQTT.RegisterFlags(fs, "tcp://127.0.0.1:1883", defaultClientID)
	c.Sources = cli.StringList{"sim"}
	fs.Var(&c.Sources, "source", "comma-separated reading sources: sim (a simulated fleet), or can and/or gps for the vehicle --vehicle-id")
	fs.StringVar(&c.VehicleID, "vehicle-id", "", "this vehicle's ID (with --source can/gps); its MQTT client ID unless --mqtt-client-id is set")
	fs.StringVar(&c.CAN.DBC, "can-dbc", "", "DBC file decoding the CAN bus")
	fs.StringVar(&c.CAN.Interface, "can-interface", "", "live SocketCAN interface, e.g. can0")
	fs.StringVar(&c.CAN.Candump, "can-candump", "", "candump -L log to replay instead of a live interface")
	fs.BoolVar(&c.CAN.Realtime, "can-realtime", true, "replay --can-candump at the log's pace (false: as fast as possible)")
	fs.StringVar(&c.CANCollect, "can-collect", "", "YAML collection config: which signals to keep and how (empty: every decoded signal of every frame)")
	c.GPS.RegisterFlags(fs)
	c.Spool.RegisterFlags(fs)
	c.PrioritySignals = cli.StringList{"status"}
	fs.Var(&c.PrioritySignals, "priority-signals", "comma-separated signals spooled with the fixes in the high class (dropped last when the spool is full)")
	fs.IntVar(&c.MaxInflight, "max-inflight", 64, "batches published and awaiting their end-to-end ack, at most")
	fs.BoolVar(&c.Catalog, "catalog", true, "register the signal catalog (DBC or simulator signals) with the cloud and, once acked, send signal indexes instead of names")
	fs.Float64Var(&c.BacklogRate, "backlog-rate", 20, "spooled backlog batches published per second after an outage (new batches go at once)")
	fs.DurationVar(&c.ReconnectMin, "reconnect-min", time.Second, "first wait before reconnecting to the broker (jittered, doubling)")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", time.Minute, "longest wait between reconnects")
	fs.BoolVar(&c.CheckConfig, "check-config", false, "validate the configuration (DBC and collection config included) and exit")
	d := sim.DefaultConfig()
	fs.IntVar(&c.SimVehicles, "sim-vehicles", d.Vehicles, "number of simulated vehicles (each its own MQTT client)")
	fs.Uint64Var(&c.SimSeed, "sim-seed", d.Seed, "simulator seed; the same seed and start give the same readings")
	fs.StringVar(&c.SimStart, "sim-start", "", "simulated start time, RFC 3339 (default: now)")
	fs.Float64Var(&c.SimSpeedup, "sim-speedup", 1, "simulated seconds per wall-clock second (0: as fast as possible)")
	fs.DurationVar(&c.SimDuration, "sim-duration", 0, "simulated time to run, e.g. 10m (0: until stopped)")
	fs.IntVar(&c.SimIMUHz, "sim-imu-hz", d.IMUHz, "simulated accelerometer rate in Hz (0: none)")
	fs.StringVar(&c.SimCenter, "sim-center", fmt.Sprintf("%g,%g", d.CenterLat, d.CenterLon), "city centre of the simulation, lat,lon")
	fs.StringVar(&c.SimIDPrefix, "sim-id-prefix", d.IDPrefix, "prefix of simulated vehicle IDs")
	fs.DurationVar(&c.BatchMaxAge, "batch-max-age", time.Second, "close a batch when its oldest reading is this old")
	fs.IntVar(&c.BatchMaxReadings, "batch-max-readings", 10000, "close a batch at this many readings")
	fs.Int64Var(&c.TickNanos, "time-resolution-ns", 100_000, "time resolution of batches in nanoseconds")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", 10*time.Second, "re-send a batch not acknowledged end to end within this time")
	fs.Int64Var(&c.MemoryLimitBytes, "memory-limit-bytes", 16<<20,
		"soft memory limit of the Go runtime per vehicle (0: none); GOMEMLIMIT, if set, wins")
	fs.IntVar(&c.MaxProcs, "max-procs", 0,
		"CPU cores the agent uses at once (0: one per vehicle, up to the machine's); GOMAXPROCS, if set, wins")
	fs.StringVar(&c.CPUs, "cpus", "auto",
		"CPUs the agent runs on: a list such as 1 or 0,2-3; auto: one CPU, the last it may use, when it works on one core (one vehicle, --max-procs 1); none: any")
	fs.DurationVar(&c.TimerSlack, "timer-slack", 10*time.Millisecond,
		"how late the kernel may fire the agent's timers, so the board sleeps longer between wake-ups (0: the kernel's default)")
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:9100", "address for the agent's /metrics and /healthz (empty: off)")
	fs.BoolVar(&c.ExitWhenDone, "exit-when-done", false, "exit once the sources have ended (--sim-duration run, a log replayed) and every batch is acknowledged")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 2*time.Minute, "with --exit-when-done: how long to wait for the last acks")
}

// Validate names the first bad field.
func (c Config) Validate() error {
	if c.MQTT.ClientID == "" {
		c.MQTT.ClientID = "unused" // each vehicle connects with its own ID
	}
	if err := c.MQTT.Validate(); err != nil {
		return err
	}
	if err := c.validateSources(); err != nil {
		return err
	}
	if err := c.Spool.Validate(); err != nil {
		return err
	}
	if c.MaxInflight < 1 {
		return cli.FieldError("max-inflight", "must be at least 1")
	}
	if c.BacklogRate <= 0 {
		return cli.FieldError("backlog-rate", "must be positive")
	}
	if c.ReconnectMin <= 0 || c.ReconnectMax < c.ReconnectMin {
		return cli.FieldError("reconnect-max", "want 0 < --reconnect-min <= --reconnect-max")
	}
	if c.SimVehicles < 1 || c.SimVehicles > 100_000 {
		return cli.FieldError("sim-vehicles", "%d: want 1 to 100000", c.SimVehicles)
	}
	if _, err := c.simStart(); err != nil {
		return cli.FieldError("sim-start", "%v", err)
	}
	if c.SimSpeedup < 0 {
		return cli.FieldError("sim-speedup", "%g is negative", c.SimSpeedup)
	}
	if c.SimDuration < 0 {
		return cli.FieldError("sim-duration", "%v is negative", c.SimDuration)
	}
	if c.SimIMUHz < 0 || c.SimIMUHz > 1000 {
		return cli.FieldError("sim-imu-hz", "%d: want 0 to 1000", c.SimIMUHz)
	}
	if _, _, err := c.simCenter(); err != nil {
		return cli.FieldError("sim-center", "%v", err)
	}
	if c.BatchMaxAge <= 0 {
		return cli.FieldError("batch-max-age", "must be positive")
	}
	if c.BatchMaxReadings < 1 {
		return cli.FieldError("batch-max-readings", "must be at least 1")
	}
	if c.TickNanos < 1 || c.TickNanos > int64(time.Second) {
		return cli.FieldError("time-resolution-ns", "%d: want 1 to 1000000000", c.TickNanos)
	}
	if c.AckTimeout < 100*time.Millisecond {
		return cli.FieldError("ack-timeout", "%v is below 100ms", c.AckTimeout)
	}
	if c.MaxProcs < 0 {
		return cli.FieldError("max-procs", "%d: want 0 (one per vehicle) or a positive count", c.MaxProcs)
	}
	if c.CPUs != "auto" && c.CPUs != "none" {
		if _, err := parseCPUList(c.CPUs); err != nil {
			return cli.FieldError("cpus", "%q: %v (want auto, none or a list such as 0,2-3)", c.CPUs, err)
		}
	}
	if c.TimerSlack < 0 || c.TimerSlack > time.Second {
		return cli.FieldError("timer-slack", "%v: want 0 to 1s", c.TimerSlack)
	}
	if c.MemoryLimitBytes != 0 && c.MemoryLimitBytes < 8<<20 {
		return cli.FieldError("memory-limit-bytes", "%d: want 0 (none) or at least 8 MiB", c.MemoryLimitBytes)
	}
	if c.ExitWhenDone && c.has("sim") && c.SimDuration == 0 {
		return cli.FieldError("exit-when-done", "needs --sim-duration")
	}
	if c.DrainTimeout <= 0 {
		return cli.FieldError("drain-timeout", "must be positive")
	}
	return nil
}

func (c Config) has(source string) bool { return slices.Contains(c.Sources, source) }

func (c Config) validateSources() error {
	if len(c.Sources) == 0 {
		return cli.FieldError("source", "must name at least one source")
	}
	for _, s := range c.Sources {
		switch s {
		case "sim", "can", "gps":
		default:
			return cli.FieldError("source", "%q: want sim, can or gps", s)
		}
	}
	if c.has("sim") {
		if len(c.Sources) > 1 {
			return cli.FieldError("source", "sim runs a simulated fleet and does not mix with can or gps")
		}
		return nil
	}
	if err := wire.CheckVehicleID(c.VehicleID); err != nil {
		return cli.FieldError("vehicle-id", "%v", err)
	}
	if c.has("can") {
		switch {
		case c.CAN.DBC == "":
			return cli.FieldError("can-dbc", "must be set with --source can")
		case (c.CAN.Interface == "") == (c.CAN.Candump == ""):
			return cli.FieldError("can-interface", "set exactly one of --can-interface and --can-candump")
		}
		for name, p := range map[string]string{"can-dbc": c.CAN.DBC, "can-candump": c.CAN.Candump, "can-collect": c.CANCollect} {
			if p == "" {
				continue
			}
			if _, err := os.Stat(p); err != nil {
				return cli.FieldError(name, "%v", err)
			}
		}
	}
	if c.has("gps") {
		if err := c.GPS.Validate(); err != nil {
			return err
		}
	}
	return nil
}

func (c Config) simStart() (time.Time, error) {
	if c.SimStart == "" {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	return time.Parse(time.RFC3339, c.SimStart)
}

func (c Config) simCenter() (float64, float64, error) {
	a, b, ok := strings.Cut(c.SimCenter, ",")
	if !ok {
		return 0, 0, fmt.Errorf("%q: want lat,lon", c.SimCenter)
	}
	lat, err1 := strconv.ParseFloat(strings.TrimSpace(a), 64)
	lon, err2 := strconv.ParseFloat(strings.TrimSpace(b), 64)
	if err1 != nil || err2 != nil || lat < -85 || lat > 85 || lon < -180 || lon > 180 {
		return 0, 0, fmt.Errorf("%q: want lat,lon in degrees (|lat| <= 85)", c.SimCenter)
	}
	return lat, lon, nil
}

// MemoryLimit is the soft memory limit for the process: MemoryLimitBytes
// for each vehicle it runs, or 0 for none. One vehicle lives in about 6 MB
// of heap (4 MB of it the shared zstd encoder's tables); without a limit
// the garbage collector lets the heap grow to twice that before it runs,
// with one it runs earlier, and only as often as the limit needs.
func (c Config) MemoryLimit() int64 {
	n := int64(1)
	if c.has("sim") {
		n = int64(c.SimVehicles)
	}
	return c.MemoryLimitBytes * n
}

// Procs is the GOMAXPROCS the agent runs with: MaxProcs, or one per
// vehicle up to the machine's cores. One car's work (collect, encode,
// spool, publish) is sequential; a second core only adds thread hand-offs
// around each fsync (measured: about 0.3 µs CPU per reading at 1,000
// readings/s).
func (c Config) Procs() int {
	if c.MaxProcs > 0 {
		return c.MaxProcs
	}
	n := 1
	if c.has("sim") {
		n = c.SimVehicles
	}
	return max(1, min(n, runtime.NumCPU()))
}

// SimConfig is the simulator configuration the flags describe.
func (c Config) SimConfig() (sim.Config, error) {
	start, err := c.simStart()
	if err != nil {
		return sim.Config{}, err
	}
	lat, lon, err := c.simCenter()
	if err != nil {
		return sim.Config{}, err
	}
	s := sim.DefaultConfig()
	s.Seed, s.Vehicles, s.Start, s.IMUHz, s.IDPrefix = c.SimSeed, c.SimVehicles, start, c.SimIMUHz, c.SimIDPrefix
	s.CenterLat, s.CenterLon = lat, lon
	return s, nil
}
