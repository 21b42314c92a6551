package fleetstate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// city is a store of n vehicles spread over a 50 km square, half of them
// available, with fixes stamped now.
type city struct {
	s        *Store
	ids      []string
	lat, lon []float64
}

var (
	cityOnce sync.Once
	cityMem  *city
)

func benchCity(b *testing.B) *city {
	cityOnce.Do(func() {
		const n = 1_000_000
		c := &city{s: New(Options{}), ids: make([]string, n), lat: make([]float64, n), lon: make([]float64, n)}
		rng := rand.New(rand.NewPCG(1, 2))
		dLat := 25_000 / EarthRadiusM / degToRad
		dLon := dLat / math.Cos(52.52*degToRad)
		now := time.Now().UnixNano()
		for i := range n {
			c.ids[i] = fmt.Sprintf("car-%07d", i)
			c.lat[i], c.lon[i] = 52.52+(rng.Float64()*2-1)*dLat, 13.40+(rng.Float64()*2-1)*dLon
			st := "available"
			if i%2 == 1 {
				st = "busy"
			}
			c.s.ApplyPosition(Position{ID: c.ids[i], Fix: Fix{Time: now, Lat: c.lat[i], Lon: c.lon[i]}, Status: st})
		}
		cityMem = c
	})
	return cityMem
}

// BenchmarkCityNearby5km is k=10 nearest available within 5 km among a
// million vehicles.
func BenchmarkCityNearby5km(b *testing.B) {
	c := benchCity(b)
	rng := rand.New(rand.NewPCG(3, 4))
	b.ResetTimer()
	for b.Loop() {
		i := rng.IntN(len(c.ids))
		c.s.Nearby(Query{Lat: c.lat[i], Lon: c.lon[i], RadiusM: 5000, Limit: 10, Statuses: []string{"available"}})
	}
}

// BenchmarkCityUpdate moves vehicles about 10 m with a fix and status batch.
func BenchmarkCityUpdate(b *testing.B) {
	c := benchCity(b)
	rng := rand.New(rand.NewPCG(5, 6))
	var seq uint64
	b.ResetTimer()
	for b.Loop() {
		i := rng.IntN(len(c.ids))
		c.lat[i] += (rng.Float64() - 0.5) * 0.0002
		c.lon[i] += (rng.Float64() - 0.5) * 0.0003
		seq++
		now := time.Now().UnixNano()
		st := "available"
		if i%2 == 1 {
			st = "busy"
		}
		batch := wire.Batch{Identity: wire.Identity{VehicleID: c.ids[i], Seq: seq},
			Fixes:    []wire.Fix{{Time: now, Lat: c.lat[i], Lon: c.lon[i]}},
			Readings: []wire.Reading{{Signal: "status", Time: now, Value: wire.String(st)}}}
		c.s.ApplyBatch(&batch)
	}
}
