// Package replay re-reads a chosen slice of the telemetry topic
// (fleet.telemetry.v1) and sends every record in it to a Target; so far the
// only target writes JSON lines on stdout.
//
// A slice is a time range (--from/--to, Kafka record timestamps) or an
// offset range on one partition, optionally narrowed to one vehicle: its
// partition, computed with Kafka's murmur2 partitioner, and the records keyed
// by its ID. Before reading, the replay fixes a Plan: per partition, the
// offsets [start, end), where end is never past the high watermark listed at
// start-up, so it never waits for new data. It reads partitions one after
// the other, ascending, each from start to end, with a client that consumes
// the partition directly: it joins no consumer group and commits no offsets,
// so the live consumers are untouched. The same slice therefore always gives
// the same records in the same order, and the JSON target writes them
// byte-identically.
//
// The JSON target writes one object per line, per reading:
//
//	{"vehicle_id":"veh-1","epoch":"00000000deadbeef","seq":42,"partition":3,"offset":1201,
//	 "ts":"2025-06-01T08:00:00.1Z","signal":"speed","unit":"km/h","type":"double","value":12.5}
//
// and per location fix:
//
//	{...same first fields...,"type":"location","lat":37.98,"lon":23.72,"alt":70.5,"speed":8.25,"heading":181.5,"accuracy":3.2}
//
// ts is the reading's (or fix's) own time from the car, RFC 3339 in UTC with
// up to nanosecond digits; epoch is the batch's 64-bit spool epoch as 16 hex
// digits, as logs print batch identities (a JSON number would lose precision
// in many tools); type is double, int, bool or string for readings; a
// non-finite double value is the string "NaN", "+Inf" or "-Inf"; absent fix
// fields are left out. Within a record, readings come first, then fixes,
// each in decoded order.
//
// A record that does not decode (or whose key is not its batch's vehicle) is
// counted, logged and skipped, or ends the replay with --fail-on-bad.
// Progress goes to the logger every --progress-interval, after each
// partition and at the end. With --listen, the same counts are served as
// Prometheus metrics while the replay runs (for long backfills):
//
//	fleet_replay_records_total, fleet_replay_readings_total,
//	fleet_replay_fixes_total, fleet_replay_bad_records_total,
//	fleet_replay_skipped_records_total, fleet_replay_partitions_done_total
//
// plus the franz-go client metrics under fleet_kafka_*.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/admin"
	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// Deps are the replay's dependencies.
type Deps struct {
	Logger *slog.Logger // progress and skipped records; nil discards them
	Stdout io.Writer    // the JSON lines and the --dry-run plan
	// Registerer and Gatherer back /metrics when Config.Listen is set;
	// nil gets a private registry.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
}

// Stats counts what a replay did.
type Stats struct {
	Records    int64 // records read in the planned ranges
	Skipped    int64 // records of other vehicles (--vehicle)
	Bad        int64 // records that did not decode, skipped
	Readings   int64 // readings written
	Fixes      int64 // location fixes written
	Partitions int64 // partitions finished
}

type counters struct {
	records, skipped, bad, readings, fixes, partitions atomic.Int64
	partition, offset                                  atomic.Int64 // where the replay is reading
}

func (c *counters) snapshot() Stats {
	return Stats{
		Records: c.records.Load(), Skipped: c.skipped.Load(), Bad: c.bad.Load(),
		Readings: c.readings.Load(), Fixes: c.fixes.Load(), Partitions: c.partitions.Load(),
	}
}

// Replayer runs one replay. Run it once; Stats is safe to call at any time.
type Replayer struct {
	cfg      Config
	logger   *slog.Logger
	stdout   io.Writer
	opts     []kgo.Opt
	catalogs *catalogstore.Store // set by Run
	from     time.Time           // zero: no --from
	to       time.Time           // zero: no --to

	// newTarget builds the target when Run starts; tests replace it.
	newTarget func() (Target, error)

	admin *admin.Server // nil without --listen

	c counters
}

// New checks cfg and prepares a replay; it does not contact Kafka.
func New(cfg Config, deps Deps) (*Replayer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if deps.Stdout == nil {
		return nil, errors.New("replay: Deps.Stdout is nil")
	}
	logger := deps.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	var reg prometheus.Registerer
	if cfg.Listen != "" {
		reg = deps.Registerer
		if reg == nil || deps.Gatherer == nil {
			r := prometheus.NewRegistry()
			reg, deps.Gatherer = r, r
		}
	}
	opts, err := cfg.Kafka.Opts(logger, reg)
	if err != nil {
		return nil, err
	}
	r := &Replayer{cfg: cfg, logger: logger, stdout: deps.Stdout, opts: opts}
	if cfg.Listen != "" {
		r.registerMetrics(reg)
		if r.admin, err = admin.New(admin.Config{Addr: cfg.Listen}, admin.Deps{Logger: logger, Gatherer: deps.Gatherer}); err != nil {
			return nil, err
		}
	}
	if cfg.timeMode() {
		r.from, r.to, _ = cfg.timeRange() // checked by Validate
	}
	r.newTarget = func() (Target, error) {
		switch cfg.Target {
		case TargetStdout:
			return newJSONLines(deps.Stdout), nil
		}
		return nil, fmt.Errorf("replay: target %q is not implemented", cfg.Target)
	}
	return r, nil
}

// Stats returns the counts so far.
func (r *Replayer) Stats() Stats { return r.c.snapshot() }

// AdminURL is where /metrics is served while Run runs, or "" without --listen.
func (r *Replayer) AdminURL() string {
	if r.admin == nil {
		return ""
	}
	return r.admin.URL()
}

// Plan lists what Run would read, without reading any record.
func (r *Replayer) Plan(ctx context.Context) (Plan, error) {
	cl, err := r.client()
	if err != nil {
		return Plan{}, err
	}
	defer cl.Close()
	return plan(ctx, r.cfg, kadm.NewClient(cl), r.logger)
}

// client is the Kafka client of a replay: one for planning and reading
// every range (the metrics hook belongs to one client). It consumes
// partitions directly, as readRange adds them: no group, nothing
// committed.
func (r *Replayer) client() (*kgo.Client, error) {
	opts := append(slices.Clip(r.opts),
		// Control records (transaction markers) take offsets too; seeing
		// them lets the loop reach the end offset when a marker is last.
		kgo.KeepControlRecords(),
		// If retention deletes records under us, go on from the new log
		// start rather than fail.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return cl, nil
}

// Run plans the slice, then reads it into the target; with --dry-run it
// prints the plan on stdout and reads nothing. It returns when the slice is
// done, on the first error, or with ctx's error when ctx is cancelled; in
// every case the target is closed (flushed) first.
func (r *Replayer) Run(ctx context.Context) (err error) {
	if r.admin != nil {
		actx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = r.admin.Run(actx) }()
		defer func() { stop(); <-done }()
	}
	cl, err := r.client()
	if err != nil {
		return err
	}
	defer cl.Close()
	p, err := plan(ctx, r.cfg, kadm.NewClient(cl), r.logger)
	if err != nil {
		return err
	}
	if r.cfg.DryRun {
		_, err := p.WriteTo(r.stdout)
		return err
	}
	if r.catalogs, err = catalogstore.New(r.cfg.Kafka, r.cfg.CatalogTopic, r.logger); err != nil {
		return err
	}
	defer r.catalogs.Close()
	target, err := r.newTarget()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := target.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	start := time.Now()
	total := p.Records()
	r.logger.Info("replay starting", "topic", p.Topic, "slice", p.Slice, "partitions", len(p.Ranges), "records", total, "target", r.cfg.Target)
	r.c.partition.Store(-1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if r.cfg.ProgressInterval > 0 {
		wg.Go(func() {
			t := time.NewTicker(r.cfg.ProgressInterval)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					s := r.Stats()
					r.logger.Info("replay progress", "records", s.Records, "of", total,
						"readings", s.Readings, "fixes", s.Fixes, "bad", s.Bad, "skipped", s.Skipped,
						"partition", r.c.partition.Load(), "offset", r.c.offset.Load(),
						"partitions_done", s.Partitions, "of_partitions", len(p.Ranges))
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()

	for _, rg := range p.Ranges {
		before := r.Stats()
		if err := r.readRange(ctx, cl, target, rg); err != nil {
			return err
		}
		r.c.partitions.Add(1)
		after := r.Stats()
		r.logger.Info("partition done", "partition", rg.Partition, "start", rg.Start, "end", rg.End,
			"records", after.Records-before.Records, "readings", after.Readings-before.Readings,
			"fixes", after.Fixes-before.Fixes, "bad", after.Bad-before.Bad)
	}
	s := r.Stats()
	r.logger.Info("replay done", "records", s.Records, "readings", s.Readings, "fixes", s.Fixes,
		"bad", s.Bad, "skipped", s.Skipped, "partitions", s.Partitions, "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// readRange sends the records of rg to target, in offset order, reading
// rg's partition with cl from rg.Start until rg.End.
func (r *Replayer) readRange(ctx context.Context, cl *kgo.Client, target Target, rg Range) error {
	if rg.Start >= rg.End {
		return nil
	}
	r.c.partition.Store(int64(rg.Partition))
	r.c.offset.Store(rg.Start)
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{r.cfg.Topic: {rg.Partition: kgo.NewOffset().At(rg.Start)}})
	// Done with the partition: drop what was fetched past rg.End.
	defer cl.RemoveConsumePartitions(map[string][]int32{r.cfg.Topic: {rg.Partition}})

	for next := rg.Start; next < rg.End; {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			e := errs[0]
			return fmt.Errorf("kafka: reading %s partition %d: %w", e.Topic, e.Partition, e.Err)
		}
		for it := fetches.RecordIter(); !it.Done() && next < rg.End; {
			rec := it.Next()
			if rec.Offset >= rg.End || (!r.to.IsZero() && !rec.Timestamp.Before(r.to)) {
				next = rg.End // the first record at or after --to ends the partition
				break
			}
			next = rec.Offset + 1
			r.c.offset.Store(next)
			if rec.Attrs.IsControl() {
				continue
			}
			if err := r.handle(ctx, target, rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// handle filters, decodes and writes one record.
func (r *Replayer) handle(ctx context.Context, target Target, rec *kgo.Record) error {
	r.c.records.Add(1)
	if r.cfg.Vehicle != "" && string(rec.Key) != r.cfg.Vehicle {
		r.c.skipped.Add(1)
		return nil
	}
	b, err := r.catalogs.Decode(ctx, rec.Value, wire.Limits{})
	if err != nil && !wire.IsInvalid(err) {
		return fmt.Errorf("partition %d offset %d: %w", rec.Partition, rec.Offset, err)
	}
	if err == nil && len(rec.Key) > 0 && string(rec.Key) != b.VehicleID {
		err = fmt.Errorf("record key %q is not the batch's vehicle %q", rec.Key, b.VehicleID)
	}
	if err != nil {
		if r.cfg.FailOnBad {
			return fmt.Errorf("partition %d offset %d: bad record (--fail-on-bad): %w", rec.Partition, rec.Offset, err)
		}
		r.c.bad.Add(1)
		r.logger.Warn("skipping a bad record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
		return nil
	}
	if err := target.Write(ctx, Record{
		Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Timestamp: rec.Timestamp,
		Key: rec.Key, Value: rec.Value, Batch: b,
	}); err != nil {
		return err
	}
	r.c.readings.Add(int64(len(b.Readings)))
	r.c.fixes.Add(int64(len(b.Fixes)))
	return nil
}

// registerMetrics exposes the replay's counters on reg.
func (r *Replayer) registerMetrics(reg prometheus.Registerer) {
	for name, help := range map[string]struct {
		help string
		get  func(Stats) int64
	}{
		"fleet_replay_records_total":         {"Records read in the planned ranges.", func(s Stats) int64 { return s.Records }},
		"fleet_replay_readings_total":        {"Readings written to the target.", func(s Stats) int64 { return s.Readings }},
		"fleet_replay_fixes_total":           {"Location fixes written to the target.", func(s Stats) int64 { return s.Fixes }},
		"fleet_replay_bad_records_total":     {"Records that did not decode (skipped).", func(s Stats) int64 { return s.Bad }},
		"fleet_replay_skipped_records_total": {"Records of other vehicles (--vehicle).", func(s Stats) int64 { return s.Skipped }},
		"fleet_replay_partitions_done_total": {"Partitions finished.", func(s Stats) int64 { return s.Partitions }},
	} {
		get := help.get
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help.help},
			func() float64 { return float64(get(r.Stats())) }))
	}
}
