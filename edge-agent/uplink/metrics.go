package uplink

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the uplink metrics, shared by every vehicle of a process:
//
//	fleet_agent_batches_total{state="sent_live|sent_backlog|acked"}
//	                                 batches published (new ones at once, or from the
//	                                 backlog: after an outage, a reboot or an ack timeout)
//	                                 and freed by their end-to-end ack
//	fleet_agent_published_bytes_total
//	fleet_agent_publish_seconds      publish to broker PUBACK
//	fleet_agent_reconnects_total
type Metrics struct {
	batches        *prometheus.CounterVec
	bytes          prometheus.Counter
	publishSeconds prometheus.Histogram
	reconnects     prometheus.Counter
}

// NewMetrics registers the uplink metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		batches: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_batches_total",
			Help: "Batches published live or from the backlog, and acked end to end."}, []string{"state"}),
		bytes: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_published_bytes_total",
			Help: "Telemetry payload bytes published (resends included)."}),
		publishSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_agent_publish_seconds",
			Help: "Time from publish to the broker's PUBACK.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		reconnects: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_reconnects_total",
			Help: "MQTT reconnection attempts."}),
	}
}
