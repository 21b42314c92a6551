package fleetstate

import (
	"math"
	"sync"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// clock is a settable time source for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time   { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(t time.Time)  { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func newClock(t time.Time) *clock { return &clock{now: t} }
func at(d time.Duration) int64    { return t0.Add(d).UnixNano() }
func fix(d time.Duration, lat, lon float64) wire.Fix {
	return wire.Fix{Time: at(d), Lat: lat, Lon: lon, Alt: math.NaN(), Speed: 5, Heading: 90, Accuracy: math.NaN()}
}

func status(d time.Duration, s string) wire.Reading {
	return wire.Reading{Signal: "status", Time: at(d), Value: wire.String(s)}
}

func batch(id string, seq uint64, fixes []wire.Fix, readings ...wire.Reading) *wire.Batch {
	return &wire.Batch{Identity: wire.Identity{VehicleID: id, Epoch: 7, Seq: seq}, Fixes: fixes, Readings: readings}
}

func newTestStore(c *clock) *Store {
	return New(Options{Now: c.Now, StaleAfter: 2 * time.Minute})
}

func TestFixNeverGoesBackwards(t *testing.T) {
	s := newTestStore(newClock(t0.Add(time.Minute)))
	r := s.ApplyBatch(batch("car-1", 2, []wire.Fix{fix(10*time.Second, 52.5, 13.4), fix(20*time.Second, 52.6, 13.5)}))
	if r.FixesApplied != 1 || !r.Changed {
		t.Fatalf("first batch: %+v", r)
	}
	// A late batch, older than what we hold.
	r = s.ApplyBatch(batch("car-1", 1, []wire.Fix{fix(5*time.Second, 10, 10), fix(15*time.Second, 11, 11)}))
	if r.FixesApplied != 0 || r.FixesStale != 2 || r.Changed {
		t.Fatalf("late batch: %+v", r)
	}
	// The same batch replayed.
	r = s.ApplyBatch(batch("car-1", 2, []wire.Fix{fix(10*time.Second, 52.5, 13.4), fix(20*time.Second, 52.6, 13.5)}))
	if r.Changed || r.FixesStale != 2 {
		t.Fatalf("replayed batch: %+v", r)
	}
	v, _ := s.Get("car-1")
	if v.Fix.Lat != 52.6 || v.Fix.Lon != 13.5 || v.Fix.Time != at(20*time.Second) || v.Seq != 2 {
		t.Fatalf("state went backwards: %+v", v)
	}
	// Fixes out of order inside one batch: the newest wins.
	s.ApplyBatch(batch("car-1", 3, []wire.Fix{fix(40*time.Second, 1, 1), fix(30*time.Second, 2, 2)}))
	if v, _ := s.Get("car-1"); v.Fix.Lat != 1 {
		t.Fatalf("newest fix of a batch not applied: %+v", v)
	}
	// A position read back from the location topic obeys the same rule.
	if r := s.ApplyPosition(Position{ID: "car-1", Fix: Fix{Time: at(35 * time.Second), Lat: 3, Lon: 3}}); r.Changed || r.FixesStale != 1 {
		t.Fatalf("older position applied: %+v", r)
	}
	if r := s.ApplyPosition(Position{ID: "car-1", Fix: Fix{Time: at(45 * time.Second), Lat: 4, Lon: 4}}); !r.Changed {
		t.Fatalf("newer position refused: %+v", r)
	}
	if v, _ := s.Get("car-1"); v.Fix.Lat != 4 {
		t.Fatalf("position not applied: %+v", v)
	}
	// The same position again (a replica reading back its own
	// publication): nothing changes, and it is no stale fix.
	if r := s.ApplyPosition(Position{ID: "car-1", Fix: Fix{Time: at(45 * time.Second), Lat: 4, Lon: 4}}); r.Changed || r.FixesStale != 0 || r.FixesApplied != 0 {
		t.Fatalf("a position equal to the one held: %+v", r)
	}
}

func TestStatusRespectsTimeOrder(t *testing.T) {
	s := newTestStore(newClock(t0.Add(time.Minute)))
	s.ApplyBatch(batch("car-1", 1, nil, status(10*time.Second, "available"), status(20*time.Second, "busy"), status(15*time.Second, "offline")))
	if v, _ := s.Get("car-1"); v.Status != "busy" || v.HasFix {
		t.Fatalf("newest status of a batch not kept: %+v", v)
	}
	// A late batch with an older status but a newer fix: fix applies, status does not.
	r := s.ApplyBatch(batch("car-1", 0, []wire.Fix{fix(30*time.Second, 1, 2)}, status(12*time.Second, "available")))
	if r.FixesApplied != 1 || r.StatusApplied != 0 || r.StatusStale != 1 {
		t.Fatalf("late status: %+v", r)
	}
	if v, _ := s.Get("car-1"); v.Status != "busy" || !v.HasFix {
		t.Fatalf("older status overwrote newer: %+v", v)
	}
	// A batch whose fix is old but whose status is new: status applies.
	r = s.ApplyBatch(batch("car-1", 2, []wire.Fix{fix(25*time.Second, 9, 9)}, status(40*time.Second, "offline")))
	if r.FixesApplied != 0 || r.StatusApplied != 1 {
		t.Fatalf("new status with old fix: %+v", r)
	}
	if v, _ := s.Get("car-1"); v.Status != "offline" || v.Fix.Lat != 1 {
		t.Fatalf("state: %+v", v)
	}
	// Non-string status readings and other signals are ignored.
	r = s.ApplyBatch(batch("car-1", 3, nil, wire.Reading{Signal: "status", Time: at(50 * time.Second), Value: wire.Int(1)},
		wire.Reading{Signal: "speed", Time: at(50 * time.Second), Value: wire.String("busy")}))
	if r.Changed || r.StatusInvalid != 1 {
		t.Fatalf("bad status reading: %+v", r)
	}
	// A snapshot position's status counts as old as its fix.
	if r := s.ApplyPosition(Position{ID: "car-1", Fix: Fix{Time: at(35 * time.Second), Lat: 5, Lon: 5}, Status: "available"}); r.StatusApplied != 0 {
		t.Fatalf("older snapshot status applied: %+v", r)
	}
}

func TestCustomStatusSignal(t *testing.T) {
	s := New(Options{Now: newClock(t0).Now, StatusSignal: "ride_state"})
	s.ApplyBatch(batch("car-1", 1, nil, status(0, "busy"), wire.Reading{Signal: "ride_state", Time: at(0), Value: wire.String("available")}))
	if v, _ := s.Get("car-1"); v.Status != "available" {
		t.Fatalf("status = %q, want the ride_state signal", v.Status)
	}
}

func TestRefusesInvalidAndFutureFixes(t *testing.T) {
	c := newClock(t0)
	s := New(Options{Now: c.Now, MaxClockSkew: time.Minute})
	r := s.ApplyBatch(batch("car-1", 1, []wire.Fix{
		fix(0, 91, 0), fix(0, 0, 181), fix(0, math.NaN(), 0), // out of range
		fix(2*time.Minute, 1, 1), // beyond the clock skew
	}, status(2*time.Minute, "busy")))
	if r.Changed || r.FixesInvalid != 4 || r.StatusInvalid != 1 {
		t.Fatalf("invalid fixes: %+v", r)
	}
	if _, ok := s.Get("car-1"); ok {
		t.Fatal("a vehicle with only invalid data was stored")
	}
	// Within the skew is fine.
	if r := s.ApplyBatch(batch("car-1", 2, []wire.Fix{fix(30*time.Second, 1, 1)})); !r.Changed {
		t.Fatalf("fix within the skew refused: %+v", r)
	}
}

func TestStaleVehiclesLeaveNearby(t *testing.T) {
	c := newClock(t0)
	s := newTestStore(c)
	s.ApplyBatch(batch("old", 1, []wire.Fix{fix(-90*time.Second, 52.5, 13.4)}))
	s.ApplyBatch(batch("new", 1, []wire.Fix{fix(-10*time.Second, 52.5, 13.401)}))
	ids := func() []string {
		var out []string
		for _, n := range s.Nearby(Query{Lat: 52.5, Lon: 13.4, RadiusM: 1000, Limit: 10}) {
			out = append(out, n.ID)
		}
		return out
	}
	if got := ids(); len(got) != 2 || got[0] != "old" {
		t.Fatalf("nearby = %v, want [old new]", got)
	}
	c.Set(t0.Add(31 * time.Second)) // "old" is now 121s old
	if got := ids(); len(got) != 1 || got[0] != "new" {
		t.Fatalf("nearby = %v, want [new]", got)
	}
	v, ok := s.Get("old")
	if !ok || !v.Stale(c.Now(), 2*time.Minute) {
		t.Fatalf("stale vehicle should stay known and report stale: %+v %v", v, ok)
	}
	// Heard from again: back in.
	s.ApplyBatch(batch("old", 2, []wire.Fix{fix(30*time.Second, 52.5, 13.4)}))
	if got := ids(); len(got) != 2 {
		t.Fatalf("nearby = %v, want both", got)
	}
}

func TestNearbyFiltersAndLimits(t *testing.T) {
	s := newTestStore(newClock(t0))
	for i, st := range []string{"available", "busy", "available", "offline", "available"} {
		id := string(rune('a' + i))
		s.ApplyBatch(batch(id, 1, []wire.Fix{fix(0, 52.5+float64(i)*0.001, 13.4)}, status(0, st)))
	}
	got := s.Nearby(Query{Lat: 52.5, Lon: 13.4, RadiusM: 10_000, Limit: 2, Statuses: []string{"available"}})
	if len(got) != 2 || got[0].ID != "a" || got[1].ID != "c" {
		t.Fatalf("nearby available limit 2 = %+v", got)
	}
	got = s.Nearby(Query{Lat: 52.5, Lon: 13.4, RadiusM: 10_000, Statuses: []string{"busy", "offline"}})
	if len(got) != 2 || got[0].ID != "b" || got[1].ID != "d" {
		t.Fatalf("nearby busy,offline = %+v", got)
	}
}

func TestSubscription(t *testing.T) {
	s := newTestStore(newClock(t0))
	s.ApplyBatch(batch("a", 1, []wire.Fix{fix(0, 1, 1)}))
	box := BBox{0, 0, 2, 2}
	inBox := func(v Vehicle) bool { return v.HasFix && box.Contains(v.Fix.Lat, v.Fix.Lon) }
	sub := s.Subscribe(func(c Change) bool { return inBox(c.New) || !c.IsNew && inBox(c.Old) })
	defer sub.Close()
	if snap, n := s.InBox(box, nil, true, 0); n != 1 || len(snap) != 1 || snap[0].ID != "a" {
		t.Fatalf("snapshot = %+v (%d)", snap, n)
	}
	select {
	case <-sub.Ready():
		t.Fatal("ready before any change")
	default:
	}
	s.ApplyBatch(batch("a", 2, []wire.Fix{fix(1*time.Second, 1.1, 1)}))
	s.ApplyBatch(batch("a", 3, []wire.Fix{fix(2*time.Second, 1.2, 1)})) // coalesces with the one before
	s.ApplyBatch(batch("far", 1, []wire.Fix{fix(2*time.Second, 50, 50)}))
	s.ApplyBatch(batch("a", 2, []wire.Fix{fix(1*time.Second, 1.1, 1)})) // stale: no change
	<-sub.Ready()
	got := sub.Take()
	if len(got) != 1 || got[0].ID != "a" || got[0].Fix.Lat != 1.2 || got[0].Removed {
		t.Fatalf("take = %+v", got)
	}
	if sub.Take() != nil {
		t.Fatal("second take not empty")
	}
	// Leaving the box is delivered.
	s.ApplyBatch(batch("a", 4, []wire.Fix{fix(3*time.Second, 10, 10)}))
	if got := sub.Take(); len(got) != 1 || got[0].Fix.Lat != 10 {
		t.Fatalf("leaving the box: %+v", got)
	}
	sub.Close()
	if s.Subscribers() != 0 {
		t.Fatal("subscription not removed")
	}
	s.ApplyBatch(batch("a", 5, []wire.Fix{fix(4*time.Second, 1, 1)}))
	if sub.Take() != nil {
		t.Fatal("change delivered after Close")
	}
}

func TestConcurrentUse(t *testing.T) {
	s := newTestStore(newClock(t0))
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 500 {
				id := string(rune('a' + (i+w)%10))
				s.ApplyBatch(batch(id, uint64(i), []wire.Fix{fix(time.Duration(i)*time.Millisecond, float64(i%80), float64(w))}))
				s.Nearby(Query{Lat: 10, Lon: 1, RadiusM: 100_000, Limit: 5})
			}
		}()
	}
	wg.Wait()
	if s.Len() != 10 {
		t.Fatalf("len = %d", s.Len())
	}
}
