// Package httpapi serves the live-location HTTP API and the fleet dashboard
// over a fleetstate.Store:
//
//	GET /v1/vehicles/nearby?lat=&lon=&radius_m=&limit=&status=  nearest fresh vehicles first
//	GET /v1/vehicles/{id}                                        one vehicle's state, 404 if unknown
//	GET /v1/vehicles?bbox=&status=                               every known vehicle (the dashboard's first paint)
//	GET /v1/vehicles/stream?bbox=&snapshot=                      Server-Sent Events of changes
//	GET /                                                        the dashboard, one self-contained page
//
// A bad parameter gets 400 with {"error": "...", "param": "<name>"}.
// radius_m defaults to 1000 (at most 100000), limit to 10 (at most 1000);
// status is a comma-separated list of wanted statuses. bbox is
// minLon,minLat,maxLon,maxLat (minLon > maxLon crosses the antimeridian).
//
// The stream sends an `event: position` whose data is the vehicle's JSON
// state each time a vehicle changes (changes coalesce per vehicle when the
// client reads slowly), a `: heartbeat` comment every heartbeat interval,
// and, with snapshot=true, first the current state of every vehicle in the
// box. With a bbox it sends the changes of vehicles inside the box and of
// vehicles that just left it. A stream ends when the client goes away or
// Close is called.
//
// Metrics (registered on Deps.Registerer):
//
//	fleet_live_stream_clients                  gauge: open streams
//	fleet_live_http_requests_total{handler,code} counter: API requests answered
package httpapi

import (
	"bytes"
	"embed"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

//go:embed static/index.html
var static embed.FS

// Options tune the API. Zero fields take the defaults.
type Options struct {
	// Heartbeat is how often an idle stream gets a comment line, so that
	// proxies keep it open and clients notice a dead connection. Default 15s.
	Heartbeat time.Duration
	// WriteTimeout bounds each write to a stream; a client that does not
	// read for this long is dropped. Default 30s.
	WriteTimeout time.Duration
}

// Deps are the API's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Mux is where Register adds the routes; *http.ServeMux and
// *admin.Server are both one.
type Mux interface {
	Handle(pattern string, h http.Handler)
}

// API is the HTTP API. Its handlers are safe for concurrent use.
type API struct {
	store *fleetstate.Store
	opts  Options
	log   *slog.Logger

	clients  prometheus.Gauge
	requests *prometheus.CounterVec

	page []byte // the dashboard, settings filled in

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
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registerer == nil {
		deps.Registerer = prometheus.NewRegistry()
	}
	a := &API{
		store: store,
		opts:  opts,
		log:   deps.Logger,
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fleet_live_stream_clients", Help: "Open Server-Sent Event streams.",
		}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_http_requests_total", Help: "HTTP API requests answered, by handler and status code.",
		}, []string{"handler", "code"}),
		done: make(chan struct{}),
	}
	page, err := static.ReadFile("static/index.html")
	if err != nil {
		return nil, fmt.Errorf("httpapi: dashboard: %w", err)
	}
	a.page = bytes.ReplaceAll(page, []byte("{{STALE_AFTER_MS}}"),
		strconv.AppendInt(nil, store.Options().StaleAfter.Milliseconds(), 10))
	for _, c := range []prometheus.Collector{a.clients, a.requests} {
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
	route("GET /v1/vehicles", "vehicles", a.vehicles)
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
	found := a.store.Nearby(fq)
	out := make([]nearbyVehicle, len(found))
	for i, n := range found {
		out[i] = toNearby(n)
	}
	writeJSON(w, http.StatusOK, map[string]any{"vehicles": out})
}

func (a *API) vehicle(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !wire.ValidVehicleID(id) {
		writeError(w, badParam("id", "%q is not a valid vehicle ID", id))
		return
	}
	v, ok := a.store.Get(id)
	if !ok {
		writeJSON(w, http.StatusNotFound, errorBody{Error: fmt.Sprintf("vehicle %q is unknown", id)})
		return
	}
	writeJSON(w, http.StatusOK, toState(v, time.Now(), a.store.Options().StaleAfter))
}

func (a *API) vehicles(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	bbox, err := bboxParam(q, "bbox")
	if err != nil {
		writeError(w, err)
		return
	}
	statuses, err := statusParam(q, "status")
	if err != nil {
		writeError(w, err)
		return
	}
	now, staleAfter := time.Now(), a.store.Options().StaleAfter
	vs := a.store.All(func(v fleetstate.Vehicle) bool {
		return (bbox == nil || v.HasFix && bbox.Contains(v.Fix.Lat, v.Fix.Lon)) && statusMatch(v.Status, statuses)
	})
	out := make([]vehicleState, len(vs))
	for i, v := range vs {
		out[i] = toState(v, now, staleAfter)
	}
	writeJSON(w, http.StatusOK, map[string]any{"vehicles": out, "count": len(out)})
}

func statusMatch(st string, want []string) bool {
	if len(want) == 0 {
		return true
	}
	for _, w := range want {
		if w == st {
			return true
		}
	}
	return false
}

func (a *API) dashboard(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(a.page)
}
