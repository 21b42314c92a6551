package pipehealth

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestScrapesRatesAndGauges(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		c := n.Add(100)
		fmt.Fprintf(w, "# TYPE fleet_bridge_messages_total counter\nfleet_bridge_messages_total{result=\"ok\"} %d\nfleet_bridge_messages_total{result=\"dlq\"} 1\n", c)
		fmt.Fprintf(w, "# TYPE fleet_bridge_inflight gauge\nfleet_bridge_inflight 7\n")
		fmt.Fprintf(w, "# TYPE fleet_kafka_buffered_produce_records_total gauge\nfleet_kafka_buffered_produce_records_total 3\n")
		fmt.Fprintf(w, "# TYPE go_goroutines gauge\ngo_goroutines 12\n")
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "fleet_live_telemetry_lag_records", Help: "lag"})
	g.Set(42)
	reg.MustRegister(g)
	w, err := New(Config{Targets: []Target{
		{Name: "bridge", URL: srv.URL + "/metrics"},
		{Name: "self", Gatherer: reg},
		{Name: "gone", URL: "http://127.0.0.1:1/metrics"},
	}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	if r := w.Report(); len(r.Services) != 3 || r.Services[0].Up {
		t.Fatalf("before a scrape: %+v", r)
	}
	w.ScrapeOnce(context.Background())
	w.ScrapeOnce(context.Background())
	r := w.Report()
	br := r.Services[0]
	if !br.Up || len(br.Rates) != 1 || br.Rates[0].Name != "fleet_bridge_messages_total" || br.Rates[0].Value <= 0 {
		t.Fatalf("bridge = %+v", br)
	}
	if len(br.Gauges) != 1 || br.Gauges[0] != (Series{"fleet_bridge_inflight", 7}) {
		t.Fatalf("bridge gauges = %+v (fleet_kafka_* and non-fleet series are left out)", br.Gauges)
	}
	if s := r.Services[1]; !s.Up || len(s.Gauges) != 1 || s.Gauges[0].Value != 42 {
		t.Fatalf("self = %+v", s)
	}
	if s := r.Services[2]; s.Up || s.Error == "" {
		t.Fatalf("a service that does not answer = %+v", s)
	}
	srv.CloseClientConnections()
}

func TestRejectsBadTargets(t *testing.T) {
	for _, tg := range []Target{{URL: "http://x/metrics"}, {Name: "both", URL: "http://x", Gatherer: prometheus.NewRegistry()}, {Name: "none"}} {
		if _, err := New(Config{Targets: []Target{tg}}, Deps{}); err == nil {
			t.Errorf("%+v accepted", tg)
		}
	}
}
