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
	"fmt"
	"log/slog"
	"math"
	"math/bits"
	"path"
	"slices"

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

// slot is one signal: its name, its latest value (for conditions) and
// which rules read and capture it.
type slot struct {
	index         uint32
	name, unit    string
	kind          wire.Kind // 0 while unknown
	scale, offset float64   // the exact-integer form of its doubles

	num   float64
	str   string
	known bool
	t     int64

	// strs and strIndex intern a string signal's values for the rings
	// (a status takes a few values): up to maxInterned.
	strs     []string
	strIndex map[string]uint32

	hist    []*history // windowed functions over it
	refs    uint64     // rules whose condition reads it
	capture uint64     // rules whose windows hold it
	next    *slot      // the slot that followed it last time
}

func (s *slot) set(r *wire.Reading) {
	s.t, s.known, s.unit = r.Time, true, r.Unit // the ring's readings carry the unit of the signal's latest
	switch r.Value.Kind {
	case wire.KindDouble:
		s.num = r.Value.Float
		s.known = !math.IsNaN(s.num)
	case wire.KindInt:
		s.num = float64(r.Value.Int)
	case wire.KindBool:
		s.num = 0
		if r.Value.Bool {
			s.num = 1
		}
	case wire.KindString:
		s.str = r.Value.Str
		s.known = s.kind == wire.KindString || s.kind == 0
	}
}

// maxInterned bounds the distinct values a string signal interns; rings
// keep the values beyond it in a table of their own.
const maxInterned = 1024

// intern returns the index of a string value of the slot.
func (s *slot) intern(v string) (uint32, bool) {
	if i, ok := s.strIndex[v]; ok {
		return i, true
	}
	if len(s.strs) >= maxInterned {
		return 0, false
	}
	if s.strIndex == nil {
		s.strIndex = map[string]uint32{}
	}
	i := uint32(len(s.strs))
	s.strs = append(s.strs, v)
	s.strIndex[v] = i
	return i, true
}

// preTriggerPart bounds the readings of one pre-trigger part.
const preTriggerPart = 2000

// maxSlots bounds the signals the engine tracks: names outside the
// catalog beyond it are not captured.
const maxSlots = 1 << 16

// locationFields are the fix fields a condition reads, in ring order.
var locationFields = [fixFields]string{"lat", "lon", "alt", "speed", "heading", "accuracy"}

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

func (e *Engine) addSlot(name, unit string) *slot {
	s := &slot{index: uint32(len(e.slots)), name: name, unit: unit}
	e.slots = append(e.slots, s)
	e.byName[name] = s
	return s
}

// conditionSlot is the slot a condition reads by name.
func (e *Engine) conditionSlot(name string) (*slot, error) {
	if s, ok := e.byName[name]; ok && s != e.loc {
		return s, nil
	}
	if e.strict {
		if c := closest(name, e.names); c != "" {
			return nil, fmt.Errorf("unknown signal %s (did you mean %s?)", name, c)
		}
		return nil, fmt.Errorf("unknown signal %s: the vehicle's sources do not emit it", name)
	}
	return e.addSlot(name, ""), nil
}

// lookup finds a reading's slot, trying first the one that followed the
// previous reading's last time (readings come in a repeating order: the
// signals of one CAN frame, frame after frame). A signal outside the
// catalog gets a slot of its own, up to maxSlots.
func (e *Engine) lookup(r *wire.Reading) *slot {
	if p := e.prev; p != nil && p.next != nil && p.next.name == r.Signal {
		e.prev = p.next
		return p.next
	}
	s, ok := e.byName[r.Signal]
	if !ok {
		if len(e.slots) >= maxSlots {
			return nil
		}
		s = e.addSlot(r.Signal, r.Unit)
		for _, ru := range e.rules {
			if ru.selects(s.name) {
				s.capture |= ru.bit
			}
		}
	}
	if s.kind == 0 {
		s.kind = r.Value.Kind
		if r.Value.Kind == wire.KindDouble && r.Scale != 0 {
			s.scale, s.offset = r.Scale, r.Offset
		}
	}
	if e.prev != nil {
		e.prev.next = s
	}
	e.prev = s
	return s
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
