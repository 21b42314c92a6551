package httpapi

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// FuzzQueryParameters checks that no query string makes the API fail with
// anything but 200 or a 400 naming a parameter.
func FuzzQueryParameters(f *testing.F) {
	for _, seed := range []string{
		"lat=52.5&lon=13.4", "lat=52.5&lon=13.4&radius_m=100000&limit=1000&status=available,busy",
		"lat=1e400&lon=0", "lat=-0&lon=-180&radius_m=1e-300", "lat=%zz", "bbox=170,-10,-170,10", "bbox=,,,",
		"snapshot=true&bbox=0,0,0,0", "limit=99999999999999999999", "bins=3x0", "bins=256x256&bbox=-180,-90,180,90",
		"stale=false&status=busy", "bins=x",
	} {
		f.Add("/v1/vehicles/nearby", seed)
		f.Add("/v1/vehicles", seed)
		f.Add("/v1/clusters", seed)
	}
	store := newFuzzStore()
	api, err := New(store, Options{}, Deps{})
	if err != nil {
		f.Fatal(err)
	}
	h := api.Handler()
	f.Fuzz(func(t *testing.T, path, query string) {
		if path != "/v1/vehicles/nearby" && path != "/v1/vehicles" && path != "/v1/clusters" {
			path = "/v1/vehicles/nearby"
		}
		req := httptest.NewRequest(http.MethodGet, "http://x"+path, nil)
		req.URL.RawQuery = query
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK:
		case http.StatusBadRequest:
			var body errorBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Param == "" {
				t.Fatalf("?%s: 400 without a param: %s", query, rec.Body)
			}
		default:
			t.Fatalf("?%s: status %d: %s", query, rec.Code, rec.Body)
		}
	})
}

func newFuzzStore() *fleetstate.Store {
	s := fleetstate.New(fleetstate.Options{})
	for i, p := range [][2]float64{{52.5, 13.4}, {0, 180}, {-90, 0}, {90, -180}} {
		s.ApplyBatch(&wire.Batch{Identity: wire.Identity{VehicleID: string(rune('a' + i))},
			Fixes: []wire.Fix{{Time: time.Now().UnixNano(), Lat: p[0], Lon: p[1]}}})
	}
	return s
}
