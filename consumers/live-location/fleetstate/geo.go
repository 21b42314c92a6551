package fleetstate

import "math"

// EarthRadiusM is the mean Earth radius (IUGG) the distances use, in metres.
const EarthRadiusM = 6_371_008.8

const degToRad = math.Pi / 180

// DistanceM is the great-circle (haversine) distance between two WGS84
// points, in metres, on a sphere of radius EarthRadiusM.
func DistanceM(lat1, lon1, lat2, lon2 float64) float64 {
	return pointFrom(lat1, lon1).distanceTo(lat2, lon2)
}

// point is a point distances are measured from, with the cosine of its
// latitude worked out once (a search measures from it many times).
type point struct{ lat, lon, cosLat float64 }

func pointFrom(lat, lon float64) point { return point{lat, lon, math.Cos(lat * degToRad)} }

// distanceTo is DistanceM from p, to the last bit.
func (p point) distanceTo(lat2, lon2 float64) float64 {
	dφ := (lat2 - p.lat) * degToRad
	dλ := (lon2 - p.lon) * degToRad
	s1, s2 := math.Sin(dφ/2), math.Sin(dλ/2)
	h := s1*s1 + p.cosLat*math.Cos(lat2*degToRad)*s2*s2
	if h > 1 {
		h = 1
	}
	return 2 * EarthRadiusM * math.Asin(math.Sqrt(h))
}

// ValidLatLon reports whether lat and lon are finite WGS84 degrees in
// [-90, 90] and [-180, 180].
func ValidLatLon(lat, lon float64) bool {
	return lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180 // false for NaN
}

// BBox is a longitude/latitude box. A box whose MinLon is greater than its
// MaxLon crosses the antimeridian: it spans MinLon..180 and -180..MaxLon.
type BBox struct {
	MinLon, MinLat, MaxLon, MaxLat float64
}

// Contains reports whether the point lies in the box, edges included.
func (b BBox) Contains(lat, lon float64) bool {
	if lat < b.MinLat || lat > b.MaxLat {
		return false
	}
	if b.MinLon <= b.MaxLon {
		return lon >= b.MinLon && lon <= b.MaxLon
	}
	return lon >= b.MinLon || lon <= b.MaxLon
}
