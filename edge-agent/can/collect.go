package can

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"

	"gopkg.in/yaml.v3"

	"github.com/fleetpipe/fleetpipe/internal/cli"
)

// Mode is how a collection rule samples a signal.
type Mode string

// The collection modes.
const (
	ModeEvery    Mode = "every"    // every decoded value
	ModeInterval Mode = "interval" // at most one value per Interval
	ModeChange   Mode = "change"   // a value whose raw bits differ from the last kept one
	ModeDeadband Mode = "deadband" // a value more than Deadband away from the last kept one
)

// Duration is a time.Duration written in YAML as a Go duration string
// ("100ms", "1s"); a bare number is rejected (see cli.Duration).
type Duration = cli.Duration

// Rule says how to collect the signals whose "MESSAGE.SIGNAL" name matches
// Match.
type Rule struct {
	// Match is a glob (path.Match syntax: *, ?, [a-z]) over
	// "MESSAGE.SIGNAL", e.g. "WHEEL_SPEEDS.*" or "*.STEER_ANGLE".
	Match string `yaml:"match"`
	// Mode defaults to every.
	Mode Mode `yaml:"mode,omitempty"`
	// Interval is the minimum time between kept values (mode interval).
	Interval Duration `yaml:"interval,omitempty"`
	// Deadband is how far (in physical units) a value must move from the
	// last kept one to be kept (mode deadband; strictly more than).
	Deadband float64 `yaml:"deadband,omitempty"`
	// Heartbeat keeps a value anyway when this long has passed since the
	// last kept one (modes change and deadband), so a steady signal still
	// shows it is alive.
	Heartbeat Duration `yaml:"heartbeat,omitempty"`
}

// CollectConfig chooses which decoded signals become readings. With no
// rules every signal of every decoded frame is kept. Otherwise each signal
// follows the first rule that matches its name, and signals no rule
// matches are dropped (end with `match: "*"` to keep the rest).
//
// Rules apply per signal on the frames' own clock (log or receive time); a
// time step backwards restarts a signal's rule, so a replayed or reset
// clock never silences it.
type CollectConfig struct {
	Signals []Rule `yaml:"signals"`
}

// LoadCollectConfig reads and validates a YAML collection config. Unknown
// fields are errors.
func LoadCollectConfig(file string) (CollectConfig, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return CollectConfig{}, fmt.Errorf("collect config: %w", err)
	}
	c, err := ParseCollectConfig(data)
	if err != nil {
		return CollectConfig{}, fmt.Errorf("collect config %s: %w", file, err)
	}
	return c, nil
}

// ParseCollectConfig parses and validates a YAML collection config.
func ParseCollectConfig(data []byte) (CollectConfig, error) {
	var c CollectConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return CollectConfig{}, err
	}
	if err := c.Validate(); err != nil {
		return CollectConfig{}, err
	}
	return c, nil
}

// Validate checks the rules; the error names the bad field, e.g.
// "signals[2].deadband: must be positive".
func (c CollectConfig) Validate() error {
	var errs []error
	for i, r := range c.Signals {
		field := func(name, format string, a ...any) {
			errs = append(errs, fmt.Errorf("signals[%d].%s: "+format, append([]any{i, name}, a...)...))
		}
		if r.Match == "" {
			field("match", "required")
		} else if _, err := path.Match(r.Match, ""); err != nil {
			field("match", "bad pattern %q: %v", r.Match, err)
		}
		mode := r.Mode
		if mode == "" {
			mode = ModeEvery
		}
		switch mode {
		case ModeEvery, ModeInterval, ModeChange, ModeDeadband:
		default:
			field("mode", "unknown mode %q (want every, interval, change or deadband)", r.Mode)
			continue
		}
		if mode == ModeInterval {
			if r.Interval <= 0 {
				field("interval", "must be positive for mode interval")
			}
		} else if r.Interval != 0 {
			field("interval", "only for mode interval (mode is %s)", mode)
		}
		if mode == ModeDeadband {
			if !(r.Deadband > 0) || math.IsInf(r.Deadband, 1) {
				field("deadband", "must be positive")
			}
		} else if r.Deadband != 0 {
			field("deadband", "only for mode deadband (mode is %s)", mode)
		}
		switch {
		case r.Heartbeat < 0:
			field("heartbeat", "must be positive")
		case r.Heartbeat > 0 && mode != ModeChange && mode != ModeDeadband:
			field("heartbeat", "only for modes change and deadband (mode is %s)", mode)
		}
	}
	return errors.Join(errs...)
}

// DropReason says why a decoded value did not become a reading.
type DropReason string

// The reasons a decoded value is dropped; they are values of the readings
// metric's result label (beside "collected").
const (
	DropNotSelected DropReason = "not_selected" // no rule matches the signal
	DropInterval    DropReason = "interval"     // within Interval of the last kept value
	DropChange      DropReason = "change"       // same raw value as the last kept one
	DropDeadband    DropReason = "deadband"     // within Deadband of the last kept value
)

// collector applies a CollectConfig to the signals of one Decoder. It is not
// safe for concurrent use.
type collector struct {
	all    bool    // no rules: keep everything
	rules  []Rule  // with Mode defaulted
	ruleOf []int   // per signal index: rule index, or -1
	state  []state // per signal index
}

type state struct {
	kept bool
	t    int64
	raw  int64
	phys float64
}

// newCollector binds a validated config to a decoder's signals. A rule that
// matches no signal of the DBC is an error: it is almost always a typo.
func newCollector(c CollectConfig, dec *Decoder) (*collector, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	sigs := dec.Signals()
	col := &collector{all: len(c.Signals) == 0, state: make([]state, len(sigs))}
	if col.all {
		return col, nil
	}
	col.rules = make([]Rule, len(c.Signals))
	used := make([]bool, len(c.Signals))
	for i, r := range c.Signals {
		if r.Mode == "" {
			r.Mode = ModeEvery
		}
		col.rules[i] = r
	}
	col.ruleOf = make([]int, len(sigs))
	for _, s := range sigs {
		col.ruleOf[s.index] = -1
		for i, r := range col.rules {
			if ok, _ := path.Match(r.Match, s.FullName); ok {
				col.ruleOf[s.index] = i
				used[i] = true
				break
			}
		}
	}
	var errs []error
	for i, u := range used {
		if !u {
			errs = append(errs, fmt.Errorf("signals[%d].match: %q matches no signal of the DBC (or only signals an earlier rule took)", i, c.Signals[i].Match))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return col, nil
}

// keep decides whether the value decoded at time t (Unix ns) becomes a
// reading, and remembers it if so.
func (c *collector) keep(v Decoded, t int64) (bool, DropReason) {
	if c.all {
		return true, ""
	}
	idx := v.Signal.index
	ri := c.ruleOf[idx]
	if ri < 0 {
		return false, DropNotSelected
	}
	r := &c.rules[ri]
	st := &c.state[idx]
	ok, reason := true, DropReason("")
	if st.kept && t >= st.t {
		since := t - st.t
		switch r.Mode {
		case ModeInterval:
			ok, reason = since >= int64(r.Interval), DropInterval
		case ModeChange:
			ok, reason = v.Raw != st.raw, DropChange
		case ModeDeadband:
			ok, reason = math.Abs(v.Physical-st.phys) > r.Deadband, DropDeadband
		}
		if !ok && r.Heartbeat > 0 && since >= int64(r.Heartbeat) {
			ok = true
		}
	}
	if !ok {
		return false, reason
	}
	*st = state{kept: true, t: t, raw: v.Raw, phys: v.Physical}
	return true, ""
}
