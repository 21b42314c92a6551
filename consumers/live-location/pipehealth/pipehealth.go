// Package pipehealth watches the pipeline's services through their
// Prometheus metrics, for the dashboard's health panel: it scrapes each
// service's /metrics (or gathers an in-process registry) every interval
// and reports, per service, whether it answered, the per-second rates of
// its fleet_*_total counters and the values of its fleet_* gauges (lag,
// backlog, connections). Kafka client metrics (fleet_kafka_*) are left
// out: they are many and say little at a glance.
package pipehealth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Target is one service to watch: a /metrics URL, or an in-process
// Gatherer.
type Target struct {
	Name     string
	URL      string
	Gatherer prometheus.Gatherer
}

// Config configures a Watcher.
type Config struct {
	Targets  []Target
	Interval time.Duration // between scrapes; default 5s
	Timeout  time.Duration // per scrape; default 2s
}

// Deps are a Watcher's dependencies.
type Deps struct {
	Logger *slog.Logger
	Client *http.Client // default: one with Config.Timeout
}

// Series is one named value.
type Series struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// Service is one service's health.
type Service struct {
	Name    string   `json:"name"`
	URL     string   `json:"url,omitempty"`
	Up      bool     `json:"up"`
	Error   string   `json:"error,omitempty"`
	Rates   []Series `json:"rates"`  // per second, of counters, since the scrape before
	Gauges  []Series `json:"gauges"` // current values
	Scraped string   `json:"scraped,omitempty"`
}

// Report is the health of every watched service.
type Report struct {
	Services []Service `json:"services"`
}

// Watcher scrapes the targets. Report is safe for concurrent use.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client

	mu     sync.Mutex
	report Report
	prev   []sample
}

type sample struct {
	at       time.Time
	counters map[string]float64
}

// New returns a Watcher of cfg.Targets.
func New(cfg Config, deps Deps) (*Watcher, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	for i, t := range cfg.Targets {
		if t.Name == "" || (t.URL == "") == (t.Gatherer == nil) {
			return nil, fmt.Errorf("pipehealth: target %d: want a name and one of URL or Gatherer", i)
		}
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Client == nil {
		deps.Client = &http.Client{Timeout: cfg.Timeout}
	}
	w := &Watcher{cfg: cfg, log: deps.Logger, client: deps.Client, prev: make([]sample, len(cfg.Targets))}
	w.report.Services = make([]Service, len(cfg.Targets))
	for i, t := range cfg.Targets {
		w.report.Services[i] = Service{Name: t.Name, URL: t.URL, Error: "not scraped yet", Rates: []Series{}, Gauges: []Series{}}
	}
	return w, nil
}

// Report returns the latest health of every target.
func (w *Watcher) Report() Report {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Report{Services: slices.Clone(w.report.Services)}
}

// Run scrapes every interval until ctx is done, then returns nil.
func (w *Watcher) Run(ctx context.Context) error {
	if len(w.cfg.Targets) == 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		w.ScrapeOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// ScrapeOnce scrapes every target now.
func (w *Watcher) ScrapeOnce(ctx context.Context) {
	for i, t := range w.cfg.Targets {
		fams, err := w.gather(ctx, t)
		now := time.Now()
		svc := Service{Name: t.Name, URL: t.URL, Up: err == nil, Rates: []Series{}, Gauges: []Series{}, Scraped: now.UTC().Format(time.RFC3339)}
		if err != nil {
			svc.Error = err.Error()
			w.log.Debug("health scrape failed", "target", t.Name, "err", err)
		}
		counters := map[string]float64{}
		for _, f := range fams {
			name := f.GetName()
			if !strings.HasPrefix(name, "fleet_") || strings.HasPrefix(name, "fleet_kafka_") {
				continue
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				sum := 0.0
				for _, m := range f.GetMetric() {
					sum += m.GetCounter().GetValue()
				}
				counters[name] = sum
			case dto.MetricType_GAUGE:
				sum := 0.0
				for _, m := range f.GetMetric() {
					sum += m.GetGauge().GetValue()
				}
				svc.Gauges = append(svc.Gauges, Series{Name: name, Value: sum})
			}
		}
		w.mu.Lock()
		if prev := w.prev[i]; prev.counters != nil && err == nil {
			dt := now.Sub(prev.at).Seconds()
			for name, v := range counters {
				if p, ok := prev.counters[name]; ok && dt > 0 && v >= p {
					svc.Rates = append(svc.Rates, Series{Name: name, Value: math.Round((v-p)/dt*10) / 10})
				}
			}
		}
		if err == nil {
			w.prev[i] = sample{at: now, counters: counters}
		}
		slices.SortFunc(svc.Rates, func(a, b Series) int { return strings.Compare(a.Name, b.Name) })
		slices.SortFunc(svc.Gauges, func(a, b Series) int { return strings.Compare(a.Name, b.Name) })
		w.report.Services[i] = svc
		w.mu.Unlock()
	}
}

func (w *Watcher) gather(ctx context.Context, t Target) ([]*dto.MetricFamily, error) {
	if t.Gatherer != nil {
		return t.Gatherer.Gather()
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("GET %s: %s", t.URL, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	byName, err := parser.TextToMetricFamilies(io.LimitReader(resp.Body, 16<<20))
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("GET %s: %w", t.URL, err)
	}
	out := make([]*dto.MetricFamily, 0, len(byName))
	for _, f := range byName {
		out = append(out, f)
	}
	return out, nil
}
