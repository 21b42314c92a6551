package fleetstate

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func countsOf(s *Store) map[string][2]int {
	out := map[string][2]int{}
	for _, c := range s.Counts() {
		out[c.Status] = [2]int{c.Fresh, c.Stale}
	}
	return out
}

func TestSweepStalesAndEvicts(t *testing.T) {
	c := newClock(t0)
	s := New(Options{Now: c.Now, StaleAfter: time.Minute, TTL: 10 * time.Minute})
	s.ApplyBatch(batch("a", 1, []wire.Fix{fix(0, 1, 1)}, status(0, "available")))
	s.ApplyBatch(batch("b", 1, []wire.Fix{fix(0, 1, 1.001)}, status(0, "busy")))
	s.ApplyBatch(batch("c", 1, nil, status(0, "busy"))) // a status, no fix yet
	if got := countsOf(s); got["available"] != [2]int{1, 0} || got["busy"] != [2]int{1, 1} {
		t.Fatalf("counts = %v", got)
	}
	sub := s.Subscribe(nil)
	defer sub.Close()

	c.Set(t0.Add(2 * time.Minute)) // a and b go stale
	if staled, removed := s.Sweep(nil); staled != 2 || removed != 0 {
		t.Fatalf("sweep = %d stale, %d removed", staled, removed)
	}
	if got := countsOf(s); got["available"] != [2]int{0, 1} || got["busy"] != [2]int{0, 2} {
		t.Fatalf("counts after going stale = %v", got)
	}
	if got := s.Nearby(Query{Lat: 1, Lon: 1, RadiusM: 1000, Limit: 10}); len(got) != 0 {
		t.Fatalf("stale vehicles in nearby: %+v", got)
	}
	if vs, n := s.InBox(BBox{0, 0, 2, 2}, nil, true, 0); n != 2 || len(vs) != 2 {
		t.Fatalf("stale vehicles in the box: %d", n)
	}
	// b is heard from again: fresh, and back in nearby.
	s.ApplyBatch(batch("b", 2, []wire.Fix{fix(2*time.Minute, 1, 1.001)}))
	if got := ids(s.Nearby(Query{Lat: 1, Lon: 1, RadiusM: 1000, Limit: 10})); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("nearby = %v", got)
	}

	c.Set(t0.Add(11 * time.Minute)) // a and c not heard from for 11 minutes
	var evicted []string
	if _, removed := s.Sweep(func(v Vehicle) { evicted = append(evicted, v.ID) }); removed != 2 {
		t.Fatalf("removed %d", removed)
	}
	slices.Sort(evicted)
	if !slices.Equal(evicted, []string{"a", "c"}) || s.Len() != 1 {
		t.Fatalf("evicted %v, %d left", evicted, s.Len())
	}
	if _, ok := s.Get("a"); ok {
		t.Fatal("evicted vehicle still known")
	}
	if got := countsOf(s); got["available"] != [2]int{} || got["busy"] != [2]int{0, 1} {
		t.Fatalf("counts after eviction = %v", got)
	}
	removals := 0
	for _, u := range sub.Take() {
		if u.Removed {
			removals++
		}
	}
	if removals != 2 {
		t.Fatalf("%d removals delivered, want 2", removals)
	}
	// An evicted vehicle heard from again is new again.
	if r := s.ApplyBatch(batch("a", 9, []wire.Fix{fix(11*time.Minute, 1, 1)})); !r.Changed {
		t.Fatalf("returning vehicle: %+v", r)
	}
}

func TestForgetHonoursNewerState(t *testing.T) {
	c := newClock(t0)
	s := New(Options{Now: c.Now, StaleAfter: time.Minute, TTL: 5 * time.Minute})
	s.ApplyPosition(Position{ID: "old", Fix: Fix{Time: at(-6 * time.Minute), Lat: 1, Lon: 1}})
	s.ApplyPosition(Position{ID: "fresh", Fix: Fix{Time: at(-time.Second), Lat: 1, Lon: 1}})
	// Tombstones from the owner: the old one goes; the fresh one is newer
	// than the tombstone (the owner's eviction raced its return) and stays.
	if !s.Forget("old") || s.Forget("fresh") || s.Forget("unknown") {
		t.Fatal("Forget decided wrong")
	}
	if _, ok := s.Get("fresh"); !ok || s.Len() != 1 {
		t.Fatal("fresh vehicle lost to a tombstone")
	}
}

func TestTakeChangedQueuesTelemetryChangesOnce(t *testing.T) {
	s := New(Options{Now: newClock(t0).Now, Publish: true})
	s.ApplyBatch(batch("a", 1, []wire.Fix{fix(0, 1, 1)}))
	s.ApplyBatch(batch("a", 2, []wire.Fix{fix(time.Second, 1, 2)}))
	s.ApplyBatch(batch("b", 1, nil, status(0, "busy")))                       // no fix: nothing to publish
	s.ApplyPosition(Position{ID: "c", Fix: Fix{Time: at(0), Lat: 3, Lon: 3}}) // read back: not ours to publish
	var got []Vehicle
	if n := s.TakeChanged(func(v Vehicle) { got = append(got, v) }); n != 1 || got[0].ID != "a" || got[0].Fix.Lon != 2 {
		t.Fatalf("changed = %+v", got)
	}
	if n := s.TakeChanged(func(Vehicle) {}); n != 0 {
		t.Fatalf("second take: %d", n)
	}
	s.ApplyBatch(batch("a", 1, []wire.Fix{fix(0, 1, 1)})) // replayed: no change
	if n := s.TakeChanged(func(Vehicle) {}); n != 0 {
		t.Fatalf("a replayed batch queued %d", n)
	}
}

func TestTracksAreBounded(t *testing.T) {
	s := New(Options{Now: newClock(t0.Add(time.Hour)).Now, TrackVehicles: 2, TrackPoints: 3})
	for i := range 5 {
		for _, id := range []string{"a", "b", "c"} {
			s.ApplyBatch(batch(id, uint64(i), []wire.Fix{fix(time.Duration(i)*time.Second, float64(i), 0)},
				wire.Reading{Signal: "fuel", Time: at(time.Duration(i) * time.Second), Value: wire.Float(float64(50 - i))}))
		}
	}
	a, _ := s.Track("a")
	if !a.Tracked || len(a.Track) != 3 || a.Track[0].Lat != 2 || a.Track[2].Lat != 4 {
		t.Fatalf("a's track = %+v", a.Track)
	}
	if len(a.Signals) != 1 || a.Signals[0].Value.Float != 46 {
		t.Fatalf("a's signals = %+v", a.Signals)
	}
	// c arrived when two were kept: asking for it takes the place of the
	// least recently asked for (b), whose track goes.
	cd, _ := s.Track("c")
	if !cd.Tracked || len(cd.Track) != 0 {
		t.Fatalf("c = %+v", cd)
	}
	s.ApplyBatch(batch("c", 9, []wire.Fix{fix(9*time.Second, 9, 0)}))
	s.ApplyBatch(batch("b", 9, []wire.Fix{fix(9*time.Second, 9, 0)}))
	if cd, _ := s.Track("c"); len(cd.Track) != 1 {
		t.Fatalf("c's track after a batch = %+v", cd.Track)
	}
	if b, _ := s.Track("b"); !b.Tracked || len(b.Track) != 0 {
		// b is asked for now: it takes a's place and starts afresh.
		t.Fatalf("b = %+v", b)
	}
	if a, _ := s.Track("a"); !a.Tracked || len(a.Track) != 0 {
		t.Fatalf("a after being pushed out = %+v", a)
	}
}

func TestTooManyStatusesAreRefused(t *testing.T) {
	s := New(Options{Now: newClock(t0).Now, MaxStatuses: 3}) // "" and two more
	for i, st := range []string{"x", "y", "z"} {
		r := s.ApplyBatch(batch(fmt.Sprint(i), 1, []wire.Fix{fix(0, 1, 1)}, status(0, st)))
		if st == "z" && r.StatusInvalid != 1 || st != "z" && r.StatusApplied != 1 {
			t.Fatalf("%s: %+v", st, r)
		}
	}
}

// TestConcurrentUpdatesQueriesAndSweeps runs writers, readers and sweeps
// together (under -race in make test), then checks the index against the
// vehicles' final state.
func TestConcurrentUpdatesQueriesAndSweeps(t *testing.T) {
	c := newClock(t0)
	s := New(Options{Now: c.Now, StaleAfter: time.Minute, TTL: time.Hour, CellDeg: 0.01, Publish: true})
	sub := s.Subscribe(nil)
	defer sub.Close()
	var wg sync.WaitGroup
	const writers, cars = 4, 200
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range 3000 {
				id := fmt.Sprintf("car-%03d", rng.IntN(cars))
				st := []string{"available", "busy"}[rng.IntN(2)]
				s.ApplyBatch(batch(id, uint64(i), []wire.Fix{fix(time.Duration(i)*time.Millisecond, 52+rng.Float64()*0.2, 13+rng.Float64()*0.2)}, status(time.Duration(i)*time.Millisecond, st)))
			}
		}()
	}
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			for range 1000 {
				s.Nearby(Query{Lat: 52.1, Lon: 13.1, RadiusM: 5000 + rng.Float64()*10000, Limit: 10, Statuses: []string{"available"}})
				s.InBox(BBox{13, 52, 13.1, 52.1}, nil, true, 50)
				s.Aggregate(BBox{13, 52, 13.2, 52.2}, 4, 4)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 50 {
			s.Sweep(nil)
			s.TakeChanged(func(Vehicle) {})
			sub.Take()
		}
	}()
	wg.Wait()
	// The index holds every vehicle once, where its state says.
	pts := make([]fleetPoint, 0, cars)
	for i := range cars {
		v, ok := s.Get(fmt.Sprintf("car-%03d", i))
		if !ok {
			continue
		}
		pts = append(pts, fleetPoint{id: v.ID, lat: v.Fix.Lat, lon: v.Fix.Lon, t: v.Fix.Time, status: v.Status})
	}
	q := Query{Lat: 52.1, Lon: 13.1, RadiusM: 50_000, Statuses: []string{"available"}}
	got, want := s.Nearby(q), bruteNearby(pts, q, c.Now().Add(-time.Minute).UnixNano())
	if len(got) != len(want) {
		t.Fatalf("after the storm nearby finds %d, brute force %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].id {
			t.Fatalf("result %d: %s, brute force %s", i, got[i].ID, want[i].id)
		}
	}
	total := 0
	for _, sc := range s.Counts() {
		total += sc.Fresh + sc.Stale
	}
	if total != s.Len() || s.Len() != len(pts) {
		t.Fatalf("counts sum to %d for %d vehicles", total, s.Len())
	}
}
