package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/fleetpipe/fleetpipe/internal/catalogstore"
	"github.com/fleetpipe/fleetpipe/internal/kafkaio"
	"github.com/fleetpipe/fleetpipe/internal/wire"
)

// replay opens the target and reads the planned ranges into it.
func (r *Replayer) replay(ctx context.Context, cl, producer *kgo.Client, ru *session) (err error) {
	var err2 error
	if ru.kind.Decodes {
		if ru.catalogs, err2 = catalogstore.New(ru.cfg.Kafka, ru.cfg.CatalogTopic, r.logger); err2 != nil {
			return err2
		}
		defer ru.catalogs.Close()
	}
	_, dest := ru.cfg.targetKind()
	env := TargetEnv{Config: ru.cfg, Dest: dest, Plan: ru.plan, Logger: r.logger, Stdout: r.stdout, Kafka: r.opts, Producer: producer, Registerer: r.reg}
	start := positionOf(ru.plan, ru.next)
	if ru.state != nil && !ru.state.Updated.IsZero() {
		env.State, env.Resumed = ru.state.Target, &start
	}
	if ru.target, err2 = ru.kind.Open(ctx, env); err2 != nil {
		return err2
	}
	if r.wrapTarget != nil {
		ru.target = r.wrapTarget(ru.target)
	}
	defer func() {
		if cerr := ru.target.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	ru.durable = start
	if ru.store != nil {
		if ru.kind.Transactional {
			ru.store.cl = producer
		}
		if err := kafkaio.EnsureTopics(ctx, ru.store.cl, stateTopicSpec(ru.cfg.StateTopic)); err != nil {
			return fmt.Errorf("--state-topic: %w", err)
		}
		// Save the plan before any output exists, so that a replay killed
		// at once resumes the same slice.
		if err := r.commit(ctx, ru, start, false); err != nil {
			return err
		}
	}

	began := time.Now()
	r.logger.Info("replay starting", "topic", ru.plan.Topic, "slice", ru.plan.Slice, "partitions", len(ru.plan.Ranges),
		"records", ru.plan.Records(), "target", ru.kind.Flag, "dest", dest, "resume", ru.cfg.Resume)
	prog := startProgress(ru.cfg.Progress, ru.cfg.ProgressInterval, r.stderr, r.logger, ru.plan.Records(), r.Stats)
	err = r.readAll(ctx, cl, ru, start)
	prog.finish()
	if err != nil {
		return r.stopped(ctx, ru, err)
	}
	s := r.Stats()
	if ru.cfg.Vehicle != "" && s.Written == 0 && !ru.cfg.AllowEmpty {
		rg := ru.plan.Ranges[0]
		return fmt.Errorf("--vehicle: vehicle %s has no records in the slice (%s partition %d, offsets %d-%d): check the ID and the range (--allow-empty makes this a success)",
			ru.cfg.Vehicle, ru.plan.Topic, rg.Partition, rg.Start, rg.End)
	}
	r.logger.Info("replay done", "records", s.Records, "written", s.Written, "readings", s.Readings, "fixes", s.Fixes,
		"bad", s.Bad, "skipped", s.Skipped, "partitions", s.Partitions, "bytes", s.Bytes, "elapsed", time.Since(began).Round(time.Millisecond))
	return nil
}

// readAll reads every range from start on, committing at the end of each.
func (r *Replayer) readAll(ctx context.Context, cl *kgo.Client, ru *session, start Position) error {
	ru.commitAt = time.Now().Add(ru.cfg.CommitInterval)
	if len(ru.plan.Ranges) == 0 {
		return r.commit(ctx, ru, start, true)
	}
	for i := start.Range; i < len(ru.plan.Ranges); i++ {
		rg := ru.plan.Ranges[i]
		from := rg.Start
		if i == start.Range {
			from = start.Offset
		}
		before := r.Stats()
		at, err := ru.target.OpenRange(ctx, i, from)
		if err != nil {
			return err
		}
		if at = min(at, rg.End); at > from {
			r.c.records.Add(at - from) // the target holds their output already
			from = at
		}
		if err := r.readRange(ctx, cl, ru, i, from); err != nil {
			return err
		}
		if err := r.commit(ctx, ru, Position{Range: i, Offset: rg.End}, true); err != nil {
			return err
		}
		r.c.partitions.Add(1)
		after := r.Stats()
		r.logger.Info("partition done", "partition", rg.Partition, "start", rg.Start, "end", rg.End,
			"records", after.Records-before.Records, "written", after.Written-before.Written,
			"readings", after.Readings-before.Readings, "fixes", after.Fixes-before.Fixes, "bad", after.Bad-before.Bad)
	}
	return nil
}

// commit asks the target to make its output durable up to pos and saves
// the position it reports.
func (r *Replayer) commit(ctx context.Context, ru *session, pos Position, rangeEnd bool) error {
	ru.commitAt = time.Now().Add(ru.cfg.CommitInterval)
	return ru.target.Commit(ctx, pos, rangeEnd, func(ctx context.Context, durable Position, state json.RawMessage) error {
		if ru.store != nil {
			st := ru.state
			for i, rg := range ru.plan.Ranges {
				switch {
				case i < durable.Range:
					st.Next[i] = rg.End
				case i == durable.Range:
					st.Next[i] = durable.Offset
				}
			}
			st.Target, st.Stats = state, r.Stats()
			st.Done = allDone(st.Plan, st.Next)
			if err := ru.store.save(ctx, st); err != nil {
				return err
			}
		}
		ru.durable = durable
		return nil
	})
}

// allDone reports whether next is at the end of every range.
func allDone(p Plan, next []int64) bool {
	for i, rg := range p.Ranges {
		if next[i] < rg.End {
			return false
		}
	}
	return true
}

// stopped handles the end of a replay that did not finish: on
// cancellation it commits what the target holds and prints the command
// that continues; on a failure, with --resume, it prints how to resume.
func (r *Replayer) stopped(ctx context.Context, ru *session, err error) error {
	if ctx.Err() == nil || !errors.Is(err, ctx.Err()) {
		if ru.store != nil {
			fmt.Fprintf(r.stderr, "replay failed; after fixing the cause, continue it with:\n  %s\n", r.resumeCommand(ru))
		}
		return err
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if cerr := r.commit(cctx, ru, ru.read, false); cerr != nil {
		r.logger.Error("could not commit at stop; continuing redoes the records since the last commit", "err", cerr)
	}
	s := r.Stats()
	fmt.Fprintf(r.stderr, "replay stopped after %d of %d records; continue it with:\n  %s\n", s.Records, ru.plan.Records(), r.resumeCommand(ru))
	return fmt.Errorf("%w (%d of %d records read)", ErrStopped, s.Records, ru.plan.Records())
}

// readRange sends the records of range i to the target, in offset order,
// from offset from until the range's end.
func (r *Replayer) readRange(ctx context.Context, cl *kgo.Client, ru *session, i int, from int64) error {
	rg := ru.plan.Ranges[i]
	ru.read = Position{Range: i, Offset: from}
	if from >= rg.End {
		return nil
	}
	topic := ru.plan.Topic
	cl.AddConsumePartitions(map[string]map[int32]kgo.Offset{topic: {rg.Partition: kgo.NewOffset().At(from)}})
	// Done with the partition: drop what was fetched past rg.End.
	defer cl.RemoveConsumePartitions(map[string][]int32{topic: {rg.Partition}})

	f := newFilter(ru.cfg)
	for ru.read.Offset < rg.End {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		if errs := fetches.Errors(); len(errs) > 0 {
			e := errs[0]
			return fmt.Errorf("kafka: reading %s partition %d: %w", e.Topic, e.Partition, e.Err)
		}
		for it := fetches.RecordIter(); !it.Done(); {
			rec := it.Next()
			if rec.Offset < ru.read.Offset {
				continue // fetched before a re-add; already handled
			}
			if rec.Offset >= rg.End {
				break
			}
			if err := r.handle(ctx, ru, f, rec); err != nil {
				return err
			}
			ru.read.Offset = rec.Offset + 1
			if ru.read.Offset < rg.End && time.Now().After(ru.commitAt) {
				if err := r.commit(ctx, ru, ru.read, false); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// filter applies --vehicle and --signals.
type filter struct {
	vehicle  string
	patterns []string
	keep     map[string]bool // per signal name seen, whether a pattern matches
	fixes    bool
}

func newFilter(cfg Config) *filter {
	f := &filter{vehicle: cfg.Vehicle, patterns: cfg.Signals, keep: map[string]bool{}, fixes: len(cfg.Signals) == 0}
	for _, p := range cfg.Signals {
		if ok, _ := path.Match(p, "location"); ok {
			f.fixes = true
		}
	}
	return f
}

func (f *filter) signal(name string) bool {
	k, ok := f.keep[name]
	if !ok {
		for _, p := range f.patterns {
			if m, _ := path.Match(p, name); m {
				k = true
				break
			}
		}
		f.keep[name] = k
	}
	return k
}

// apply drops the readings and fixes --signals does not keep; it reports
// whether anything is left.
func (f *filter) apply(b *wire.Batch) bool {
	if len(f.patterns) == 0 {
		return true
	}
	kept := b.Readings[:0]
	for _, rd := range b.Readings {
		if f.signal(rd.Signal) {
			kept = append(kept, rd)
		}
	}
	b.Readings = kept
	if !f.fixes {
		b.Fixes = nil
	}
	return len(b.Readings)+len(b.Fixes) > 0
}

// decodeLimits are parquet-sink's: generous, since the bridge applied the
// tight limits at the door, and a record the sink decodes must decode here
// too for a backfill to hold its rows.
var decodeLimits = wire.Limits{MaxBatchBytes: 64 << 20, MaxBodyBytes: 256 << 20, MaxReadings: 16 << 20}

// handle filters, decodes and writes one record.
func (r *Replayer) handle(ctx context.Context, ru *session, f *filter, rec *kgo.Record) error {
	r.c.records.Add(1)
	r.c.bytes.Add(int64(len(rec.Key) + len(rec.Value)))
	if rec.Attrs.IsControl() {
		return nil
	}
	if f.vehicle != "" && string(rec.Key) != f.vehicle {
		r.c.skipped.Add(1)
		return nil
	}
	out := Record{
		Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Timestamp: rec.Timestamp,
		Key: rec.Key, Value: rec.Value, Headers: rec.Headers,
	}
	if ru.kind.Decodes {
		b, err := ru.catalogs.Decode(ctx, rec.Value, decodeLimits)
		if err != nil && !wire.IsInvalid(err) {
			return fmt.Errorf("partition %d offset %d: %w", rec.Partition, rec.Offset, err)
		}
		if err == nil && len(rec.Key) > 0 && string(rec.Key) != b.VehicleID {
			if f.vehicle != "" && ru.kind.SinkRecords {
				// Only the vehicle's readings; for other targets a
				// mismatch is a bad record.
				r.c.skipped.Add(1)
				return nil
			}
			if !ru.kind.SinkRecords {
				err = fmt.Errorf("record key %q is not the batch's vehicle %q", rec.Key, b.VehicleID)
			}
		}
		if err != nil {
			if ru.cfg.FailOnBad {
				return fmt.Errorf("partition %d offset %d: bad record (--fail-on-bad): %w", rec.Partition, rec.Offset, err)
			}
			r.c.bad.Add(1)
			if !ru.kind.SinkRecords {
				r.logger.Warn("skipping a bad record", "partition", rec.Partition, "offset", rec.Offset, "err", err)
				return nil
			}
			out.Invalid = err // the target logs it
			return ru.target.Write(ctx, out)
		}
		if !f.apply(b) {
			return nil
		}
		out.Batch = b
	}
	if err := ru.target.Write(ctx, out); err != nil {
		return err
	}
	r.c.written.Add(1)
	if out.Batch != nil {
		r.c.readings.Add(int64(len(out.Batch.Readings)))
		r.c.fixes.Add(int64(len(out.Batch.Fixes)))
	}
	return nil
}

// registerMetrics exposes the replay's counters on reg.
func (r *Replayer) registerMetrics(reg prometheus.Registerer) {
	for name, help := range map[string]struct {
		help string
		get  func(Stats) int64
	}{
		"fleet_replay_records_total":         {"Records read in the planned ranges.", func(s Stats) int64 { return s.Records }},
		"fleet_replay_bytes_total":           {"Key and value bytes of the records read.", func(s Stats) int64 { return s.Bytes }},
		"fleet_replay_written_records_total": {"Records sent to the target.", func(s Stats) int64 { return s.Written }},
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
