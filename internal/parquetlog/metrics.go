package parquetlog

import "github.com/prometheus/client_golang/prometheus"

// Metrics are shared by every partition Writer of a process. Names start
// with the namespace given to NewMetrics (fleet_sink, fleet_replay):
//
//	{ns}_records_total{result="ok|duplicate|invalid"}   records read into windows
//	{ns}_rows_total{table,reason}                      rows committed, by the rule that closed their window
//	{ns}_files_total{table,reason}                     files committed
//	{ns}_bytes_total{table,reason}                     Parquet bytes committed
//	{ns}_windows_total{reason}                         windows committed: rows, bytes, age, quiet, end, stop, recovered
//	{ns}_late_rows_total{table}                        rows more than an hour older than their record's Kafka time
//	{ns}_upload_seconds                                closing a window's files until S3 holds them all
//	{ns}_commit_seconds                                a whole window commit (files, state, checkpoint)
//	{ns}_claims_total                                  partitions claimed
//	{ns}_fenced_total                                  writers stopped because another writer claimed their partition
//	{ns}_conflicts_total                               files found at a key the checkpoint knew nothing of (not replaced)
//	{ns}_dedup_vehicles                                vehicles the duplicate filters remember, all partitions
//	{ns}_dedup_forgotten_total                         vehicles the filters forgot by their rules
//	{ns}_open_rows                                     rows in open (uncommitted) windows
type Metrics struct {
	records     *prometheus.CounterVec
	rows        *prometheus.CounterVec
	files       *prometheus.CounterVec
	bytes       *prometheus.CounterVec
	windows     *prometheus.CounterVec
	late        *prometheus.CounterVec
	upload      prometheus.Histogram
	commit      prometheus.Histogram
	claims      prometheus.Counter
	fenced      prometheus.Counter
	conflicts   prometheus.Counter
	dedupSize   prometheus.Gauge
	dedupForgot prometheus.Counter
	openRows    prometheus.Gauge
}

// NewMetrics registers the metrics under namespace ns with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer, ns string) *Metrics {
	buckets := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	m := &Metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_records_total", Help: "Kafka records read into windows, by result."}, []string{"result"}),
		rows:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_rows_total", Help: "Rows committed to Parquet files, by table and by the rule that closed their window."}, []string{"table", "reason"}),
		files:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_files_total", Help: "Parquet files committed, by table and rotation reason."}, []string{"table", "reason"}),
		bytes:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_bytes_total", Help: "Parquet bytes committed, by table and rotation reason."}, []string{"table", "reason"}),
		windows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_windows_total", Help: "Windows committed, by the rule that closed them."}, []string{"reason"}),
		late:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: ns + "_late_rows_total", Help: "Rows more than an hour older than their record's Kafka timestamp (they go to their own hour's files)."}, []string{"table"}),
		upload:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "_upload_seconds", Help: "From closing a window's files until S3 holds them all.", Buckets: buckets}),
		commit:  prometheus.NewHistogram(prometheus.HistogramOpts{Name: ns + "_commit_seconds", Help: "A whole window commit: files, duplicate filter, checkpoint.", Buckets: buckets}),
		claims:  prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "_claims_total", Help: "Partitions claimed (checkpoint generation taken)."}),
		fenced:  prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "_fenced_total", Help: "Writers stopped because another writer claimed their partition since."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "_conflicts_total",
			Help: "Files found at a key the checkpoint knew nothing of; they are never replaced and the partition stops."}),
		dedupSize:   prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "_dedup_vehicles", Help: "Vehicles the duplicate filters remember, over all partitions."}),
		dedupForgot: prometheus.NewCounter(prometheus.CounterOpts{Name: ns + "_dedup_forgotten_total", Help: "Vehicles the duplicate filters forgot by their rules."}),
		openRows:    prometheus.NewGauge(prometheus.GaugeOpts{Name: ns + "_open_rows", Help: "Rows in open, uncommitted windows."}),
	}
	if reg != nil {
		reg.MustRegister(m.records, m.rows, m.files, m.bytes, m.windows, m.late, m.upload, m.commit,
			m.claims, m.fenced, m.conflicts, m.dedupSize, m.dedupForgot, m.openRows)
	}
	return m
}
