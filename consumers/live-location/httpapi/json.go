package httpapi

import (
	"encoding/json"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// nearbyVehicle is one answer of GET /v1/vehicles/nearby. Unknown heading
// and speed are null.
type nearbyVehicle struct {
	ID        string   `json:"id"`
	Lat       float64  `json:"lat"`
	Lon       float64  `json:"lon"`
	DistanceM float64  `json:"distance_m"`
	Heading   *float64 `json:"heading"`
	Speed     *float64 `json:"speed"` // m/s
	Status    string   `json:"status"`
	UpdatedAt string   `json:"updated_at"` // RFC 3339, the fix time
}

// vehicleState is a vehicle's full state, as GET /v1/vehicles/{id}, GET
// /v1/vehicles and the stream give it. Unknown values are null.
type vehicleState struct {
	ID              string   `json:"id"`
	Lat             *float64 `json:"lat"`
	Lon             *float64 `json:"lon"`
	Alt             *float64 `json:"alt"`      // metres
	Heading         *float64 `json:"heading"`  // degrees
	Speed           *float64 `json:"speed"`    // m/s
	Accuracy        *float64 `json:"accuracy"` // metres
	Status          string   `json:"status"`
	UpdatedAt       *string  `json:"updated_at"`        // RFC 3339, the fix time
	StatusUpdatedAt *string  `json:"status_updated_at"` // RFC 3339, the status reading time
	Stale           bool     `json:"stale"`             // no fix for longer than the stale-after setting
}

func num(f float64) *float64 {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return &f
}

func rfc3339(unixNano int64) string {
	return time.Unix(0, unixNano).UTC().Format(time.RFC3339Nano)
}

func toNearby(n fleetstate.Neighbor) nearbyVehicle {
	return nearbyVehicle{
		ID:        n.ID,
		Lat:       n.Fix.Lat,
		Lon:       n.Fix.Lon,
		DistanceM: math.Round(n.DistanceM*10) / 10,
		Heading:   num(n.Fix.Heading),
		Speed:     num(n.Fix.Speed),
		Status:    n.Status,
		UpdatedAt: rfc3339(n.Fix.Time),
	}
}

func toState(v fleetstate.Vehicle, now time.Time, staleAfter time.Duration) vehicleState {
	s := vehicleState{ID: v.ID, Status: v.Status, Stale: v.Stale(now, staleAfter)}
	if v.HasFix {
		s.Lat, s.Lon = num(v.Fix.Lat), num(v.Fix.Lon)
		s.Alt, s.Heading, s.Speed, s.Accuracy = num(v.Fix.Alt), num(v.Fix.Heading), num(v.Fix.Speed), num(v.Fix.Accuracy)
		t := rfc3339(v.Fix.Time)
		s.UpdatedAt = &t
	}
	if v.StatusTime != 0 {
		t := rfc3339(v.StatusTime)
		s.StatusUpdatedAt = &t
	}
	return s
}

// nearbyBody is the answer of GET /v1/vehicles/nearby.
type nearbyBody struct {
	Vehicles []nearbyVehicle `json:"vehicles"`
}

// boxBody is the answer of GET /v1/vehicles: at most limit of the total
// vehicles in the box.
type boxBody struct {
	Count     int            `json:"count"`
	Total     int            `json:"total"`
	Truncated bool           `json:"truncated"`
	Vehicles  []vehicleState `json:"vehicles"`
}

type errorBody struct {
	Error string `json:"error"`
	Param string `json:"param,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	if pe, ok := err.(*paramError); ok {
		writeJSON(w, http.StatusBadRequest, errorBody{Error: pe.Error(), Param: pe.Param})
		return
	}
	writeJSON(w, http.StatusInternalServerError, errorBody{Error: err.Error()})
}

// trackPoint is one point of GET /v1/vehicles/{id}/track.
type trackPoint struct {
	T   string  `json:"t"` // RFC 3339
	Lat float64 `json:"lat"`
	Lon float64 `json:"lon"`
}

// signalValue is a vehicle's latest value of one signal.
type signalValue struct {
	Name  string `json:"name"`
	Unit  string `json:"unit,omitempty"`
	Value any    `json:"value"` // number, integer, boolean or string; null for a non-finite number
	T     string `json:"t"`
}

// vehicleDetail is GET /v1/vehicles/{id}/track.
type vehicleDetail struct {
	vehicleState
	Tracked bool          `json:"tracked"` // false: the store keeps no track for it (yet)
	Track   []trackPoint  `json:"track"`
	Signals []signalValue `json:"signals"`
}

func toDetail(d fleetstate.Detail, now time.Time, staleAfter time.Duration) vehicleDetail {
	out := vehicleDetail{vehicleState: toState(d.Vehicle, now, staleAfter), Tracked: d.Tracked,
		Track: make([]trackPoint, len(d.Track)), Signals: make([]signalValue, len(d.Signals))}
	for i, p := range d.Track {
		out.Track[i] = trackPoint{T: rfc3339(p.Time), Lat: p.Lat, Lon: p.Lon}
	}
	for i, s := range d.Signals {
		sv := signalValue{Name: s.Name, Unit: s.Unit, T: rfc3339(s.Time)}
		switch s.Value.Kind {
		case wire.KindDouble:
			if f := num(s.Value.Float); f != nil {
				sv.Value = *f
			}
		case wire.KindInt:
			sv.Value = s.Value.Int
		case wire.KindBool:
			sv.Value = s.Value.Bool
		case wire.KindString:
			sv.Value = s.Value.Str
		}
		out.Signals[i] = sv
	}
	return out
}

// cluster is one bin of GET /v1/clusters and of a stream in cluster mode.
type cluster struct {
	Lat      float64        `json:"lat"`
	Lon      float64        `json:"lon"`
	Count    int            `json:"count"`
	Stale    int            `json:"stale"`
	ByStatus map[string]int `json:"by_status"`
}

type clustersBody struct {
	Clusters []cluster `json:"clusters"`
	Total    int       `json:"total"`
}

func toClusters(cs []fleetstate.Cluster) clustersBody {
	out := clustersBody{Clusters: make([]cluster, len(cs))}
	for i, c := range cs {
		out.Clusters[i] = cluster{Lat: c.Lat, Lon: c.Lon, Count: c.Count, Stale: c.Stale, ByStatus: c.ByStatus}
		out.Total += c.Count
	}
	return out
}

// statusCount is one line of GET /v1/stats.
type statusCount struct {
	Status string `json:"status"`
	Fresh  int    `json:"fresh"`
	Stale  int    `json:"stale"`
}

type statsBody struct {
	Vehicles    int           `json:"vehicles"`
	Fresh       int           `json:"fresh"`
	Stale       int           `json:"stale"`
	ByStatus    []statusCount `json:"by_status"`
	UpdatesPerS float64       `json:"updates_per_s"`
	StreamCount int           `json:"streams"`
}

func (a *API) statsBody() statsBody {
	b := statsBody{Vehicles: a.store.Len(), ByStatus: []statusCount{}, UpdatesPerS: a.rates.rate(), StreamCount: a.store.Subscribers()}
	for _, c := range a.store.Counts() {
		b.ByStatus = append(b.ByStatus, statusCount{Status: c.Status, Fresh: c.Fresh, Stale: c.Stale})
		b.Fresh += c.Fresh
		b.Stale += c.Stale
	}
	return b
}

// rateMeter turns the store's change count into a rate over the last
// second or more.
type rateMeter struct {
	store *fleetstate.Store
	mu    sync.Mutex
	at    time.Time
	n     uint64
	last  float64
}

func newRateMeter(s *fleetstate.Store) *rateMeter {
	return &rateMeter{store: s, at: time.Now(), n: s.Changes()}
}

func (m *rateMeter) rate() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	now, n := time.Now(), m.store.Changes()
	if dt := now.Sub(m.at); dt >= time.Second {
		m.last = float64(n-m.n) / dt.Seconds()
		m.at, m.n = now, n
	}
	return math.Round(m.last*10) / 10
}
