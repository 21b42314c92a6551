package fleetstate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// fleetPoint is one vehicle of a generated fleet, as the brute force sees
// it.
type fleetPoint struct {
	id       string
	lat, lon float64
	t        int64
	status   string
}

// genFleet makes n vehicles with a fixed seed: a third spread over a 50 km
// city, a third in twenty dense clusters in it, and the rest around the
// antimeridian, both poles and exactly on the edges of the coordinate
// space. Half are available; one in twenty is stale.
func genFleet(n int, seed uint64) []fleetPoint {
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	const lat0, lon0 = 52.52, 13.40 // the city centre
	dLat := 25_000 / EarthRadiusM / degToRad
	dLon := dLat / math.Cos(lat0*degToRad)
	type hot struct{ lat, lon, sd float64 }
	hots := make([]hot, 20)
	for i := range hots {
		hots[i] = hot{lat0 + (rng.Float64()*2-1)*dLat, lon0 + (rng.Float64()*2-1)*dLon, 0.0005 + rng.Float64()*0.005}
	}
	wrap := func(lon float64) float64 {
		for lon > 180 {
			lon -= 360
		}
		for lon < -180 {
			lon += 360
		}
		return lon
	}
	clampLat := func(lat float64) float64 { return min(max(lat, -90), 90) }
	out := make([]fleetPoint, n)
	for i := range out {
		var lat, lon float64
		switch k := i % 12; {
		case k < 4: // uniform over the city
			lat, lon = lat0+(rng.Float64()*2-1)*dLat, lon0+(rng.Float64()*2-1)*dLon
		case k < 8: // clustered
			h := hots[rng.IntN(len(hots))]
			lat, lon = clampLat(h.lat+rng.NormFloat64()*h.sd), wrap(h.lon+rng.NormFloat64()*h.sd*1.6)
		case k < 9: // astride the antimeridian
			lat, lon = -18+rng.NormFloat64()*0.05, wrap(180+rng.NormFloat64()*0.05)
		case k < 10: // around the north pole
			lat, lon = 90-math.Abs(rng.NormFloat64())*0.05, rng.Float64()*360-180
		case k < 11: // around the south pole
			lat, lon = -90+math.Abs(rng.NormFloat64())*0.05, rng.Float64()*360-180
		default: // on the edges: the poles, ±180, and anywhere
			switch rng.IntN(4) {
			case 0:
				lat, lon = []float64{90, -90}[rng.IntN(2)], rng.Float64()*360-180
			case 1:
				lat, lon = rng.Float64()*180-90, []float64{180, -180}[rng.IntN(2)]
			default:
				lat, lon = rng.Float64()*180-90, rng.Float64()*360-180
			}
		}
		st := "available"
		if i%2 == 1 {
			st = []string{"busy", "offline", "charging"}[rng.IntN(3)]
		}
		age := time.Duration(rng.IntN(60)) * time.Second
		if i%20 == 7 {
			age = 3 * time.Minute // stale
		}
		out[i] = fleetPoint{id: fmt.Sprintf("v%07d", i), lat: lat, lon: lon, t: t0.Add(-age).UnixNano(), status: st}
	}
	return out
}

func loadFleet(s *Store, pts []fleetPoint) {
	for _, p := range pts {
		s.ApplyPosition(Position{ID: p.id, Fix: Fix{Time: p.t, Lat: p.lat, Lon: p.lon, Alt: math.NaN(), Speed: 1, Heading: 2, Accuracy: math.NaN()}, Status: p.status})
	}
}

type hit struct {
	id string
	d  float64
}

// bruteNearby is what Nearby must equal: every vehicle scanned, distances
// by the same haversine formula.
func bruteNearby(pts []fleetPoint, q Query, fresh int64) []hit {
	var hits []hit
	for _, p := range pts {
		if p.t < fresh || !statusIn(p.status, q.Statuses) {
			continue
		}
		if d := DistanceM(q.Lat, q.Lon, p.lat, p.lon); d <= q.RadiusM {
			hits = append(hits, hit{p.id, d})
		}
	}
	slices.SortFunc(hits, func(a, b hit) int {
		if a.d != b.d {
			if a.d < b.d {
				return -1
			}
			return 1
		}
		return strings.Compare(a.id, b.id)
	})
	if q.Limit > 0 && len(hits) > q.Limit {
		hits = hits[:q.Limit]
	}
	return hits
}

func TestNearbyMatchesBruteForceAtCityScale(t *testing.T) {
	n := 1_000_000
	if testing.Short() {
		n = 100_000
	}
	pts := genFleet(n, 11)
	s := New(Options{Now: newClock(t0).Now})
	loadFleet(s, pts)
	if s.Len() != n {
		t.Fatalf("store holds %d vehicles, want %d", s.Len(), n)
	}
	fresh := t0.Add(-DefaultStaleAfter).UnixNano()
	rng := rand.New(rand.NewPCG(5, 6))
	statuses := [][]string{nil, {"available"}, {"busy", "offline"}, {"nobody-has-this"}}
	// Query points: vehicles' own positions (from every region), and
	// named hard places.
	places := [][2]float64{{90, 0}, {-90, 77}, {0, 180}, {0, -180}, {-18, 179.99}, {-18, -179.99}, {89.9, 45}, {52.52, 13.40}}
	queries := 48
	if race {
		queries = 16 // every brute-force scan is ten times slower under the race detector
	}
	for i := range queries {
		var q Query
		if i < len(places) {
			q.Lat, q.Lon = places[i][0], places[i][1]
		} else {
			p := pts[rng.IntN(len(pts))]
			q.Lat, q.Lon = p.lat+rng.NormFloat64()*0.001, p.lon+rng.NormFloat64()*0.001
			q.Lat = min(max(q.Lat, -90), 90)
		}
		q.RadiusM = []float64{1, 200, 1000, 5000, 20_000, 100_000}[rng.IntN(6)]
		q.Limit = []int{1, 10, 10, 100}[rng.IntN(4)]
		if q.RadiusM <= 1000 && i%3 == 0 {
			q.Limit = 0 // everything within a small radius
		}
		q.Statuses = statuses[rng.IntN(len(statuses))]
		got := s.Nearby(q)
		want := bruteNearby(pts, q, fresh)
		if len(got) != len(want) {
			t.Fatalf("%+v: nearby found %d, brute force %d", q, len(got), len(want))
		}
		for j := range got {
			if got[j].ID != want[j].id || got[j].DistanceM != want[j].d {
				t.Fatalf("%+v: result %d is %s at %v m, brute force %s at %v m", q, j, got[j].ID, got[j].DistanceM, want[j].id, want[j].d)
			}
		}
	}
}

func TestInBoxAndAggregateMatchBruteForce(t *testing.T) {
	pts := genFleet(60_000, 12)
	s := New(Options{Now: newClock(t0).Now})
	loadFleet(s, pts)
	s.Sweep(nil) // the stale ones move to the stale class
	fresh := t0.Add(-DefaultStaleAfter).UnixNano()
	boxes := []BBox{
		{13.2, 52.4, 13.6, 52.6},
		{179.9, -18.2, -179.9, -17.8}, // across the antimeridian
		{-180, 89.95, 180, 90},        // the north polar cap
		{-180, -90, 180, 90},          // the world
	}
	for _, b := range boxes {
		for _, want := range [][]string{nil, {"available"}} {
			for _, withStale := range []bool{false, true} {
				var ids []string
				for _, p := range pts {
					if b.Contains(p.lat, p.lon) && statusIn(p.status, want) && (withStale || p.t >= fresh) {
						ids = append(ids, p.id)
					}
				}
				vs, total := s.InBox(b, want, withStale, 0)
				var got []string
				for _, v := range vs {
					got = append(got, v.ID)
				}
				if total != len(ids) || !slices.Equal(got, ids) {
					t.Fatalf("box %+v status %v stale %v: %d vehicles (total %d), brute force %d", b, want, withStale, len(got), total, len(ids))
				}
				if lim, n := s.InBox(b, want, withStale, 5); n != total || len(lim) != min(5, total) {
					t.Fatalf("limited InBox: %d of %d", len(lim), n)
				}
			}
		}
		cs := s.Aggregate(b, 8, 6)
		count, stale, avail := 0, 0, 0
		for _, c := range cs {
			count += c.Count
			stale += c.Stale
			avail += c.ByStatus["available"]
			if !b.Contains(c.Lat, c.Lon) {
				t.Errorf("box %+v: cluster centre %v,%v outside the box", b, c.Lat, c.Lon)
			}
		}
		var wantCount, wantStale, wantAvail int
		for _, p := range pts {
			if b.Contains(p.lat, p.lon) {
				wantCount++
				if p.t < fresh {
					wantStale++
				} else if p.status == "available" {
					wantAvail++
				}
			}
		}
		if count != wantCount || stale != wantStale || avail != wantAvail {
			t.Fatalf("aggregate of %+v: %d vehicles, %d stale, %d available; want %d, %d, %d", b, count, stale, avail, wantCount, wantStale, wantAvail)
		}
		if len(cs) > 48 {
			t.Fatalf("aggregate gave %d clusters for 8x6 bins", len(cs))
		}
	}
}
