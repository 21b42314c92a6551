package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	store *fleetstate.Store
	api   *API
	srv   *httptest.Server
	reg   *prometheus.Registry
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	store := fleetstate.New(fleetstate.Options{})
	reg := prometheus.NewRegistry()
	api, err := New(store, Options{Heartbeat: 50 * time.Millisecond}, Deps{Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureOn(t, store, api)
	f.reg = reg
	return f
}

func newFixtureOn(t *testing.T, store *fleetstate.Store, api *API) *fixture {
	t.Helper()
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(func() { api.Close(); srv.Close(); http.DefaultClient.CloseIdleConnections() })
	return &fixture{store: store, api: api, srv: srv}
}

// put gives a vehicle a fix age ago (and a status) at lat, lon.
func (f *fixture) put(id string, lat, lon float64, st string, age time.Duration) {
	ts := time.Now().Add(-age).UnixNano()
	b := &wire.Batch{Identity: wire.Identity{VehicleID: id},
		Fixes: []wire.Fix{{Time: ts, Lat: lat, Lon: lon, Alt: math.NaN(), Speed: 7.5, Heading: math.NaN(), Accuracy: 3}}}
	if st != "" {
		b.Readings = []wire.Reading{{Signal: "status", Time: ts, Value: wire.String(st)}}
	}
	f.store.ApplyBatch(b)
}

func (f *fixture) get(t *testing.T, path string, into any) int {
	t.Helper()
	resp, err := http.Get(f.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); into != nil && !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("GET %s: Content-Type %q", path, ct)
	}
	if into != nil {
		if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return resp.StatusCode
}

func TestBadParametersNameTheParameter(t *testing.T) {
	f := newFixture(t)
	for _, c := range []struct{ path, param string }{
		{"/v1/vehicles/nearby", "lat"},
		{"/v1/vehicles/nearby?lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=abc&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=91&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=-90.5&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=NaN&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=Inf&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=1&lat=2&lon=13", "lat"},
		{"/v1/vehicles/nearby?lat=52", "lon"},
		{"/v1/vehicles/nearby?lat=52&lon=181", "lon"},
		{"/v1/vehicles/nearby?lat=52&lon=east", "lon"},
		{"/v1/vehicles/nearby?lat=52&lon=13&radius_m=0", "radius_m"},
		{"/v1/vehicles/nearby?lat=52&lon=13&radius_m=-5", "radius_m"},
		{"/v1/vehicles/nearby?lat=52&lon=13&radius_m=100001", "radius_m"},
		{"/v1/vehicles/nearby?lat=52&lon=13&radius_m=far", "radius_m"},
		{"/v1/vehicles/nearby?lat=52&lon=13&limit=0", "limit"},
		{"/v1/vehicles/nearby?lat=52&lon=13&limit=1001", "limit"},
		{"/v1/vehicles/nearby?lat=52&lon=13&limit=2.5", "limit"},
		{"/v1/vehicles/nearby?lat=52&lon=13&limit=ten", "limit"},
		{"/v1/vehicles/nearby?lat=52&lon=13&status=a&status=b", "status"},
		{"/v1/vehicles/stream?bbox=1,2,3", "bbox"},
		{"/v1/vehicles/stream?bbox=a,b,c,d", "bbox"},
		{"/v1/vehicles/stream?bbox=0,10,1,5", "bbox"},
		{"/v1/vehicles/stream?bbox=0,0,200,1", "bbox"},
		{"/v1/vehicles/stream?bbox=0,-91,1,1", "bbox"},
		{"/v1/vehicles/stream?snapshot=perhaps", "snapshot"},
		{"/v1/vehicles?bbox=1,2", "bbox"},
		{"/v1/vehicles/bad%20id!", "id"},
	} {
		var body errorBody
		code := f.get(t, c.path, &body)
		if code != http.StatusBadRequest || body.Param != c.param || body.Error == "" {
			t.Errorf("GET %s = %d %+v, want 400 naming %q", c.path, code, body, c.param)
		}
	}
}

func TestUnknownVehicleIs404(t *testing.T) {
	f := newFixture(t)
	var body errorBody
	if code := f.get(t, "/v1/vehicles/nobody", &body); code != http.StatusNotFound || !strings.Contains(body.Error, "nobody") {
		t.Fatalf("GET unknown = %d %+v", code, body)
	}
}

func TestNearby(t *testing.T) {
	f := newFixture(t)
	f.put("far", 52.52, 13.40, "available", 0)       // ~2.2 km north
	f.put("near", 52.5005, 13.40, "busy", 0)         // ~56 m
	f.put("nearest", 52.5001, 13.40, "available", 0) // ~11 m
	f.put("stale", 52.5, 13.40, "available", 5*time.Minute)

	var got struct {
		Vehicles []map[string]any `json:"vehicles"`
	}
	if code := f.get(t, "/v1/vehicles/nearby?lat=52.5&lon=13.4", &got); code != 200 {
		t.Fatalf("code %d", code)
	}
	if len(got.Vehicles) != 2 || got.Vehicles[0]["id"] != "nearest" || got.Vehicles[1]["id"] != "near" {
		t.Fatalf("nearby (default radius 1000 m) = %v", got.Vehicles)
	}
	v := got.Vehicles[0]
	for _, k := range []string{"id", "lat", "lon", "distance_m", "heading", "speed", "status", "updated_at"} {
		if _, ok := v[k]; !ok {
			t.Errorf("field %q missing from %v", k, v)
		}
	}
	if v["heading"] != nil || v["speed"] != 7.5 || v["status"] != "available" {
		t.Errorf("heading (NaN) must be null, speed 7.5, status available: %v", v)
	}
	if d := v["distance_m"].(float64); d < 10 || d > 12 {
		t.Errorf("distance_m = %v, want ~11", d)
	}
	if _, err := time.Parse(time.RFC3339, v["updated_at"].(string)); err != nil {
		t.Errorf("updated_at: %v", err)
	}

	f.get(t, "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=5000&status=available", &got)
	if len(got.Vehicles) != 2 || got.Vehicles[0]["id"] != "nearest" || got.Vehicles[1]["id"] != "far" {
		t.Fatalf("available within 5 km = %v", got.Vehicles)
	}
	f.get(t, "/v1/vehicles/nearby?lat=52.5&lon=13.4&radius_m=5000&limit=1", &got)
	if len(got.Vehicles) != 1 {
		t.Fatalf("limit 1 = %v", got.Vehicles)
	}
	f.get(t, "/v1/vehicles/nearby?lat=-33&lon=151", &got)
	if got.Vehicles == nil || len(got.Vehicles) != 0 {
		t.Fatalf("empty answer must be [], got %v", got.Vehicles)
	}
}

func TestVehicleAndList(t *testing.T) {
	f := newFixture(t)
	f.put("car-1", 52.5, 13.4, "busy", 0)
	f.put("car-2", 48.1, 11.6, "", 10*time.Minute)
	var v vehicleState
	if code := f.get(t, "/v1/vehicles/car-1", &v); code != 200 {
		t.Fatalf("code %d", code)
	}
	if v.ID != "car-1" || *v.Lat != 52.5 || v.Status != "busy" || v.Alt != nil || *v.Accuracy != 3 || v.Stale || v.UpdatedAt == nil {
		t.Fatalf("vehicle = %+v", v)
	}
	var list struct {
		Vehicles []vehicleState `json:"vehicles"`
		Count    int            `json:"count"`
	}
	f.get(t, "/v1/vehicles", &list)
	if list.Count != 2 || list.Vehicles[1].ID != "car-2" || !list.Vehicles[1].Stale {
		t.Fatalf("list = %+v", list)
	}
	f.get(t, "/v1/vehicles?bbox=13,52,14,53", &list)
	if list.Count != 1 || list.Vehicles[0].ID != "car-1" {
		t.Fatalf("list in bbox = %+v", list)
	}
}

func TestDashboard(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	for _, want := range []string{"<canvas", "EventSource", "/v1/vehicles/stream", "/v1/vehicles/nearby"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("dashboard lacks %q", want)
		}
	}
	for _, bad := range []string{"http://", "https://"} { // self-contained: no CDN
		if strings.Contains(string(page), bad) {
			t.Errorf("dashboard refers to %q", bad)
		}
	}
	if code := f.get(t, "/nope", nil); code != 404 {
		t.Errorf("GET /nope = %d", code)
	}
}

// sse is one Server-Sent Events message: a comment, or an event with data.
type sse struct {
	event, data, comment string
}

// openStream connects to the stream and parses messages onto a channel,
// closed when the stream ends.
func openStream(t *testing.T, ctx context.Context, url string) (<-chan sse, *http.Response) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	ch := make(chan sse, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(resp.Body)
		var m sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m != (sse{}) {
					ch <- m
				}
				m = sse{}
			case strings.HasPrefix(line, ":"):
				m.comment = strings.TrimSpace(line[1:])
			case strings.HasPrefix(line, "event: "):
				m.event = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				m.data = line[len("data: "):]
			}
		}
	}()
	return ch, resp
}

// nextEvent returns the next position event, skipping comments, or fails
// after the deadline.
func nextEvent(t *testing.T, ch <-chan sse, within time.Duration) vehicleState {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatal("stream ended")
			}
			if m.event != "position" {
				continue
			}
			var v vehicleState
			if err := json.Unmarshal([]byte(m.data), &v); err != nil {
				t.Fatalf("event data %q: %v", m.data, err)
			}
			return v
		case <-deadline:
			t.Fatalf("no event within %v", within)
		}
	}
}

func TestStreamDeliversChangesInBBox(t *testing.T) {
	f := newFixture(t)
	f.put("inside", 52.5, 13.4, "available", time.Second)
	f.put("outside", 48.1, 11.6, "available", time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, resp := openStream(t, ctx, f.srv.URL+"/v1/vehicles/stream?bbox=13,52,14,53&snapshot=true")
	defer resp.Body.Close()

	if v := nextEvent(t, ch, 5*time.Second); v.ID != "inside" {
		t.Fatalf("snapshot event for %q, want only inside", v.ID)
	}
	f.put("outside", 48.2, 11.7, "busy", 0) // filtered out
	f.put("inside", 52.6, 13.5, "busy", 0)
	v := nextEvent(t, ch, 5*time.Second)
	if v.ID != "inside" || *v.Lat != 52.6 || v.Status != "busy" {
		t.Fatalf("event = %+v, want inside moving to 52.6", v)
	}
	// Leaving the box is news too.
	f.put("inside", 40, 13.5, "busy", 0)
	if v := nextEvent(t, ch, 5*time.Second); v.ID != "inside" || *v.Lat != 40 {
		t.Fatalf("leave event = %+v", v)
	}
	// Heartbeats keep flowing.
	deadline := time.After(5 * time.Second)
	for beat := false; !beat; {
		select {
		case m := <-ch:
			if m.event == "position" {
				t.Fatalf("unexpected event %+v", m)
			}
			beat = m.comment == "heartbeat"
		case <-deadline:
			t.Fatal("no heartbeat")
		}
	}
	if got := gaugeValue(f.api.clients.WithLabelValues("vehicles")); got != 1 {
		t.Fatalf("stream clients = %v", got)
	}
	// The client goes away: the handler ends and unsubscribes.
	cancel()
	waitFor(t, func() bool {
		return f.store.Subscribers() == 0 && gaugeValue(f.api.clients.WithLabelValues("vehicles")) == 0
	})
}

func TestStreamEndsOnClose(t *testing.T) {
	f := newFixture(t)
	ch, resp := openStream(t, context.Background(), f.srv.URL+"/v1/vehicles/stream")
	defer resp.Body.Close()
	f.put("a", 1, 1, "", 0)
	if v := nextEvent(t, ch, 5*time.Second); v.ID != "a" {
		t.Fatalf("event %+v", v)
	}
	f.api.Close()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				waitFor(t, func() bool { return f.store.Subscribers() == 0 })
				return
			}
		case <-deadline:
			t.Fatal("stream still open after Close")
		}
	}
}

func TestManyStreamsConcurrently(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, f.srv.URL+"/v1/vehicles/stream?snapshot=1", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			// Changes coalesce, but the last one always arrives.
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if strings.Contains(sc.Text(), `"lat":9,`) {
					return
				}
			}
			t.Errorf("stream %d ended without the last change: %v", i, sc.Err())
		}()
	}
	waitFor(t, func() bool { return f.store.Subscribers() == 5 })
	for i := range 50 {
		f.put("car", float64(i%9), 1, "", time.Duration(50-i)*time.Millisecond)
	}
	f.put("car", 9, 1, "", 0)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("streams did not all see the last change") // the streams end with the fixture
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		panic(err)
	}
	return m.GetGauge().GetValue()
}
