package alert

import (
	"math"
	"sort"
)

// gridIndex is a uniform latitude/longitude grid over the bounding boxes of
// the geofence zones: each cell lists the zones whose box touches it, so a
// fix is tested against the few zones near it instead of all of them.
// Zones so large that they touch more than maxCellsPerZone cells go to a
// short "wide" list that every query scans (box test first).
type gridIndex struct {
	cell  float64 // cell size in degrees
	cols  int64
	cells map[int64][]int32
	wide  []int32
	boxes []BBox
}

const (
	maxCellsPerZone = 4096
	minCellDeg      = 0.002 // ~220 m
	maxCellDeg      = 5
)

// newGridIndex indexes boxes; query returns indexes into boxes. The cell
// size is the median zone extent, so a typical zone covers about four cells.
func newGridIndex(boxes []BBox) *gridIndex {
	g := &gridIndex{cell: 0.05, cells: make(map[int64][]int32), boxes: boxes}
	if len(boxes) > 0 {
		ext := make([]float64, 0, len(boxes))
		for _, b := range boxes {
			w := 0.0
			for _, r := range b.Lons {
				w += r.max - r.min
			}
			ext = append(ext, math.Max(b.MaxLat-b.MinLat, w))
		}
		sort.Float64s(ext)
		g.cell = math.Max(minCellDeg, math.Min(maxCellDeg, ext[len(ext)/2]))
	}
	g.cols = int64(math.Ceil(360/g.cell)) + 1
	for i, b := range boxes {
		y0, y1 := g.row(b.MinLat), g.row(b.MaxLat)
		n := int64(0)
		for _, r := range b.Lons {
			n += (g.col(r.max) - g.col(r.min) + 1) * (y1 - y0 + 1)
		}
		if n > maxCellsPerZone {
			g.wide = append(g.wide, int32(i))
			continue
		}
		seen := make(map[int64]bool, n)
		for _, r := range b.Lons {
			for y := y0; y <= y1; y++ {
				for x := g.col(r.min); x <= g.col(r.max); x++ {
					k := y*g.cols + x
					if !seen[k] {
						seen[k] = true
						g.cells[k] = append(g.cells[k], int32(i))
					}
				}
			}
		}
	}
	return g
}

func (g *gridIndex) row(lat float64) int64 { return int64(math.Floor((lat + 90) / g.cell)) }
func (g *gridIndex) col(lon float64) int64 { return int64(math.Floor((lon + 180) / g.cell)) }

// query appends to dst the zones whose bounding box contains the point.
func (g *gridIndex) query(dst []int32, lat, lon float64) []int32 {
	for _, i := range g.cells[g.row(lat)*g.cols+g.col(lon)] {
		if g.boxes[i].Contains(lat, lon) {
			dst = append(dst, i)
		}
	}
	for _, i := range g.wide {
		if g.boxes[i].Contains(lat, lon) {
			dst = append(dst, i)
		}
	}
	return dst
}
