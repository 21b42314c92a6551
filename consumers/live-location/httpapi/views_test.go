package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// nextNamed returns the data of the next event named name, skipping others.
func nextNamed(t *testing.T, ch <-chan sse, name string, within time.Duration) string {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("stream ended before a %s event", name)
			}
			if m.event == name {
				return m.data
			}
		case <-deadline:
			t.Fatalf("no %s event within %v", name, within)
		}
	}
}

func TestStreamSwitchesToClustersForACrowdedBox(t *testing.T) {
	f := newFixture(t)
	f.api.opts.StatsInterval = 50 * time.Millisecond
	for i := range 30 {
		f.put(fmt.Sprintf("car-%02d", i), 52.5+float64(i%6)*0.01, 13.4+float64(i/6)*0.01, []string{"available", "busy"}[i%2], time.Second)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, resp := openStream(t, ctx, f.srv.URL+"/v1/vehicles/stream?bbox=13,52,14,53&snapshot=true&max=10&bins=4x4")
	defer resp.Body.Close()
	var mode struct {
		Mode  string `json:"mode"`
		Total int    `json:"total"`
	}
	if err := json.Unmarshal([]byte(nextNamed(t, ch, "mode", 5*time.Second)), &mode); err != nil || mode.Mode != "clusters" || mode.Total != 30 {
		t.Fatalf("mode = %+v %v, want clusters of 30", mode, err)
	}
	var cl clustersBody
	if err := json.Unmarshal([]byte(nextNamed(t, ch, "clusters", 5*time.Second)), &cl); err != nil {
		t.Fatal(err)
	}
	sum, avail := 0, 0
	for _, c := range cl.Clusters {
		sum += c.Count
		avail += c.ByStatus["available"]
	}
	if cl.Total != 30 || sum != 30 || avail != 15 || len(cl.Clusters) > 16 {
		t.Fatalf("clusters %+v: %d vehicles, %d available", cl, sum, avail)
	}
	var st statsBody
	if err := json.Unmarshal([]byte(nextNamed(t, ch, "stats", 5*time.Second)), &st); err != nil || st.Vehicles != 30 || st.Fresh != 30 {
		t.Fatalf("stats = %+v %v", st, err)
	}
	// The crowd thins out (evicted by age): the stream follows vehicles again.
	for i := range 25 {
		f.put(fmt.Sprintf("car-%02d", i), 10, 10, "busy", 0) // out of the box
	}
	if err := json.Unmarshal([]byte(nextNamed(t, ch, "mode", 5*time.Second)), &mode); err != nil || mode.Mode != "vehicles" || mode.Total != 5 {
		t.Fatalf("mode = %+v %v, want vehicles, 5", mode, err)
	}
	seen := map[string]bool{}
	for len(seen) < 5 {
		seen[nextEvent(t, ch, 5*time.Second).ID] = true
	}
	if gaugeValue(f.api.clients.WithLabelValues("vehicles")) != 1 || gaugeValue(f.api.clients.WithLabelValues("clusters")) != 0 {
		t.Fatal("stream client gauge not following the mode")
	}
}

func TestStreamSendsRemovals(t *testing.T) {
	c := &fakeClock{now: time.Now()}
	store := fleetstate.New(fleetstate.Options{Now: c.Now, TTL: 10 * time.Minute})
	api, err := New(store, Options{}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	f := newFixtureOn(t, store, api)
	f.put("old", 52.5, 13.4, "available", 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, resp := openStream(t, ctx, f.srv.URL+"/v1/vehicles/stream?bbox=13,52,14,53")
	defer resp.Body.Close()
	nextNamed(t, ch, "mode", 5*time.Second)
	c.add(11 * time.Minute)
	if _, n := store.Sweep(nil); n != 1 {
		t.Fatalf("swept %d", n)
	}
	var rm struct{ ID string }
	if err := json.Unmarshal([]byte(nextNamed(t, ch, "remove", 5*time.Second)), &rm); err != nil || rm.ID != "old" {
		t.Fatalf("remove event %+v %v", rm, err)
	}
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time      { return c.now }
func (c *fakeClock) add(d time.Duration) { c.now = c.now.Add(d) }

func TestTrackStatsAndClusters(t *testing.T) {
	f := newFixture(t)
	now := time.Now()
	for i := range 5 {
		ts := now.Add(time.Duration(i-5) * time.Second).UnixNano()
		f.store.ApplyBatch(&wire.Batch{Identity: wire.Identity{VehicleID: "taxi"},
			Fixes: []wire.Fix{{Time: ts, Lat: 52.5 + float64(i)*0.001, Lon: 13.4, Alt: math.NaN(), Speed: 5, Heading: 0, Accuracy: math.NaN()}},
			Readings: []wire.Reading{{Signal: "status", Time: ts, Value: wire.String("busy")},
				{Signal: "fuel", Unit: "%", Time: ts, Value: wire.Float(80 - float64(i))},
				{Signal: "doors_locked", Time: ts, Value: wire.Bool(i%2 == 0)}}})
	}
	f.put("other", 52.52, 13.41, "available", time.Second)
	var d struct {
		ID      string `json:"id"`
		Status  string `json:"status"`
		Tracked bool   `json:"tracked"`
		Track   []struct {
			Lat, Lon float64
		} `json:"track"`
		Signals []struct {
			Name  string `json:"name"`
			Unit  string `json:"unit"`
			Value any    `json:"value"`
		} `json:"signals"`
	}
	if code := f.get(t, "/v1/vehicles/taxi/track", &d); code != 200 {
		t.Fatalf("track: %d", code)
	}
	if !d.Tracked || len(d.Track) != 5 || d.Track[4].Lat != 52.504 || d.Status != "busy" {
		t.Fatalf("track = %+v", d)
	}
	names := []string{}
	for _, s := range d.Signals {
		names = append(names, s.Name)
		if s.Name == "fuel" && (s.Value != 76.0 || s.Unit != "%") {
			t.Fatalf("fuel = %+v, want the latest, 76 %%", s)
		}
		if s.Name == "doors_locked" && s.Value != true {
			t.Fatalf("doors_locked = %+v", s)
		}
	}
	if !slices.Equal(names, []string{"doors_locked", "fuel", "status"}) {
		t.Fatalf("signals %v", names)
	}
	if code := f.get(t, "/v1/vehicles/nobody/track", nil); code != 404 {
		t.Fatalf("unknown track: %d", code)
	}
	var st statsBody
	f.get(t, "/v1/stats", &st)
	if st.Vehicles != 2 || st.Fresh != 2 || len(st.ByStatus) != 2 {
		t.Fatalf("stats %+v", st)
	}
	var cl clustersBody
	f.get(t, "/v1/clusters?bbox=13,52,14,53&bins=1", &cl)
	if cl.Total != 2 || len(cl.Clusters) != 1 || cl.Clusters[0].ByStatus["busy"] != 1 {
		t.Fatalf("clusters %+v", cl)
	}
	var list struct {
		Vehicles  []vehicleState `json:"vehicles"`
		Total     int            `json:"total"`
		Truncated bool           `json:"truncated"`
	}
	f.get(t, "/v1/vehicles?limit=1", &list)
	if len(list.Vehicles) != 1 || list.Total != 2 || !list.Truncated {
		t.Fatalf("limited list %+v", list)
	}
}

// TestOpenAPIDescribesEveryRoute checks /openapi.json is valid JSON naming
// every route the API registers, and each query parameter the handlers read.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.srv.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil || !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi.json: %v %q", err, doc.OpenAPI)
	}
	rec := &routeRecorder{}
	f.api.Register(rec)
	for _, p := range rec.patterns {
		path := strings.TrimPrefix(p, "GET ")
		path = strings.ReplaceAll(path, "{$}", "")
		if _, ok := doc.Paths[path]["get"]; !ok {
			t.Errorf("route %q is not in openapi.json", p)
		}
	}
	src, _ := readSources()
	for _, m := range regexp.MustCompile(`Param\(q, "([a-z_]+)"`).FindAllStringSubmatch(src, -1) {
		if !strings.Contains(string(raw), `"name": "`+m[1]+`"`) && !strings.Contains(string(raw), `"`+m[1]+`": {"name"`) {
			t.Errorf("query parameter %q is not in openapi.json", m[1])
		}
	}
}

// readSources returns the handlers' source, for the parameters they read.
func readSources() (string, error) {
	var all []byte
	for _, name := range []string{"api.go", "stream.go"} {
		b, err := os.ReadFile(name)
		if err != nil {
			return "", err
		}
		all = append(all, b...)
	}
	return string(all), nil
}

type routeRecorder struct{ patterns []string }

func (r *routeRecorder) Handle(pattern string, _ http.Handler) {
	r.patterns = append(r.patterns, pattern)
}
