// Package livelocation is the live-location service. Replicas share the
// telemetry topic in a consumer group (--group): each consumes the
// partitions it owns (starting, for a partition without a committed offset,
// at now minus the lookback) into its fleetstate.Store and publishes the
// vehicles telemetry changed, at most once per publish interval each, to
// the log-compacted location topic; the owner of a vehicle's partition also
// tombstones it there once it is evicted (not heard from for --ttl). Every
// replica follows the location topic from its start, so each one holds,
// and answers queries for, the whole fleet. It serves the httpapi API and
// dashboard, with a pipeline health panel fed by pipehealth.
//
// /readyz answers 200 once the location topic has been read up to the end
// offsets it had at start-up (bootstrapped) and the telemetry partitions of
// the first assignment have been read up to their end offsets at
// assignment; /healthz while the process serves HTTP.
//
// Metrics, besides those of httpapi and the franz-go client (fleet_kafka_*):
//
//	fleet_live_records_total{source,result}        Kafka records read: source telemetry|location, result ok|undecodable|tombstone
//
// The fix and status counters have the same source label: telemetry (the
// vehicles' own batches) or location (positions read back from the
// location topic). A replica reads its own publications back too: one
// that comes back as the fix already held is counted nowhere, one that a
// newer fix overtook meanwhile counts as stale with source location.
//
//	fleet_live_fixes_applied_total{source}          fixes that became a vehicle's latest position
//	fleet_live_fix_rejected_stale_total{source}     fixes not newer than the known one (late, replayed)
//	fleet_live_fix_rejected_invalid_total{source}   fixes out of range or beyond the clock skew
//	fleet_live_status_applied_total{source}         statuses that became a vehicle's latest
//	fleet_live_status_rejected_stale_total{source}  statuses not newer than the known one
//	fleet_live_status_rejected_invalid_total{source} status readings of the wrong type, beyond the clock skew, or too many distinct
//	fleet_live_location_published_total{kind,result} records produced to the location topic: position|tombstone, ok|error
//	fleet_live_evicted_total{reason}                vehicles evicted: ttl|tombstone
//	fleet_live_vehicles{status,freshness}           vehicles known, by status, fresh|stale
//	fleet_live_updates_total                        changes applied (rate: updates per second)
//	fleet_live_caught_up                            1 once the first assigned telemetry partitions are caught up
//	fleet_live_catch_up_partitions_behind           telemetry partitions still catching up (-1 before the first assignment)
//	fleet_live_telemetry_lag_records                records behind the high watermark on the owned partitions
//	fleet_live_owned_partitions                     telemetry partitions owned in the group
//	fleet_live_bootstrapped                         1 once the location topic was read (or is disabled)
package livelocation

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/consumers/live-location/fleetstate"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/httpapi"
	"github.com/fleetpipe/fleetpipe/consumers/live-location/pipehealth"
	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
)

// Deps are the service's dependencies. A nil Logger discards logs; nil
// Registerer and Gatherer get a private registry; a nil Gatherer with a
// Registerer that is also a Gatherer (a *prometheus.Registry) uses it.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Service is one live-location instance.
type Service struct {
	cfg   Config
	log   *slog.Logger
	store *fleetstate.Store
	api   *httpapi.API
	admin *admin.Server
	m     *metrics

	clientOpts []kgo.Opt // the main client's: metrics hooked
	bootOpts   []kgo.Opt // the bootstrap client's: no metrics (kprom allows one client per registry)

	catalogs *catalogstore.Store // set by Run
	health   *pipehealth.Watcher

	own              *ownership
	telemetryCatchUp *catchUp
	started          time.Time // set by Run

	caughtUp     atomic.Bool
	bootstrapped atomic.Bool
	ran          atomic.Bool
}

// New checks cfg (zero fields take their defaults, see Config), registers
// the metrics and binds the HTTP listener, so URL is known before Run.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("live-location: config: %w", err)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Registerer == nil && deps.Gatherer == nil {
		reg := prometheus.NewRegistry()
		deps.Registerer, deps.Gatherer = reg, reg
	}
	if deps.Gatherer == nil {
		g, ok := deps.Registerer.(prometheus.Gatherer)
		if !ok {
			return nil, errors.New("live-location: Deps.Gatherer is required with this Registerer")
		}
		deps.Gatherer = g
	}
	if deps.Registerer == nil {
		return nil, errors.New("live-location: Deps.Registerer is required with a Gatherer")
	}
	log := deps.Logger.With("component", "live-location")
	s := &Service{cfg: cfg, log: log, own: newOwnership(), telemetryCatchUp: newCatchUp()}
	s.store = fleetstate.New(fleetstate.Options{
		StatusSignal:  cfg.StatusSignal,
		StaleAfter:    cfg.StaleAfter,
		TTL:           cfg.TTL,
		MaxClockSkew:  cfg.MaxClockSkew,
		TrackVehicles: cfg.TrackVehicles,
		Publish:       cfg.LocationTopic != "",
	})
	targets, err := cfg.healthTargets()
	if err != nil {
		return nil, fmt.Errorf("live-location: config: %w", err)
	}
	targets = append([]pipehealth.Target{{Name: "live-location", Gatherer: deps.Gatherer}}, targets...)
	if s.health, err = pipehealth.New(pipehealth.Config{Targets: targets}, pipehealth.Deps{Logger: log}); err != nil {
		return nil, fmt.Errorf("live-location: %w", err)
	}
	if s.m, err = newMetrics(deps.Registerer, s.store); err != nil {
		return nil, fmt.Errorf("live-location: register metrics: %w", err)
	}
	if s.api, err = httpapi.New(s.store,
		httpapi.Options{Heartbeat: cfg.StreamHeartbeat, MapTiles: cfg.MapTiles, MapAttribution: cfg.MapAttribution},
		httpapi.Deps{Logger: log, Registerer: deps.Registerer, Health: s.health}); err != nil {
		return nil, fmt.Errorf("live-location: %w", err)
	}
	// kafkaio tags the client's logs component=franz-go itself.
	if s.clientOpts, err = cfg.Kafka.Opts(deps.Logger.With("service", "live-location"), deps.Registerer); err != nil {
		return nil, fmt.Errorf("live-location: %w", err)
	}
	if s.bootOpts, err = cfg.Kafka.Opts(deps.Logger.With("service", "live-location", "client", "bootstrap"), nil); err != nil {
		return nil, fmt.Errorf("live-location: %w", err)
	}
	if cfg.LocationTopic == "" {
		s.bootstrapped.Store(true)
		s.m.bootstrapped.Set(1)
	}
	// The listener is bound last, so that no error path above leaks it.
	if s.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: log, Gatherer: deps.Gatherer}); err != nil {
		return nil, fmt.Errorf("live-location: %w", err)
	}
	s.api.Register(s.admin)
	s.admin.AddReadyCheck("telemetry-catch-up", func(context.Context) error {
		if s.caughtUp.Load() {
			return nil
		}
		if n := s.telemetryCatchUp.behind(); n >= 0 {
			return fmt.Errorf("reading %s: %d assigned partitions behind their end offsets", cfg.Topic, n)
		}
		return fmt.Errorf("waiting for a partition assignment in group %s", cfg.Group)
	})
	s.admin.AddReadyCheck("location-bootstrap", func(context.Context) error {
		if s.bootstrapped.Load() {
			return nil
		}
		return fmt.Errorf("reading %s", cfg.LocationTopic)
	})
	return s, nil
}

// URL is the base URL of the HTTP server, e.g. http://localhost:8080.
func (s *Service) URL() string { return s.admin.URL() }

// Addr is the address the HTTP server listens on.
func (s *Service) Addr() string { return s.admin.Addr() }

// Store is the live state the service maintains; it is safe for concurrent
// use (an embedding program may read it directly).
func (s *Service) Store() *fleetstate.Store { return s.store }

// Ready reports whether the start-up catch-up (telemetry and location
// bootstrap) is done, as /readyz does.
func (s *Service) Ready() bool { return s.caughtUp.Load() && s.bootstrapped.Load() }

// Run serves HTTP and consumes Kafka until ctx is cancelled or a part fails
// for good. Kafka being unreachable is not fatal: start-up steps are retried
// (with logs) while /readyz says why the service is not ready. On
// cancellation it ends the event streams, shuts the HTTP server down,
// publishes the last pending positions (waiting up to 5s for Kafka) and
// returns nil. Run must be called once.
func (s *Service) Run(ctx context.Context) error {
	if !s.ran.CompareAndSwap(false, true) {
		return errors.New("live-location: Run called twice")
	}
	s.started = time.Now()
	startMilli := s.started.Add(-s.cfg.Lookback).UnixMilli()
	cl, err := kgo.NewClient(append(append([]kgo.Opt{}, s.clientOpts...), s.groupOpts(startMilli)...)...)
	if err != nil {
		return fmt.Errorf("live-location: kafka client: %w", err)
	}
	// Closing leaves the group: the revoke callback publishes what is
	// pending and commits, so the next owner starts where this one stopped.
	defer cl.Close()
	if s.catalogs, err = catalogstore.New(s.cfg.Kafka, s.cfg.CatalogTopic, s.log); err != nil {
		return fmt.Errorf("live-location: %w", err)
	}
	defer s.catalogs.Close()

	s.log.Info("starting", "url", s.URL(), "topic", s.cfg.Topic, "group", s.cfg.Group, "location_topic", s.cfg.LocationTopic,
		"from", time.UnixMilli(startMilli).UTC().Format(time.RFC3339))
	g, gctx := errgroup.WithContext(ctx)
	// Event streams never end by themselves: end them as soon as anything
	// stops, so that the HTTP server's graceful shutdown does not wait on them.
	stopStreams := context.AfterFunc(gctx, s.api.Close)
	defer stopStreams()
	defer s.api.Close()
	g.Go(func() error { return s.admin.Run(gctx) })
	g.Go(func() error { return s.health.Run(gctx) })
	g.Go(func() error { return s.consume(gctx, cl) })
	g.Go(func() error { return s.sweep(gctx, cl) })
	if s.cfg.LocationTopic != "" {
		g.Go(func() error { return s.locations(gctx, cl) })
		g.Go(func() error { return s.publish(gctx, cl) })
	}
	err = g.Wait()
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		err = nil
	}
	s.log.Info("stopped", "err", err)
	return err
}
