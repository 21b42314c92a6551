package fleetstate

import (
	"container/heap"
	"math"
	"slices"
	"strings"
)

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

// classes returns the fresh class indexes of the wanted statuses (every
// status when want is empty); unknown statuses have none.
func (s *Store) classes(want []string) []*classIndex {
	all := s.statuses.entries()
	out := make([]*classIndex, 0, max(len(want), len(all)))
	if len(want) == 0 {
		for _, e := range all {
			out = append(out, e.index)
		}
		return out
	}
	for i, w := range want {
		if slices.Contains(want[:i], w) {
			continue
		}
		if id, ok := s.statuses.lookup(w); ok {
			out = append(out, all[id].index)
		}
	}
	return out
}

// Nearby returns the fresh vehicles within q.RadiusM of the query point,
// nearest first (ties by ID). Vehicles whose newest fix is older than
// Options.StaleAfter are left out.
//
// With a limit it searches a growing circle, from about one cell to
// q.RadiusM, and stops at the first that holds the limit: every vehicle
// nearer than the limit-th one found lies in that circle, and the circle's
// every cell was read, so the answer is exact.
func (s *Store) Nearby(q Query) []Neighbor {
	now := s.opts.Now()
	fresh := now.Add(-s.opts.StaleAfter).UnixNano()
	classes := s.classes(q.Statuses)
	if len(classes) == 0 || !(q.RadiusM >= 0) {
		return nil
	}
	h := &candHeap{limit: q.Limit}
	r := q.RadiusM
	if q.Limit > 0 {
		r = min(r, s.startRadius(q, classes))
	}
	from := pointFrom(q.Lat, q.Lon)
	var radius float64
	visit := func(e *entry) {
		if e.t < fresh {
			return
		}
		// |Δlat| alone is a lower bound of the distance: skip the far
		// corners of the box without the trigonometry.
		if math.Abs(e.lat-q.Lat)*degToRad*EarthRadiusM > radius*(1+1e-9)+1e-6 {
			return
		}
		d := from.distanceTo(e.lat, e.lon)
		if d > radius {
			return
		}
		h.offer(cand{d: d, v: e.v, t: e.t})
	}
	for {
		radius = r
		h.items = h.items[:0]
		sp := s.geo.spanOf(q.Lat, q.Lon, r)
		for _, ci := range classes {
			ci.visit(s.geo, sp, visit)
		}
		if r >= q.RadiusM || h.Len() >= q.Limit {
			break
		}
		grow := 4.0
		if n := h.Len(); n > 0 {
			// Vehicles found grow with the area: aim at the limit with a margin.
			grow = min(4, max(1.5, 1.2*math.Sqrt(float64(q.Limit)/float64(n))))
		}
		r = min(r*grow, q.RadiusM)
	}
	return s.resolve(q, h.items, fresh)
}

// startRadius guesses the radius that holds q.Limit vehicles from how many
// the query point's cell holds, with a margin; a cell's height when it
// holds none.
func (s *Store) startRadius(q Query, classes []*classIndex) float64 {
	cellM := s.geo.cellDeg * degToRad * EarthRadiusM
	key := s.geo.keyOf(q.Lat, q.Lon)
	n := 0
	for _, ci := range classes {
		n += ci.cellLen(key)
	}
	if n == 0 {
		return cellM
	}
	area := cellM * cellM * max(math.Cos(q.Lat*degToRad), 0.01)
	r := 1.5 * math.Sqrt(float64(q.Limit)*area/(math.Pi*float64(n)))
	return min(max(r, cellM/16), 4*cellM)
}

// resolve reads the full state of the candidates. One that moved or
// changed status since its cell was read is judged again on its current
// state.
func (s *Store) resolve(q Query, cs []cand, fresh int64) []Neighbor {
	out := make([]Neighbor, 0, len(cs))
	for _, c := range cs {
		sh := s.shardOfRec(c.v)
		sh.mu.RLock()
		gone, moved := c.v.gone, c.v.fix.Time != c.t
		v := c.v.vehicle(&s.statuses)
		sh.mu.RUnlock()
		if gone {
			continue
		}
		d := c.d
		if moved {
			d = DistanceM(q.Lat, q.Lon, v.Fix.Lat, v.Fix.Lon)
			if d > q.RadiusM || v.Fix.Time < fresh || !statusIn(v.Status, q.Statuses) {
				continue
			}
		} else if !statusIn(v.Status, q.Statuses) {
			continue
		}
		out = append(out, Neighbor{Vehicle: v, DistanceM: d})
	}
	slices.SortFunc(out, func(a, b Neighbor) int {
		if a.DistanceM != b.DistanceM {
			if a.DistanceM < b.DistanceM {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func statusIn(st string, want []string) bool {
	return len(want) == 0 || slices.Contains(want, st)
}

// cand is a vehicle a search found, with its distance and the fix time its
// cell entry had.
type cand struct {
	d float64
	v *vrec
	t int64
}

func (a cand) nearer(b cand) bool {
	if a.d != b.d {
		return a.d < b.d
	}
	return a.v.id < b.v.id
}

// candHeap keeps the limit nearest candidates offered: a max-heap whose
// root is the farthest kept. Without a limit it keeps every one.
type candHeap struct {
	limit int
	items []cand
}

func (h *candHeap) offer(c cand) {
	if h.limit <= 0 {
		h.items = append(h.items, c)
		return
	}
	if len(h.items) < h.limit {
		heap.Push(h, c)
		return
	}
	if c.nearer(h.items[0]) {
		h.items[0] = c
		heap.Fix(h, 0)
	}
}

func (h *candHeap) Len() int           { return len(h.items) }
func (h *candHeap) Less(i, j int) bool { return h.items[j].nearer(h.items[i]) }
func (h *candHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *candHeap) Push(x any)         { h.items = append(h.items, x.(cand)) }
func (h *candHeap) Pop() any {
	c := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return c
}

// InBox returns up to limit vehicles (every one when limit <= 0) whose
// position lies in b, with one of the wanted statuses (any when empty),
// stale ones too when withStale, ordered by ID; and how many there are in
// all.
func (s *Store) InBox(b BBox, want []string, withStale bool, limit int) ([]Vehicle, int) {
	sp := s.geo.bboxSpan(b)
	var found []*vrec
	total := 0
	keep := func(e *entry) {
		if !b.Contains(e.lat, e.lon) {
			return
		}
		total++
		if limit <= 0 || len(found) < limit {
			found = append(found, e.v)
		}
	}
	for _, ci := range s.classes(want) {
		ci.visit(s.geo, sp, keep)
	}
	if withStale {
		// The stale class mixes statuses: with a status filter, each one's
		// status is read (under its shard lock, after the cell's) first.
		var stale []*vrec
		s.statuses.stale.visit(s.geo, sp, func(e *entry) {
			if b.Contains(e.lat, e.lon) {
				stale = append(stale, e.v)
			}
		})
		for _, r := range stale {
			if len(want) > 0 {
				sh := s.shardOfRec(r)
				sh.mu.RLock()
				ok := statusIn(s.statuses.name(r.status), want)
				sh.mu.RUnlock()
				if !ok {
					continue
				}
			}
			total++
			if limit <= 0 || len(found) < limit {
				found = append(found, r)
			}
		}
	}
	out := make([]Vehicle, 0, len(found))
	for _, r := range found {
		sh := s.shardOfRec(r)
		sh.mu.RLock()
		gone, v := r.gone, r.vehicle(&s.statuses)
		sh.mu.RUnlock()
		if !gone && statusIn(v.Status, want) {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b Vehicle) int { return strings.Compare(a.ID, b.ID) })
	return out, total
}

// Cluster is the vehicles of one bin of Aggregate.
type Cluster struct {
	Lat, Lon float64        // their mean position
	Count    int            // vehicles in the bin
	Stale    int            // of which stale (no fix within StaleAfter)
	ByStatus map[string]int // fresh vehicles by status
}

// Aggregate counts the vehicles in b (stale ones included) in a grid of
// nx by ny bins over the box, for a map too zoomed out to show each
// vehicle. Bins without vehicles are left out.
func (s *Store) Aggregate(b BBox, nx, ny int) []Cluster {
	nx, ny = max(nx, 1), max(ny, 1)
	width := b.MaxLon - b.MinLon
	if width < 0 {
		width += 360
	}
	height := b.MaxLat - b.MinLat
	type bin struct {
		sumLat, sumLon float64
		count, stale   int
		by             map[uint16]int
	}
	bins := map[int]*bin{}
	sp := s.geo.bboxSpan(b)
	add := func(e *entry, status uint16, stale bool) {
		if !b.Contains(e.lat, e.lon) {
			return
		}
		dx := e.lon - b.MinLon
		if dx < 0 {
			dx += 360
		}
		x, y := 0, 0
		if width > 0 {
			x = min(int(dx/width*float64(nx)), nx-1)
		}
		if height > 0 {
			y = min(int((e.lat-b.MinLat)/height*float64(ny)), ny-1)
		}
		k := y*nx + x
		bn := bins[k]
		if bn == nil {
			bn = &bin{by: map[uint16]int{}}
			bins[k] = bn
		}
		bn.sumLat += e.lat
		bn.sumLon += dx
		bn.count++
		if stale {
			bn.stale++
		} else {
			bn.by[status]++
		}
	}
	for id, e := range s.statuses.entries() {
		e.index.visit(s.geo, sp, func(en *entry) { add(en, uint16(id), false) })
	}
	s.statuses.stale.visit(s.geo, sp, func(en *entry) { add(en, 0, true) })
	keys := make([]int, 0, len(bins))
	for k := range bins {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := make([]Cluster, 0, len(bins))
	for _, k := range keys {
		bn := bins[k]
		lon := b.MinLon + bn.sumLon/float64(bn.count)
		if lon > 180 {
			lon -= 360
		}
		c := Cluster{Lat: bn.sumLat / float64(bn.count), Lon: lon, Count: bn.count, Stale: bn.stale, ByStatus: map[string]int{}}
		for id, n := range bn.by {
			c.ByStatus[s.statuses.name(id)] += n
		}
		out = append(out, c)
	}
	return out
}
