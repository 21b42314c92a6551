package fleetstate

import (
	"container/list"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// TrackPoint is one point of a vehicle's recent track.
type TrackPoint struct {
	Time     int64 // Unix nanoseconds (car clock)
	Lat, Lon float64
}

// Signal is the latest value of one of a vehicle's signals.
type Signal struct {
	Name  string
	Unit  string
	Time  int64 // Unix nanoseconds (car clock)
	Value wire.Value
}

// maxSignals bounds the signals kept per vehicle; later names are ignored.
const maxSignals = 64

// trackMinGap is the least time between two kept track points.
const trackMinGap = int64(1e9)

// track is one vehicle's recent track (a ring) and latest signals. It is
// guarded by the vehicle's shard lock, except dropped (atomic) and elem.
type track struct {
	points  []TrackPoint
	head    int // next slot to write once the ring is full
	signals []Signal
	dropped atomic.Bool   // the store took the track back; the vehicle lets go of it
	elem    *list.Element // in trackStore.lru; guarded by the track store's lock
}

// trackStore bounds the recent tracks and signals kept: those of every
// vehicle while fewer than max are kept, and after that those of the
// vehicles asked for most recently (Store.Track), which take the place of
// the least recently asked for.
type trackStore struct {
	max, points int
	mu          sync.Mutex
	lru         *list.List   // *vrec, most recently asked for first
	n           atomic.Int64 // lru.Len(), for a lock-free look
}

func (ts *trackStore) init(max, points int) {
	ts.max, ts.points, ts.lru = max, points, list.New()
}

// admit gives r a track if there is room (or, when evict, by taking the
// least recently asked for one's). The shard lock of r must be held.
func (ts *trackStore) admit(r *vrec, evict bool) bool {
	if !evict && ts.n.Load() >= int64(ts.max) {
		return false // full: no lock taken on the update path
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.lru.Len() >= ts.max {
		if !evict || ts.max == 0 {
			return false
		}
		victim := ts.lru.Remove(ts.lru.Back()).(*vrec)
		// The victim is under another shard's lock: it lets go of its
		// track on its next record or sweep.
		victim.track.dropped.Store(true)
		ts.n.Store(int64(ts.lru.Len()))
	}
	r.track = &track{points: make([]TrackPoint, 0, min(ts.points, 8))}
	r.track.elem = ts.lru.PushFront(r)
	ts.n.Store(int64(ts.lru.Len()))
	return true
}

// drop takes r's track back. The shard lock of r must be held.
func (ts *trackStore) drop(r *vrec) {
	if r.track == nil {
		return
	}
	ts.mu.Lock()
	if !r.track.dropped.Load() {
		ts.lru.Remove(r.track.elem)
		r.track.dropped.Store(true)
		ts.n.Store(int64(ts.lru.Len()))
	}
	ts.mu.Unlock()
	r.track = nil
}

func (ts *trackStore) touch(r *vrec) {
	ts.mu.Lock()
	if !r.track.dropped.Load() {
		ts.lru.MoveToFront(r.track.elem)
	}
	ts.mu.Unlock()
}

// usable reports whether r's track is kept, letting go of a dropped one.
// The shard lock of r must be held.
func (ts *trackStore) usable(r *vrec) bool {
	if r.track == nil {
		return false
	}
	if r.track.dropped.Load() {
		r.track = nil
		return false
	}
	return true
}

// record adds a batch's valid fixes and readings to r's track, if r has one
// or there is room for one. The shard lock of r must be held.
func (ts *trackStore) record(r *vrec, b *wire.Batch, limit int64) {
	if !ts.usable(r) && (ts.max == 0 || !ts.admit(r, false)) {
		return
	}
	t := r.track
	fixes := make([]*wire.Fix, 0, len(b.Fixes))
	for i := range b.Fixes {
		if f := &b.Fixes[i]; ValidLatLon(f.Lat, f.Lon) && f.Time <= limit {
			fixes = append(fixes, f)
		}
	}
	slices.SortFunc(fixes, func(a, b *wire.Fix) int { return int(min(max(a.Time-b.Time, -1), 1)) })
	for _, f := range fixes {
		t.add(TrackPoint{Time: f.Time, Lat: f.Lat, Lon: f.Lon}, ts.points)
	}
	for i := range b.Readings {
		rd := &b.Readings[i]
		if rd.Time > limit || rd.Signal == "" {
			continue
		}
		j := slices.IndexFunc(t.signals, func(s Signal) bool { return s.Name == rd.Signal })
		switch {
		case j < 0 && len(t.signals) < maxSignals:
			t.signals = append(t.signals, Signal{Name: rd.Signal, Unit: rd.Unit, Time: rd.Time, Value: rd.Value})
		case j >= 0 && rd.Time >= t.signals[j].Time:
			t.signals[j] = Signal{Name: rd.Signal, Unit: rd.Unit, Time: rd.Time, Value: rd.Value}
		}
	}
}

// add appends p unless it is not at least trackMinGap after the newest
// point.
func (t *track) add(p TrackPoint, max int) {
	if n := len(t.points); n > 0 {
		last := t.points[n-1]
		if n == max {
			last = t.points[(t.head+max-1)%max]
		}
		if p.Time < last.Time+trackMinGap {
			return
		}
	}
	if len(t.points) < max {
		t.points = append(t.points, p)
		return
	}
	t.points[t.head] = p
	t.head = (t.head + 1) % max
}

func (t *track) ordered() []TrackPoint {
	out := make([]TrackPoint, 0, len(t.points))
	out = append(out, t.points[t.head:]...)
	return append(out, t.points[:t.head]...)
}

// Detail is a vehicle's state with its recent track and latest signals.
type Detail struct {
	Vehicle
	Track   []TrackPoint // oldest first; empty when not kept
	Signals []Signal     // by name
	Tracked bool         // the track and signals are kept (they may be empty yet)
}

// Track returns a vehicle's state, recent track and latest signals. Asking
// for a vehicle whose track is not kept starts keeping it (in place of the
// least recently asked for one, when Options.TrackVehicles are kept): its
// track then grows from its next batch.
func (s *Store) Track(id string) (Detail, bool) {
	sh := s.shardOf(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	r, ok := sh.m[id]
	if !ok {
		return Detail{}, false
	}
	d := Detail{Vehicle: r.vehicle(&s.statuses)}
	if s.tracks.usable(r) {
		s.tracks.touch(r)
	} else if !s.tracks.admit(r, true) {
		return d, true
	}
	d.Tracked = true
	d.Track = r.track.ordered()
	d.Signals = slices.Clone(r.track.signals)
	slices.SortFunc(d.Signals, func(a, b Signal) int { return strings.Compare(a.Name, b.Name) })
	return d, true
}
