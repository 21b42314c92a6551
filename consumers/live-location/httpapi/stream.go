package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
)

// Stream modes. A stream follows each vehicle in its box while the box
// holds at most max vehicles, and sends per-bin counts instead while it
// holds more (a map zoomed out over a city of a million).
const (
	modeVehicles = "vehicles"
	modeClusters = "clusters"
)

// stream serves GET /v1/vehicles/stream. Events:
//
//	mode      {"mode": "vehicles"|"clusters", "total": N}   first, and when the mode changes
//	position  a vehicle's state (vehicles mode): in the snapshot, and on each change in or out of the box
//	remove    {"id": ...} (vehicles mode): the vehicle was evicted
//	clusters  {"clusters": [...], "total": N} (clusters mode), every stats interval
//	stats     the fleet's counts by status and update rate, every stats interval
//
// A client that falls too far behind in vehicles mode gets a new mode
// event and snapshot, as if it had reconnected.
func (a *API) stream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	box, err := boxParam(q, "bbox")
	if err != nil {
		writeError(w, err)
		return
	}
	snapshot, err := boolParam(q, "snapshot")
	if err != nil {
		writeError(w, err)
		return
	}
	maxVehicles, err := intParam(q, "max", DefaultStreamMax, 1, MaxStreamMax)
	if err != nil {
		writeError(w, err)
		return
	}
	nx, ny, err := binsParam(q, "bins")
	if err != nil {
		writeError(w, err)
		return
	}
	st := &streamer{a: a, w: w, rc: http.NewResponseController(w), box: box, snapshot: snapshot, max: maxVehicles, nx: nx, ny: ny}
	defer st.stop()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	st.buf.WriteString("retry: 3000\n: live-location stream\n\n")

	_, total := a.store.InBox(box, nil, true, 1)
	st.enter(total <= maxVehicles, total)
	st.stats()
	if !st.send() {
		return
	}
	heartbeat := time.NewTicker(a.opts.Heartbeat)
	defer heartbeat.Stop()
	tick := time.NewTicker(a.opts.StatsInterval)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case <-heartbeat.C:
			st.buf.WriteString(": heartbeat\n\n")
		case <-tick.C:
			st.periodic()
		case <-st.ready():
			st.changes()
		}
		if !st.send() {
			a.log.Debug("stream client dropped", "remote", r.RemoteAddr)
			return
		}
	}
}

// streamer is one open stream.
type streamer struct {
	a        *API
	w        http.ResponseWriter
	rc       *http.ResponseController
	box      fleetstate.BBox
	snapshot bool
	max      int
	nx, ny   int

	mode string
	sub  *fleetstate.Subscription
	buf  bytes.Buffer
}

var never = make(chan struct{})

func (st *streamer) ready() <-chan struct{} {
	if st.sub == nil {
		return never
	}
	return st.sub.Ready()
}

func (st *streamer) stop() {
	if st.sub != nil {
		st.sub.Close()
		st.sub = nil
	}
	if st.mode != "" {
		st.a.clients.WithLabelValues(st.mode).Dec()
		st.mode = ""
	}
}

// enter starts vehicles mode (subscribing, then the snapshot) or clusters
// mode (the first clusters).
func (st *streamer) enter(vehicles bool, total int) {
	st.stop()
	st.mode = modeClusters
	if vehicles {
		st.mode = modeVehicles
	}
	st.a.clients.WithLabelValues(st.mode).Inc()
	st.event("mode", map[string]any{"mode": st.mode, "total": total})
	if !vehicles {
		st.clusters()
		return
	}
	box := st.box
	inBox := func(v fleetstate.Vehicle) bool { return v.HasFix && box.Contains(v.Fix.Lat, v.Fix.Lon) }
	st.sub = st.a.store.Subscribe(func(c fleetstate.Change) bool {
		return inBox(c.New) || !c.IsNew && inBox(c.Old) // a vehicle leaving the box is news too
	})
	if st.snapshot {
		start := time.Now()
		vs, _ := st.a.store.InBox(st.box, nil, true, st.max)
		st.a.observe("box", start)
		st.positions(vs)
	}
}

func (st *streamer) periodic() {
	if st.mode == modeClusters {
		if total := st.clusters(); total <= st.max {
			st.enter(true, total)
		}
	} else if _, total := st.a.store.InBox(st.box, nil, true, 1); total > st.max+st.max/2 {
		st.enter(false, total) // hysteresis: not back and forth at the threshold
	}
	st.stats()
}

func (st *streamer) clusters() int {
	start := time.Now()
	body := toClusters(st.a.store.Aggregate(st.box, st.nx, st.ny))
	st.a.observe("clusters", start)
	st.event("clusters", body)
	return body.Total
}

func (st *streamer) stats() { st.event("stats", st.a.statsBody()) }

func (st *streamer) changes() {
	if st.sub == nil {
		return
	}
	if st.sub.Overflowed() {
		_, total := st.a.store.InBox(st.box, nil, true, 1)
		st.enter(total <= st.max, total)
		return
	}
	var vs []fleetstate.Vehicle
	for _, u := range st.sub.Take() {
		if u.Removed {
			st.event("remove", map[string]string{"id": u.ID})
			continue
		}
		vs = append(vs, u.Vehicle)
	}
	st.positions(vs)
}

func (st *streamer) positions(vs []fleetstate.Vehicle) {
	now, staleAfter := time.Now(), st.a.store.Options().StaleAfter
	for _, v := range vs {
		st.event("position", toState(v, now, staleAfter))
	}
}

func (st *streamer) event(name string, v any) {
	st.buf.WriteString("event: ")
	st.buf.WriteString(name)
	st.buf.WriteString("\ndata: ")
	data, _ := json.Marshal(v)
	st.buf.Write(data)
	st.buf.WriteString("\n\n")
}

func (st *streamer) send() bool {
	if st.buf.Len() == 0 {
		return true
	}
	_ = st.rc.SetWriteDeadline(time.Now().Add(st.a.opts.WriteTimeout)) // unsupported writers just block
	if _, err := st.w.Write(st.buf.Bytes()); err != nil {
		return false
	}
	st.buf.Reset()
	return st.rc.Flush() == nil
}
