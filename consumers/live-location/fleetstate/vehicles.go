package fleetstate

import (
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// vrec is one vehicle's record. Every field but slot is guarded by the lock
// of the vehicle's shard (id never changes); slot is guarded by the stripe
// lock of the cell the vehicle is indexed in, because removing another
// vehicle from that cell may move this one within it.
type vrec struct {
	id         string
	fix        Fix
	statusTime int64
	epoch, seq uint64
	key        int64  // cell key, when indexed
	track      *track // recent track and signals, when kept
	slot       int32  // index in the cell's items, when indexed
	class      int32  // class index it is filed in, or notIndexed
	status     uint16 // interned status
	shard      uint8  // index of its shard
	hasFix     bool
	dirty      bool // queued in its shard's dirty list
	gone       bool // removed from the store
}

const notIndexed = -1

// staleClass is the class of vehicles whose fix is older than StaleAfter,
// whatever their status; a status s is class s+1.
const staleClass = 0

func (s *Store) shardOfRec(r *vrec) *vshard { return &s.shards[r.shard] }

func (r *vrec) lastHeard() int64 { return max(r.fix.Time, r.statusTime) }

func (r *vrec) vehicle(t *statusTable) Vehicle {
	return Vehicle{ID: r.id, HasFix: r.hasFix, Fix: r.fix, Status: t.name(r.status), StatusTime: r.statusTime, Epoch: r.epoch, Seq: r.seq}
}

// classOf is the class r belongs in.
func (s *Store) classOf(r *vrec, now time.Time) int32 {
	if !r.hasFix {
		return notIndexed
	}
	if r.fix.Time < now.Add(-s.opts.StaleAfter).UnixNano() {
		return staleClass
	}
	return int32(r.status) + 1
}

// pending is what a change needs to remember of the state before it.
type pending struct {
	old     Vehicle
	isNew   bool
	stale   bool // counted stale before
	status  uint16
	counted bool // counted in the status counts before
}

// begin notes r's state before a change. The shard lock must be held.
func (s *Store) begin(r *vrec, isNew bool) pending {
	p := pending{isNew: isNew, status: r.status, counted: !isNew, stale: r.class == staleClass || r.class == notIndexed}
	if !isNew && s.hasSubscribers() {
		p.old = r.vehicle(&s.statuses)
	}
	return p
}

// commit re-files r after a change, updates the counts, queues it for the
// publisher and tells the subscribers. The shard lock must be held and r
// must be in the shard's map.
func (s *Store) commit(sh *vshard, r *vrec, p pending, origin Origin, now time.Time) {
	sh.changes.Add(1)
	s.refile(r, s.classOf(r, now))
	stale := r.class == staleClass || r.class == notIndexed
	if p.counted {
		s.statuses.add(p.status, p.stale, -1)
	}
	s.statuses.add(r.status, stale, 1)
	if origin == FromTelemetry && s.opts.Publish && r.hasFix && !r.dirty {
		r.dirty = true
		sh.dirty = append(sh.dirty, r)
	}
	if s.hasSubscribers() {
		s.offer(Change{Old: p.old, New: r.vehicle(&s.statuses), IsNew: p.isNew, Origin: origin})
	}
}

// removeLocked takes r out of the store. The shard lock must be held.
func (s *Store) removeLocked(sh *vshard, r *vrec) {
	s.refile(r, notIndexed)
	s.statuses.add(r.status, true, -1)
	delete(sh.m, r.id)
	r.gone = true
	s.vehicles.Add(-1)
	s.tracks.drop(r)
	if s.hasSubscribers() {
		s.offer(Change{New: r.vehicle(&s.statuses), Removed: true, Origin: FromEviction})
	}
}

// refile moves r's index entry to class (notIndexed: out of the index) at
// its current position. The shard lock must be held. Both cells' stripes
// are locked together, in a fixed order, so a concurrent search sees r in
// one cell or the other, never in neither.
func (s *Store) refile(r *vrec, class int32) {
	var key int64
	if class != notIndexed {
		key = s.geo.keyOf(r.fix.Lat, r.fix.Lon)
	}
	if r.class == notIndexed && class == notIndexed {
		return
	}
	if r.class == class && r.key == key {
		ci := s.statuses.index(class)
		st := &ci.stripes[stripeOf(key)]
		st.mu.Lock()
		e := &st.cells[key].items[r.slot]
		e.lat, e.lon, e.t = r.fix.Lat, r.fix.Lon, r.fix.Time
		st.mu.Unlock()
		return
	}
	var from, to *classIndex
	var sf, st *stripe
	if r.class != notIndexed {
		from = s.statuses.index(r.class)
		sf = &from.stripes[stripeOf(r.key)]
	}
	if class != notIndexed {
		to = s.statuses.index(class)
		st = &to.stripes[stripeOf(key)]
	}
	unlock := lockPair(sf, st)
	if from != nil {
		from.removeLocked(sf, r.key, r)
	}
	if to != nil {
		to.insertLocked(st, key, r.fix.Lat, r.fix.Lon, r.fix.Time, r)
	}
	unlock()
	r.class, r.key = class, key
}

// lockPair write-locks one or two stripes (either may be nil) in address
// order and returns the unlock.
func lockPair(a, b *stripe) func() {
	switch {
	case a == nil && b == nil:
		return func() {}
	case a == nil || a == b:
		b.mu.Lock()
		return b.mu.Unlock
	case b == nil:
		a.mu.Lock()
		return a.mu.Unlock
	}
	if uintptr(unsafe.Pointer(a)) > uintptr(unsafe.Pointer(b)) {
		a, b = b, a
	}
	a.mu.Lock()
	b.mu.Lock()
	return func() { b.mu.Unlock(); a.mu.Unlock() }
}

// statusTable interns status values (at most max of them; a store never
// forgets one) and holds, per status, its class index and counts. Lookups
// of known statuses take no lock.
type statusTable struct {
	max   int
	mu    sync.Mutex // guards adding a status
	byID  atomic.Pointer[[]*statusEntry]
	names sync.Map // string -> uint16
	stale *classIndex
}

type statusEntry struct {
	name  string
	index *classIndex
	fresh atomic.Int64
	stale atomic.Int64
}

func (t *statusTable) init(max int) {
	t.max = max
	t.stale = newClassIndex()
	t.byID.Store(&[]*statusEntry{})
	t.intern("")
}

// intern returns the ID of a status value, adding it if there is room.
func (t *statusTable) intern(name string) (uint16, bool) {
	if id, ok := t.names.Load(name); ok {
		return id.(uint16), true
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if id, ok := t.names.Load(name); ok {
		return id.(uint16), true
	}
	old := *t.byID.Load()
	if len(old) >= t.max {
		return 0, false
	}
	next := append(append(make([]*statusEntry, 0, len(old)+1), old...), &statusEntry{name: name, index: newClassIndex()})
	t.byID.Store(&next)
	id := uint16(len(old))
	t.names.Store(name, id)
	return id, true
}

// lookup returns the ID of a known status.
func (t *statusTable) lookup(name string) (uint16, bool) {
	id, ok := t.names.Load(name)
	if !ok {
		return 0, false
	}
	return id.(uint16), true
}

func (t *statusTable) entries() []*statusEntry { return *t.byID.Load() }

func (t *statusTable) name(id uint16) string { return t.entries()[id].name }

func (t *statusTable) index(class int32) *classIndex {
	if class == staleClass {
		return t.stale
	}
	return t.entries()[class-1].index
}

func (t *statusTable) add(id uint16, stale bool, n int64) {
	e := t.entries()[id]
	if stale {
		e.stale.Add(n)
	} else {
		e.fresh.Add(n)
	}
}

func (t *statusTable) counts() []StatusCount {
	var out []StatusCount
	for _, e := range t.entries() {
		c := StatusCount{Status: e.name, Fresh: int(e.fresh.Load()), Stale: int(e.stale.Load())}
		if c.Fresh != 0 || c.Stale != 0 {
			out = append(out, c)
		}
	}
	return out
}
