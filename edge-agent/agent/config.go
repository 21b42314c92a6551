package agent

import (
	"flag"
	"runtime"
	"strings"
	"time"

	"github.com/fleetpipe/fleetpipe/edge-agent/capture"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/internal/cli"
	"github.com/fleetpipe/fleetpipe/internal/mqttconn"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Config is the agent's configuration.
type Config struct {
	MQTT mqttconn.Config

	// Sources lists where readings come from, by name in Registry: a fleet
	// source ("sim", each simulated car its own MQTT client and spool)
	// alone, or any of the others ("can", "gps") for the one vehicle named
	// by VehicleID.
	Sources   cli.StringList
	VehicleID string
	// SourceConfigs holds every registered kind's configuration, by name
	// (its flags are registered whether it is selected or not); only the
	// selected ones are validated and run.
	SourceConfigs map[string]source.Config

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
	// CaptureRules is the YAML file of condition-triggered capture rules
	// (edge-agent/capture); empty: none. SIGHUP reloads it.
	CaptureRules string
	// ExitWhenDone makes the agent exit once its sources have ended (a
	// finite simulation, a replayed log) and every batch is acked end to
	// end (or DrainTimeout passes, which is an error).
	ExitWhenDone bool
	DrainTimeout time.Duration
}

// Source returns the configuration of the registered source kind name
// (nil if there is none), for callers that set it in code:
//
//	cfg.Source("sim").(*sim.SourceConfig).NumVehicles = 20
func (c Config) Source(name string) source.Config { return c.SourceConfigs[name] }

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
	fs.Var(&c.Sources, "source", "comma-separated reading sources: "+Registry.Help()+
		"; sim alone, the others for the one vehicle --vehicle-id")
	fs.StringVar(&c.VehicleID, "vehicle-id", "", "this vehicle's ID (with --source can/gps); its MQTT client ID unless --mqtt-client-id is set")
	c.SourceConfigs = Registry.Configs()
	for _, name := range Registry.Names() {
		c.SourceConfigs[name].RegisterFlags(fs)
	}
	c.Spool.RegisterFlags(fs)
	c.PrioritySignals = cli.StringList{"status"}
	fs.Var(&c.PrioritySignals, "priority-signals", "comma-separated signals spooled with the fixes in the high class (dropped last when the spool is full)")
	fs.IntVar(&c.MaxInflight, "max-inflight", 64, "batches published and awaiting their end-to-end ack, at most")
	fs.BoolVar(&c.Catalog, "catalog", true, "register the signal catalog (DBC or simulator signals) with the cloud and, once acked, send signal indexes instead of names")
	fs.Float64Var(&c.BacklogRate, "backlog-rate", 20, "spooled backlog batches published per second after an outage (new batches go at once)")
	fs.DurationVar(&c.ReconnectMin, "reconnect-min", time.Second, "first wait before reconnecting to the broker (jittered, doubling)")
	fs.DurationVar(&c.ReconnectMax, "reconnect-max", time.Minute, "longest wait between reconnects")
	fs.BoolVar(&c.CheckConfig, "check-config", false, "validate the configuration (DBC and collection config included) and exit")
	fs.DurationVar(&c.BatchMaxAge, "batch-max-age", time.Second,
		"close a batch before its readings span this much of their own clock (a recording's, when replayed); with a live source also this long after its first reading arrived")
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
	fs.StringVar(&c.CaptureRules, "capture-rules", "",
		"YAML file of capture rules: the signals around a condition (a harsh brake, a DTC) at full rate, sent as marked batches; SIGHUP reloads it (empty: none)")
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
	if c.ExitWhenDone {
		for _, name := range c.Sources {
			if !c.SourceConfigs[name].Input().Finite {
				return cli.FieldError("exit-when-done", "needs sources that end (a log replayed, --sim-duration), and --source %s does not", name)
			}
		}
	}
	if c.CaptureRules != "" {
		if _, err := capture.LoadConfig(c.CaptureRules); err != nil {
			return cli.FieldError("capture-rules", "%v", err)
		}
	}
	if c.DrainTimeout <= 0 {
		return cli.FieldError("drain-timeout", "must be positive")
	}
	return nil
}

func (c Config) validateSources() error {
	if len(c.Sources) == 0 {
		return cli.FieldError("source", "must name at least one source")
	}
	seen := map[string]bool{}
	for _, name := range c.Sources {
		if _, ok := Registry.Lookup(name); !ok || c.SourceConfigs[name] == nil {
			return cli.FieldError("source", "%q: want %s", name, strings.Join(Registry.Names(), ", "))
		}
		if seen[name] {
			return cli.FieldError("source", "%q named twice", name)
		}
		seen[name] = true
	}
	if _, ok := c.fleet(); ok {
		if len(c.Sources) > 1 {
			return cli.FieldError("source", "%s runs a simulated fleet and does not mix with other sources", c.Sources[0])
		}
	} else if err := wire.CheckVehicleID(c.VehicleID); err != nil {
		return cli.FieldError("vehicle-id", "%v", err)
	}
	for _, name := range c.Sources {
		if err := c.SourceConfigs[name].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// fleet is the selected source that simulates a fleet, if any.
func (c Config) fleet() (source.Fleet, bool) {
	for _, name := range c.Sources {
		if f, ok := c.SourceConfigs[name].(source.Fleet); ok {
			return f, true
		}
	}
	return nil, false
}

// vehicles is how many vehicles the agent runs: a fleet source's, or one.
func (c Config) vehicles() int {
	if f, ok := c.fleet(); ok {
		return max(1, len(f.Vehicles()))
	}
	return 1
}

// MemoryLimit is the soft memory limit for the process: MemoryLimitBytes
// for each vehicle it runs, or 0 for none. One vehicle lives in about 6 MB
// of heap (4 MB of it the shared zstd encoder's tables); without a limit
// the garbage collector lets the heap grow to twice that before it runs,
// with one it runs earlier, and only as often as the limit needs.
func (c Config) MemoryLimit() int64 {
	return c.MemoryLimitBytes * int64(c.vehicles())
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
	return max(1, min(c.vehicles(), runtime.NumCPU()))
}
