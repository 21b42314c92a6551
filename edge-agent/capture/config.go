package capture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Edge is when a rule's condition triggers a capture.
type Edge string

// The trigger modes.
const (
	// Rising triggers when the condition becomes true (it was false, or
	// not yet known, at the previous evaluation).
	Rising Edge = "rising"
	// Level triggers at every evaluation that finds the condition true:
	// the window stays open while it holds, and After beyond.
	Level Edge = "level"
)

// Priority says how a rule's windows travel.
type Priority string

// The priorities.
const (
	// High windows go to the spool's capture class: sent before any
	// backlog, dropped last when the spool is full.
	High Priority = "high"
	// Normal windows travel with the bulk signals: sent in order with the
	// backlog, dropped first.
	Normal Priority = "normal"
)

// Defaults.
const (
	DefaultBufferBytes = 1 << 20
	// MaxBufferBytes bounds one rule's pre-trigger buffer.
	MaxBufferBytes = 64 << 20
	// MaxRules bounds the rules of one configuration.
	MaxRules = 64
	// MaxConditionBytes bounds a condition's text.
	MaxConditionBytes = 4096
	// MaxWindow bounds Before and After.
	MaxWindow = time.Hour
	// Location is the name under which a rule's Signals select the
	// location fixes, and the prefix of the fix fields a condition reads
	// (location.lat, location.lon, location.alt, location.speed in m/s,
	// location.heading, location.accuracy).
	Location = "location"
)

// ByteSize is a size in bytes, written in YAML as a number or with a unit:
// "512KiB", "1MiB", "2MB".
type ByteSize int64

var sizeUnits = map[string]int64{"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}

var sizePattern = regexp.MustCompile(`^\s*([0-9]+)\s*([A-Za-z]*)\s*$`)

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	m := sizePattern.FindStringSubmatch(n.Value)
	if n.Kind != yaml.ScalarNode || m == nil {
		return fmt.Errorf("line %d: want a size such as 1048576 or \"1MiB\", got %q", n.Line, n.Value)
	}
	unit, ok := sizeUnits[strings.ToUpper(m[2])]
	v, err := strconv.ParseInt(m[1], 10, 64)
	if !ok || err != nil || v > (1<<62)/unit {
		return fmt.Errorf("line %d: want a size such as 1048576 or \"1MiB\", got %q", n.Line, n.Value)
	}
	*b = ByteSize(v * unit)
	return nil
}

// Rule is one capture rule: when its condition (When) triggers, the
// signals it selects are captured at full rate from Before the trigger to
// After it, as batches marked with the window's capture id and the rule's
// name.
type Rule struct {
	// Name identifies the rule: it labels the metrics and the captured
	// rows (capture_rule). Letters, digits, '_', '.', '-'; up to 64.
	Name string `yaml:"name"`
	// When is the trigger condition, an expression over decoded signals
	// (see the package documentation).
	When string `yaml:"when"`
	// Before and After bound the window around the trigger.
	Before cli.Duration `yaml:"before"`
	After  cli.Duration `yaml:"after"`
	// Signals are globs (path.Match) over signal names choosing what the
	// window holds, "location" for the fixes; empty means everything.
	Signals []string `yaml:"signals,omitempty"`
	// Edge is rising (default) or level.
	Edge Edge `yaml:"edge,omitempty"`
	// MinInterval ignores triggers less than this after the previous one.
	MinInterval cli.Duration `yaml:"min_interval,omitempty"`
	// Priority is high (default) or normal.
	Priority Priority `yaml:"priority,omitempty"`
	// BufferBytes bounds the readings before the trigger one window takes
	// (and the history its windowed functions keep); default 1 MiB. The
	// engine's shared buffer holds at most the sum of its rules' budgets.
	// Past it the oldest readings go first: the window then starts later
	// than Before.
	BufferBytes ByteSize `yaml:"buffer_bytes,omitempty"`
}

// withDefaults fills the optional fields.
func (r Rule) withDefaults() Rule {
	if r.Edge == "" {
		r.Edge = Rising
	}
	if r.Priority == "" {
		r.Priority = High
	}
	if r.BufferBytes == 0 {
		r.BufferBytes = DefaultBufferBytes
	}
	if len(r.Signals) == 0 {
		r.Signals = []string{"*"}
	}
	return r
}

// Config is a capture rules file.
type Config struct {
	Rules []Rule `yaml:"rules"`
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$`)

// LoadConfig reads and validates a capture rules file (YAML; unknown
// fields are errors). Conditions are compiled by New and Reload, which
// know the vehicle's signals.
func LoadConfig(file string) (Config, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return Config{}, fmt.Errorf("capture rules: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("capture rules %s: %w", file, err)
	}
	return c, nil
}

// ParseConfig parses and validates a capture rules file.
func ParseConfig(data []byte) (Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return Config{}, err
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks every rule but its condition; the error names the field,
// e.g. "rules[2].before: must be at most 1h0m0s".
func (c Config) Validate() error {
	var errs []error
	if len(c.Rules) > MaxRules {
		errs = append(errs, fmt.Errorf("rules: %d rules, at most %d", len(c.Rules), MaxRules))
	}
	names := map[string]int{}
	for i, r := range c.Rules {
		field := func(name, format string, a ...any) {
			errs = append(errs, fmt.Errorf("rules[%d].%s: "+format, append([]any{i, name}, a...)...))
		}
		switch j, dup := names[r.Name]; {
		case !namePattern.MatchString(r.Name):
			field("name", "%q: want 1 to 64 letters, digits, '_', '.' or '-'", r.Name)
		case dup:
			field("name", "%q is also rules[%d]'s name", r.Name, j)
		default:
			names[r.Name] = i
		}
		if strings.TrimSpace(r.When) == "" {
			field("when", "required: the trigger condition")
		} else if len(r.When) > MaxConditionBytes {
			field("when", "%d bytes, at most %d", len(r.When), MaxConditionBytes)
		}
		for _, d := range []struct {
			name string
			v    cli.Duration
		}{{"before", r.Before}, {"after", r.After}, {"min_interval", r.MinInterval}} {
			if d.v < 0 || time.Duration(d.v) > MaxWindow {
				field(d.name, "%v: want 0 to %v", time.Duration(d.v), MaxWindow)
			}
		}
		if r.Before == 0 && r.After == 0 {
			field("after", "before and after are both 0: the window would be empty")
		}
		for j, g := range r.Signals {
			if _, err := path.Match(g, ""); err != nil || g == "" {
				field(fmt.Sprintf("signals[%d]", j), "bad pattern %q", g)
			}
		}
		switch r.Edge {
		case "", Rising, Level:
		default:
			field("edge", "%q: want rising or level", r.Edge)
		}
		switch r.Priority {
		case "", High, Normal:
		default:
			field("priority", "%q: want high or normal", r.Priority)
		}
		if r.BufferBytes < 0 || r.BufferBytes > MaxBufferBytes || (r.BufferBytes > 0 && r.BufferBytes < minBufferBytes) {
			field("buffer_bytes", "%d: want %d to %d", r.BufferBytes, minBufferBytes, MaxBufferBytes)
		}
	}
	return errors.Join(errs...)
}
