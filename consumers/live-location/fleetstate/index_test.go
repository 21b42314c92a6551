package fleetstate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// bruteForce is what Nearby must equal: a full scan.
func bruteForce(vs []Vehicle, q Query) []string {
	type hit struct {
		id string
		d  float64
	}
	var hits []hit
	for _, v := range vs {
		if d := DistanceM(q.Lat, q.Lon, v.Fix.Lat, v.Fix.Lon); d <= q.RadiusM {
			hits = append(hits, hit{v.ID, d})
		}
	}
	slices.SortFunc(hits, func(a, b hit) int {
		if a.d != b.d {
			if a.d < b.d {
				return -1
			}
			return 1
		}
		if a.id < b.id {
			return -1
		}
		return 1
	})
	var ids []string
	for i, h := range hits {
		if q.Limit > 0 && i == q.Limit {
			break
		}
		ids = append(ids, h.id)
	}
	return ids
}

func ids(ns []Neighbor) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.ID)
	}
	return out
}

func fill(s *Store, pts [][2]float64) []Vehicle {
	var vs []Vehicle
	for i, p := range pts {
		id := fmt.Sprintf("v%05d", i)
		s.ApplyBatch(batch(id, 1, []wire.Fix{{Time: at(0), Lat: p[0], Lon: p[1]}}))
		v, _ := s.Get(id)
		vs = append(vs, v)
	}
	return vs
}

func TestNearbyMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	type region struct {
		name                   string
		lat0, lat1, lon0, lon1 float64
	}
	regions := []region{
		{"city", 52.3, 52.7, 13.0, 13.8},
		{"dateline", -20, -15, 179, 181}, // longitudes past 180 wrap to -180
		{"north pole", 88, 90, -180, 180},
		{"south pole", -90, -87, -180, 180},
		{"world", -90, 90, -180, 180},
	}
	for _, cellDeg := range []float64{0.01, 0.25} {
		for _, r := range regions {
			t.Run(fmt.Sprintf("%s/cell=%v", r.name, cellDeg), func(t *testing.T) {
				s := New(Options{Now: newClock(t0).Now, CellDeg: cellDeg})
				pts := make([][2]float64, 2000)
				for i := range pts {
					lon := r.lon0 + rng.Float64()*(r.lon1-r.lon0)
					if lon >= 180 {
						lon -= 360
					}
					pts[i] = [2]float64{r.lat0 + rng.Float64()*(r.lat1-r.lat0), lon}
				}
				vs := fill(s, pts)
				for range 200 {
					lon := r.lon0 + rng.Float64()*(r.lon1-r.lon0)
					if lon > 180 {
						lon -= 360
					}
					q := Query{
						Lat:     r.lat0 + rng.Float64()*(r.lat1-r.lat0),
						Lon:     lon,
						RadiusM: []float64{1, 500, 1000, 5000, 20_000, 100_000, 3_000_000}[rng.IntN(7)],
						Limit:   []int{0, 1, 10, 1000}[rng.IntN(4)],
					}
					got, want := ids(s.Nearby(q)), bruteForce(vs, q)
					if !slices.Equal(got, want) {
						t.Fatalf("%+v: nearby = %v\nbrute force = %v", q, got, want)
					}
				}
			})
		}
	}
}

func TestNearbyEdges(t *testing.T) {
	s := New(Options{Now: newClock(t0).Now})
	put := func(id string, lat, lon float64) {
		s.ApplyBatch(batch(id, 1, []wire.Fix{{Time: at(0), Lat: lat, Lon: lon}}))
	}
	put("east", 0, 179.9995)
	put("west", 0, -179.9995)
	put("pole", 90, 0)
	put("near-pole", 89.9995, 123)
	put("origin", 0, 0)

	// Across the antimeridian: 0.001 degree of longitude at the equator is ~111 m.
	got := ids(s.Nearby(Query{Lat: 0, Lon: 180, RadiusM: 100}))
	if !slices.Equal(got, []string{"east", "west"}) {
		t.Fatalf("across the dateline: %v", got)
	}
	got = ids(s.Nearby(Query{Lat: 0, Lon: -179.9995, RadiusM: 200}))
	if !slices.Equal(got, []string{"west", "east"}) {
		t.Fatalf("from the west side: %v", got)
	}
	// At the pole every longitude is near.
	got = ids(s.Nearby(Query{Lat: 90, Lon: -45, RadiusM: 100}))
	if !slices.Equal(got, []string{"pole", "near-pole"}) {
		t.Fatalf("at the pole: %v", got)
	}
	got = ids(s.Nearby(Query{Lat: 89.999, Lon: -57, RadiusM: 200}))
	if !slices.Equal(got, []string{"near-pole", "pole"}) && !slices.Equal(got, []string{"pole", "near-pole"}) {
		t.Fatalf("near the pole: %v", got)
	}
	// The radius is inclusive: a vehicle exactly on the circle is in, one
	// a hair beyond is out.
	d := DistanceM(0, 0, 0, 0.01)
	put("edge", 0, 0.01)
	if got := ids(s.Nearby(Query{Lat: 0, Lon: 0, RadiusM: d})); !slices.Equal(got, []string{"origin", "edge"}) {
		t.Fatalf("radius = distance: %v", got)
	}
	if got := ids(s.Nearby(Query{Lat: 0, Lon: 0, RadiusM: math.Nextafter(d, 0)})); !slices.Equal(got, []string{"origin"}) {
		t.Fatalf("radius just below the distance: %v", got)
	}
	// Zero radius finds only vehicles exactly at the point.
	if got := ids(s.Nearby(Query{Lat: 0, Lon: 0, RadiusM: 0})); !slices.Equal(got, []string{"origin"}) {
		t.Fatalf("zero radius: %v", got)
	}
	// A vehicle that moves leaves its old cell.
	s.ApplyBatch(batch("origin", 2, []wire.Fix{{Time: at(time.Second), Lat: 45, Lon: 45}}))
	if got := ids(s.Nearby(Query{Lat: 0, Lon: 0, RadiusM: 10})); len(got) != 0 {
		t.Fatalf("moved vehicle still found at its old place: %v", got)
	}
	if got := ids(s.Nearby(Query{Lat: 45, Lon: 45, RadiusM: 10})); !slices.Equal(got, []string{"origin"}) {
		t.Fatalf("moved vehicle not found at its new place: %v", got)
	}
}

func TestDistance(t *testing.T) {
	for _, c := range []struct {
		lat1, lon1, lat2, lon2, want, tol float64
	}{
		{0, 0, 0, 0, 0, 0},
		{0, 0, 0, 1, 111_195, 1},                                // one degree on the equator
		{90, 0, -90, 0, math.Pi * EarthRadiusM, 1},              // pole to pole
		{0, 179.5, 0, -179.5, 111_195, 1},                       // across the dateline
		{51.5007, -0.1246, 40.6892, -74.0445, 5_574_840, 2_000}, // Big Ben to the Statue of Liberty
	} {
		if got := DistanceM(c.lat1, c.lon1, c.lat2, c.lon2); math.Abs(got-c.want) > c.tol {
			t.Errorf("DistanceM(%v,%v,%v,%v) = %v, want %v±%v", c.lat1, c.lon1, c.lat2, c.lon2, got, c.want, c.tol)
		}
	}
}

func TestBBox(t *testing.T) {
	b := BBox{MinLon: 170, MinLat: -10, MaxLon: -170, MaxLat: 10} // across the dateline
	for _, c := range []struct {
		lat, lon float64
		in       bool
	}{{0, 175, true}, {0, -175, true}, {0, 180, true}, {0, 0, false}, {11, 175, false}} {
		if got := b.Contains(c.lat, c.lon); got != c.in {
			t.Errorf("Contains(%v, %v) = %v", c.lat, c.lon, got)
		}
	}
}

func BenchmarkNearby100k(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	s := New(Options{Now: newClock(t0).Now})
	for i := range 100_000 {
		s.ApplyBatch(batch(fmt.Sprintf("v%06d", i), 1, []wire.Fix{{Time: at(0), Lat: 52.3 + rng.Float64()*0.4, Lon: 13.0 + rng.Float64()*0.8}}))
	}
	for _, r := range []float64{1000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("radius=%v", r), func(b *testing.B) {
			for b.Loop() {
				s.Nearby(Query{Lat: 52.5, Lon: 13.4, RadiusM: r, Limit: 10})
			}
		})
	}
}
