package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	messages       *prometheus.CounterVec
	catalogs       *prometheus.CounterVec
	readings       prometheus.Counter
	bytes          prometheus.Counter
	inflight       prometheus.Gauge
	produceSeconds prometheus.Histogram
	acksPublished  prometheus.Counter
	connected      prometheus.Gauge
	connects       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		messages: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_messages_total",
			Help: "MQTT messages handled, by result: produced, dlq, failed (left for redelivery)."}, []string{"result"}),
		catalogs: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_catalogs_total",
			Help: "Catalog messages handled, by result: registered, dlq, failed (left for redelivery)."}, []string{"result"}),
		readings: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_readings_total",
			Help: "Readings and fixes in batches produced to Kafka."}),
		bytes: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_bytes_total",
			Help: "Payload bytes produced to Kafka."}),
		inflight: f.NewGauge(prometheus.GaugeOpts{Name: "fleet_bridge_inflight",
			Help: "MQTT messages received and not yet confirmed by Kafka."}),
		produceSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_bridge_produce_seconds",
			Help:    "Time from MQTT receipt to Kafka acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		acksPublished: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_acks_published_total",
			Help: "End-to-end ack messages published to vehicles."}),
		connected: f.NewGauge(prometheus.GaugeOpts{Name: "fleet_bridge_mqtt_connected",
			Help: "1 while connected to the MQTT broker."}),
		connects: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_mqtt_connects_total",
			Help: "Successful MQTT (re)connections."}),
	}
}
