package fleetstate

import (
	"math"
	"sync"
	"sync/atomic"
)

// geometry maps positions to the cells of a fixed latitude/longitude grid
// whose cells are about cellDeg degrees on a side, adjusted so that a whole
// number of columns spans 360 degrees of longitude. A cell key is
// row*cols+col.
type geometry struct {
	cellDeg    float64
	rows, cols int64
}

func newGeometry(cellDeg float64) geometry {
	cols := int64(math.Round(360 / cellDeg))
	if cols < 1 {
		cols = 1
	}
	cellDeg = 360 / float64(cols)
	rows := int64(math.Ceil(180 / cellDeg))
	return geometry{cellDeg: cellDeg, rows: rows, cols: cols}
}

func (g geometry) rowOf(lat float64) int64 {
	r := int64(math.Floor((lat + 90) / g.cellDeg))
	return min(max(r, 0), g.rows-1)
}

// colOf maps any longitude, also outside [-180, 180), to its column.
func (g geometry) colOf(lon float64) int64 {
	c := int64(math.Floor((lon + 180) / g.cellDeg))
	c %= g.cols
	if c < 0 {
		c += g.cols
	}
	return c
}

func (g geometry) keyOf(lat, lon float64) int64 { return g.rowOf(lat)*g.cols + g.colOf(lon) }

// span is the set of cells a circle's bounding box on the sphere overlaps:
// rows rowMin..rowMax and ncol columns from colMin, wrapping at the
// antimeridian.
type span struct {
	rowMin, rowMax int64
	colMin, ncol   int64
}

// spanOf returns the cells that may hold points within radiusM of (lat,
// lon). The box is exact on the sphere: the latitude band is the radius
// itself, and the longitude half-width is asin(sin δ / cos φ), the widest
// longitude offset a point of the circle reaches; a circle holding a pole
// (or one that is wider than the globe) spans every column.
func (g geometry) spanOf(lat, lon, radiusM float64) span {
	const pad = 1e-6 // degrees; guards the box edges against rounding
	δ := radiusM / EarthRadiusM
	dLat := δ/degToRad + pad
	latMin, latMax := lat-dLat, lat+dLat
	allLon := latMin <= -90 || latMax >= 90
	var dLon float64
	if !allLon {
		s := math.Sin(δ) / math.Cos(lat*degToRad)
		if s >= 1 || δ >= math.Pi/2 {
			allLon = true
		} else {
			dLon = math.Asin(s)/degToRad + pad
			allLon = 2*dLon+2*g.cellDeg >= 360
		}
	}
	sp := span{rowMin: g.rowOf(latMin), rowMax: g.rowOf(latMax), colMin: 0, ncol: g.cols}
	if !allLon {
		sp.colMin = g.colOf(lon - dLon)
		sp.ncol = (g.colOf(lon+dLon)-sp.colMin+g.cols)%g.cols + 1
	}
	return sp
}

// bboxSpan returns the cells a longitude/latitude box overlaps.
func (g geometry) bboxSpan(b BBox) span {
	sp := span{rowMin: g.rowOf(b.MinLat), rowMax: g.rowOf(b.MaxLat)}
	if b.MinLon <= b.MaxLon && b.MaxLon-b.MinLon+2*g.cellDeg >= 360 || b.MinLon > b.MaxLon && b.MinLon-b.MaxLon <= 2*g.cellDeg {
		sp.ncol = g.cols
		return sp
	}
	sp.colMin = g.colOf(b.MinLon)
	sp.ncol = (g.colOf(b.MaxLon)-sp.colMin+g.cols)%g.cols + 1
	return sp
}

func (sp span) cells() float64 { return float64(sp.rowMax-sp.rowMin+1) * float64(sp.ncol) }

func (sp span) holds(g geometry, key int64) bool {
	r, c := key/g.cols, key%g.cols
	return r >= sp.rowMin && r <= sp.rowMax && (c-sp.colMin+g.cols)%g.cols < sp.ncol
}

// entry is a vehicle's place in a cell: a copy of its position and fix time,
// so that a search reads only the cell, and the vehicle itself for the ID
// and the rest of its state.
type entry struct {
	lat, lon float64
	t        int64 // fix time, Unix ns
	v        *vrec
}

type cell struct{ items []entry }

// nStripes is the number of locks a class index is split into. Cells are
// spread over the stripes by a hash of their key, so that neighbouring
// cells (which one query visits together, and one moving vehicle touches
// together) rarely share a lock.
const nStripes = 64

type stripe struct {
	mu    sync.RWMutex
	cells map[int64]*cell
	_     [64 - 8 - 24]byte // keep stripes on separate cache lines
}

// classIndex is the spatial index of one class of vehicles (one status, or
// the stale ones): a hash of occupied grid cells, split into stripes each
// with its own lock. A search read-locks one stripe at a time, for one
// cell; an update write-locks the stripes of the cells it leaves and enters.
// No lock covers the whole index.
type classIndex struct {
	stripes  [nStripes]stripe
	occupied atomic.Int64 // cells with at least one entry
	count    atomic.Int64 // entries
}

func newClassIndex() *classIndex {
	ci := &classIndex{}
	for i := range ci.stripes {
		ci.stripes[i].cells = make(map[int64]*cell)
	}
	return ci
}

func stripeOf(key int64) int {
	return int((uint64(key) * 0x9E3779B97F4A7C15) >> (64 - 6)) // nStripes = 1<<6
}

// insert files v at (lat, lon, t) in the cell key; the stripe of key must be
// write-locked. It sets v.slot.
func (ci *classIndex) insertLocked(st *stripe, key int64, lat, lon float64, t int64, v *vrec) {
	c := st.cells[key]
	if c == nil {
		c = &cell{}
		st.cells[key] = c
		ci.occupied.Add(1)
	}
	v.slot = int32(len(c.items))
	c.items = append(c.items, entry{lat: lat, lon: lon, t: t, v: v})
	ci.count.Add(1)
}

// removeLocked takes v out of cell key; the stripe of key must be
// write-locked.
func (ci *classIndex) removeLocked(st *stripe, key int64, v *vrec) {
	c := st.cells[key]
	last := len(c.items) - 1
	if int(v.slot) != last {
		c.items[v.slot] = c.items[last]
		c.items[v.slot].v.slot = v.slot
	}
	c.items[last] = entry{}
	c.items = c.items[:last]
	if last == 0 {
		delete(st.cells, key)
		ci.occupied.Add(-1)
	} else if cap(c.items) > 32 && len(c.items) < cap(c.items)/4 {
		c.items = append([]entry(nil), c.items...) // give back what a crowd left
	}
	ci.count.Add(-1)
}

// visit calls fn for every entry in the cells of sp, one cell at a time
// with that cell's stripe read-locked: fn must be quick and must not call
// the store. When the span has more cells than the index has occupied
// cells (huge radii, circles around a pole), it walks the occupied cells
// instead, so a search never costs more than min(cells in the span,
// occupied cells) lookups plus the entries it visits.
func (ci *classIndex) visit(g geometry, sp span, fn func(*entry)) {
	if ci.count.Load() == 0 {
		return
	}
	if sp.cells() > float64(ci.occupied.Load()) {
		for i := range ci.stripes {
			st := &ci.stripes[i]
			st.mu.RLock()
			for key, c := range st.cells {
				if sp.holds(g, key) {
					for j := range c.items {
						fn(&c.items[j])
					}
				}
			}
			st.mu.RUnlock()
		}
		return
	}
	for r := sp.rowMin; r <= sp.rowMax; r++ {
		for i := int64(0); i < sp.ncol; i++ {
			key := r*g.cols + (sp.colMin+i)%g.cols
			st := &ci.stripes[stripeOf(key)]
			st.mu.RLock()
			if c := st.cells[key]; c != nil {
				for j := range c.items {
					fn(&c.items[j])
				}
			}
			st.mu.RUnlock()
		}
	}
}

// cellLen returns how many entries the cell key holds.
func (ci *classIndex) cellLen(key int64) int {
	st := &ci.stripes[stripeOf(key)]
	st.mu.RLock()
	defer st.mu.RUnlock()
	if c := st.cells[key]; c != nil {
		return len(c.items)
	}
	return 0
}
