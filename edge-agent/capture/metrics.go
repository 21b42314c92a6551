package capture

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are the capture metrics (see the package documentation), shared
// by the engines of a process. A nil *Metrics counts nothing.
type Metrics struct {
	triggers, windows, readings, evicted *prometheus.CounterVec
	bufferBytes                          *prometheus.GaugeVec
	reloads                              *prometheus.CounterVec
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
		evicted: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_evicted_total",
			Help: "Pre-trigger readings dropped because the rule's buffer was full (its windows then start later than before), by rule."}, []string{"rule"}),
		bufferBytes: f.NewGaugeVec(prometheus.GaugeOpts{Name: "fleet_agent_capture_buffer_bytes",
			Help: "Memory of a rule's pre-trigger buffer and history, summed over the process's vehicles, by rule."}, []string{"rule"}),
		reloads: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_capture_reloads_total",
			Help: "Capture rule reloads (SIGHUP), by result: ok, or error (the rules in force stay)."}, []string{"result"}),
	}
}

// ruleMetrics are one rule's series; the zero value counts nothing.
type ruleMetrics struct {
	triggers, windows, readings, evicted prometheus.Counter
	bufferBytes                          prometheus.Gauge
}

type nopCounter struct{ prometheus.Counter }

func (nopCounter) Inc()        {}
func (nopCounter) Add(float64) {}

type nopGauge struct{ prometheus.Gauge }

func (nopGauge) Add(float64) {}

func (m *Metrics) rule(name string) ruleMetrics {
	if m == nil {
		return ruleMetrics{triggers: nopCounter{}, windows: nopCounter{}, readings: nopCounter{}, evicted: nopCounter{}, bufferBytes: nopGauge{}}
	}
	return ruleMetrics{triggers: m.triggers.WithLabelValues(name), windows: m.windows.WithLabelValues(name),
		readings: m.readings.WithLabelValues(name), evicted: m.evicted.WithLabelValues(name), bufferBytes: m.bufferBytes.WithLabelValues(name)}
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
