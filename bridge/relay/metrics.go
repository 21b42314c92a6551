package relay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	// produced, dlqd and abandoned are fleet_bridge_messages_total's
	// series, resolved once: every message counts in one.
	produced, dlqd, abandoned prometheus.Counter
	dlq                       *prometheus.CounterVec
	catalogs                  *prometheus.CounterVec
	retries                   prometheus.Counter
	unchecked                 prometheus.Counter
	timeFlagged               *prometheus.CounterVec
	readings                  prometheus.Counter
	bytes                     prometheus.Counter
	backpressure              prometheus.Counter
	produceSeconds            prometheus.Histogram
	relaySeconds              prometheus.Histogram
	acksPublished             prometheus.Counter
	batchesAcked              prometheus.Counter
	connects                  prometheus.Counter
	connectionsLost           prometheus.Counter
}

// newMetrics registers the bridge's metrics; connected is the number of
// MQTT connections up, inflight the messages and bytes in flight.
func newMetrics(reg prometheus.Registerer, connected func() float64, inflight func() (int, int)) *metrics {
	f := promauto.With(reg)
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleet_bridge_mqtt_connected",
		Help: "MQTT connections up and subscribed (of --mqtt-connections)."}, connected)
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleet_bridge_inflight",
		Help: "MQTT messages received and not yet settled."}, func() float64 { n, _ := inflight(); return float64(n) })
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "fleet_bridge_inflight_bytes",
		Help: "Payload bytes of the messages in flight."}, func() float64 { _, b := inflight(); return float64(b) })
	// Buckets 1.4 times apart from 0.5 ms to a minute: a p99 read off them
	// is within a fifth of the truth.
	latency := prometheus.ExponentialBucketsRange(0.0005, 60, 36)
	messages := f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_messages_total",
		Help: "MQTT messages settled, by result: produced (in Kafka), dlq (in the dead-letter topic), abandoned (acknowledged to the broker but left for the agent to re-send)."}, []string{"result"})
	return &metrics{
		produced: messages.WithLabelValues("produced"), dlqd: messages.WithLabelValues("dlq"), abandoned: messages.WithLabelValues("abandoned"),
		dlq: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_dlq_total",
			Help: "Payloads sent to the dead-letter topic, by reason."}, []string{"reason"}),
		catalogs: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_catalogs_total",
			Help: "Catalog messages handled, by result: registered, dlq, abandoned."}, []string{"result"}),
		retries: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_produce_retries_total",
			Help: "Produce attempts that failed retriably and were made again."}),
		unchecked: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_unchecked_batches_total",
			Help: "Batches produced without an end-to-end checksum (agents older than it): zero once a fleet has upgraded."}),
		timeFlagged: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_bridge_time_flagged_total",
			Help: "Batches whose times lie beyond --max-future or --max-past, by direction."}, []string{"direction"}),
		readings: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_readings_total",
			Help: "Readings and fixes in batches produced to Kafka."}),
		bytes: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_bytes_total",
			Help: "Payload bytes produced to Kafka."}),
		backpressure: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_backpressure_seconds_total",
			Help: "Time MQTT readers spent waiting for in-flight room."}),
		produceSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_bridge_produce_seconds",
			Help: "Kafka produce latency: from handing a record to the producer to Kafka's acknowledgement.", Buckets: latency}),
		relaySeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_bridge_mqtt_to_kafka_seconds",
			Help: "From receiving a batch over MQTT to Kafka holding it (checks, catalog waits and retries included).", Buckets: latency}),
		acksPublished: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_acks_published_total",
			Help: "End-to-end ack messages published to vehicles."}),
		batchesAcked: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_acked_batches_total",
			Help: "Batches listed in end-to-end acks."}),
		connects: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_mqtt_connects_total",
			Help: "Successful MQTT (re)connections."}),
		connectionsLost: f.NewCounter(prometheus.CounterOpts{Name: "fleet_bridge_mqtt_connections_lost_total",
			Help: "MQTT connections that ended."}),
	}
}
