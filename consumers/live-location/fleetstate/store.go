// Package fleetstate holds the live state of the fleet: for every vehicle
// its latest location fix and latest status, a spatial index over the
// positions for nearest-vehicle and box queries, per-status counts, a
// bounded record of recent tracks and signals, and subscriptions that
// deliver changes to the HTTP streams.
//
// Live state never goes backwards: a fix is applied only when it is newer
// than the vehicle's known fix, and a status only when its reading is newer
// than the known status, whatever order batches arrive in (late, replayed,
// or read back from the location topic). Times are the car's (fix and
// reading times), so the outcome does not depend on arrival order. Times
// further in the future than Options.MaxClockSkew are refused, so one bad
// clock cannot freeze a vehicle's state.
//
// # Design
//
// Chosen by benchmark at one million vehicles (see the README): vehicles
// live in 256 shards by a hash of their ID, each with its own lock; the
// spatial index is a latitude/longitude grid kept per class (one class per
// status, one for stale vehicles), each class split into 64 lock stripes by
// cell. An update locks its vehicle's shard and, briefly, the one or two
// stripes of the cells it leaves and enters; a query read-locks one stripe
// at a time, for one cell. Nothing locks the whole store, so updates never
// wait for a query and a query never waits for more than one cell's update.
// A k-nearest query searches a growing radius (exact: every cell the
// circle's box on the sphere overlaps), so it reads only the cells near
// the answer.
//
// A Store is safe for concurrent use. A query sees each vehicle as of some
// moment during the query (it is not a snapshot of the whole fleet).
package fleetstate

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
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

// LastHeard is the car time of the vehicle's newest fix or status.
func (v Vehicle) LastHeard() int64 { return max(v.Fix.Time, v.StatusTime) }

// Origin says where a change came from.
type Origin uint8

// The origins of a change.
const (
	FromTelemetry Origin = iota + 1 // a telemetry batch
	FromSnapshot                    // a position read back from the location topic
	FromEviction                    // the vehicle was evicted (Removed is set)
)

// Change is one update of a vehicle's state, as subscriptions see it.
type Change struct {
	Old     Vehicle // the state before; zero when IsNew
	New     Vehicle // the state after; for Removed, the last state
	IsNew   bool    // the vehicle was unknown before
	Removed bool    // the vehicle was evicted or tombstoned
	Origin  Origin
}

// Options tune a Store. Zero fields take the defaults.
type Options struct {
	StatusSignal  string        // string signal holding the status; default "status"
	StaleAfter    time.Duration // vehicles without a newer fix drop out of Nearby; default 2m
	TTL           time.Duration // Sweep evicts vehicles not heard from for this long; default 1h, at least StaleAfter
	MaxClockSkew  time.Duration // fixes and statuses later than now+this are refused; default 5m
	CellDeg       float64       // grid cell size in degrees; default 0.0025 (about 280 m)
	MaxStatuses   int           // distinct status values kept; default 1024 (more are refused as invalid)
	TrackVehicles int           // vehicles whose recent track and signals are kept; default 10000
	TrackPoints   int           // points kept per track; default 120
	// Publish makes the store queue the vehicles that telemetry changed, for
	// TakeChanged (the location publisher).
	Publish bool
	Now     func() time.Time
}

// Defaults of Options.
const (
	DefaultStatusSignal  = "status"
	DefaultStaleAfter    = 2 * time.Minute
	DefaultTTL           = time.Hour
	DefaultMaxClockSkew  = 5 * time.Minute
	DefaultCellDeg       = 0.0025
	DefaultMaxStatuses   = 1024
	DefaultTrackVehicles = 10_000
	DefaultTrackPoints   = 120
)

func (o Options) withDefaults() Options {
	if o.StatusSignal == "" {
		o.StatusSignal = DefaultStatusSignal
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = DefaultStaleAfter
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	o.TTL = max(o.TTL, o.StaleAfter)
	if o.MaxClockSkew <= 0 {
		o.MaxClockSkew = DefaultMaxClockSkew
	}
	if !(o.CellDeg > 0 && o.CellDeg <= 90) {
		o.CellDeg = DefaultCellDeg
	}
	if o.MaxStatuses <= 0 {
		o.MaxStatuses = DefaultMaxStatuses
	}
	o.MaxStatuses = min(o.MaxStatuses, 1<<15)
	if o.TrackVehicles < 0 {
		o.TrackVehicles = 0
	} else if o.TrackVehicles == 0 {
		o.TrackVehicles = DefaultTrackVehicles
	}
	if o.TrackPoints <= 0 {
		o.TrackPoints = DefaultTrackPoints
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
	StatusInvalid int  // status readings that are not strings, too far ahead, or one status too many
	Changed       bool // the vehicle's state changed
}

// Position is a vehicle's state as the location topic carries it.
type Position struct {
	ID         string
	Fix        Fix
	Status     string // "" when unknown
	Epoch, Seq uint64
}

// nShards is the number of vehicle shards, each with its own lock and map.
const nShards = 256

type vshard struct {
	mu      sync.RWMutex
	m       map[string]*vrec
	dirty   []*vrec // changed by telemetry since TakeChanged, when Options.Publish
	changes atomic.Uint64
	_       [64 - 24 - 8 - 24 - 8]byte
}

// Store is the live fleet state. The zero value is not usable; call New.
type Store struct {
	opts   Options
	geo    geometry
	seed   maphash.Seed
	shards [nShards]vshard

	statuses statusTable
	tracks   trackStore

	subsMu sync.Mutex
	subs   atomic.Pointer[[]*Subscription]

	vehicles atomic.Int64
}

// New returns an empty store.
func New(opts Options) *Store {
	opts = opts.withDefaults()
	s := &Store{opts: opts, geo: newGeometry(opts.CellDeg), seed: maphash.MakeSeed()}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*vrec)
	}
	s.statuses.init(opts.MaxStatuses)
	s.tracks.init(opts.TrackVehicles, opts.TrackPoints)
	return s
}

// Options returns the store's options, defaults filled in.
func (s *Store) Options() Options { return s.opts }

func (s *Store) shardIndex(id string) uint8 { return uint8(maphash.String(s.seed, id) % nShards) }

func (s *Store) shardOf(id string) *vshard { return &s.shards[s.shardIndex(id)] }

// lockVehicle write-locks id's shard and returns its record, or a new one
// (not yet in the shard's map) when the vehicle is unknown.
func (s *Store) lockVehicle(id string) (*vshard, *vrec, bool) {
	si := s.shardIndex(id)
	sh := &s.shards[si]
	sh.mu.Lock()
	r, known := sh.m[id]
	if !known {
		r = &vrec{id: id, class: notIndexed, shard: si}
	}
	return sh, r, known
}

// ApplyBatch folds a decoded telemetry batch into the vehicle's state: the
// batch's newest valid fix if it is newer than the known one, and its newest
// status reading if newer than the known status. The batch's fixes and
// readings also feed the vehicle's recent track and latest signals when
// those are kept (see Track).
func (s *Store) ApplyBatch(b *wire.Batch) Result {
	var res Result
	now := s.opts.Now()
	limit := now.Add(s.opts.MaxClockSkew).UnixNano()

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
	var status uint16
	if st != nil {
		var ok bool
		if status, ok = s.statuses.intern(st.Value.Str); !ok {
			res.StatusInvalid++
			st = nil
		}
	}
	if fix == nil && st == nil {
		return res
	}

	sh, r, known := s.lockVehicle(b.VehicleID)
	defer sh.mu.Unlock()
	ch := s.begin(r, !known)
	if fix != nil {
		for i := range b.Fixes {
			f := &b.Fixes[i]
			if r.hasFix && f.Time <= r.fix.Time && ValidLatLon(f.Lat, f.Lon) && f.Time <= limit {
				res.FixesStale++
			}
		}
		if !r.hasFix || fix.Time > r.fix.Time {
			r.hasFix = true
			r.fix = Fix{Time: fix.Time, Lat: fix.Lat, Lon: fix.Lon, Alt: fix.Alt, Speed: fix.Speed, Heading: fix.Heading, Accuracy: fix.Accuracy}
			r.epoch, r.seq = b.Epoch, b.Seq
			res.FixesApplied = 1
		}
	}
	if st != nil {
		if r.statusTime == 0 || st.Time > r.statusTime {
			r.status, r.statusTime = status, st.Time
			res.StatusApplied = 1
		} else {
			res.StatusStale++
		}
	}
	res.Changed = res.FixesApplied+res.StatusApplied > 0
	if res.Changed {
		if !known {
			sh.m[r.id] = r
			s.vehicles.Add(1)
		}
		s.commit(sh, r, ch, FromTelemetry, now)
	}
	if known || res.Changed {
		s.tracks.record(r, b, limit)
	}
	return res
}

// ApplyPosition folds a position read back from the location topic into the
// vehicle's state, under the same rules as ApplyBatch. The position's status
// is taken to be as old as its fix.
func (s *Store) ApplyPosition(p Position) Result {
	var res Result
	now := s.opts.Now()
	limit := now.Add(s.opts.MaxClockSkew).UnixNano()
	if !wire.ValidVehicleID(p.ID) || !ValidLatLon(p.Fix.Lat, p.Fix.Lon) || p.Fix.Time > limit {
		res.FixesInvalid = 1
		return res
	}
	var status uint16
	hasStatus := p.Status != ""
	if hasStatus {
		var ok bool
		if status, ok = s.statuses.intern(p.Status); !ok {
			res.StatusInvalid = 1
			hasStatus = false
		}
	}
	sh, r, known := s.lockVehicle(p.ID)
	defer sh.mu.Unlock()
	ch := s.begin(r, !known)
	// A position exactly as new as the one held is most likely that one
	// coming back (a replica reads its own publications too): neither
	// applied nor stale.
	if !r.hasFix || p.Fix.Time > r.fix.Time {
		r.hasFix, r.fix, r.epoch, r.seq = true, p.Fix, p.Epoch, p.Seq
		res.FixesApplied = 1
	} else if p.Fix.Time < r.fix.Time {
		res.FixesStale = 1
	}
	if hasStatus {
		if r.statusTime == 0 || p.Fix.Time > r.statusTime {
			r.status, r.statusTime = status, p.Fix.Time
			res.StatusApplied = 1
		} else if p.Fix.Time < r.statusTime {
			res.StatusStale = 1
		}
	}
	res.Changed = res.FixesApplied+res.StatusApplied > 0
	if res.Changed {
		if !known {
			sh.m[r.id] = r
			s.vehicles.Add(1)
		}
		s.commit(sh, r, ch, FromSnapshot, now)
	}
	return res
}

// Forget removes a vehicle that another replica tombstoned in the location
// topic, unless this store has heard from it within StaleAfter (then the
// tombstone is older than what the store knows). It reports whether the
// vehicle was removed.
func (s *Store) Forget(id string) bool {
	sh := s.shardOf(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r, ok := sh.m[id]
	if !ok || r.lastHeard() >= s.opts.Now().Add(-s.opts.StaleAfter).UnixNano() {
		return false
	}
	s.removeLocked(sh, r)
	return true
}

// Get returns a vehicle's state.
func (s *Store) Get(id string) (Vehicle, bool) {
	sh := s.shardOf(id)
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	r, ok := sh.m[id]
	if !ok {
		return Vehicle{}, false
	}
	return r.vehicle(&s.statuses), true
}

// Changes returns how many changes the store has applied since New.
func (s *Store) Changes() uint64 {
	var n uint64
	for i := range s.shards {
		n += s.shards[i].changes.Load()
	}
	return n
}

// Len returns the number of vehicles known.
func (s *Store) Len() int { return int(s.vehicles.Load()) }

// StatusCount is how many vehicles have one status.
type StatusCount struct {
	Status string // "" for vehicles that sent no status yet
	Fresh  int    // with a fix newer than StaleAfter
	Stale  int    // the others (no fix, or an older one), as of the last Sweep or update
}

// Counts returns the vehicles by status, in the order statuses were first
// seen; statuses without vehicles are left out.
func (s *Store) Counts() []StatusCount {
	return s.statuses.counts()
}
