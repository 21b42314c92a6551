package livelocation

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
)

type metrics struct {
	records         *prometheus.CounterVec // source, result
	fixesApplied    prometheus.Counter
	fixStale        prometheus.Counter
	fixInvalid      prometheus.Counter
	statusApplied   prometheus.Counter
	statusStale     prometheus.Counter
	statusInvalid   prometheus.Counter
	published       *prometheus.CounterVec // result
	caughtUp        prometheus.Gauge
	bootstrapped    prometheus.Gauge
	vehicles        prometheus.GaugeFunc
	telemetryBehind prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, store *fleetstate.Store) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_records_total",
			Help: "Kafka records read, by source (telemetry, location) and result (ok, undecodable, tombstone).",
		}, []string{"source", "result"}),
		fixesApplied:  counter("fleet_live_fixes_applied_total", "Fixes that became a vehicle's latest position."),
		fixStale:      counter("fleet_live_fix_rejected_stale_total", "Fixes not newer than the vehicle's known fix (late or replayed), left unapplied."),
		fixInvalid:    counter("fleet_live_fix_rejected_invalid_total", "Fixes with coordinates out of range or a time beyond the allowed clock skew."),
		statusApplied: counter("fleet_live_status_applied_total", "Status readings that became a vehicle's latest status."),
		statusStale:   counter("fleet_live_status_rejected_stale_total", "Status readings not newer than the vehicle's known status."),
		statusInvalid: counter("fleet_live_status_rejected_invalid_total", "Status readings that are not strings or are stamped beyond the allowed clock skew."),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_positions_published_total",
			Help: "Positions produced to the location topic, by result (ok, error).",
		}, []string{"result"}),
		caughtUp:        gauge("fleet_live_caught_up", "1 once the telemetry consumer has read up to the end offsets seen at start-up."),
		bootstrapped:    gauge("fleet_live_bootstrapped", "1 once the location topic has been read up to its end offsets seen at start-up (or is disabled)."),
		telemetryBehind: gauge("fleet_live_catch_up_partitions_behind", "Telemetry partitions not yet read up to their start-up end offsets."),
		vehicles: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "fleet_live_vehicles", Help: "Vehicles known (stale ones included).",
		}, func() float64 { return float64(store.Len()) }),
	}
	for _, c := range []prometheus.Collector{m.records, m.fixesApplied, m.fixStale, m.fixInvalid, m.statusApplied,
		m.statusStale, m.statusInvalid, m.published, m.caughtUp, m.bootstrapped, m.telemetryBehind, m.vehicles} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *metrics) observe(r fleetstate.Result) {
	m.fixesApplied.Add(float64(r.FixesApplied))
	m.fixStale.Add(float64(r.FixesStale))
	m.fixInvalid.Add(float64(r.FixesInvalid))
	m.statusApplied.Add(float64(r.StatusApplied))
	m.statusStale.Add(float64(r.StatusStale))
	m.statusInvalid.Add(float64(r.StatusInvalid))
}
