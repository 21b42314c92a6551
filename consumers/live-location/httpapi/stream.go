package httpapi

import (
	"bytes"
	"encoding/json"
	"net/http"
	"time"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
)

func (a *API) stream(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	bbox, err := bboxParam(q, "bbox")
	if err != nil {
		writeError(w, err)
		return
	}
	snapshot, err := boolParam(q, "snapshot")
	if err != nil {
		writeError(w, err)
		return
	}
	inBox := func(v fleetstate.Vehicle) bool {
		return bbox == nil || v.HasFix && bbox.Contains(v.Fix.Lat, v.Fix.Lon)
	}
	filter := func(c fleetstate.Change) bool {
		return inBox(c.New) || !c.IsNew && inBox(c.Old) // a vehicle leaving the box is news too
	}
	var snap func(fleetstate.Vehicle) bool
	if snapshot {
		snap = inBox
	}
	sub, initial := a.store.Subscribe(filter, snap)
	defer sub.Close()
	a.clients.Inc()
	defer a.clients.Dec()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	rc := http.NewResponseController(w)
	staleAfter := a.store.Options().StaleAfter
	var buf bytes.Buffer
	send := func() bool {
		_ = rc.SetWriteDeadline(time.Now().Add(a.opts.WriteTimeout)) // unsupported writers just block
		if _, err := w.Write(buf.Bytes()); err != nil {
			return false
		}
		buf.Reset()
		return rc.Flush() == nil
	}
	events := func(vs []fleetstate.Vehicle) {
		now := time.Now()
		for _, v := range vs {
			buf.WriteString("event: position\ndata: ")
			data, _ := json.Marshal(toState(v, now, staleAfter))
			buf.Write(data)
			buf.WriteString("\n\n")
		}
	}

	buf.WriteString("retry: 3000\n: live-location stream\n\n")
	events(initial)
	if !send() {
		return
	}
	heartbeat := time.NewTicker(a.opts.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case <-heartbeat.C:
			buf.WriteString(": heartbeat\n\n")
		case <-sub.Ready():
			events(sub.Take())
		}
		if !send() {
			a.log.Debug("stream client dropped", "remote", r.RemoteAddr)
			return
		}
	}
}
