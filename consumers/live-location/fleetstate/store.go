// Package fleetstate holds the live state of the fleet: for every vehicle
// its latest location fix and latest status, a grid index over the
// positions for nearest-vehicle queries, and subscriptions that deliver
// changes to the HTTP stream and the location publisher.
//
// Live state never goes backwards: a fix is applied only when it is newer
// than the vehicle's known fix, and a status only when its reading is newer
// than the known status, whatever order batches arrive in (late, replayed,
// or read back from the location topic). Times are the car's (fix and
// reading times), so the outcome does not depend on arrival order. Times
// further in the future than Options.MaxClockSkew are refused, so one bad
// clock cannot freeze a vehicle's state.
//
// A Store is safe for concurrent use.
package fleetstate

import (
	"container/heap"
	"sort"
	"sync"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Fix is a location fix. Optional fields are NaN when unknown.
type Fix struct {
	Time     int64   // Unix nanoseconds of the fix (car clock)
	Lat, Lon float64 // WGS84 degrees
	Alt      float64 // metres above mean sea level, or NaN
	Speed    float64 // metres per second, or NaN
	Heading  float64 // degrees clockwise from true north, or NaN
	Accuracy float64 // horizontal accuracy in metres, or NaN
}

// Vehicle is the live state of one vehicle.
type Vehicle struct {
	ID         string
	HasFix     bool   // false until the first valid fix
	Fix        Fix    // the newest fix; meaningful when HasFix
	Status     string // the newest status value, "" when none seen
	StatusTime int64  // Unix nanoseconds of the status reading, 0 when none
	Epoch, Seq uint64 // identity of the batch that carried Fix
}

// UpdatedAt is the time of the vehicle's newest fix, zero without one.
func (v Vehicle) UpdatedAt() time.Time {
	if !v.HasFix {
		return time.Time{}
	}
	return time.Unix(0, v.Fix.Time).UTC()
}

// Stale reports whether the vehicle has no fix newer than now-after.
func (v Vehicle) Stale(now time.Time, after time.Duration) bool {
	return !v.HasFix || v.Fix.Time < now.Add(-after).UnixNano()
}

// Origin says where a change came from.
type Origin uint8

// The origins of a change.
const (
	FromTelemetry Origin = iota + 1 // a telemetry batch
	FromSnapshot                    // a position read back from the location topic
)

// Change is one update of a vehicle's state, as subscriptions see it.
type Change struct {
	Old    Vehicle // the state before; zero when IsNew
	New    Vehicle // the state after
	IsNew  bool    // the vehicle was unknown before
	Origin Origin
}

// Options tune a Store. Zero fields take the defaults.
type Options struct {
	StatusSignal string        // string signal holding the status; default "status"
	StaleAfter   time.Duration // vehicles without a newer fix drop out of Nearby; default 2m
	MaxClockSkew time.Duration // fixes and statuses later than now+this are refused; default 5m
	CellDeg      float64       // grid cell size in degrees; default 0.01 (about 1.1 km)
	Now          func() time.Time
}

// Defaults of Options.
const (
	DefaultStatusSignal = "status"
	DefaultStaleAfter   = 2 * time.Minute
	DefaultMaxClockSkew = 5 * time.Minute
	DefaultCellDeg      = 0.01
)

func (o Options) withDefaults() Options {
	if o.StatusSignal == "" {
		o.StatusSignal = DefaultStatusSignal
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	if o.MaxClockSkew <= 0 {
		o.MaxClockSkew = DefaultMaxClockSkew
	}
	if !(o.CellDeg > 0 && o.CellDeg <= 90) {
		o.CellDeg = DefaultCellDeg
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Result counts what one Apply call did.
type Result struct {
	FixesApplied  int  // 0 or 1: the batch's newest fix became the vehicle's
	FixesStale    int  // fixes not newer than the vehicle's known fix
	FixesInvalid  int  // fixes with coordinates out of range or times too far ahead
	StatusApplied int  // 0 or 1
	StatusStale   int  // status readings not newer than the known status
	StatusInvalid int  // status readings that are not strings or too far ahead
	Changed       bool // the vehicle's state changed
}

// Position is a vehicle's state as the location topic carries it.
type Position struct {
	ID         string
	Fix        Fix
	Status     string // "" when unknown
	Epoch, Seq uint64
}

type entry struct {
	v       Vehicle
	cell    int64 // grid cell key, when indexed
	slot    int   // index in the cell's items, when indexed
	indexed bool
}

// Store is the live fleet state. The zero value is not usable; call New.
type Store struct {
	opts Options

	mu       sync.RWMutex
	vehicles map[string]*entry
	grid     *grid
	subs     map[*Subscription]struct{}
}

// New returns an empty store.
func New(opts Options) *Store {
	opts = opts.withDefaults()
	return &Store{
		opts:     opts,
		vehicles: make(map[string]*entry),
		grid:     newGrid(opts.CellDeg),
		subs:     make(map[*Subscription]struct{}),
	}
}

// Options returns the store's options, defaults filled in.
func (s *Store) Options() Options { return s.opts }

// ApplyBatch folds a decoded telemetry batch into the vehicle's state: the
// batch's newest valid fix if it is newer than the known one, and its newest
// status reading if newer than the known status.
func (s *Store) ApplyBatch(b *wire.Batch) Result {
	var res Result
	limit := s.opts.Now().Add(s.opts.MaxClockSkew).UnixNano()

	var fix *wire.Fix
	for i := range b.Fixes {
		f := &b.Fixes[i]
		if !ValidLatLon(f.Lat, f.Lon) || f.Time > limit {
			res.FixesInvalid++
			continue
		}
		if fix == nil || f.Time > fix.Time {
			fix = f
		}
	}
	var st *wire.Reading
	for i := range b.Readings {
		r := &b.Readings[i]
		if r.Signal != s.opts.StatusSignal {
			continue
		}
		if r.Value.Kind != wire.KindString || r.Time > limit {
			res.StatusInvalid++
			continue
		}
		if st == nil || r.Time > st.Time {
			st = r
		}
	}
	if fix == nil && st == nil {
		return res
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	e, known := s.vehicles[b.VehicleID]
	next := Vehicle{ID: b.VehicleID}
	if known {
		next = e.v
	}
	if fix != nil {
		for i := range b.Fixes {
			f := &b.Fixes[i]
			if next.HasFix && f.Time <= next.Fix.Time && ValidLatLon(f.Lat, f.Lon) && f.Time <= limit {
				res.FixesStale++
			}
		}
		if !next.HasFix || fix.Time > next.Fix.Time {
			next.HasFix = true
			next.Fix = Fix{Time: fix.Time, Lat: fix.Lat, Lon: fix.Lon, Alt: fix.Alt, Speed: fix.Speed, Heading: fix.Heading, Accuracy: fix.Accuracy}
			next.Epoch, next.Seq = b.Epoch, b.Seq
			res.FixesApplied = 1
		}
	}
	if st != nil {
		if next.StatusTime == 0 || st.Time > next.StatusTime {
			next.Status, next.StatusTime = st.Value.Str, st.Time
			res.StatusApplied = 1
		} else {
			res.StatusStale++
		}
	}
	res.Changed = res.FixesApplied+res.StatusApplied > 0
	if res.Changed {
		s.commit(e, next, FromTelemetry)
	}
	return res
}

// ApplyPosition folds a position read back from the location topic into the
// vehicle's state, under the same rules as ApplyBatch. The position's status
// is taken to be as old as its fix.
func (s *Store) ApplyPosition(p Position) Result {
	var res Result
	limit := s.opts.Now().Add(s.opts.MaxClockSkew).UnixNano()
	if !wire.ValidVehicleID(p.ID) || !ValidLatLon(p.Fix.Lat, p.Fix.Lon) || p.Fix.Time > limit {
		res.FixesInvalid = 1
		return res
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, known := s.vehicles[p.ID]
	next := Vehicle{ID: p.ID}
	if known {
		next = e.v
	}
	if !next.HasFix || p.Fix.Time > next.Fix.Time {
		next.HasFix, next.Fix, next.Epoch, next.Seq = true, p.Fix, p.Epoch, p.Seq
		res.FixesApplied = 1
	} else {
		res.FixesStale = 1
	}
	if p.Status != "" {
		if next.StatusTime == 0 || p.Fix.Time > next.StatusTime {
			next.Status, next.StatusTime = p.Status, p.Fix.Time
			res.StatusApplied = 1
		} else {
			res.StatusStale = 1
		}
	}
	res.Changed = res.FixesApplied+res.StatusApplied > 0
	if res.Changed {
		s.commit(e, next, FromSnapshot)
	}
	return res
}

// commit stores next (e is nil for a new vehicle), re-indexes it and tells
// the subscribers. s.mu must be held for writing.
func (s *Store) commit(e *entry, next Vehicle, origin Origin) {
	ch := Change{New: next, Origin: origin}
	if e == nil {
		e = &entry{}
		s.vehicles[next.ID] = e
		ch.IsNew = true
	} else {
		ch.Old = e.v
	}
	e.v = next
	if next.HasFix {
		s.grid.moved(e)
	}
	for sub := range s.subs {
		sub.offer(ch)
	}
}

// Get returns a vehicle's state.
func (s *Store) Get(id string) (Vehicle, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	e, ok := s.vehicles[id]
	if !ok {
		return Vehicle{}, false
	}
	return e.v, true
}

// Len returns the number of vehicles known.
func (s *Store) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.vehicles)
}

// All returns the vehicles for which keep returns true (all of them when
// keep is nil), ordered by ID.
func (s *Store) All(keep func(Vehicle) bool) []Vehicle {
	s.mu.RLock()
	out := make([]Vehicle, 0, len(s.vehicles))
	for _, e := range s.vehicles {
		if keep == nil || keep(e.v) {
			out = append(out, e.v)
		}
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Query asks for the vehicles nearest a point.
type Query struct {
	Lat, Lon float64
	RadiusM  float64  // only vehicles within this great-circle distance
	Limit    int      // at most this many; <= 0 means no limit
	Statuses []string // only vehicles with one of these statuses; empty: any
}

// Neighbor is a vehicle found by Nearby and its distance from the query
// point.
type Neighbor struct {
	Vehicle
	DistanceM float64
}

// Nearby returns the fresh vehicles within q.RadiusM of the query point,
// nearest first (ties by ID). Vehicles whose newest fix is older than
// Options.StaleAfter are left out.
func (s *Store) Nearby(q Query) []Neighbor {
	fresh := s.opts.Now().Add(-s.opts.StaleAfter).UnixNano()
	h := &neighborHeap{limit: q.Limit}
	s.mu.RLock()
	s.grid.search(q.Lat, q.Lon, q.RadiusM, func(e *entry) {
		v := &e.v
		if v.Fix.Time < fresh || !statusIn(v.Status, q.Statuses) {
			return
		}
		d := DistanceM(q.Lat, q.Lon, v.Fix.Lat, v.Fix.Lon)
		if d > q.RadiusM {
			return
		}
		h.offer(Neighbor{Vehicle: *v, DistanceM: d})
	})
	s.mu.RUnlock()
	out := h.items
	sort.Slice(out, func(i, j int) bool { return nearer(out[i], out[j]) })
	return out
}

func statusIn(st string, want []string) bool {
	if len(want) == 0 {
		return true
	}
	for _, w := range want {
		if st == w {
			return true
		}
	}
	return false
}

func nearer(a, b Neighbor) bool {
	if a.DistanceM != b.DistanceM {
		return a.DistanceM < b.DistanceM
	}
	return a.ID < b.ID
}

// neighborHeap keeps the limit nearest neighbours offered: a max-heap whose
// root is the farthest kept.
type neighborHeap struct {
	limit int
	items []Neighbor
}

func (h *neighborHeap) offer(n Neighbor) {
	if h.limit <= 0 || len(h.items) < h.limit {
		if h.limit <= 0 {
			h.items = append(h.items, n)
			return
		}
		heap.Push(h, n)
		return
	}
	if nearer(n, h.items[0]) {
		h.items[0] = n
		heap.Fix(h, 0)
	}
}

func (h *neighborHeap) Len() int           { return len(h.items) }
func (h *neighborHeap) Less(i, j int) bool { return nearer(h.items[j], h.items[i]) }
func (h *neighborHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *neighborHeap) Push(x any)         { h.items = append(h.items, x.(Neighbor)) }
func (h *neighborHeap) Pop() any {
	n := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return n
}
