// Package capture is the edge agent's condition-triggered capture: rules
// that watch the decoded signals and, when a condition triggers, send the
// window around it — every selected signal at full rate, from Before the
// trigger to After it — as batches marked with the window's capture id
// and the rule's name. The batches are spooled, acked end to end and
// deduplicated like every other batch; the sink writes the id and the rule
// as columns, so `SELECT … WHERE capture_rule = 'harsh_brake'` finds them.
//
// # Rules
//
// A rules file (YAML, see Rule) lists, per rule: a name; the condition
// (when); the window (before, after); the signals to capture (globs over
// signal names, "location" for the fixes; all by default); the edge
// (rising: when the condition becomes true; level: while it holds); a
// minimum time between triggers; a priority (high windows go ahead of the
// backlog and are dropped last); and the byte budget of its pre-trigger
// buffer.
//
// # Conditions
//
// A condition is an expression (expr-lang/expr syntax) over signals by
// name — CAR_SPEED.CAR_SPEED, or signal("odd-name") for a name that is not
// an identifier — and the location fix's fields (location.speed in m/s,
// location.lat, …), with numbers, strings, + - * / % **, comparisons,
// and/or/not, cond ? a : b, x in [a, b], and the functions abs, min, max,
// floor, ceil, round; change(S, "1s") (the value now minus a second ago),
// rate(S, "1s") (change per second), avg_over, min_over and max_over(S,
// "10s") (over the last ten seconds: max_over(T, "10s") < 0 means below 0
// for ten seconds), and age(S) (seconds since S was last read). Times are
// the readings' own clock. A signal not read yet is unknown, and so is
// everything computed from it; a rule triggers only on a known true.
//
// A condition is parsed by expr's parser and compiled into closures over
// the engine's signal slots: evaluating it allocates nothing. It is
// evaluated after each item (a CAN frame, a fix) that changes a signal it
// reads, or every item when it reads the clock (windowed functions, age).
//
// # Windows
//
// The engine keeps the readings of every signal a rule captures in one
// pre-trigger buffer shared by its rules: a ring of 24-byte entries (the
// name, unit and scale live once per signal) holding the longest Before
// of the rules, within the sum of their byte budgets. On a trigger the
// rule's signals from Before the trigger on — the newest of them, at most
// its own budget (BufferBytes, less its windowed functions' history, at
// most 16 KiB each, twice that for min_over and max_over) — become the
// window's first batches; the readings that follow, until After past the
// last trigger, stream as batches that close like the live stream's. A
// full buffer drops its oldest readings first: the windows then start
// later than their Before (counted). Sharing the buffer keeps one copy of
// a reading however many rules capture it: ten rules of ten seconds cost
// what one does.
//
// A trigger while the window is open extends it; a rule's windows never
// overlap, so a reading is in at most one window of a rule. Rules are
// evaluated and captured independently: a reading in the windows of two
// rules travels once for each.
//
// An Engine is used from one goroutine.
//
// Metrics (Metrics, shared by the vehicles of a process):
//
//	fleet_agent_capture_triggers_total{rule}       triggers that opened or extended a window
//	fleet_agent_capture_windows_total{rule}        windows opened
//	fleet_agent_capture_readings_total{rule}       readings and fixes spooled in windows
//	fleet_agent_capture_evicted_total              pre-trigger readings dropped by the byte budget
//	fleet_agent_capture_buffer_bytes               memory of the capture buffers, summed over vehicles
//	fleet_agent_capture_reloads_total{result}      rule reloads, ok or error
package capture

import (
	"errors"
	"log/slog"
	"math"
	"math/bits"

	"github.com/fleetpipe/fleetpipe/edge-agent/batcher"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Batch is one part of a window, for the agent to encode and spool.
type Batch struct {
	// Capture marks the batch. The first part's ID is 0: its own seq,
	// which Spool sets, becomes the window's capture id.
	Capture  wire.Capture
	Priority Priority
	// Readings and Fixes are valid during the Spool call only.
	Readings []wire.Reading
	Fixes    []wire.Fix
}

// Deps are the engine's dependencies.
type Deps struct {
	Logger  *slog.Logger // nil: discard
	Metrics *Metrics     // nil: none
	// Spool encodes and spools one part of a window and returns its seq.
	// For the first part it sets b.Capture.ID to that seq before encoding.
	Spool func(b *Batch) (seq uint64, err error)
}

// Options are the agent's settings the engine follows.
type Options struct {
	// Batch closes the parts of a window as the live stream's batches
	// close.
	Batch batcher.Config
	// Live says the sources read now: Add gets arrival times on the wall
	// clock, and parts and windows also close on it (Expire).
	Live bool
}

// preTriggerPart bounds the readings of one pre-trigger part.
const preTriggerPart = 2000

// Engine evaluates capture rules over one vehicle's items and spools the
// windows they trigger.
type Engine struct {
	opt    Options
	deps   Deps
	logger *slog.Logger

	slots  []*slot
	byName map[string]*slot
	names  []string // the catalog's, for "did you mean"
	strict bool     // a condition may read only the catalog's signals
	loc    *slot    // "location": what Signals select the fixes by
	fields [fixFields]*slot
	prev   *slot

	rules []*rule
	// ring is the pre-trigger buffer the rules share; it keeps the
	// longest Before of the rules, within the sum of their budgets.
	ring      *ring
	maxBefore int64
	dirty     uint64 // rules to evaluate after this item
	open      uint64 // rules with a window open
	clocked   uint64 // rules evaluated after every item
	now       int64  // the latest item's time

	reportedEvicted uint64 // what the metrics have of ring.evicted
	reportedBytes   int64  // and of MemoryBytes

	batch  Batch // reused for every part
	rs     []wire.Reading
	fixBuf []wire.Fix
}

// New compiles the rules for a vehicle whose sources emit the given
// signals (the catalog's). A condition may read only those and the fix
// fields; an error names the rule and the field, and shows where in the
// condition.
func New(cfg Config, signals []wire.SignalSpec, opt Options, deps Deps) (*Engine, error) {
	if deps.Spool == nil {
		return nil, errors.New("capture: no Spool")
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	e := &Engine{opt: opt, deps: deps, logger: logger, byName: map[string]*slot{}, strict: true}
	for _, s := range signals {
		if _, dup := e.byName[s.Name]; dup {
			continue
		}
		sl := e.addSlot(s.Name, s.Unit)
		sl.kind, sl.scale, sl.offset = s.Kind, s.Scale, s.Offset
		e.names = append(e.names, s.Name)
	}
	e.loc = e.addSlot(Location, "")
	for i, f := range locationFields {
		e.fields[i] = e.addSlot(Location+"."+f, "")
		e.fields[i].kind = wire.KindDouble
		e.names = append(e.names, e.fields[i].name)
	}
	rules, err := e.compile(cfg, nil)
	if err != nil {
		return nil, err
	}
	e.commit(rules)
	return e, nil
}

// Add takes what a source emitted at arrival (Unix ns on the wall clock,
// for live sources; ignored otherwise): it updates the signals, evaluates
// the rules that read them, captures into rings and open windows, and
// spools the parts that close. It allocates nothing once the buffers have
// grown.
func (e *Engine) Add(it source.Items, arrival int64) error {
	hi, ok := latest(it)
	if !ok {
		return nil
	}
	e.now = hi
	for _, r := range e.rules {
		if r.w != nil && hi > r.w.end {
			if err := e.close(r); err != nil {
				return err
			}
		}
	}
	for i := range it.Readings {
		e.reading(&it.Readings[i])
	}
	for i := range it.Unsampled {
		e.reading(&it.Unsampled[i])
	}
	for i := range it.Fixes {
		e.fix(&it.Fixes[i])
	}
	m := e.dirty | e.clocked
	e.dirty = 0
	for m != 0 {
		r := e.rules[bits.TrailingZeros64(m)]
		m &= m - 1
		if err := e.evaluate(r, arrival); err != nil {
			return err
		}
	}
	e.ring.dropBefore(hi - e.maxBefore)
	e.report()
	for _, r := range e.rules {
		if r.w == nil {
			continue
		}
		if err := e.stream(r, arrival, it.Clock); err != nil {
			return err
		}
		if it.Clock != 0 && it.Clock > r.w.end {
			if err := e.close(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// latest is the time of the newest item.
func latest(it source.Items) (int64, bool) {
	var hi int64
	ok := false
	for _, rs := range [2][]wire.Reading{it.Readings, it.Unsampled} {
		for i := range rs {
			if !ok || rs[i].Time > hi {
				hi, ok = rs[i].Time, true
			}
		}
	}
	for i := range it.Fixes {
		if !ok || it.Fixes[i].Time > hi {
			hi, ok = it.Fixes[i].Time, true
		}
	}
	return hi, ok
}

func (e *Engine) reading(r *wire.Reading) {
	s := e.lookup(r)
	if s == nil {
		return
	}
	s.set(r)
	if s.known {
		for _, h := range s.hist {
			h.push(r.Time, s.num)
		}
	}
	e.dirty |= s.refs
	if s.capture == 0 {
		return
	}
	e.ring.pushReading(s, r)
	for m := s.capture & e.open; m != 0; m &= m - 1 {
		ru := e.rules[bits.TrailingZeros64(m)]
		ru.pending = append(ru.pending, *r)
	}
}

func (e *Engine) fix(f *wire.Fix) {
	vals := [fixFields]float64{f.Lat, f.Lon, f.Alt, f.Speed, f.Heading, f.Accuracy}
	for i, s := range e.fields {
		s.num, s.t, s.known = vals[i], f.Time, !math.IsNaN(vals[i])
		if s.known {
			for _, h := range s.hist {
				h.push(f.Time, s.num)
			}
		}
		e.dirty |= s.refs
	}
	if e.loc.capture == 0 {
		return
	}
	e.ring.pushFix(e.loc.index, f)
	for m := e.loc.capture & e.open; m != 0; m &= m - 1 {
		ru := e.rules[bits.TrailingZeros64(m)]
		ru.pendingFixes = append(ru.pendingFixes, *f)
	}
}

// evaluate runs r's condition at the current item and acts on a trigger:
// a window opens (its ring becomes its first parts) or the open one is
// extended.
func (e *Engine) evaluate(r *rule, arrival int64) error {
	v, ok := r.cond()
	cur := ok && v
	fire := cur && (r.cfg.Edge == Level || !r.prevTrue)
	r.prevTrue = cur
	if !fire {
		return nil
	}
	now := e.now
	if r.triggered && now-r.lastTrigger < int64(r.cfg.MinInterval) && now >= r.lastTrigger {
		return nil
	}
	r.triggered, r.lastTrigger = true, now
	r.m.triggers.Inc()
	after := int64(r.cfg.After)
	if w := r.w; w != nil {
		w.end = max(w.end, now+after)
		w.endWall = max(w.endWall, arrival+after)
		return nil
	}
	start := now - int64(r.cfg.Before)
	if r.hadWindow && start <= r.lastEnd {
		start = r.lastEnd + 1 // a rule's windows never overlap
	}
	r.m.windows.Inc()
	if r.win.b == nil {
		r.win.b = batcher.New(e.opt.Batch)
	}
	w := &r.win // reused: a trigger allocates nothing
	w.id, w.parts, w.trigger, w.start, w.end, w.endWall = 0, 0, now, start, now+after, arrival+after
	r.w = w
	e.open |= r.bit
	// The pre-trigger readings are complete: they go now, ahead of the
	// stream, in parts of at most preTriggerPart readings (a bounded
	// buffer and encoder for a window of any length), at most the rule's
	// budget's worth.
	part := min(max(1, e.opt.Batch.MaxReadings), preTriggerPart)
	var err error
	e.rs, e.fixBuf, err = e.ring.window(start, r.bit, e.slots, r.maxEntries, part, e.rs, e.fixBuf,
		func(rs []wire.Reading, fixes []wire.Fix, last bool) error {
			return e.spool(r, rs, fixes, last && after == 0)
		})
	if err != nil {
		return err
	}
	if after == 0 {
		e.endWindow(r) // its last pre-trigger part went final
	}
	return nil
}

// stream adds the item's captured readings to r's open window, spooling
// a part when it closes as a live batch would.
func (e *Engine) stream(r *rule, arrival, clock int64) error {
	w := r.w
	defer func() {
		clear(r.pending)
		r.pending, r.pendingFixes = r.pending[:0], r.pendingFixes[:0]
	}()
	if len(r.pending) == 0 && len(r.pendingFixes) == 0 {
		return nil
	}
	if !w.b.Fits(r.pending, r.pendingFixes) {
		if err := e.part(r, false); err != nil {
			return err
		}
	}
	w.b.Add(arrival, r.pending, r.pendingFixes...)
	if w.b.Full() || (clock != 0 && w.b.DueAt(clock)) || (e.opt.Live && w.b.Expired(arrival)) {
		return e.part(r, false)
	}
	return nil
}

// part spools what r's window holds as its next part.
func (e *Engine) part(r *rule, final bool) error {
	rs, fixes, _, ok := r.w.b.Take()
	if !ok && !(final && r.w.parts > 0) {
		return nil // nothing held; a final marker only for a window that sent parts
	}
	defer r.w.b.Recycle(rs, fixes)
	return e.spool(r, rs, fixes, final)
}

func (e *Engine) spool(r *rule, rs []wire.Reading, fixes []wire.Fix, final bool) error {
	w := r.w
	b := &e.batch
	b.Capture = wire.Capture{ID: w.id, Rule: r.cfg.Name, TriggerTime: w.trigger, Part: w.parts, Final: final}
	b.Priority, b.Readings, b.Fixes = r.cfg.Priority, rs, fixes
	seq, err := e.deps.Spool(b)
	b.Readings, b.Fixes = nil, nil
	if err != nil {
		return err
	}
	if w.parts == 0 {
		w.id = seq
	}
	w.parts++
	r.m.readings.Add(float64(len(rs) + len(fixes)))
	return nil
}

// close ends r's window: its last part goes, marked final.
func (e *Engine) close(r *rule) error {
	err := e.part(r, true)
	e.endWindow(r)
	return err
}

// endWindow forgets r's open window; the next starts after its end.
func (e *Engine) endWindow(r *rule) {
	r.hadWindow, r.lastEnd, r.w = true, r.w.end, nil
	e.open &^= r.bit
	clear(r.pending)
	r.pending, r.pendingFixes = r.pending[:0], r.pendingFixes[:0]
}

// Expire closes, on the wall clock now, a live source's parts MaxAge after
// their first reading arrived and windows After past their last trigger.
func (e *Engine) Expire(now int64) error {
	if !e.opt.Live {
		return nil
	}
	for _, r := range e.rules {
		if r.w == nil {
			continue
		}
		if now >= r.w.endWall {
			if err := e.close(r); err != nil {
				return err
			}
			continue
		}
		if r.w.b.Expired(now) {
			if err := e.part(r, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// NextExpiry is the earliest wall time Expire has work at; ok is false when
// no window is open (or the sources are recorded).
func (e *Engine) NextExpiry() (at int64, ok bool) {
	if !e.opt.Live {
		return 0, false
	}
	for _, r := range e.rules {
		if r.w == nil {
			continue
		}
		t := r.w.endWall
		if x, open := r.w.b.ExpiresAt(); open {
			t = min(t, x)
		}
		if !ok || t < at {
			at, ok = t, true
		}
	}
	return at, ok
}

// Close ends every open window (the sources ended or the agent stops):
// their last parts go, marked final.
func (e *Engine) Close() error {
	var errs []error
	for _, r := range e.rules {
		if r.w != nil {
			errs = append(errs, e.close(r))
		}
	}
	return errors.Join(errs...)
}

// MemoryBytes is what the capture buffers hold: the pre-trigger ring and
// the windowed functions' histories.
func (e *Engine) MemoryBytes() int64 {
	n := e.ring.bytes()
	for _, r := range e.rules {
		n += r.histBytes()
	}
	return n
}

// report brings the buffer metrics up to date.
func (e *Engine) report() {
	if d := e.ring.evicted - e.reportedEvicted; d > 0 {
		e.deps.Metrics.evict(d)
		e.reportedEvicted = e.ring.evicted
	}
	if n := e.MemoryBytes(); n != e.reportedBytes {
		e.deps.Metrics.buffer(n - e.reportedBytes)
		e.reportedBytes = n
	}
}

// Rules are the names of the rules in force.
func (e *Engine) Rules() []string {
	out := make([]string, len(e.rules))
	for i, r := range e.rules {
		out[i] = r.cfg.Name
	}
	return out
}

// window is a rule's open capture window.
type window struct {
	id      uint64 // the first part's seq, once spooled
	parts   uint32
	trigger int64 // the first trigger's time
	start   int64
	end     int64 // After past the last trigger, readings' clock
	endWall int64 // the same on the wall clock (live sources)
	b       *batcher.Batcher
}
