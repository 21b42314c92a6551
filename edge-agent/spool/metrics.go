package spool

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are shared by every spool registered on one Registerer; the
// gauges are computed at collection time over the open spools.
type metrics struct {
	appends         prometheus.Counter
	corrupt         prometheus.Counter
	quarantined     prometheus.Counter
	fsync           prometheus.Histogram
	droppedBatches  *prometheus.CounterVec
	droppedReadings *prometheus.CounterVec

	bytesDesc, recordsDesc, ageDesc *prometheus.Desc

	mu     sync.Mutex
	spools map[*Spool]struct{}
}

func newMetrics() *metrics {
	m := &metrics{
		appends: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_spool_appends_total",
			Help: "Records appended to the spool."}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_spool_corrupt_records_total",
			Help: "Torn or corrupt records found and cut out of the spool."}),
		quarantined: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_spool_quarantined_segments_total",
			Help: "Spool segment files set aside (renamed *.corrupt) because their header is unreadable."}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "fleet_agent_spool_fsync_seconds",
			Help: "Latency of the spool's fsync calls.", Buckets: prometheus.ExponentialBuckets(50e-6, 2, 17)}),
		droppedBatches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_spool_dropped_batches_total",
			Help: "Spooled batches dropped before being acknowledged, by reason (full, age, rejected, corrupt)."}, []string{"reason"}),
		droppedReadings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_spool_dropped_readings_total",
			Help: "Readings in the spooled batches dropped before being acknowledged, by reason."}, []string{"reason"}),
		bytesDesc: prometheus.NewDesc("fleet_agent_spool_bytes",
			"Size of the spool's segment files.", nil, nil),
		recordsDesc: prometheus.NewDesc("fleet_agent_spool_records",
			"Spooled batches not yet acknowledged.", nil, nil),
		ageDesc: prometheus.NewDesc("fleet_agent_spool_oldest_age_seconds",
			"Time since the oldest unacknowledged batch was spooled.", nil, nil),
		spools: map[*Spool]struct{}{},
	}
	for _, r := range reasons {
		m.droppedBatches.WithLabelValues(r)
		m.droppedReadings.WithLabelValues(r)
	}
	return m
}

// metricsFor returns the metrics registered on reg, registering them on
// first use; nil reg gives unexported metrics.
func metricsFor(reg prometheus.Registerer) (*metrics, error) {
	m := newMetrics()
	if reg == nil {
		return m, nil
	}
	if err := reg.Register(m); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*metrics); ok {
				return old, nil
			}
		}
		return nil, fmt.Errorf("spool: register metrics: %w", err)
	}
	return m, nil
}

func (m *metrics) add(s *Spool) {
	m.mu.Lock()
	m.spools[s] = struct{}{}
	m.mu.Unlock()
}

func (m *metrics) remove(s *Spool) {
	m.mu.Lock()
	delete(m.spools, s)
	m.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.appends.Describe(ch)
	m.corrupt.Describe(ch)
	m.quarantined.Describe(ch)
	m.fsync.Describe(ch)
	m.droppedBatches.Describe(ch)
	m.droppedReadings.Describe(ch)
	ch <- m.bytesDesc
	ch <- m.recordsDesc
	ch <- m.ageDesc
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.appends.Collect(ch)
	m.corrupt.Collect(ch)
	m.quarantined.Collect(ch)
	m.fsync.Collect(ch)
	m.droppedBatches.Collect(ch)
	m.droppedReadings.Collect(ch)
	var bytes, records, age float64
	m.mu.Lock()
	for s := range m.spools {
		s.mu.Lock()
		if !s.closed {
			bytes += float64(s.bytes)
			records += float64(s.records)
			age = max(age, s.oldestAgeLocked().Seconds())
		}
		s.mu.Unlock()
	}
	m.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(m.bytesDesc, prometheus.GaugeValue, bytes)
	ch <- prometheus.MustNewConstMetric(m.recordsDesc, prometheus.GaugeValue, records)
	ch <- prometheus.MustNewConstMetric(m.ageDesc, prometheus.GaugeValue, age)
}
