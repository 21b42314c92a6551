// Package httpapi serves the live-location HTTP API and the fleet dashboard
// over a fleetstate.Store:
//
//	GET /v1/vehicles/nearby?lat=&lon=&radius_m=&limit=&status=  nearest fresh vehicles first
//	GET /v1/vehicles/{id}                                        one vehicle's state, 404 if unknown
//	GET /v1/vehicles/{id}/track                                  its state, recent track and latest signals
//	GET /v1/vehicles?bbox=&status=&stale=&limit=                 the vehicles in a box (at most limit)
//	GET /v1/clusters?bbox=&bins=                                 vehicle counts per bin of a box
//	GET /v1/stats                                                vehicles by status, update rate
//	GET /v1/health                                               the pipeline's health, from its services' metrics
//	GET /v1/vehicles/stream?bbox=&snapshot=&max=&bins=           Server-Sent Events of changes, or of clusters
//	GET /openapi.json                                            the OpenAPI 3 description of all of this
//	GET /                                                        the dashboard, one self-contained page
//
// A bad parameter gets 400 with {"error": "...", "param": "<name>"}.
// radius_m defaults to 1000 (at most 100000), limit to 10 (at most 1000);
// status is a comma-separated list of wanted statuses. bbox is
// minLon,minLat,maxLon,maxLat (minLon > maxLon crosses the antimeridian).
// openapi.json documents every parameter and answer.
//
// Metrics (registered on Deps.Registerer):
//
//	fleet_live_stream_clients{mode}               gauge: open streams, by mode (vehicles, clusters)
//	fleet_live_http_requests_total{handler,code}  counter: API requests answered
//	fleet_live_query_seconds{query}               histogram: time to answer nearby, box and cluster queries
package httpapi

import (
	"bytes"
	"embed"
	"fmt"
	"html"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/pipehealth"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

//go:embed static/index.html static/openapi.json
var static embed.FS

// Options tune the API. Zero fields take the defaults.
type Options struct {
	// Heartbeat is how often an idle stream gets a comment line, so that
	// proxies keep it open and clients notice a dead connection. Default 15s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a stream; a client that does not
	// read for this long is dropped. Default 30s.
	WriteTimeout time.Duration
	// StatsInterval is how often a stream sends the fleet's counts, and a
	// stream in cluster mode its clusters. Default 1s.
	StatsInterval time.Duration
	// MapTiles is a raster tile URL template ({z}, {x}, {y}) the dashboard
	// draws under the vehicles; empty: a plain canvas (no request leaves
	// the page).
	MapTiles string
	// MapAttribution is shown with the tiles.
	MapAttribution string
}

// Deps are the API's dependencies. Health is optional: without it
// /v1/health reports no services.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Health     HealthSource
}

// HealthSource reports the pipeline's health.
type HealthSource interface {
	Report() pipehealth.Report
}

// Mux is where Register adds the routes; *http.ServeMux and
// *admin.Server are both one.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// API is the HTTP API. Its handlers are safe for concurrent use.
type API struct {
	store  *fleetstate.Store
	opts   Options
	log    *slog.Logger
	health HealthSource
	rates  *rateMeter

	clients  *prometheus.GaugeVec
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec

	page    []byte // the dashboard, settings filled in
	openapi []byte

	closeOnce sync.Once
	done      chan struct{}
}

// New returns the API over store, registering its metrics.
func New(store *fleetstate.Store, opts Options, deps Deps) (*API, error) {
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.StatsInterval <= 0 {
		opts.StatsInterval = time.Second
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	a := &API{
		store:  store,
		opts:   opts,
		log:    deps.Logger,
		health: deps.Health,
		rates:  newRateMeter(store),
		clients: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "fleet_live_stream_clients", Help: "Open Server-Sent Event streams, by mode (vehicles, clusters).",
		}, []string{"mode"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_http_requests_total", Help: "HTTP API requests answered, by handler and status code.",
		}, []string{"handler", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fleet_live_query_seconds",
			Help:    "Time to answer a query against the store (nearby, box, clusters), excluding the HTTP round trip.",
			Buckets: []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25},
		}, []string{"query"}),
		done: make(chan struct{}),
	}
	page, err := static.ReadFile("static/index.html")
	if err != nil {
		return nil, fmt.Errorf("httpapi: dashboard: %w", err)
	}
	page = bytes.ReplaceAll(page, []byte("{{STALE_AFTER_MS}}"), strconv.AppendInt(nil, store.Options().StaleAfter.Milliseconds(), 10))
	page = bytes.ReplaceAll(page, []byte("{{MAP_TILES}}"), []byte(html.EscapeString(opts.MapTiles)))
	a.page = bytes.ReplaceAll(page, []byte("{{MAP_ATTRIBUTION}}"), []byte(html.EscapeString(opts.MapAttribution)))
	if a.openapi, err = static.ReadFile("static/openapi.json"); err != nil {
		return nil, fmt.Errorf("httpapi: openapi: %w", err)
	}
	for _, c := range []prometheus.Collector{a.clients, a.requests, a.latency} {
		if err := deps.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("httpapi: register metrics: %w", err)
		}
	}
	return a, nil
}

// Register adds the API's routes to mux.
func (a *API) Register(mux Mux) {
	route := func(pattern, name string, h http.HandlerFunc) {
		mux.Handle(pattern, promhttp.InstrumentHandlerCounter(a.requests.MustCurryWith(prometheus.Labels{"handler": name}), h))
	}
	route("GET /v1/vehicles/nearby", "nearby", a.nearby)
	route("GET /v1/vehicles/stream", "stream", a.stream)
	route("GET /v1/vehicles/{id}", "vehicle", a.vehicle)
	route("GET /v1/vehicles/{id}/track", "track", a.track)
	route("GET /v1/vehicles", "vehicles", a.vehicles)
	route("GET /v1/clusters", "clusters", a.clusters)
	route("GET /v1/stats", "stats", a.stats)
	route("GET /v1/health", "health", a.healthz)
	route("GET /openapi.json", "openapi", a.openAPI)
	route("GET /{$}", "dashboard", a.dashboard)
}

// Handler returns a handler serving just the API's routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	a.Register(mux)
	return mux
}

// Close ends every open stream (and every stream opened later), so that an
// HTTP server shutting down does not wait on them. It is idempotent.
func (a *API) Close() { a.closeOnce.Do(func() { close(a.done) }) }

func (a *API) observe(query string, start time.Time) {
	a.latency.WithLabelValues(query).Observe(time.Since(start).Seconds())
}

func (a *API) nearby(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var (
		fq  fleetstate.Query
		err error
	)
	if fq.Lat, err = floatParam(q, "lat", true, 0, -90, 90); err != nil {
		writeError(w, err)
		return
	}
	if fq.Lon, err = floatParam(q, "lon", true, 0, -180, 180); err != nil {
		writeError(w, err)
		return
	}
	if fq.RadiusM, err = floatParam(q, "radius_m", false, DefaultRadiusM, 0, MaxRadiusM); err != nil {
		writeError(w, err)
		return
	}
	if fq.RadiusM == 0 {
		writeError(w, badParam("radius_m", "must be more than 0"))
		return
	}
	if fq.Limit, err = intParam(q, "limit", DefaultLimit, 1, MaxLimit); err != nil {
		writeError(w, err)
		return
	}
	if fq.Statuses, err = statusParam(q, "status"); err != nil {
		writeError(w, err)
		return
	}
	start := time.Now()
	found := a.store.Nearby(fq)
	a.observe("nearby", start)
	out := make([]nearbyVehicle, len(found))
	for i, n := range found {
		out[i] = toNearby(n)
	}
	writeJSON(w, http.StatusOK, nearbyBody{Vehicles: out})
}

func (a *API) vehicleID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !wire.ValidVehicleID(id) {
		writeError(w, badParam("id", "%q is not a valid vehicle ID", id))
		return "", false
	}
	return id, true
}

func unknown(w http.ResponseWriter, id string) {
	writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("vehicle %q is unknown", id)})
}

func (a *API) vehicle(w http.ResponseWriter, r *http.Request) {
	id, ok := a.vehicleID(w, r)
	if !ok {
		return
	}
	v, ok := a.store.Get(id)
	if !ok {
		unknown(w, id)
		return
	}
	writeJSON(w, http.StatusOK, toState(v, time.Now(), a.store.Options().StaleAfter))
}

func (a *API) track(w http.ResponseWriter, r *http.Request) {
	id, ok := a.vehicleID(w, r)
	if !ok {
		return
	}
	d, ok := a.store.Track(id)
	if !ok {
		unknown(w, id)
		return
	}
	writeJSON(w, http.StatusOK, toDetail(d, time.Now(), a.store.Options().StaleAfter))
}

func (a *API) vehicles(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	box, err := boxParam(q, "bbox")
	if err != nil {
		writeError(w, err)
		return
	}
	statuses, err := statusParam(q, "status")
	if err != nil {
		writeError(w, err)
		return
	}
	withStale := true
	if _, given := q["stale"]; given {
		if withStale, err = boolParam(q, "stale"); err != nil {
			writeError(w, err)
			return
		}
	}
	limit, err := intParam(q, "limit", DefaultListLimit, 1, MaxListLimit)
	if err != nil {
		writeError(w, err)
		return
	}
	start := time.Now()
	vs, total := a.store.InBox(box, statuses, withStale, limit)
	a.observe("box", start)
	now, staleAfter := time.Now(), a.store.Options().StaleAfter
	out := make([]vehicleState, len(vs))
	for i, v := range vs {
		out[i] = toState(v, now, staleAfter)
	}
	writeJSON(w, http.StatusOK, boxBody{Count: len(out), Total: total, Truncated: total > len(out), Vehicles: out})
}

var world = fleetstate.BBox{MinLon: -180, MinLat: -90, MaxLon: 180, MaxLat: 90}

func (a *API) clusters(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	box, err := boxParam(q, "bbox")
	if err != nil {
		writeError(w, err)
		return
	}
	nx, ny, err := binsParam(q, "bins")
	if err != nil {
		writeError(w, err)
		return
	}
	start := time.Now()
	cs := a.store.Aggregate(box, nx, ny)
	a.observe("clusters", start)
	writeJSON(w, http.StatusOK, toClusters(cs))
}

func (a *API) stats(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.statsBody())
}

func (a *API) healthz(w http.ResponseWriter, _ *http.Request) {
	var rep pipehealth.Report
	if a.health != nil {
		rep = a.health.Report()
	}
	writeJSON(w, http.StatusOK, rep)
}

func (a *API) openAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(a.openapi)
}

func (a *API) dashboard(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(a.page)
}
