// Package source is the one shape every reading source of the edge agent
// has, and the registry the agent chooses sources from by name.
//
// A source kind (CAN with a DBC, GPS, the simulator; next OBD-II PIDs over
// ISO-TP, J1939, a custom sensor) is one package that provides a Spec: its
// name, and a Config that declares the kind's flags (each prefixed with the
// name), validates them, says what the source reads (Input), which signals
// it can emit (for the vehicle's catalog) and builds the Source. Adding a
// kind to the agent is adding its Spec to the agent's registry: one line.
//
// A Source runs until its context is cancelled or its input ends, handing
// the agent Items (readings, location fixes) through Emit. The agent copies
// what it keeps, so a source reuses its buffers and allocates nothing per
// reading.
package source

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Items are what a source read at one instant (one CAN frame, one GNSS
// epoch, one simulated second).
type Items struct {
	// Readings go to the live stream (and are seen by capture rules).
	Readings []wire.Reading
	// Fixes are location fixes, which go to the live stream too.
	Fixes []wire.Fix
	// Unsampled are readings the source decoded but its own sampling (a
	// CAN collection config) keeps out of the live stream. Only capture
	// windows, which hold every signal at full rate, carry them. Sources
	// fill it only when Deps.Unsampled asks.
	Unsampled []wire.Reading
	// Clock, when not zero, is the source's clock after these items (Unix
	// ns): no item timed earlier follows. A recorded source that knows this
	// (a simulation step) lets a batch that old close at once rather than
	// at its next item.
	Clock int64
}

// Len is the number of readings (sampled or not) and fixes.
func (it Items) Len() int { return len(it.Readings) + len(it.Fixes) + len(it.Unsampled) }

// Emit hands items to the agent. The agent copies what it keeps: the
// source may reuse the slices as soon as Emit returns. Emit blocks while
// the agent is behind (back-pressure) and never once the Run's context is
// cancelled. It is called from one goroutine at a time per Source.
type Emit func(Items)

// Source produces readings and fixes.
type Source interface {
	// Run emits items until ctx is cancelled (it then returns nil) or a
	// finite input ends (nil too). Any other error is permanent: the input
	// cannot be read. Run is called once.
	Run(ctx context.Context, emit Emit) error
}

// Clock says whose clock a source's item times are.
type Clock uint8

const (
	// Live sources time items as they read them, on the board's clock
	// (or a receiver's): batches also close on the wall clock when items
	// stop coming.
	Live Clock = iota + 1
	// Recorded sources replay a recording or run a simulation: item times
	// are the recording's, and batches close by them alone, at any speed.
	Recorded
)

func (c Clock) String() string {
	switch c {
	case Live:
		return "live"
	case Recorded:
		return "recorded"
	}
	return fmt.Sprintf("clock(%d)", uint8(c))
}

// Input describes what a configured source reads.
type Input struct {
	Clock Clock
	// Finite is true when Run returns by itself once its input ends (a log
	// file, a simulation of set length).
	Finite bool
}

// Deps are what the agent gives a source. Nil Logger and Registerer get
// no-op defaults.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Unsampled asks the source to emit Items.Unsampled as well: capture
	// rules are configured and want every signal at full rate.
	Unsampled bool
}

// Config is one source kind's configuration.
type Config interface {
	// RegisterFlags declares the kind's flags, each prefixed "NAME-", with
	// their defaults.
	RegisterFlags(fs *flag.FlagSet)
	// Validate checks the flags of a selected source, naming the bad one.
	// It may look at the files they name; Signals and New read them.
	Validate() error
	// Input says what the configured source reads.
	Input() Input
	// Signals lists the signals the source can emit, for the vehicle's
	// catalog; nil when it emits only fixes. An error means the source's
	// definition files (a DBC) are unusable.
	Signals() ([]wire.SignalSpec, error)
	// New builds the source. It reads and checks every file the source
	// needs, so a bad one is an error at start-up.
	New(deps Deps) (Source, error)
}

// Fleet is implemented by a Config whose source simulates many vehicles
// (the simulator): the agent then runs one spool, uplink and Source per
// vehicle, and the kind must be the only source.
type Fleet interface {
	// Vehicles are the IDs of the vehicles it simulates.
	Vehicles() []string
	// NewVehicle builds the source of vehicle i of Vehicles.
	NewVehicle(i int, deps Deps) (Source, error)
	// Decoder is the decoder tag the vehicles' batches carry.
	Decoder() string
}

// Spec is one source kind in a registry.
type Spec struct {
	// Name selects the kind (--source NAME) and prefixes its flags.
	Name string
	// Summary is a few words for --source's help.
	Summary string
	// NewConfig returns the kind's configuration with its defaults.
	NewConfig func() Config
}

// Registry is the source kinds an agent knows. It is immutable.
type Registry struct {
	specs []Spec
}

// NewRegistry lists the kinds; a name may appear once.
func NewRegistry(specs ...Spec) *Registry {
	seen := map[string]bool{}
	for _, s := range specs {
		if s.Name == "" || seen[s.Name] || s.NewConfig == nil {
			panic(fmt.Sprintf("source: bad or duplicate spec %q", s.Name))
		}
		seen[s.Name] = true
	}
	return &Registry{specs: slices.Clone(specs)}
}

// Names lists the kinds in registration order.
func (r *Registry) Names() []string {
	out := make([]string, len(r.specs))
	for i, s := range r.specs {
		out[i] = s.Name
	}
	return out
}

// Lookup finds a kind by name.
func (r *Registry) Lookup(name string) (Spec, bool) {
	for _, s := range r.specs {
		if s.Name == name {
			return s, true
		}
	}
	return Spec{}, false
}

// Help describes the kinds for a flag's help: "can (…), gps (…)".
func (r *Registry) Help() string {
	parts := make([]string, len(r.specs))
	for i, s := range r.specs {
		parts[i] = s.Name + " (" + s.Summary + ")"
	}
	return strings.Join(parts, ", ")
}

// Configs builds every kind's configuration with its defaults, by name.
func (r *Registry) Configs() map[string]Config {
	out := make(map[string]Config, len(r.specs))
	for _, s := range r.specs {
		out[s.Name] = s.NewConfig()
	}
	return out
}
