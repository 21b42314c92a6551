package sink

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

type metrics struct {
	records      *prometheus.CounterVec
	rows         *prometheus.CounterVec
	files        *prometheus.CounterVec
	bytes        prometheus.Counter
	flushSeconds prometheus.Histogram
	flushErrors  prometheus.Counter
	buffered     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		records: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_sink_records_total",
			Help: "Kafka records consumed, by result: ok, duplicate (batch already written), invalid (undecodable, skipped)."}, []string{"result"}),
		rows: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_sink_rows_total",
			Help: "Rows written to Parquet files, by table."}, []string{"table"}),
		files: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_sink_files_total",
			Help: "Parquet files written, by table."}, []string{"table"}),
		bytes: f.NewCounter(prometheus.CounterOpts{Name: "fleet_sink_bytes_total",
			Help: "Parquet bytes uploaded."}),
		flushSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "fleet_sink_flush_seconds",
			Help: "Time to write one partition's files, checkpoint and commit.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		flushErrors: f.NewCounter(prometheus.CounterOpts{Name: "fleet_sink_flush_errors_total",
			Help: "Failed writes; the data stays buffered and is written again."}),
		buffered: f.NewGauge(prometheus.GaugeOpts{Name: "fleet_sink_buffered_rows",
			Help: "Rows consumed and not yet written."}),
	}
}
