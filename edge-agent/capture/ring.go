package capture

import (
	"math"
	"unsafe"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// entry is one reading, or one field of a fix, in a pre-trigger ring: 24
// bytes instead of a wire.Reading's 112. The signal's name, unit and scale
// live once in its slot.
type entry struct {
	t    int64
	bits uint64 // the value: see the entry kinds
	slot uint32
	kind uint8
}

// Entry kinds.
const (
	entryFloat    uint8 = iota // bits: math.Float64bits
	entryRaw                   // bits: the raw integer of a DBC double (value = raw*scale+offset of the slot)
	entryInt                   // bits: int64
	entryBool                  // bits: 0 or 1
	entryString                // bits unused: the value is in the ring's string table
	entryInterned              // bits: index into the slot's string values
	entryFix                   // a fix: bits the latitude; the next fixFields-1 entries the rest
	entryFixField              // lon, alt, speed, heading, accuracy, in that order
)

// fixFields is how many entries a fix takes.
const fixFields = 6

const (
	entrySize = int64(unsafe.Sizeof(entry{}))
	strSize   = int64(unsafe.Sizeof(""))
	// minBufferBytes is the smallest budget a rule may have: 170 entries.
	minBufferBytes = 4 << 10
	firstEntries   = 64
)

// ring is the engine's pre-trigger buffer, shared by its rules: the
// entries of every signal a rule captures, in arrival order, for as long
// as the longest Before, at most as many as its byte budget holds
// (counting the string table). Pushing into a full ring evicts the oldest
// entries (a fix's fields together). The storage grows as the signals
// need, up to the budget, never more.
type ring struct {
	budget  int64
	buf     []entry
	strs    []string // string values, a ring parallel to buf once one arrives
	head, n int      // first entry and count
	evicted uint64   // entries evicted by the budget
}

func newRing(budget int64) *ring { return &ring{budget: budget} }

// bytes is the memory the ring holds.
func (r *ring) bytes() int64 { return int64(cap(r.buf))*entrySize + int64(cap(r.strs))*strSize }

// index is the storage index of the i-th entry (i <= len(buf)), without
// a division.
func (r *ring) index(i int) int {
	j := r.head + i
	if j >= len(r.buf) {
		j -= len(r.buf)
	}
	return j
}

// limit is how many entries the budget holds, with the string table
// once the ring has one.
func (r *ring) limit() int {
	per := entrySize
	if r.strs != nil {
		per += strSize
	}
	return int(r.budget / per)
}

// room makes space for k more entries: it grows the storage while the
// budget allows, then evicts from the front.
func (r *ring) room(k int) {
	if r.n+k <= len(r.buf) {
		return
	}
	if limit := r.limit(); len(r.buf) < limit {
		// Doubling while small, then by a quarter: a full ring wastes at
		// most a fifth of its storage.
		next := 2 * len(r.buf)
		if len(r.buf) >= 4096 {
			next = len(r.buf) + len(r.buf)/4
		}
		r.grow(min(max(firstEntries, next, r.n+k), limit))
	}
	for r.n+k > len(r.buf) && r.n > 0 {
		r.evictFront()
	}
}

// grow moves the entries to a storage of size entries (at least r.n).
func (r *ring) grow(size int) {
	nb := make([]entry, size)
	var ns []string
	if r.strs != nil {
		ns = make([]string, size)
	}
	for i := 0; i < r.n; i++ {
		j := r.index(i)
		nb[i] = r.buf[j]
		if len(r.strs) > 0 {
			ns[i] = r.strs[j]
		}
	}
	r.buf, r.strs, r.head = nb, ns, 0
}

// evictFront drops the oldest entry, or the oldest fix whole.
func (r *ring) evictFront() {
	k := 1
	if r.buf[r.head].kind == entryFix {
		k = fixFields
	}
	for range min(k, r.n) {
		if len(r.strs) > 0 {
			r.strs[r.head] = ""
		}
		r.head = r.index(1)
		r.n--
		r.evicted++
	}
}

func (r *ring) push(e entry) {
	r.room(1)
	if len(r.buf) == 0 {
		return // a budget too small for one entry: Validate prevents it
	}
	r.buf[r.index(r.n)] = e
	r.n++
}

// pushReading stores a reading of slot s: a DBC double as its raw
// integer when the slot's scale gives it back bit for bit.
func (r *ring) pushReading(s *slot, rd *wire.Reading) {
	e := entry{t: rd.Time, slot: s.index}
	switch rd.Value.Kind {
	case wire.KindDouble:
		if rd.Scale != 0 && rd.Scale == s.scale && rd.Offset == s.offset &&
			math.Float64bits(wire.Physical(rd.Raw, rd.Scale, rd.Offset)) == math.Float64bits(rd.Value.Float) {
			e.kind, e.bits = entryRaw, uint64(rd.Raw)
		} else {
			e.kind, e.bits = entryFloat, math.Float64bits(rd.Value.Float)
		}
	case wire.KindInt:
		e.kind, e.bits = entryInt, uint64(rd.Value.Int)
	case wire.KindBool:
		e.kind = entryBool
		if rd.Value.Bool {
			e.bits = 1
		}
	case wire.KindString:
		if i, ok := s.intern(rd.Value.Str); ok {
			e.kind, e.bits = entryInterned, uint64(i)
			break
		}
		r.pushString(rd.Time, s.index, rd.Value.Str)
		return
	default:
		return
	}
	r.push(e)
}

// pushString stores a string reading: the string table is allocated with
// the first, and the budget then counts it.
func (r *ring) pushString(t int64, slot uint32, s string) {
	if r.strs == nil {
		// From now on the budget counts the string table: shrink to it.
		r.strs = []string{}
		limit := r.limit()
		for r.n > limit {
			r.evictFront()
		}
		r.grow(min(len(r.buf), limit))
	}
	r.room(1)
	if len(r.buf) == 0 {
		return
	}
	i := r.index(r.n)
	r.buf[i] = entry{t: t, slot: slot, kind: entryString}
	r.strs[i] = s
	r.n++
}

// pushFix stores a fix as fixFields entries.
func (r *ring) pushFix(slot uint32, f *wire.Fix) {
	r.room(fixFields)
	if len(r.buf) < fixFields {
		return
	}
	vals := [fixFields]float64{f.Lat, f.Lon, f.Alt, f.Speed, f.Heading, f.Accuracy}
	for i, v := range vals {
		kind := entryFixField
		if i == 0 {
			kind = entryFix
		}
		r.buf[r.index(r.n)] = entry{t: f.Time, bits: math.Float64bits(v), slot: slot, kind: kind}
		r.n++
	}
}

// dropBefore evicts entries older than t from the front, without counting
// them: they have aged out of every window the rule could open.
func (r *ring) dropBefore(t int64) {
	for r.n > 0 && r.buf[r.head].t < t {
		k := 1
		if r.buf[r.head].kind == entryFix {
			k = fixFields
		}
		for range min(k, r.n) {
			if len(r.strs) > 0 {
				r.strs[r.head] = ""
			}
			r.head = r.index(1)
			r.n--
		}
	}
}

// reading rebuilds the reading of entry j (not a fix's).
func (r *ring) reading(j int, slots []*slot) wire.Reading {
	e := r.buf[j]
	s := slots[e.slot]
	rd := wire.Reading{Signal: s.name, Unit: s.unit, Time: e.t}
	switch e.kind {
	case entryFloat:
		rd.Value = wire.Float(math.Float64frombits(e.bits))
	case entryRaw:
		rd.Scale, rd.Offset, rd.Raw = s.scale, s.offset, int64(e.bits)
		rd.Value = wire.Float(wire.Physical(rd.Raw, s.scale, s.offset))
	case entryInt:
		rd.Value = wire.Int(int64(e.bits))
	case entryBool:
		rd.Value = wire.Bool(e.bits != 0)
	case entryInterned:
		rd.Value = wire.String(s.strs[e.bits])
	case entryString:
		rd.Value = wire.String(r.strs[j])
	}
	return rd
}

// fix rebuilds the fix whose first entry is the i-th.
func (r *ring) fix(i int) wire.Fix {
	var v [fixFields]float64
	for k := range fixFields {
		v[k] = math.Float64frombits(r.buf[r.index(i+k)].bits)
	}
	return wire.Fix{Time: r.buf[r.index(i)].t, Lat: v[0], Lon: v[1], Alt: v[2], Speed: v[3], Heading: v[4], Accuracy: v[5]}
}

// window hands emit, in parts of at most part readings and fixes, the
// entries of the signals a rule selects (bit in their slot's capture
// mask) timed at or after start: the newest of them, at most maxEntries
// entries' worth (a fix counts fixFields). The ring keeps its entries:
// other rules may want them.
func (r *ring) window(start int64, bit uint64, slots []*slot, maxEntries, part int,
	rs []wire.Reading, fixes []wire.Fix, emit func([]wire.Reading, []wire.Fix, bool) error) ([]wire.Reading, []wire.Fix, error) {
	selected := func(e *entry) bool {
		return e.kind != entryFixField && e.t >= start && slots[e.slot].capture&bit != 0
	}
	// From the newest back: where the rule's share begins.
	first, used := r.n, 0
	for i := r.n - 1; i >= 0; i-- {
		e := &r.buf[r.index(i)]
		if e.kind == entryFixField {
			continue
		}
		if !selected(e) {
			continue
		}
		cost := 1
		if e.kind == entryFix {
			cost = fixFields
		}
		if used+cost > maxEntries {
			break
		}
		used += cost
		first = i
	}
	rs, fixes = rs[:0], fixes[:0]
	for i := first; i < r.n; i++ {
		j := r.index(i)
		e := &r.buf[j]
		if !selected(e) {
			continue
		}
		if len(rs)+len(fixes) >= part { // a full part, and more follows
			if err := emit(rs, fixes, false); err != nil {
				return rs, fixes, err
			}
			clear(rs)
			rs, fixes = rs[:0], fixes[:0]
		}
		if e.kind == entryFix {
			if i+fixFields <= r.n {
				fixes = append(fixes, r.fix(i))
			}
			i += fixFields - 1
		} else {
			rs = append(rs, r.reading(j, slots))
		}
	}
	if len(rs)+len(fixes) > 0 {
		err := emit(rs, fixes, true)
		clear(rs)
		return rs[:0], fixes[:0], err
	}
	return rs, fixes, nil
}
