package httpapi

import (
	"encoding/json"
	"math"
	"net/http"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
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
