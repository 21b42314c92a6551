package capture

import (
	"errors"
	"fmt"
	"path"
	"slices"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// rule is a compiled rule and its state.
type rule struct {
	cfg   Rule // with defaults
	index int
	bit   uint64
	cond  boolFn
	clock bool // the condition reads the clock
	// maxEntries bounds the ring entries one window takes before its
	// trigger: the rule's budget, less its histories'.
	maxEntries int
	hists      []*history
	reads      []*slot // the slots the condition reads
	m          ruleMetrics

	prevTrue    bool
	triggered   bool
	lastTrigger int64
	hadWindow   bool
	lastEnd     int64
	w           *window // the open window (&win), or nil
	win         window

	pending      []wire.Reading // this item's captured readings, while a window is open
	pendingFixes []wire.Fix
}

func (r *rule) histBytes() int64 {
	var n int64
	for _, h := range r.hists {
		n += h.bytes()
	}
	return n
}

// history is the rule's history of s over window, shared by the calls
// that ask for the same.
func (r *rule) history(s *slot, window int64) *history {
	for _, h := range r.hists {
		if h.window == window && h.slot == s {
			return h
		}
	}
	h := &history{window: window, slot: s}
	r.hists = append(r.hists, h)
	return h
}

// selects reports whether the rule's windows hold the signal name.
func (r *rule) selects(name string) bool {
	for _, g := range r.cfg.Signals {
		if ok, _ := path.Match(g, name); ok {
			return true
		}
	}
	return false
}

// compile builds the rules of cfg. A rule equal to one of old (same name,
// same settings) is kept with its state: its buffer, its open window.
func (e *Engine) compile(cfg Config, old []*rule) ([]*rule, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var errs []error
	rules := make([]*rule, 0, len(cfg.Rules))
	for i, rc := range cfg.Rules {
		rc = rc.withDefaults()
		if j := slices.IndexFunc(old, func(o *rule) bool { return equalRules(o.cfg, rc) }); j >= 0 {
			rules = append(rules, old[j])
			continue
		}
		r := &rule{cfg: rc, bit: 1 << i}
		cond, clock, err := compileCondition(rc.When, e, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("rules[%d].when: %w", i, err))
			continue
		}
		r.cond, r.clock = cond, clock
		histories := int64(0)
		for _, h := range r.hists {
			histories += h.maxBytes()
		}
		budget := int64(rc.BufferBytes) - histories
		if budget < minBufferBytes {
			errs = append(errs, fmt.Errorf("rules[%d].buffer_bytes: %d leaves under %d bytes for the buffer beside its windowed functions' history (%d bytes)",
				i, rc.BufferBytes, minBufferBytes, histories))
			continue
		}
		r.maxEntries = int(budget / entrySize)
		for j, g := range rc.Signals {
			if g == "*" || g == Location {
				continue
			}
			if !slices.ContainsFunc(e.names, func(n string) bool { ok, _ := path.Match(g, n); return ok }) && e.strict {
				errs = append(errs, fmt.Errorf("rules[%d].signals[%d]: %q matches no signal of the vehicle's sources", i, j, g))
			}
		}
		rules = append(rules, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rules, nil
}

func equalRules(a, b Rule) bool {
	return a.Name == b.Name && a.When == b.When && a.Before == b.Before && a.After == b.After &&
		slices.Equal(a.Signals, b.Signals) && a.Edge == b.Edge && a.MinInterval == b.MinInterval &&
		a.Priority == b.Priority && a.BufferBytes == b.BufferBytes
}

// commit puts rules in force: each gets its bit, and every slot learns
// which rules read and capture it.
func (e *Engine) commit(rules []*rule) {
	e.rules, e.clocked, e.open, e.maxBefore = rules, 0, 0, 0
	var budget int64
	for _, s := range e.slots {
		s.refs, s.capture, s.hist = 0, 0, nil
	}
	for i, r := range rules {
		r.index, r.bit = i, 1<<i
		r.m = e.deps.Metrics.rule(r.cfg.Name)
		if r.w != nil {
			e.open |= r.bit
		}
		e.maxBefore = max(e.maxBefore, int64(r.cfg.Before))
		budget += int64(r.maxEntries) * entrySize
		if r.clock {
			e.clocked |= r.bit
		}
		for _, s := range r.reads {
			s.refs |= r.bit
		}
		for _, h := range r.hists {
			h.slot.hist = append(h.slot.hist, h)
		}
		for _, s := range e.slots {
			if r.selects(s.name) {
				s.capture |= r.bit
			}
		}
	}
	e.dirty = 0
	if e.ring == nil {
		e.ring = newRing(budget)
	}
	e.ring.budget = budget // a smaller budget evicts at the next push
}

// Reload puts the rules of cfg in force. Rules that did not change keep
// their state; the open windows of the others close (their last part goes,
// final). On an error nothing changes.
func (e *Engine) Reload(cfg Config) error {
	rules, err := e.compile(cfg, e.rules)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range e.rules {
		if !slices.Contains(rules, r) && r.w != nil {
			errs = append(errs, e.close(r))
		}
	}
	e.commit(rules)
	e.logger.Debug("capture rules in force", "rules", e.Rules())
	return errors.Join(errs...)
}
