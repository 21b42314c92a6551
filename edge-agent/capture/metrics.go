package capture

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the capture metrics (see the package documentation), shared
// by the engines of a process. A nil *Metrics counts nothing.
type Metrics struct {
	triggers, windows, readings *prometheus.CounterVec
	evicted                     prometheus.Counter
	bufferBytes                 prometheus.Gauge
	reloads                     *prometheus.CounterVec
}

// NewMetrics registers the capture metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		triggers: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_triggers_total",
			Help: "Capture triggers that opened or extended a window, by rule."}, []string{"rule"}),
		windows: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_windows_total",
			Help: "Capture windows opened, by rule."}, []string{"rule"}),
		readings: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_readings_total",
			Help: "Readings and fixes spooled in capture windows, by rule."}, []string{"rule"}),
		evicted: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_capture_evicted_total",
			Help: "Pre-trigger readings dropped because the capture buffer was full (windows then start later than their rule's before)."}),
		bufferBytes: f.NewGauge(prometheus.GaugeOpts{Name: "fleet_agent_capture_buffer_bytes",
			Help: "Memory of the capture buffers (pre-trigger readings, windowed functions' history), summed over the process's vehicles."}),
		reloads: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_reloads_total",
			Help: "Capture rule reloads (SIGHUP), by result: ok, or error (the rules in force stay)."}, []string{"result"}),
	}
}

// ruleMetrics are one rule's series.
type ruleMetrics struct {
	triggers, windows, readings prometheus.Counter
}

type nopCounter struct{ prometheus.Counter }

func (nopCounter) Inc()        {}
func (nopCounter) Add(float64) {}

func (m *Metrics) rule(name string) ruleMetrics {
	if m == nil {
		return ruleMetrics{triggers: nopCounter{}, windows: nopCounter{}, readings: nopCounter{}}
	}
	return ruleMetrics{triggers: m.triggers.WithLabelValues(name), windows: m.windows.WithLabelValues(name),
		readings: m.readings.WithLabelValues(name)}
}

func (m *Metrics) evict(n uint64) {
	if m != nil {
		m.evicted.Add(float64(n))
	}
}

func (m *Metrics) buffer(delta int64) {
	if m != nil {
		m.bufferBytes.Add(float64(delta))
	}
}

// Reloaded counts a reload of the rules, ok or not.
func (m *Metrics) Reloaded(ok bool) {
	if m == nil {
		return
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	m.reloads.WithLabelValues(result).Inc()
}
