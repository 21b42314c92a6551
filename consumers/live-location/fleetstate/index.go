package fleetstate

import "math"

// grid is a spatial index of fixed-size latitude/longitude cells. Each cell
// holds the entries whose position falls in it; a radius query visits only
// the cells that the circle's bounding box on the sphere overlaps, or, when
// that box covers more cells than are occupied (huge radii, circles around a
// pole), every occupied cell — so a query never costs more than
// min(cells in the box, occupied cells) lookups plus the entries it finds.
//
// grid is not safe for concurrent use; Store guards it.
type grid struct {
	cellDeg    float64
	rows, cols int64
	cells      map[int64]*cell
}

type cell struct {
	row, col int64
	items    []*entry
}

// newGrid returns a grid of cells about cellDeg degrees on a side, adjusted
// so that a whole number of cells spans 360 degrees of longitude.
func newGrid(cellDeg float64) *grid {
	cols := int64(math.Round(360 / cellDeg))
	if cols < 1 {
		cols = 1
	}
	cellDeg = 360 / float64(cols)
	rows := int64(math.Ceil(180 / cellDeg))
	return &grid{cellDeg: cellDeg, rows: rows, cols: cols, cells: make(map[int64]*cell)}
}

func (g *grid) rowOf(lat float64) int64 {
	r := int64(math.Floor((lat + 90) / g.cellDeg))
	return min(max(r, 0), g.rows-1)
}

// colOf maps any longitude, also outside [-180, 180), to its column.
func (g *grid) colOf(lon float64) int64 {
	c := int64(math.Floor((lon + 180) / g.cellDeg))
	c %= g.cols
	if c < 0 {
		c += g.cols
	}
	return c
}

func (g *grid) keyOf(lat, lon float64) int64 { return g.rowOf(lat)*g.cols + g.colOf(lon) }

func (g *grid) insert(e *entry) {
	k := g.keyOf(e.v.Fix.Lat, e.v.Fix.Lon)
	c := g.cells[k]
	if c == nil {
		c = &cell{row: k / g.cols, col: k % g.cols}
		g.cells[k] = c
	}
	e.cell, e.slot, e.indexed = k, len(c.items), true
	c.items = append(c.items, e)
}

func (g *grid) remove(e *entry) {
	if !e.indexed {
		return
	}
	c := g.cells[e.cell]
	last := c.items[len(c.items)-1]
	c.items[e.slot] = last
	last.slot = e.slot
	c.items[len(c.items)-1] = nil
	c.items = c.items[:len(c.items)-1]
	if len(c.items) == 0 {
		delete(g.cells, e.cell)
	}
	e.indexed = false
}

// moved re-files e after its position changed.
func (g *grid) moved(e *entry) {
	if e.indexed && g.keyOf(e.v.Fix.Lat, e.v.Fix.Lon) == e.cell {
		return
	}
	g.remove(e)
	g.insert(e)
}

// search calls visit for every entry in a cell that may hold points within
// radiusM of (lat, lon); visit must check the exact distance itself.
func (g *grid) search(lat, lon, radiusM float64, visit func(*entry)) {
	const pad = 1e-6 // degrees; guards the box edges against rounding
	δ := radiusM / EarthRadiusM
	dLat := δ/degToRad + pad
	latMin, latMax := lat-dLat, lat+dLat
	allLon := latMin <= -90 || latMax >= 90 // the circle holds a pole
	var dLon float64
	if !allLon {
		s := math.Sin(δ) / math.Cos(lat*degToRad)
		if s >= 1 {
			allLon = true
		} else {
			dLon = math.Asin(s)/degToRad + pad
			allLon = 2*dLon+2*g.cellDeg >= 360
		}
	}
	rowMin, rowMax := g.rowOf(latMin), g.rowOf(latMax)
	colMin, ncol := int64(0), g.cols
	if !allLon {
		colMin = g.colOf(lon - dLon)
		ncol = (g.colOf(lon+dLon)-colMin+g.cols)%g.cols + 1
	}
	nrow := rowMax - rowMin + 1
	if float64(nrow)*float64(ncol) > float64(len(g.cells)) {
		for _, c := range g.cells {
			if c.row >= rowMin && c.row <= rowMax && (c.col-colMin+g.cols)%g.cols < ncol {
				for _, e := range c.items {
					visit(e)
				}
			}
		}
		return
	}
	for r := rowMin; r <= rowMax; r++ {
		for i := int64(0); i < ncol; i++ {
			if c := g.cells[r*g.cols+(colMin+i)%g.cols]; c != nil {
				for _, e := range c.items {
					visit(e)
				}
			}
		}
	}
}
