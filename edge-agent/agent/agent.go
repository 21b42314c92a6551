// Package agent wires the edge agent together. Per vehicle: sources produce
// readings and fixes; a batcher groups them; each closed batch is split into
// a high-priority part (fixes and the priority signals) and a bulk part,
// each encoded (internal/wire) under the next seq of the vehicle's durable
// spool and appended to it; only then is it handed to the uplink, which
// publishes it and frees it from the spool when the cloud's end-to-end ack
// says Kafka holds it.
//
// Sources: "sim" runs a simulated fleet in one process, each car with its
// own MQTT connection and spool (SPOOL-DIR/VEHICLE-ID); "can" (DBC-decoded
// SocketCAN or a candump log) and "gps" (NMEA or gpsd) feed the one vehicle
// --vehicle-id.
//
// Metrics (besides the uplink's, spool's and sources' fleet_agent_* ones):
//
//	fleet_agent_readings_total                 readings and fixes collected
//	fleet_agent_readings_dropped_total{reason} readings not spooled (spool_full, encode)
//	fleet_agent_batches_spooled_total{class}   batches appended to the spool
//	fleet_agent_vehicles                       vehicles running in this process
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/errgroup"

	"github.com/fleetpipe/fleetpipe/edge-agent/batcher"
	"github.com/fleetpipe/fleetpipe/edge-agent/can"
	"github.com/fleetpipe/fleetpipe/edge-agent/gps"
	"github.com/fleetpipe/fleetpipe/edge-agent/sim"
	"github.com/fleetpipe/fleetpipe/edge-agent/spool"
	"github.com/fleetpipe/fleetpipe/edge-agent/uplink"
	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Version is the agent's version, sent in every batch and status message.
const Version = "0.2.0"

// Deps are the agent's dependencies.
type Deps struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

type metrics struct {
	readings *prometheus.CounterVec // by kind: collected
	dropped  *prometheus.CounterVec
	spooled  *prometheus.CounterVec
}

// Agent runs the configured vehicles.
type Agent struct {
	cfg     Config
	sim     sim.Config
	logger  *slog.Logger
	reg     prometheus.Registerer
	upm     *uplink.Metrics
	m       metrics
	admin   *admin.Server
	collect can.CollectConfig
}

// New checks the configuration (loading the collection config) and binds
// the metrics port.
func New(cfg Config, deps Deps) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, logger: deps.Logger, reg: deps.Registerer}
	if cfg.has("sim") {
		sc, err := cfg.SimConfig()
		if err != nil {
			return nil, err
		}
		a.sim = sc
	}
	if cfg.has("can") {
		if cfg.CANCollect != "" {
			cc, err := can.LoadCollectConfig(cfg.CANCollect)
			if err != nil {
				return nil, fmt.Errorf("--can-collect: %w", err)
			}
			a.collect = cc
		}
		if _, err := can.LoadDBC(cfg.CAN.DBC); err != nil {
			return nil, fmt.Errorf("--can-dbc: %w", err)
		}
	}
	if cfg.CheckConfig {
		return a, nil
	}
	f := promauto.With(deps.Registerer)
	a.upm = uplink.NewMetrics(deps.Registerer)
	a.m = metrics{
		readings: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_readings_total",
			Help: "Readings and fixes collected from the sources."}, []string{"kind"}),
		dropped: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_readings_dropped_total",
			Help: "Readings and fixes not spooled, by reason (spool_full: refused under --spool-full=stop; encode)."}, []string{"reason"}),
		spooled: f.NewCounterVec(prometheus.CounterOpts{Name: "fleet_agent_batches_spooled_total",
			Help: "Batches appended to the spool, by class."}, []string{"class"}),
	}
	n := 1
	if cfg.has("sim") {
		n = a.sim.Vehicles
	}
	f.NewGauge(prometheus.GaugeOpts{Name: "fleet_agent_vehicles", Help: "Vehicles running in this process."}).Set(float64(n))
	if cfg.Listen != "" {
		var err error
		if a.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: deps.Logger, Gatherer: deps.Gatherer}); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// vehicle is one car's spool, uplink and batching.
type vehicle struct {
	id      string
	spool   *spool.Spool
	uplink  *uplink.Uplink
	catalog *wire.Catalog // nil: batches always name their signals
	// catalogAcked reports whether the cloud holds the catalog, so
	// batches may refer to it (the uplink's CatalogRegistered).
	catalogAcked func() bool
	// linkUp reports whether the uplink is connected (its Connected).
	linkUp func() bool
}

// catalog is the signal catalog of the configured sources, or nil.
func (a *Agent) catalog() (*wire.Catalog, error) {
	switch {
	case !a.cfg.Catalog:
		return nil, nil
	case a.cfg.has("sim"):
		return sim.Catalog()
	case a.cfg.has("can"):
		d, err := can.LoadDBC(a.cfg.CAN.DBC)
		if err != nil {
			return nil, fmt.Errorf("--can-dbc: %w", err)
		}
		return d.Catalog()
	}
	return nil, nil // GPS only: fixes need no catalog
}

func (a *Agent) openVehicle(id, dir string, cat *wire.Catalog) (*vehicle, error) {
	sc := a.cfg.Spool
	sc.Dir = dir
	sp, err := spool.Open(sc, spool.Deps{Logger: a.logger.With("vehicle", id), Registerer: a.reg})
	if err != nil {
		return nil, fmt.Errorf("%s: spool: %w", id, err)
	}
	mc := a.cfg.MQTT
	if a.cfg.has("sim") || mc.ClientID == "" || mc.ClientID == defaultClientID {
		mc.ClientID = id
	}
	uc := uplink.Config{
		VehicleID: id, AgentVersion: Version, MQTT: mc, AckTimeout: a.cfg.AckTimeout,
		MaxInflight: a.cfg.MaxInflight, BacklogRate: a.cfg.BacklogRate,
		ReconnectMin: a.cfg.ReconnectMin, ReconnectMax: a.cfg.ReconnectMax,
	}
	if cat != nil {
		uc.Catalog, uc.CatalogID = cat.Bytes(), cat.ID()
	}
	u, err := uplink.New(uc, sp, uplink.Deps{Logger: a.logger, Metrics: a.upm})
	if err != nil {
		sp.Close()
		return nil, err
	}
	if st := sp.Stats(); st.Records > 0 || st.Recovery.CorruptRecords > 0 {
		a.logger.Info("spool recovered", "vehicle", id, "epoch", fmt.Sprintf("%016x", st.Epoch), "pending_batches", st.Records,
			"corrupt_records", st.Recovery.CorruptRecords, "new_epoch", st.Recovery.NewEpoch)
	}
	return &vehicle{id: id, spool: sp, uplink: u, catalog: cat, catalogAcked: u.CatalogRegistered, linkUp: u.Connected}, nil
}

// Run collects and sends until ctx is cancelled or, with ExitWhenDone, until
// the simulation has run its duration and every batch is acked. Spooled
// batches survive an exit and are sent by the next run.
func (a *Agent) Run(ctx context.Context) error {
	var ids []string
	var simCars []*sim.Vehicle
	if a.cfg.has("sim") {
		simCars = sim.NewFleet(a.sim)
		for _, v := range simCars {
			ids = append(ids, v.ID)
		}
	} else {
		ids = []string{a.cfg.VehicleID}
	}
	cat, err := a.catalog()
	if err != nil {
		return err
	}
	vehicles := make([]*vehicle, len(ids))
	defer func() {
		for _, v := range vehicles {
			if v != nil {
				v.spool.Close()
			}
		}
	}()
	for i, id := range ids {
		dir := a.cfg.Spool.Dir
		if a.cfg.has("sim") {
			dir = filepath.Join(dir, id)
		}
		v, err := a.openVehicle(id, dir, cat)
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
	for i, v := range vehicles {
		if simCars != nil {
			collect.Go(func() error { return a.driveSim(cctx, simCars[i], v) })
		} else {
			collect.Go(func() error { return a.runSources(cctx, v) })
		}
	}
	err = collect.Wait()
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

// collector batches one vehicle's items and spools each closed batch.
type collector struct {
	a          *Agent
	v          *vehicle
	b          *batcher.Batcher
	live       bool           // the sources read now: batches also close on the wall clock
	high, bulk []wire.Reading // reused between batches
}

func (a *Agent) newCollector(v *vehicle, live bool) *collector {
	return &collector{a: a, v: v, live: live, b: batcher.New(batcher.Config{MaxAge: a.cfg.BatchMaxAge, MaxReadings: a.cfg.BatchMaxReadings})}
}

// add batches items. clock, when not zero, is the source's clock after
// them (Unix ns): no earlier item follows, so a batch that old closes now.
func (c *collector) add(rs []wire.Reading, fixes []wire.Fix, clock int64) error {
	c.a.m.readings.WithLabelValues("reading").Add(float64(len(rs)))
	c.a.m.readings.WithLabelValues("fix").Add(float64(len(fixes)))
	if !c.b.Fits(rs, fixes) {
		if err := c.flush(); err != nil {
			return err
		}
	}
	var now int64
	if c.live {
		now = time.Now().UnixNano()
	}
	c.b.Add(now, rs, fixes...)
	if c.b.Full() || (clock != 0 && c.b.DueAt(clock)) || (c.live && c.b.Expired(now)) {
		return c.flush()
	}
	return nil
}

// mixedBacklog is how many unacked batches the spool may hold for a flush
// to still be one batch.
const mixedBacklog = 16

// flush spools what the batcher holds.
//
// While the link is up and the spool holds no backlog, that is one batch,
// high class if it has fixes or priority signals: one append, one fsync,
// one publish and one ack a flush. Otherwise (an outage is filling the
// spool, and a full spool drops bulk before high) the fixes and priority
// signals go in a high-class batch and the rest in a bulk one, so that the
// high-rate signals are dropped first. A batch spooled whole just before an
// outage keeps its readings as long as its fixes.
func (c *collector) flush() error {
	rs, fixes, _, ok := c.b.Take()
	if !ok {
		return nil
	}
	defer c.b.Recycle(rs, fixes) // wire.Encode keeps no reference
	if c.v.linkUp() && c.v.spool.Records() <= mixedBacklog {
		class := spool.Bulk
		if len(fixes) > 0 || slices.ContainsFunc(rs, c.priority) {
			class = spool.High
		}
		return c.spool(rs, fixes, class)
	}
	high, bulk := c.high[:0], c.bulk[:0]
	for _, r := range rs {
		if c.priority(r) {
			high = append(high, r)
		} else {
			bulk = append(bulk, r)
		}
	}
	defer func() { clear(high); clear(bulk); c.high, c.bulk = high[:0], bulk[:0] }()
	if len(high) > 0 || len(fixes) > 0 {
		if err := c.spool(high, fixes, spool.High); err != nil {
			return err
		}
	}
	if len(bulk) > 0 {
		return c.spool(bulk, nil, spool.Bulk)
	}
	return nil
}

// priority reports whether r is of a priority signal (--priority-signals).
func (c *collector) priority(r wire.Reading) bool {
	return slices.Contains(c.a.cfg.PrioritySignals, r.Signal)
}

// earliest is the time of the first item, the base time of a batch.
func earliest(rs []wire.Reading, fixes []wire.Fix) int64 {
	var t int64
	first := true
	for _, r := range rs {
		if first || r.Time < t {
			t, first = r.Time, false
		}
	}
	for _, f := range fixes {
		if first || f.Time < t {
			t, first = f.Time, false
		}
	}
	return t
}

func (c *collector) spool(rs []wire.Reading, fixes []wire.Fix, class spool.Class) error {
	n := len(rs) + len(fixes)
	base := earliest(rs, fixes)
	seq, err := c.v.spool.Reserve()
	if err != nil {
		return fmt.Errorf("%s: spool: %w", c.v.id, err)
	}
	decoder := sim.Decoder
	if !c.a.cfg.has("sim") {
		decoder = "agent:" + c.a.cfg.Sources.String()
	}
	batch := &wire.Batch{
		Identity: wire.Identity{VehicleID: c.v.id, Epoch: c.v.spool.Epoch(), Seq: seq},
		BaseTime: base, AgentVersion: Version, Decoder: decoder, Readings: rs, Fixes: fixes,
	}
	opt := wire.EncodeOptions{TickNanos: c.a.cfg.TickNanos}
	if c.v.catalog != nil && c.v.catalogAcked() {
		opt.Catalog = c.v.catalog // signals outside it make Encode name them all
	}
	payload, err := wire.Encode(batch, opt)
	if err != nil {
		c.a.m.dropped.WithLabelValues("encode").Add(float64(n))
		c.a.logger.Error("batch not encodable; dropped", "batch", batch.Identity, "err", err)
		return nil
	}
	err = c.v.spool.Append(seq, payload, spool.Meta{Class: class, Readings: uint32(n), Time: time.Unix(0, base)})
	if errors.Is(err, spool.ErrSpoolFull) {
		c.a.m.dropped.WithLabelValues("spool_full").Add(float64(n))
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: spool append: %w", c.v.id, err)
	}
	c.a.m.spooled.WithLabelValues(class.String()).Inc()
	c.v.uplink.Live(seq)
	return nil
}

// driveSim steps one simulated car, paced by the speed-up.
func (a *Agent) driveSim(ctx context.Context, car *sim.Vehicle, v *vehicle) error {
	c := a.newCollector(v, false)
	end := a.sim.Start.Add(a.cfg.SimDuration)
	wallStart := time.Now()
	var rs []wire.Reading // reused: the batcher copies what it keeps
	for step := 1; a.cfg.SimDuration == 0 || car.Now().Before(end); step++ {
		var fix wire.Fix
		rs, fix = car.AppendStep(rs[:0])
		if err := c.add(rs, []wire.Fix{fix}, car.Now().UnixNano()); err != nil {
			return err
		}
		if a.cfg.SimSpeedup > 0 {
			next := wallStart.Add(time.Duration(float64(step) * float64(time.Second) / a.cfg.SimSpeedup))
			select {
			case <-ctx.Done():
				return c.flush()
			case <-time.After(time.Until(next)):
			}
		} else if ctx.Err() != nil {
			return c.flush()
		}
	}
	return c.flush()
}

// liveSources reports whether the configured sources read a live input
// (a SocketCAN interface, a GNSS device, gpsd) rather than a recording.
func (a *Agent) liveSources() bool {
	if a.cfg.has("can") && a.cfg.CAN.Interface != "" {
		return true
	}
	if a.cfg.has("gps") {
		if a.cfg.GPS.Kind == gps.KindGPSD {
			return true
		}
		if st, err := os.Stat(a.cfg.GPS.Path); err == nil && st.Mode()&(os.ModeCharDevice|os.ModeNamedPipe) != 0 {
			return true
		}
	}
	return false
}

// item is what a live source hands the collector.
type item struct {
	readings []wire.Reading
	fixes    []wire.Fix
}

// runSources runs the vehicle's CAN and GPS sources into one collector,
// closing batches by age on the wall clock.
func (a *Agent) runSources(ctx context.Context, v *vehicle) error {
	items := make(chan item, 256)
	var wg sync.WaitGroup
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	errc := make(chan error, 2)
	if a.cfg.has("can") {
		cc := a.cfg.CAN
		cc.Collect = a.collect
		src, err := can.New(cc, can.Deps{Logger: a.logger, Registerer: a.reg})
		if err != nil {
			return err
		}
		wg.Go(func() {
			errc <- src.Run(srcCtx, func(rs []wire.Reading) {
				select {
				case items <- item{readings: rs}:
				case <-srcCtx.Done():
				}
			})
		})
	}
	if a.cfg.has("gps") {
		src, err := gps.New(a.cfg.GPS, gps.Deps{Logger: a.logger, Registerer: a.reg})
		if err != nil {
			return err
		}
		wg.Go(func() {
			errc <- src.Run(srcCtx, func(f wire.Fix) {
				select {
				case items <- item{fixes: []wire.Fix{f}}:
				case <-srcCtx.Done():
				}
			})
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	c := a.newCollector(v, a.liveSources())
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case it := <-items:
			if err := c.add(it.readings, it.fixes, 0); err != nil {
				return err
			}
		case <-tick.C:
			if c.live && c.b.Expired(time.Now().UnixNano()) {
				if err := c.flush(); err != nil {
					return err
				}
			}
		case err := <-errc:
			if err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
		case <-done:
			// Finite sources (a log replay) ended: spool what is left.
			for {
				select {
				case it := <-items:
					if err := c.add(it.readings, it.fixes, 0); err != nil {
						return err
					}
					continue
				default:
				}
				break
			}
			return c.flush()
		case <-ctx.Done():
			return c.flush()
		}
	}
}
