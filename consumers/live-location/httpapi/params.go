package httpapi

import (
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
)

// Limits of the nearby query.
const (
	DefaultRadiusM = 1000
	MaxRadiusM     = 100_000
	DefaultLimit   = 10
	MaxLimit       = 1000

	DefaultListLimit = 1000   // vehicles a box listing returns by default
	MaxListLimit     = 10_000 // and at most
	DefaultStreamMax = 10_000 // vehicles a stream follows one by one before it sends clusters
	MaxStreamMax     = 100_000
	DefaultBins      = 32 // bins across a cluster view, and down
	MaxBins          = 256
)

// paramError is a bad query parameter; the API answers it with 400 and
// {"error": Msg, "param": Param}.
type paramError struct {
	Param string
	Msg   string
}

func (e *paramError) Error() string { return e.Param + ": " + e.Msg }

func badParam(param, format string, args ...any) error {
	return &paramError{Param: param, Msg: fmt.Sprintf(format, args...)}
}

// single returns the one value of a parameter; ok is false when absent or
// empty.
func single(q url.Values, name string) (string, bool, error) {
	vs, present := q[name]
	if !present {
		return "", false, nil
	}
	if len(vs) > 1 {
		return "", false, badParam(name, "given %d times, want at most once", len(vs))
	}
	v := strings.TrimSpace(vs[0])
	return v, v != "", nil
}

func parseFinite(name, s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, badParam(name, "%q is not a number", s)
	}
	return f, nil
}

// floatParam parses a number in [lo, hi]; required parameters that are
// absent are an error, optional ones take def.
func floatParam(q url.Values, name string, required bool, def, lo, hi float64) (float64, error) {
	s, ok, err := single(q, name)
	if err != nil {
		return 0, err
	}
	if !ok {
		if required {
			return 0, badParam(name, "is required")
		}
		return def, nil
	}
	f, err := parseFinite(name, s)
	if err != nil {
		return 0, err
	}
	if f < lo || f > hi {
		return 0, badParam(name, "%v is out of range [%v, %v]", f, lo, hi)
	}
	return f, nil
}

func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	s, ok, err := single(q, name)
	if err != nil || !ok {
		return def, err
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, badParam(name, "%q is not an integer", s)
	}
	if n < lo || n > hi {
		return 0, badParam(name, "%d is out of range [%d, %d]", n, lo, hi)
	}
	return n, nil
}

func boolParam(q url.Values, name string) (bool, error) {
	s, ok, err := single(q, name)
	if err != nil || !ok {
		return false, err
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, badParam(name, "%q is not true or false", s)
	}
	return b, nil
}

// statusParam parses a comma-separated list of statuses.
func statusParam(q url.Values, name string) ([]string, error) {
	s, ok, err := single(q, name)
	if err != nil || !ok {
		return nil, err
	}
	var out []string
	for _, st := range strings.Split(s, ",") {
		if st = strings.TrimSpace(st); st != "" {
			out = append(out, st)
		}
	}
	return out, nil
}

// bboxParam parses minLon,minLat,maxLon,maxLat. minLon > maxLon is a box
// across the antimeridian; minLat > maxLat is an error.
func bboxParam(q url.Values, name string) (*fleetstate.BBox, error) {
	s, ok, err := single(q, name)
	if err != nil || !ok {
		return nil, err
	}
	parts := strings.Split(s, ",")
	if len(parts) != 4 {
		return nil, badParam(name, "want minLon,minLat,maxLon,maxLat, got %d values", len(parts))
	}
	var v [4]float64
	for i, p := range parts {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, badParam(name, "value %d (%q) is not a number", i+1, p)
		}
		v[i] = f
	}
	b := fleetstate.BBox{MinLon: v[0], MinLat: v[1], MaxLon: v[2], MaxLat: v[3]}
	if !fleetstate.ValidLatLon(b.MinLat, b.MinLon) || !fleetstate.ValidLatLon(b.MaxLat, b.MaxLon) {
		return nil, badParam(name, "longitudes must be in [-180, 180] and latitudes in [-90, 90]")
	}
	if b.MinLat > b.MaxLat {
		return nil, badParam(name, "minLat %v is above maxLat %v", b.MinLat, b.MaxLat)
	}
	return &b, nil
}

// binsParam parses COLSxROWS (or one number for both), each in
// [1, MaxBins].
func binsParam(q url.Values, name string) (int, int, error) {
	s, ok, err := single(q, name)
	if err != nil || !ok {
		return DefaultBins, DefaultBins, err
	}
	xs, ys, found := strings.Cut(strings.ToLower(s), "x")
	if !found {
		ys = xs
	}
	nx, errx := strconv.Atoi(strings.TrimSpace(xs))
	ny, erry := strconv.Atoi(strings.TrimSpace(ys))
	if errx != nil || erry != nil {
		return 0, 0, badParam(name, "%q: want COLSxROWS, e.g. 32x20", s)
	}
	if nx < 1 || nx > MaxBins || ny < 1 || ny > MaxBins {
		return 0, 0, badParam(name, "%q: each count must be in [1, %d]", s, MaxBins)
	}
	return nx, ny, nil
}

// boxParam is bboxParam with the whole world when the box is not given.
func boxParam(q url.Values, name string) (fleetstate.BBox, error) {
	b, err := bboxParam(q, name)
	if err != nil || b == nil {
		return world, err
	}
	return *b, nil
}
