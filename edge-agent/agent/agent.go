// Package agent wires the edge agent together: sources produce readings, a
// batcher groups them per vehicle, the wire package encodes each batch, and
// an uplink publishes it and keeps it until the cloud's end-to-end ack.
//
// Today the only source is the simulator, which runs many vehicles in one
// process, each with its own MQTT connection, as separate cars would.
//
// Metrics (besides the uplink's fleet_agent_* ones):
//
//	fleet_agent_readings_total   readings and fixes collected
//	fleet_agent_vehicles         vehicles running in this process
package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/edge-agent/batcher"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/uplink"
	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Version is the agent's version, sent in every batch and status message.
const Version = "0.1.0"

// Deps are the agent's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Agent runs the configured vehicles.
type Agent struct {
	cfg      Config
	sim      sim.Config
	logger   *slog.Logger
	upm      *uplink.Metrics
	readings prometheus.Counter
	admin    *admin.Server
}

// New checks the configuration and binds the metrics port.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	sc, err := cfg.SimConfig()
	if err != nil {
		return nil, err
	}
	f := promauto.With(deps.Registerer)
	a := &Agent{
		cfg: cfg, sim: sc, logger: deps.Logger,
		upm: uplink.NewMetrics(deps.Registerer),
		readings: f.NewCounter(prometheus.CounterOpts{Name: "fleet_agent_readings_total",
			Help: "Readings and fixes collected."}),
	}
	f.NewGauge(prometheus.GaugeOpts{Name: "fleet_agent_vehicles", Help: "Vehicles running in this process."}).Set(float64(sc.Vehicles))
	if cfg.Listen != "" {
		if a.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer}); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// NewEpoch returns a random 63-bit spool epoch (positive as a signed
// 64-bit integer, so every SQL engine shows it the same way).
func NewEpoch() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) >> 1
}

// Run drives the vehicles until ctx is cancelled or, with ExitWhenDone,
// until the simulation has run its duration and every batch is acked.
func (a *Agent) Run(ctx context.Context) error {
	epoch := NewEpoch()
	vehicles := sim.NewFleet(a.sim)
	a.logger.Info("edge agent starting", "vehicles", len(vehicles), "mqtt", a.cfg.MQTT.URL,
		"sim_start", a.sim.Start.Format(time.RFC3339), "speedup", a.cfg.SimSpeedup, "duration", a.cfg.SimDuration, "epoch", fmt.Sprintf("%016x", epoch))

	upCtx, stopUplinks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopUplinks()
	ups := make([]*uplink.Uplink, len(vehicles))
	upGroup, _ := errgroup.WithContext(upCtx)
	for i, v := range vehicles {
		mc := a.cfg.MQTT
		mc.ClientID = v.ID
		u, err := uplink.New(uplink.Config{VehicleID: v.ID, AgentVersion: Version, MQTT: mc, AckTimeout: a.cfg.AckTimeout},
			uplink.Deps{Logger: a.logger, Metrics: a.upm})
		if err != nil {
			return err
		}
		ups[i] = u
		upGroup.Go(func() error { return u.Run(upCtx) })
	}
	if a.admin != nil {
		upGroup.Go(func() error { return a.admin.Run(upCtx) })
	}

	drive, dctx := errgroup.WithContext(ctx)
	for i, v := range vehicles {
		drive.Go(func() error { return a.drive(dctx, v, ups[i], epoch) })
	}
	err := drive.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		stopUplinks()
		_ = upGroup.Wait()
		return err
	}

	// Wait for the end-to-end acks: all of them when asked to exit once
	// done, briefly on an interrupt (batches still unacked are lost: the
	// durable spool that would keep them is not built yet).
	wait := a.cfg.DrainTimeout
	if !a.cfg.ExitWhenDone {
		<-ctx.Done()
		wait = min(wait, 5*time.Second)
	}
	wctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	var unacked error
	for _, u := range ups {
		if err := u.WaitAcked(wctx); err != nil {
			unacked = err
			break
		}
	}
	stopUplinks()
	_ = upGroup.Wait()
	if unacked != nil {
		n := 0
		for _, u := range ups {
			n += u.Pending()
		}
		return fmt.Errorf("%d batches not acknowledged by the cloud within %v: %w", n, wait, unacked)
	}
	a.logger.Info("edge agent stopped; every batch acknowledged")
	return nil
}

// drive steps one vehicle, paced by the speed-up, batching and sending.
func (a *Agent) drive(ctx context.Context, v *sim.Vehicle, u *uplink.Uplink, epoch uint64) error {
	b := batcher.New(batcher.Config{MaxAge: a.cfg.BatchMaxAge, MaxReadings: a.cfg.BatchMaxReadings})
	var seq uint64
	send := func() error {
		rs, fixes, base, ok := b.Take()
		if !ok {
			return nil
		}
		seq++
		batch := &wire.Batch{
			Identity: wire.Identity{VehicleID: v.ID, Epoch: epoch, Seq: seq},
			BaseTime: base, AgentVersion: Version, Decoder: sim.Decoder,
			Readings: rs, Fixes: fixes,
		}
		payload, err := wire.Encode(batch, wire.EncodeOptions{TickNanos: a.cfg.TickNanos})
		if err != nil {
			return fmt.Errorf("%s: encode batch %d: %w", v.ID, seq, err)
		}
		u.Send(batch.Identity, payload)
		return nil
	}
	end := a.sim.Start.Add(a.cfg.SimDuration)
	wallStart := time.Now()
	for step := 1; a.cfg.SimDuration == 0 || v.Now().Before(end); step++ {
		rs, fix := v.Step()
		b.Add(rs, fix)
		a.readings.Add(float64(len(rs) + 1))
		if b.Due(v.Now()) {
			if err := send(); err != nil {
				return err
			}
		}
		if a.cfg.SimSpeedup > 0 {
			next := wallStart.Add(time.Duration(float64(step) * float64(time.Second) / a.cfg.SimSpeedup))
			select {
			case <-ctx.Done():
				return send()
			case <-time.After(time.Until(next)):
			}
		} else if ctx.Err() != nil {
			return send()
		}
	}
	return send()
}
