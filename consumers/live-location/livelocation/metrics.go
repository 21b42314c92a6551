package livelocation

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
)

type metrics struct {
	records         *prometheus.CounterVec // source, result
	fixesApplied    *prometheus.CounterVec // source
	fixStale        *prometheus.CounterVec // source
	fixInvalid      *prometheus.CounterVec // source
	statusApplied   *prometheus.CounterVec // source
	statusStale     *prometheus.CounterVec // source
	statusInvalid   *prometheus.CounterVec // source
	published       *prometheus.CounterVec // kind, result
	evicted         *prometheus.CounterVec // reason
	caughtUp        prometheus.Gauge
	bootstrapped    prometheus.Gauge
	telemetryBehind prometheus.Gauge
	telemetryLag    prometheus.Gauge
	ownedPartitions prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer, store *fleetstate.Store) (*metrics, error) {
	// The fix and status outcomes are counted by source: telemetry (the
	// vehicles' batches: a stale one there is a late or replayed batch) or
	// location (positions read back from the location topic, this
	// replica's own included: one older than what it holds is routine).
	bySource := func(name, help string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help + " By source (telemetry, location)."}, []string{"source"})
	}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	}
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_records_total",
			Help: "Kafka records read, by source (telemetry, location) and result (ok, undecodable, tombstone).",
		}, []string{"source", "result"}),
		fixesApplied:  bySource("fleet_live_fixes_applied_total", "Fixes that became a vehicle's latest position."),
		fixStale:      bySource("fleet_live_fix_rejected_stale_total", "Fixes not newer than the vehicle's known fix (late or replayed), left unapplied."),
		fixInvalid:    bySource("fleet_live_fix_rejected_invalid_total", "Fixes with coordinates out of range or a time beyond the allowed clock skew."),
		statusApplied: bySource("fleet_live_status_applied_total", "Status readings that became a vehicle's latest status."),
		statusStale:   bySource("fleet_live_status_rejected_stale_total", "Status readings not newer than the vehicle's known status."),
		statusInvalid: bySource("fleet_live_status_rejected_invalid_total", "Status readings that are not strings, are stamped beyond the allowed clock skew, or are one distinct status too many."),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_location_published_total",
			Help: "Records produced to the location topic, by kind (position, tombstone) and result (ok, error).",
		}, []string{"kind", "result"}),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fleet_live_evicted_total",
			Help: "Vehicles removed from memory, by reason (ttl: not heard from for --ttl; tombstone: its owner evicted it).",
		}, []string{"reason"}),
		caughtUp:        gauge("fleet_live_caught_up", "1 once the telemetry partitions first assigned were read up to their end offsets at assignment."),
		bootstrapped:    gauge("fleet_live_bootstrapped", "1 once the location topic has been read up to its end offsets seen at start-up (or is disabled)."),
		telemetryBehind: gauge("fleet_live_catch_up_partitions_behind", "Telemetry partitions not yet read up to their end offsets at assignment (-1 before the first assignment)."),
		telemetryLag:    gauge("fleet_live_telemetry_lag_records", "Records behind the high watermark, summed over the telemetry partitions this replica owns."),
		ownedPartitions: gauge("fleet_live_owned_partitions", "Telemetry partitions this replica owns in the consumer group."),
	}
	m.telemetryBehind.Set(-1)
	cs := []prometheus.Collector{m.records, m.fixesApplied, m.fixStale, m.fixInvalid, m.statusApplied,
		m.statusStale, m.statusInvalid, m.published, m.evicted, m.caughtUp, m.bootstrapped, m.telemetryBehind,
		m.telemetryLag, m.ownedPartitions, storeCollector{store}}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// observe counts what applying one record of source (telemetry or
// location) did.
func (m *metrics) observe(source string, r fleetstate.Result) {
	add := func(c *prometheus.CounterVec, n int) {
		if n > 0 {
			c.WithLabelValues(source).Add(float64(n))
		}
	}
	add(m.fixesApplied, r.FixesApplied)
	add(m.fixStale, r.FixesStale)
	add(m.fixInvalid, r.FixesInvalid)
	add(m.statusApplied, r.StatusApplied)
	add(m.statusStale, r.StatusStale)
	add(m.statusInvalid, r.StatusInvalid)
}

// storeCollector reports the store's own numbers at scrape time.
type storeCollector struct{ s *fleetstate.Store }

var (
	descVehicles = prometheus.NewDesc("fleet_live_vehicles", "Vehicles known, by status and freshness (fresh: a fix within --stale-after; stale: none, as of the last sweep).",
		[]string{"status", "freshness"}, nil)
	descUpdates = prometheus.NewDesc("fleet_live_updates_total", "Changes applied to vehicles' state (from telemetry and from the location topic); its rate is the updates per second.",
		nil, nil)
)

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- descVehicles; ch <- descUpdates }

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	for _, sc := range c.s.Counts() {
		ch <- prometheus.MustNewConstMetric(descVehicles, prometheus.GaugeValue, float64(sc.Fresh), sc.Status, "fresh")
		ch <- prometheus.MustNewConstMetric(descVehicles, prometheus.GaugeValue, float64(sc.Stale), sc.Status, "stale")
	}
	ch <- prometheus.MustNewConstMetric(descUpdates, prometheus.CounterValue, float64(c.s.Changes()))
}
