package sink

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// metrics are the sink's own; the writers' are parquetlog.Metrics.
type metrics struct {
	partitions   *prometheus.GaugeVec
	lag          *prometheus.GaugeVec
	writerErrors *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	return &metrics{
		partitions: f.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_sink_partitions",
			Help: "Assigned partitions, by state: writing, or waiting to be claimed again after an error."}, []string{"state"}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_sink_consumer_lag",
			Help: "Records between a partition's high watermark and the offset its committed Parquet files reach."}, []string{"partition"}),
		writerErrors: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_sink_writer_errors_total",
			Help: "Partition writers dropped (their open window is read again), by kind: fenced, conflict, s3, decode, claim, seek."}, []string{"kind"}),
	}
}
