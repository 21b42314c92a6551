package gps

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label of fleet_agent_gps_sentences_total.
const (
	ResultOK          = "ok"           // a sentence or report the source used
	ResultIgnored     = "ignored"      // well-formed, of a type the source does not use
	ResultBadChecksum = "bad_checksum" // NMEA checksum does not match
	ResultNoChecksum  = "no_checksum"  // NMEA sentence without a checksum
	ResultMalformed   = "malformed"    // does not parse
)

// Values of the reason label of fleet_agent_gps_epochs_dropped_total.
const (
	DropNoFix      = "no_fix"      // the receiver said it has no fix (RMC V, GGA 0, TPV mode < 2)
	DropNoPosition = "no_position" // claims a fix but lacks latitude or longitude
	DropNoTime     = "no_time"     // no time of day, or no date to put it on
	DropDuplicate  = "duplicate"   // gpsd repeated the previous fix's time
)

// Metrics are the GPS source metrics.
type Metrics struct {
	sentences  *prometheus.CounterVec
	fixes      prometheus.Counter
	dropped    *prometheus.CounterVec
	reconnects prometheus.Counter
}

// NewMetrics registers the GPS metrics on reg (nil: not registered). If reg
// already holds them (a second source in the process) they are shared.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		sentences: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_gps_sentences_total",
			Help: "NMEA sentences and gpsd reports read, by result: ok, ignored, bad_checksum, no_checksum, malformed."}, []string{"result"}),
		fixes: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_gps_fixes_total",
			Help: "Location fixes emitted."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_gps_epochs_dropped_total",
			Help: "Receiver epochs that gave no fix, by reason: no_fix, no_position, no_time, duplicate."}, []string{"reason"}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_gps_reconnects_total",
			Help: "Reconnects to gpsd and reopens of the serial device."}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.sentences, err = register(reg, m.sentences); err != nil {
		return nil, err
	}
	if m.fixes, err = register(reg, m.fixes); err != nil {
		return nil, err
	}
	if m.dropped, err = register(reg, m.dropped); err != nil {
		return nil, err
	}
	if m.reconnects, err = register(reg, m.reconnects); err != nil {
		return nil, err
	}
	return m, nil
}

func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

func (m *Metrics) sentence(result string) {
	if m != nil {
		m.sentences.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) fix() {
	if m != nil {
		m.fixes.Inc()
	}
}

func (m *Metrics) drop(reason string) {
	if m != nil {
		m.dropped.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) reconnect() {
	if m != nil {
		m.reconnects.Inc()
	}
}
