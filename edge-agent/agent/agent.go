// Package agent wires the edge agent together. Per vehicle: sources produce
// readings and fixes; a batcher groups them; each closed batch is split into
// a high-priority part (fixes and the priority signals) and a bulk part,
// each encoded (internal/wire) under the next seq of the vehicle's durable
// spool and appended to it; only then is it handed to the uplink, which
// publishes it and frees it from the spool when the cloud's end-to-end ack
// says Kafka holds it.
//
// Sources are chosen by name from Registry (edge-agent/source): a fleet
// source ("sim") runs a simulated fleet in one process, each car with its
// own MQTT connection and spool (SPOOL-DIR/VEHICLE-ID); the others ("can",
// "gps") feed the one vehicle --vehicle-id. Batches close by the readings'
// own clock, so a recording replays into the same batches at any speed;
// a live source's batches also close on the wall clock.
//
// Metrics (besides the uplink's, spool's and sources' fleet_agent_* ones):
//
//	fleet_agent_readings_total{kind}           readings and fixes collected
//	fleet_agent_readings_dropped_total{reason} readings not spooled (spool_full, encode)
//	fleet_agent_batches_spooled_total{class}   batches appended to the spool
//	fleet_agent_vehicles                       vehicles running in this process
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/edge-agent/capture"
	"github.com/fleetpipe/fleetpipe/edge-agent/source"
	"github.com/fleetpipe/fleetpipe/edge-agent/uplink"
	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Version is the agent's version, sent in every batch and status message.
const Version = "0.3.0"

// Deps are the agent's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// OwnProcess says the agent is the process (the edge-agent binary),
	// not one part of a bigger one: Run then tunes the runtime (timer
	// slack, GOMEMLIMIT, GOMAXPROCS, CPU pinning) as Config says.
	OwnProcess bool
}

type metrics struct {
	readings *prometheus.CounterVec // by kind: collected
	dropped  *prometheus.CounterVec
	spooled  *prometheus.CounterVec
}

// Agent runs the configured vehicles. Run runs once.
type Agent struct {
	cfg    Config
	deps   Deps
	logger *slog.Logger
	upm    *uplink.Metrics
	m      metrics
	admin  *admin.Server
	// sources of the one vehicle (built by New, so bad files fail at
	// start-up); nil for a fleet, whose vehicles' sources Run builds.
	sources []source.Source
	signals []wire.SignalSpec // of the selected sources, in --source order
	catalog *wire.Catalog     // nil: batches always name their signals
	decoder string            // the decoder tag batches carry

	// capture holds the capture rules in force (nil without
	// --capture-rules); each vehicle's collector compiles them.
	capture  *captureRules
	captureM *capture.Metrics
}

// New checks the configuration, builds the sources (loading their files:
// a DBC, a collection config) and binds the metrics port.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, deps: deps, logger: deps.Logger}
	for _, name := range cfg.Sources {
		s, err := cfg.SourceConfigs[name].Signals()
		if err != nil {
			return nil, fmt.Errorf("--source %s: %w", name, err)
		}
		a.signals = append(a.signals, s...)
	}
	if cfg.Catalog && len(a.signals) > 0 {
		cat, err := wire.NewCatalog(a.signals)
		if err != nil {
			return nil, err
		}
		a.catalog = cat
	}
	if cfg.CaptureRules != "" {
		rules, err := a.loadCaptureRules()
		if err != nil {
			return nil, err
		}
		a.capture = &captureRules{cfg: rules}
	}
	fleet, isFleet := cfg.fleet()
	if isFleet {
		a.decoder = fleet.Decoder()
	} else {
		a.decoder = "agent:" + cfg.Sources.String()
		for _, name := range cfg.Sources {
			src, err := cfg.SourceConfigs[name].New(a.sourceDeps())
			if err != nil {
				return nil, fmt.Errorf("--source %s: %w", name, err)
			}
			a.sources = append(a.sources, src)
		}
	}
	if cfg.CheckConfig {
		return a, nil
	}
	f := promauto.With(deps.Registerer)
	a.upm = uplink.NewMetrics(deps.Registerer)
	if a.capture != nil {
		a.captureM = capture.NewMetrics(deps.Registerer)
	}
	a.m = metrics{
		readings: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_readings_total",
			Help: "Readings and fixes collected from the sources."}, []string{"kind"}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_readings_dropped_total",
			Help: "Readings and fixes not spooled, by reason (spool_full: refused under --spool-full=stop; encode)."}, []string{"reason"}),
		spooled: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_batches_spooled_total",
			Help: "Batches appended to the spool, by class."}, []string{"class"}),
	}
	f.NewGauge(prometheus.GaugeOpts{Name: "fleet_agent_vehicles", Help: "Vehicles running in this process."}).Set(float64(cfg.vehicles()))
	if cfg.Listen != "" {
		var err error
		if a.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer}); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// sourceDeps are what every source gets. With capture rules, sources
// also emit the readings their sampling keeps out of the live stream:
// windows hold every signal at full rate.
func (a *Agent) sourceDeps() source.Deps {
	return source.Deps{Logger: a.logger, Registerer: a.deps.Registerer, Unsampled: a.cfg.CaptureRules != ""}
}

// live reports whether any selected source reads a live input, so that
// batches also close on the wall clock.
func (a *Agent) live() bool {
	for _, name := range a.cfg.Sources {
		if a.cfg.SourceConfigs[name].Input().Clock == source.Live {
			return true
		}
	}
	return false
}

// Run collects and sends until ctx is cancelled or, with ExitWhenDone,
// until the sources have ended and every batch is acked. Spooled batches
// survive an exit and are sent by the next run. With Deps.OwnProcess it
// first tunes the runtime.
func (a *Agent) Run(ctx context.Context) error {
	if a.deps.OwnProcess {
		a.tuneProcess()
		stop := a.reloadOnHangup()
		defer stop()
	}
	ids := []string{a.cfg.VehicleID}
	fleet, isFleet := a.cfg.fleet()
	if isFleet {
		ids = fleet.Vehicles()
	}
	vehicles := make([]*vehicle, len(ids))
	defer func() {
		for _, v := range vehicles {
			if v != nil {
				v.spool.Close()
			}
		}
	}()
	sources := make([][]source.Source, len(ids))
	for i, id := range ids {
		dir := a.cfg.Spool.Dir
		if isFleet {
			dir = filepath.Join(dir, id)
			src, err := fleet.NewVehicle(i, a.sourceDeps())
			if err != nil {
				return err
			}
			sources[i] = []source.Source{src}
		} else {
			sources[i] = a.sources
		}
		v, err := a.openVehicle(id, dir)
		if err != nil {
			return err
		}
		vehicles[i] = v
	}
	a.logger.Info("edge agent starting", "vehicles", len(vehicles), "sources", a.cfg.Sources.String(), "mqtt", a.cfg.MQTT.URL,
		"spool", a.cfg.Spool.Dir, "fsync", a.cfg.Spool.Fsync)

	upCtx, stopUplinks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopUplinks()
	var ups errgroup.Group
	for _, v := range vehicles {
		ups.Go(func() error { return v.uplink.Run(upCtx) })
	}
	if a.admin != nil {
		ups.Go(func() error { return a.admin.Run(upCtx) })
	}

	collect, cctx := errgroup.WithContext(ctx)
	live := a.live()
	for i, v := range vehicles {
		collect.Go(func() error { return a.runVehicle(cctx, v, sources[i], live) })
	}
	err := collect.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		stopUplinks()
		_ = ups.Wait()
		return err
	}

	if !a.cfg.ExitWhenDone {
		<-ctx.Done()
		stopUplinks()
		_ = ups.Wait()
		a.logger.Info("edge agent stopped; unacknowledged batches stay spooled for the next run")
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, a.cfg.DrainTimeout)
	defer cancel()
	var unacked error
	for _, v := range vehicles {
		if err := v.uplink.WaitAcked(wctx); err != nil {
			unacked = err
			break
		}
	}
	stopUplinks()
	_ = ups.Wait()
	if unacked != nil {
		n := 0
		for _, v := range vehicles {
			n += v.uplink.Pending()
		}
		return fmt.Errorf("%d batches not acknowledged by the cloud within %v (they stay spooled): %w", n, a.cfg.DrainTimeout, unacked)
	}
	a.logger.Info("edge agent stopped; every batch acknowledged")
	return nil
}
