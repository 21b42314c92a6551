package uplink

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the uplink metrics, shared by every vehicle of a process:
//
//	fleet_agent_batches_total{state="queued|sent|resent|acked"}
//	fleet_agent_pending_batches      batches waiting for their end-to-end ack
//	fleet_agent_published_bytes_total
//	fleet_agent_publish_seconds      publish to broker PUBACK
//	fleet_agent_reconnects_total
type Metrics struct {
	batches        *prometheus.CounterVec
	pending        prometheus.Gauge
	bytes          prometheus.Counter
	publishSeconds prometheus.Histogram
	reconnects     prometheus.Counter
}

// NewMetrics registers the uplink metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		batches: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_batches_total",
			Help: "Batches by state: queued for sending, sent, resent after an ack timeout, acked end to end."}, []string{"state"}),
		pending: f.NewGauge(prometheus.GaugeOpts{Name: "fleet_agent_pending_batches",
			Help: "Batches waiting for their end-to-end ack."}),
		bytes: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_published_bytes_total",
			Help: "Telemetry payload bytes published (resends included)."}),
		publishSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_agent_publish_seconds",
			Help: "Time from publish to the broker's PUBACK.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		reconnects: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_reconnects_total",
			Help: "MQTT reconnection attempts."}),
	}
}
